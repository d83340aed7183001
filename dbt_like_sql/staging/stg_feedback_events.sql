-- Feedback events with one verdict per event: negative if the user or an agent said the answer was bad.
-- An event delivered twice counts once (by feedback_id). A trace-level score (Langfuse: keyed `otel-<trace>`,
-- no observation) applies to every generation of that trace, whenever its spans arrived.
with events as (
    select *
    from {{ source('lake', 'feedback_events') }}
    qualify row_number() over (partition by feedback_id order by ingested_at, segment, segment_line) = 1
),
resolved as (
    select e.* exclude (interaction_id), e.interaction_id as interaction_id
    from events as e
    where not regexp_full_match(e.interaction_id, 'otel-[0-9a-f]{32}')
    union all
    select e.* exclude (interaction_id), i.interaction_id as interaction_id
    from events as e
    join {{ ref('stg_interactions') }} as i on starts_with(i.interaction_id, e.interaction_id || '-')
    where regexp_full_match(e.interaction_id, 'otel-[0-9a-f]{32}')
)
select
    feedback_id,
    interaction_id,
    ts,
    score,
    label,
    comment,
    signal,
    correction,
    outcome,
    preferred_over,
    (
        score < 0.5
        or lower(coalesce(label, '')) in ('thumbs_down', 'negative', 'bad', 'wrong', 'wrong_answer', 'unhelpful')
        or signal in ('retry', 'dismiss')
        or correction is not null
        or outcome in ('ticket_reopened', 'reopened', 'escalated')
    ) as is_negative,
    (
        score >= 0.5
        or lower(coalesce(label, '')) in ('thumbs_up', 'positive', 'good', 'correct', 'helpful')
        or signal in ('copy', 'share', 'engage')
        or outcome in ('resolved', 'ticket_resolved')
    ) and not (correction is not null or outcome in ('ticket_reopened', 'reopened', 'escalated')) as is_positive
from resolved
