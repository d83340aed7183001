-- One row per captured model call, with the day and the outcome flags the marts group by. A call delivered
-- twice (an OTLP exporter or SDK retrying after a lost acknowledgement) counts once: its first landing.
select
    interaction_id,
    session_id,
    user_id,
    ts,
    cast(ts as date) as day,
    task,
    model,
    coalesce(model_version, '') as model_version,
    route,
    consent,
    prompt,
    messages,
    response,
    metadata,
    latency_ms,
    ttft_ms,
    prompt_tokens,
    completion_tokens,
    coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0) as total_tokens,
    cost_usd,
    status,
    status = 'error' as is_error,
    error_type,
    content_hash,
    source
from {{ source('lake', 'interactions') }}
qualify row_number() over (partition by interaction_id order by ingested_at, segment, segment_line) = 1
