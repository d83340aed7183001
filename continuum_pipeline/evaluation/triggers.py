"""When to train again: the decisions behind the sensors, as plain functions over plain numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta


@dataclass(frozen=True)
class Decision:
    fire: bool
    reason: str
    key: str = ""  # identifies what fired (becomes part of the run_key)


@dataclass(frozen=True)
class DailyQuality:
    day: date
    interactions: int
    mean_reward: float | None
    negative_feedback_rate: float | None
    interactions_with_feedback: int = 0


def cooling_down(last_training: datetime | None, now: datetime, cooldown: timedelta) -> Decision:
    if last_training is not None and now - last_training < cooldown:
        left = cooldown - (now - last_training)
        return Decision(True, f"cooling down: last training {last_training:%Y-%m-%d %H:%M}, {left} left")
    return Decision(False, "no training within the cooldown")


def sample_count(eligible_now: int, eligible_at_last_training: int, minimum: int) -> Decision:
    new = eligible_now - eligible_at_last_training
    if new >= minimum:
        return Decision(True, f"{new} new dataset-eligible interactions since the last training (≥ {minimum})",
                        key=f"samples-{eligible_now}")
    return Decision(False, f"{new} new dataset-eligible interactions since the last training (< {minimum})")


def _by_day(rows: Sequence[DailyQuality]) -> list[DailyQuality]:
    """Collapse per-model rows into one row per day (interaction-weighted)."""
    days: dict[date, list[DailyQuality]] = {}
    for r in rows:
        days.setdefault(r.day, []).append(r)
    merged = []
    for day, rs in sorted(days.items()):
        n = sum(r.interactions for r in rs)
        rewarded = [(r.mean_reward, r.interactions) for r in rs if r.mean_reward is not None]
        rated = [(r.negative_feedback_rate, r.interactions_with_feedback) for r in rs
                 if r.negative_feedback_rate is not None and r.interactions_with_feedback]
        mean = sum(v * w for v, w in rewarded) / sum(w for _, w in rewarded) if rewarded else None
        neg = sum(v * w for v, w in rated) / sum(w for _, w in rated) if rated else None
        merged.append(DailyQuality(day, n, mean, neg, sum(w for _, w in rated)))
    return merged


def quality_drop(rows: Sequence[DailyQuality], window_days: int, max_drop: float) -> Decision:
    """Fire when the latest day's mean reward is more than `max_drop` (a fraction) below the trailing mean."""
    days = [d for d in _by_day(rows) if d.mean_reward is not None]
    if len(days) < 2:
        return Decision(False, "not enough days with rewards to compare")
    latest, trailing = days[-1], days[-1 - window_days:-1]
    baseline = sum(d.mean_reward * d.interactions for d in trailing) / sum(d.interactions for d in trailing)
    drop = (baseline - latest.mean_reward) / baseline if baseline else 0.0
    text = (f"mean reward {latest.mean_reward:.3f} on {latest.day} vs {baseline:.3f} over the previous "
            f"{len(trailing)} day(s): {drop:+.1%} drop (threshold {max_drop:.0%})")
    return Decision(drop > max_drop, text, key=f"quality-drop-{latest.day}")


def error_rate(rows: Sequence[DailyQuality], max_rate: float, min_feedback: int = 20) -> Decision:
    """Fire when the latest day's negative-feedback rate is above `max_rate` (with enough feedback to tell)."""
    days = [d for d in _by_day(rows) if d.negative_feedback_rate is not None]
    if not days:
        return Decision(False, "no feedback yet")
    latest = days[-1]
    if latest.interactions_with_feedback < min_feedback:
        return Decision(False, f"only {latest.interactions_with_feedback} interactions with feedback on {latest.day}")
    text = f"negative-feedback rate {latest.negative_feedback_rate:.1%} on {latest.day} (threshold {max_rate:.0%})"
    return Decision(latest.negative_feedback_rate > max_rate, text, key=f"error-rate-{latest.day}")
