-- One reward per interaction of the task, from its judges, explicit and implicit feedback, outcomes and edits,
-- weighted as the task's `reward` settings say (a weighted mean over the parts an interaction has).
-- response_reward scores what the model said, judged when it happened (each judge's first label): quality
-- monitoring sees a policy change as a drop. target_reward scores the training target by the judges' latest
-- versions (after a knowledge-base change, stale answers fall out of the dataset); an edit becomes the target.
-- Interactions a privacy rule excludes are left out here (so from every task model) only when the task says
-- `privacy.keep_excluded_for_monitoring: false`; otherwise excluded_interactions is empty.
with interactions as (
    select * from {{ ref('stg_interactions') }} as i
    where {{ task_filter('i') }}
        and i.interaction_id not in (select interaction_id from {{ source('config', 'excluded_interactions') }})
),
judge_scores as (
    select interaction_id, judge, judge_version, sum(score * weight) / sum(weight) as score, max(judged_at) as judged_at
    from {{ source('task', 'reward_labels') }}
    group by all
),
latest_version as (
    select judge, arg_max(judge_version, judged_at) as judge_version
    from judge_scores
    group by judge
),
per_judge as (
    select
        s.interaction_id,
        s.judge,
        arg_min(s.score, s.judged_at) as first_score,
        coalesce(max(s.score) filter (where s.judge_version = v.judge_version), arg_max(s.score, s.judged_at)) as current_score
    from judge_scores as s
    join latest_version as v using (judge)
    group by s.interaction_id, s.judge
),
judged as (
    select
        p.interaction_id,
        sum(p.first_score * w.weight) / sum(w.weight) as first_judge_score,
        sum(p.current_score * w.weight) / sum(w.weight) as judge_score,
        count(*) as judges
    from per_judge as p
    join {{ source('config', 'judge_weights') }} as w using (judge)
    where w.weight > 0
    group by p.interaction_id
),
feedback as (
    select
        e.interaction_id,
        avg(e.score) as feedback_score,
        avg(s.reward) as implicit_score,
        min(o.reward) as outcome_reward,
        arg_max(e.correction, e.ts) filter (where e.correction is not null) as correction
    from {{ ref('stg_feedback_events') }} as e
    left join {{ source('config', 'implicit_signals') }} as s on s.signal = e.signal
    left join {{ source('config', 'outcomes') }} as o on o.outcome = e.outcome
    group by e.interaction_id
),
parts as (
    select
        i.interaction_id, i.day, i.task, i.model, i.model_version, i.consent,
        j.judge_score, j.first_judge_score, coalesce(j.judges, 0) as judges,
        f.feedback_score, f.implicit_score, f.outcome_reward, f.correction,
        -- the weights of the parts this interaction has (a missing part does not count as 0)
        {{ var('reward.weights.explicit') }} * (f.feedback_score is not null)::int
            + {{ var('reward.weights.implicit') }} * (f.implicit_score is not null)::int as feedback_weight,
        {{ var('reward.weights.explicit') }} * coalesce(f.feedback_score, 0)
            + {{ var('reward.weights.implicit') }} * coalesce(f.implicit_score, 0) as feedback_part
    from interactions as i
    left join judged as j using (interaction_id)
    left join feedback as f using (interaction_id)
)
select
    interaction_id, day, task, model, model_version, consent,
    judge_score, first_judge_score, judges, feedback_score, implicit_score, outcome_reward,
    case
        when correction is not null then 0.0  -- an edit says the response was wrong
        when outcome_reward is not null then outcome_reward
        else ({{ var('reward.weights.judges') }} * coalesce(first_judge_score, 0) + feedback_part)
            / nullif({{ var('reward.weights.judges') }} * (first_judge_score is not null)::int + feedback_weight, 0)
    end as response_reward,
    case
        when correction is not null and {{ var('reward.corrections.as_target') }}
            then {{ var('reward.corrections.target_reward') }}
        when correction is not null then 0.0
        when outcome_reward is not null then outcome_reward
        else ({{ var('reward.weights.judges') }} * coalesce(judge_score, 0) + feedback_part)
            / nullif({{ var('reward.weights.judges') }} * (judge_score is not null)::int + feedback_weight, 0)
    end as target_reward,
    case when {{ var('reward.corrections.as_target') }} then correction end as correction
from parts
