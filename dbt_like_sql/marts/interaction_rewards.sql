-- One reward per interaction from judges, explicit feedback and agents' edits.
-- response_reward scores what the model said, judged when it happened (each judge's first label): quality
-- monitoring sees a policy change as a drop. target_reward scores the training target by the judges' latest
-- versions (after a knowledge-base change, stale answers fall out of the dataset); an agent's edit scores 1.
with judge_scores as (
    select interaction_id, judge, judge_version, sum(score * weight) / sum(weight) as score, max(judged_at) as judged_at
    from {{ source('lake', 'reward_labels') }}
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
    select interaction_id, avg(first_score) as first_judge_score, avg(current_score) as judge_score, count(*) as judges
    from per_judge
    group by interaction_id
)
select
    f.interaction_id,
    f.day,
    f.task,
    f.model,
    f.model_version,
    f.consent,
    j.judge_score,
    j.first_judge_score,
    coalesce(j.judges, 0) as judges,
    f.mean_score as feedback_score,
    f.has_correction,
    f.reopened,
    case
        when f.has_correction or f.reopened then 0.0
        when j.first_judge_score is not null and f.mean_score is not null
            then 0.7 * j.first_judge_score + 0.3 * f.mean_score
        else coalesce(j.first_judge_score, f.mean_score)
    end as response_reward,
    case
        when f.has_correction then 1.0
        when f.reopened then 0.0
        when j.judge_score is not null and f.mean_score is not null then 0.7 * j.judge_score + 0.3 * f.mean_score
        else coalesce(j.judge_score, f.mean_score)
    end as target_reward,
    f.latest_correction as correction
from {{ ref('interaction_feedback') }} as f
left join judged as j using (interaction_id)
