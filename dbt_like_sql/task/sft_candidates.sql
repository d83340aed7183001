-- Every interaction of the task as a possible training example: the conversation, the target answer (an edit
-- when there is one) and its reward. Curation decides what passes; nothing is filtered here so that it can
-- count what each filter removes.
select
    i.interaction_id,
    i.ts,
    i.task,
    i.model,
    i.model_version,
    i.consent,
    i.status,
    i.messages,
    coalesce(r.correction, i.response) as target_response,
    case when r.correction is not null then 'correction' else 'response' end as target_source,
    r.target_reward as reward,
    r.response_reward,
    r.judge_score,
    r.feedback_score,
    sha256(coalesce(to_json(i.messages)::varchar, i.prompt, '') || '\x1f' || coalesce(r.correction, i.response, '')) as content_hash,
    i.metadata,
    i.route
from {{ ref('stg_interactions') }} as i
join {{ ref('interaction_rewards') }} as r using (interaction_id)
