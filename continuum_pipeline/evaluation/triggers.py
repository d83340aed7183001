"""When to train again: the decisions behind the sensors, as plain functions over plain numbers.

Once per cause: a decision's key names the model that was serving (`v3`, or `base` before any champion) and the
cause (a day, a dataset size, a deletion), so the same cause never asks for a training twice, and a cause the
current champion was never exposed to (days another version served, data it already trained on) never fires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

BASE = "base"  # who serves before the first champion: the base model or the app's own (teacher) model


@dataclass(frozen=True)
class Decision:
    fire: bool
    reason: str
    key: str = ""  # names the cause and the serving version (becomes part of the run_key and the cursor)


@dataclass(frozen=True)
class DailyQuality:
    day: date
    interactions: int
    mean_reward: float | None
    negative_feedback_rate: float | None
    interactions_with_feedback: int = 0
    model_version: str = ""  # the registered version that served ("" for base or app traffic)


def served_by(champion: str | None) -> str:
    """The key's name of who serves: `v<version>` of the champion, or `base` before any."""
    return f"v{champion}" if champion else BASE


def champion_days(rows: Sequence[DailyQuality], champion: str | None) -> list[DailyQuality]:
    """The rows the champion served. By version, not by promotion time: traffic (simulated or replayed) carries
    its own timestamps. Before any champion every row counts: whatever serves is what a first training replaces."""
    if not champion:
        return list(rows)
    return [r for r in rows if r.model_version in (champion, f"v{champion}")]


def cooling_down(last_training: datetime | None, now: datetime, cooldown: timedelta) -> Decision:
    if last_training is not None and now - last_training < cooldown:
        left = cooldown - (now - last_training)
        return Decision(True, f"cooling down: last training {last_training:%Y-%m-%d %H:%M}, {left} left")
    return Decision(False, "no training within the cooldown")


def sample_count(eligible_now: int, already_trained: int, minimum: int, champion: str | None = None) -> Decision:
    """`already_trained`: how many of the eligible rows the champion trained on (before any champion: the size of
    the last training's dataset). Only the rest is new."""
    new = eligible_now - already_trained
    since = f"champion {served_by(champion)}'s training" if champion else "the last training"
    text = f"{new} new dataset-eligible interactions since {since}"
    if new >= minimum:
        return Decision(True, f"{text} (≥ {minimum})", key=f"samples:{served_by(champion)}:{eligible_now}")
    return Decision(False, f"{text} (< {minimum})")


def new_data(eligible_now: int, already_trained: int, champion: str | None = None) -> Decision:
    """The periodic retraining's condition: any eligible data the champion has not trained on. Nothing retrains
    on unchanged data."""
    new = eligible_now - already_trained
    if new > 0:
        return Decision(True, f"{new} new dataset-eligible interactions since champion {served_by(champion)}'s "
                              "training", key=f"periodic:{served_by(champion)}:{eligible_now}")
    return Decision(False, f"no new dataset-eligible data since champion {served_by(champion)}'s training: nothing "
                           "retrains on unchanged data")


def deletions(receipt_ids: Sequence[str]) -> Decision:
    """Retrain without deleted data: once per deletion receipt that touched the champion (the newest names it)."""
    if not receipt_ids:
        return Decision(False, "no deletion touched the champion")
    return Decision(True, f"deletion {', '.join(receipt_ids)} touched the champion's training data",
                    key=f"deletion:{receipt_ids[-1]}")


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


def _not_served(rows: Sequence[DailyQuality], champion: str | None) -> Decision | None:
    if champion and not rows:
        return Decision(False, f"champion v{champion} has served no traffic yet")
    return None


def quality_drop(rows: Sequence[DailyQuality], window_days: int, max_drop: float,
                 champion: str | None = None) -> Decision:
    """Fire when the champion's latest day's mean reward is more than `max_drop` (a fraction) below its trailing
    mean (only the days the champion served)."""
    rows = champion_days(rows, champion)
    if quiet := _not_served(rows, champion):
        return quiet
    days = [d for d in _by_day(rows) if d.mean_reward is not None]
    if len(days) < 2:
        return Decision(False, f"not enough days with rewards served by {served_by(champion)} to compare")
    latest, trailing = days[-1], days[-1 - window_days:-1]
    baseline = sum(d.mean_reward * d.interactions for d in trailing) / sum(d.interactions for d in trailing)
    drop = (baseline - latest.mean_reward) / baseline if baseline else 0.0
    text = (f"{served_by(champion)}: mean reward {latest.mean_reward:.3f} on {latest.day} vs {baseline:.3f} over the "
            f"previous {len(trailing)} day(s): {drop:+.1%} drop (threshold {max_drop:.0%})")
    return Decision(drop > max_drop, text, key=f"quality-drop:{served_by(champion)}:{latest.day}")


def error_rate(rows: Sequence[DailyQuality], max_rate: float, min_feedback: int = 20,
               champion: str | None = None) -> Decision:
    """Fire when the champion's latest day's negative-feedback rate is above `max_rate` (with enough feedback)."""
    rows = champion_days(rows, champion)
    if quiet := _not_served(rows, champion):
        return quiet
    days = [d for d in _by_day(rows) if d.negative_feedback_rate is not None]
    if not days:
        return Decision(False, f"no feedback yet on {served_by(champion)}'s answers")
    latest = days[-1]
    if latest.interactions_with_feedback < min_feedback:
        return Decision(False, f"only {latest.interactions_with_feedback} interactions with feedback on {latest.day}")
    text = (f"{served_by(champion)}: negative-feedback rate {latest.negative_feedback_rate:.1%} on {latest.day} "
            f"(threshold {max_rate:.0%})")
    return Decision(latest.negative_feedback_rate > max_rate, text, key=f"error-rate:{served_by(champion)}:{latest.day}")
