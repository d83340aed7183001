-- Feedback events with one verdict per event: negative if the user or an agent said the answer was bad.
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
from {{ source('lake', 'feedback_events') }}
