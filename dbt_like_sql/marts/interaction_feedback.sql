-- Feedback aggregated per interaction (every interaction appears, with zero counts when nobody reacted).
with per_interaction as (
    select
        interaction_id,
        count(*) as feedback_events,
        avg(score) as mean_score,
        count(score) as scores,
        count(*) filter (where is_negative) as negative_events,
        count(*) filter (where is_positive) as positive_events,
        bool_or(correction is not null) as has_correction,
        arg_max(correction, ts) filter (where correction is not null) as latest_correction,
        bool_or(outcome in ('ticket_reopened', 'reopened')) as reopened,
        max(ts) as last_feedback_at
    from {{ ref('stg_feedback_events') }}
    group by interaction_id
)
select
    i.interaction_id,
    i.day,
    i.task,
    i.model,
    i.model_version,
    i.consent,
    coalesce(f.feedback_events, 0) as feedback_events,
    f.mean_score,
    coalesce(f.scores, 0) as scores,
    coalesce(f.negative_events, 0) as negative_events,
    coalesce(f.positive_events, 0) as positive_events,
    coalesce(f.has_correction, false) as has_correction,
    f.latest_correction,
    coalesce(f.reopened, false) as reopened,
    f.last_feedback_at
from {{ ref('stg_interactions') }} as i
left join per_interaction as f using (interaction_id)
