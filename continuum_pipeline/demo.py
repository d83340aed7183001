"""Sample support-desk traffic, captured through the SDK, for `continuum demo`.

A stand-in app: an assistant answers support questions (sometimes it times out), users rate some
answers, agents correct some, a few tickets reopen — and one broken producer writes bad lines, so the
quarantine has something to show. The full learning scenario builds on this (see DESIGN.md).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from continuum_pipeline import capture, feedback

INTENTS = {
    "reset_password": (["How do I reset my password?", "I forgot my password for {email_user}, what now?"],
                       "Open Settings → Security → Reset password; a link is emailed to you within 5 minutes."),
    "refund_status": (["Where is my refund for order {order}?", "Has order {order} been refunded yet?"],
                      "Refunds reach your card 5–7 business days after we receive the return."),
    "change_plan": (["How do I switch to the {plan} plan?", "Can I upgrade to {plan} mid-cycle?"],
                    "Go to Billing → Plan, pick {plan}; the price difference is prorated today."),
    "shipping_time": (["When will order {order} arrive?", "How long does shipping take for {order}?"],
                      "Standard shipping takes 3–5 business days; you get a tracking link by email."),
    "cancel_account": (["How do I close my account?", "Please cancel my subscription."],
                       "Go to Billing → Cancel subscription; your data stays available for 30 days."),
}
PLANS = ("Starter", "Team", "Business")


@dataclass
class TrafficSummary:
    interactions: int = 0
    errors: int = 0
    feedback_events: int = 0
    bad_lines: int = 0


def generate_sample_traffic(n: int = 300, seed: int = 7, landing_dir: Path | None = None,
                            model: str = "support-teacher", bad_lines: bool = True) -> TrafficSummary:
    """Capture `n` support conversations (and their feedback) into the landing folder."""
    rng = random.Random(seed)
    if landing_dir is not None:
        capture.configure(landing_dir)
    summary = TrafficSummary()

    @capture(task="support_answer", model=model, model_version="1")
    def answer(messages: list[dict], intent: str, plan: str) -> str:
        capture.annotate(prompt_tokens=12 + len(messages[-1]["content"]) // 4, completion_tokens=24,
                         cost_usd=0.00036, metadata={"intent": intent})
        if rng.random() < 0.03:
            raise TimeoutError("upstream model timed out after 30s")
        text = INTENTS[intent][1]
        if rng.random() < 0.15:  # the assistant is wrong sometimes: that is what feedback is for
            other = rng.choice([k for k in INTENTS if k != intent])
            text = INTENTS[other][1]
        return text.format(plan=plan)

    for i in range(n):
        intent = rng.choice(list(INTENTS))
        slots = {"order": f"#{rng.randint(10000, 99999)}", "plan": rng.choice(PLANS), "email_user": f"user{i}"}
        question = rng.choice(INTENTS[intent][0]).format(**slots)
        consent = "denied" if rng.random() < 0.05 else "granted"
        with capture.context(session_id=f"s{i // 3}", user_id=f"u{i % 40}", consent=consent):
            try:
                reply = answer([{"role": "user", "content": question}], intent, slots["plan"])
            except TimeoutError:
                summary.errors += 1
                summary.interactions += 1
                continue
        summary.interactions += 1
        iid = capture.last_interaction_id()
        correct = reply == INTENTS[intent][1].format(plan=slots["plan"])
        if rng.random() < 0.4:
            score = 1.0 if correct else 0.0
            if rng.random() < 0.1:
                score = 1.0 - score  # users are noisy
            feedback.record(iid, score=score, label="thumbs_up" if score else "thumbs_down")
            summary.feedback_events += 1
        if not correct and rng.random() < 0.5:
            feedback.record(iid, correction=INTENTS[intent][1].format(plan=slots["plan"]), label="agent_edit")
            summary.feedback_events += 1
        if not correct and rng.random() < 0.3:
            feedback.record(iid, outcome="ticket_reopened")
            summary.feedback_events += 1
    capture.flush()

    if bad_lines:
        summary.bad_lines = write_broken_producer_segment(capture.WRITER.config.landing_dir)
    return summary


def write_broken_producer_segment(landing: Path) -> int:
    """A segment as a buggy producer might write it: good lines mixed with each kind of bad one."""
    good = ('{"v":1,"kind":"feedback","feedback_id":"import-1","interaction_id":"import-x","ts":"2026-01-01T00:00:00Z",'
            '"score":1.0,"source":"import"}')
    lines = [
        good.encode(),
        b'{"v":1,"kind":"interaction","interaction_id":"import-2","ts":"2026-01-01T00:00:00Z"}',  # missing fields
        b'{"v":1,"kind":"feedback","feedback_id":"import-3","interaction_id":"x","ts":"2026-01-01T00:00:00Z",'
        b'"score":"great","source":"import"}',  # wrong type
        b'{"v":1,"kind":"feedback", "feedback_id": oops}',  # invalid JSON
        b'{"v":7,"kind":"feedback"}',  # unknown schema version
        b'{"v":1,"kind":"feedback","feedback_id":"import-4","interaction_id":"\xff\xfe","ts":"2026-01-01T00:00:00Z",'
        b'"source":"import","score":0.5}',  # invalid UTF-8
    ]
    landing.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-import-broken-producer.jsonl"
    tmp = landing / f".{name}.tmp"
    tmp.write_bytes(b"\n".join(lines) + b"\n")
    tmp.replace(landing / name)
    return len(lines) - 1
