-- The task's quality per model per day: volume, mean reward, mean feedback score, negative-feedback rate,
-- latency, error rate and cost — what the task's quality-drop and error-rate sensors watch.
-- negative_feedback_rate is over interactions that got any feedback (silence is not a verdict).
select
    i.day,
    i.model,
    i.model_version,
    count(*) as interactions,
    avg(r.response_reward) as mean_reward,
    avg(f.mean_score) as mean_score,
    count(*) filter (where f.feedback_events > 0) as interactions_with_feedback,
    (count(*) filter (where f.negative_events > 0))::double
        / nullif(count(*) filter (where f.feedback_events > 0), 0) as negative_feedback_rate,
    quantile_cont(i.latency_ms, 0.5) as latency_p50_ms,
    quantile_cont(i.latency_ms, 0.95) as latency_p95_ms,
    avg(i.is_error::int) as error_rate,
    sum(i.total_tokens) as tokens,
    sum(i.cost_usd) as cost_usd
from {{ ref('stg_interactions') }} as i
join {{ ref('interaction_feedback') }} as f using (interaction_id)
join {{ ref('interaction_rewards') }} as r using (interaction_id)
group by all
order by i.day, i.model, i.model_version
