"""The rollout as a picture: each arm's running mean reward since the rollout began, the challenger's traffic share
step by step, and the decision marked (matplotlib's Agg backend: no display needed). Pure; no Dagster."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime

from continuum_pipeline.rollout.decide import CHALLENGER, STABLE

COLORS = {STABLE: "tab:blue", CHALLENGER: "tab:orange"}
MARKS = {"rollback": ("X", "tab:red"), "promote": ("*", "tab:green"), "advance": ("^", "tab:gray"),
         "hold": ("o", "tab:gray")}


def _minutes(ts: datetime, start: datetime) -> float:
    return (ts - start).total_seconds() / 60.0


def rollout_png(rows, log_rows: Sequence[dict], title: str) -> bytes:
    """`rows`: arm_rows() of the rollout (ts, route, reward); `log_rows`: its rows of the rollout log, oldest
    first (the first one starts it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if not log_rows:
        raise ValueError("no rollout log rows to plot: the rollout has not started")
    start = log_rows[0]["started_at"]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    data = rows.to_pydict()
    for arm in (STABLE, CHALLENGER):
        xs, ys, total, n = [], [], 0.0, 0
        for route, ts, reward in zip(data["route"], data["ts"], data["reward"], strict=True):
            if route != arm or reward is None:
                continue
            total, n = total + reward, n + 1
            xs.append(_minutes(ts, start))
            ys.append(total / n)
        if xs:
            ax.plot(xs, ys, color=COLORS[arm], label=f"{arm} (v{log_rows[0]['stable_version' if arm == STABLE else 'version']}"
                                                    f", n={n})")
    weights = ax.twinx()
    xs = [_minutes(r["decided_at"], start) for r in log_rows]
    shares = [r["challenger_weight"] for r in log_rows]
    end = max([*xs, *(_minutes(ts, start) for ts in data["ts"])], default=0.0)
    weights.step([*xs, end], [*shares, shares[-1]], where="post", color="black", alpha=0.35, linestyle="--",
                 label="challenger share")
    weights.set_ylim(-0.05, 1.05)
    weights.set_ylabel("challenger traffic share")
    for r, x in zip(log_rows, xs, strict=True):
        if r["action"] in ("advance", "start"):
            ax.axvline(x, color="gray", alpha=0.3, linewidth=0.8)
            ax.annotate(f"{r['challenger_weight']:.0%}", (x, 1.0), xycoords=("data", "axes fraction"),
                        fontsize=7, ha="left", va="top", color="gray")
    last = log_rows[-1]
    if last["action"] in MARKS:
        marker, color = MARKS[last["action"]]
        ax.plot([xs[-1]], [last["reward_challenger"] if last["reward_challenger"] is not None else 0.0],
                marker=marker, markersize=14, color=color, linestyle="none", label=f"decision: {last['action']}")
    ax.set_xlabel("minutes since the rollout began")
    ax.set_ylabel("running mean reward")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = weights.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, loc="lower left", fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_rollout(lake, task, version: str | None = None) -> bytes | None:
    """The PNG of a task's rollout of `version` (default: the latest) from the lake; None before any rollout
    (what `continuum demo` writes next to the learning curve)."""
    from continuum_pipeline.rollout import log
    from continuum_pipeline.rollout.observe import arm_rows

    rows = log.read(lake, task)
    version = version or (rows[-1]["version"] if rows else None)
    history = [r for r in rows if r["version"] == version]
    if not history:
        return None
    data = arm_rows(lake, task, history[0]["started_at"],
                    {STABLE: history[0]["stable_version"], CHALLENGER: version})
    return rollout_png(data, history, f"{task.name}: v{version} vs v{history[0]['stable_version']}")
