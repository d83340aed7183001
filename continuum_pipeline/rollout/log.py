"""The rollout's history: one row per decision in the Iceberg table `<task>__rollout_log`.

The log is the rollout's state: where it stands (step, weights, paused, ended), the mSPRT state the next look
continues from, and what the CLI's `continuum rollout status` and the plot show. A row is appended by every run of
`<task>_rollout_job` (the canary sensor's looks and a person's interventions alike). Pure: pyiceberg, no Dagster.

Actions: start | hold | advance | rollback | promote (decide's, or a person's) | pause | resume.
A rollout is over after rollback or promote; a rolled-back challenger is never rolled out again automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from continuum_pipeline.lake.schemas import TS, TableLayout
from continuum_pipeline.task.config import TaskConfig

ENDED = ("rollback", "promote")
# column → what it holds (the asset's column schema shows these)
COLUMNS = {
    "version": ("string", "the challenger's model version"),
    "stable_version": ("string", "the champion's model version the challenger is compared with"),
    "look": ("int64", "0 for the start; 1, 2, … per decision after it"),
    "action": ("string", "start | hold | advance | rollback | promote | pause | resume"),
    "reason": ("string", "why, in one sentence (decide's reason, or a person's)"),
    "step_index": ("int32", "the step after this decision (index into the policy's plan)"),
    "challenger_weight": ("float64", "the challenger's traffic share from this decision on"),
    "shadow_sample_rate": ("float64", "share of requests copied to the challenger (0: no shadow)"),
    "state_json": ("string", "the always-valid tests' state the next look continues from"),
    "started_at": ("timestamp", "when the rollout began: the interactions it compares start here (UTC)"),
    "step_started_at": ("timestamp", "when the current step began (UTC)"),
    "decided_at": ("timestamp", "when this row was written (UTC)"),
    "n_stable": ("int64", "stable-arm interactions since the rollout began, at this decision"),
    "n_challenger": ("int64", "challenger interactions (shadow copies included) since the rollout began"),
    "reward_stable": ("float64", "the stable arm's mean reward over its judged interactions"),
    "reward_challenger": ("float64", "the challenger's mean reward over its judged interactions"),
    "by": ("string", "sensor, or person:<user> for an intervention"),
    "run_id": ("string", "the Dagster run that decided"),
}
_TYPES = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(), "float64": pa.float64(), "timestamp": TS}
ROLLOUT_LOG = pa.schema([pa.field(name, _TYPES[kind]) for name, (kind, _) in COLUMNS.items()])
COLUMN_DOCS = {name: doc for name, (_, doc) in COLUMNS.items()}


def layout(task: TaskConfig) -> TableLayout:
    return TableLayout(task.table("rollout_log"), ROLLOUT_LOG, (),
                       f"{task.name}: one row per rollout decision (start, looks, interventions).")


def read(lake, task: TaskConfig) -> list[dict]:
    """Every row, oldest first ([] before the first rollout)."""
    if not lake.table_exists(task.table("rollout_log")):
        return []
    rows = lake.read_arrow(task.table("rollout_log")).to_pylist()
    return sorted(rows, key=lambda r: (r["decided_at"], r["look"]))


def append(lake, task: TaskConfig, row: dict) -> None:
    missing = [f.name for f in ROLLOUT_LOG if f.name not in row]
    if missing:
        raise ValueError(f"rollout_log row lacks {missing}")
    lake.ensure_table(layout(task))
    lake.append_rows(task.table("rollout_log"), pa.Table.from_pylist([row], schema=ROLLOUT_LOG),
                     {"continuum.rollout_version": row["version"], "continuum.rollout_action": row["action"]})


@dataclass(frozen=True)
class Rollout:
    """Where one challenger's rollout stands, from its rows in the log."""

    version: str
    stable_version: str
    phase: str  # active | paused | rolled_back | promoted
    step_index: int
    challenger_weight: float
    shadow_sample_rate: float
    state_json: str
    started_at: datetime
    step_started_at: datetime
    last_decided_at: datetime
    looks: int  # decisions after the start
    reason: str  # of the last row

    @property
    def active(self) -> bool:
        return self.phase == "active"


def current(rows: list[dict], version: str) -> Rollout | None:
    """The rollout of `version` (None: never started). Decisions carry the state; pause/resume only the phase."""
    mine = [r for r in rows if r["version"] == version]
    if not mine:
        return None
    last_decision = [r for r in mine if r["action"] not in ("pause", "resume")][-1]
    phase = "active"
    for r in mine:
        if r["action"] == "rollback":
            phase = "rolled_back"
        elif r["action"] == "promote":
            phase = "promoted"
        elif r["action"] == "pause" and phase == "active":
            phase = "paused"
        elif r["action"] == "resume" and phase == "paused":
            phase = "active"
    return Rollout(version, last_decision["stable_version"], phase, last_decision["step_index"],
                   last_decision["challenger_weight"], last_decision["shadow_sample_rate"],
                   last_decision["state_json"], last_decision["started_at"], last_decision["step_started_at"],
                   mine[-1]["decided_at"], max(r["look"] for r in mine), mine[-1]["reason"])


def look_size(min_interactions_per_step: int) -> int:
    """New challenger interactions that make a look due: a quarter of a step's minimum (at least 1), so a step
    gets about four looks; the always-valid test allows any number."""
    return max(1, -(-min_interactions_per_step // 4))


def look_due(rollout: Rollout, new_challenger: int, now: datetime, min_interactions_per_step: int,
             min_minutes_per_step: float) -> str | None:
    """Why a look is due now (None: not yet): the challenger gained look_size() interactions since the last
    row, or a step's minimum minutes passed since it (a held step may have waited only for time)."""
    size = look_size(min_interactions_per_step)
    if new_challenger >= size:
        return f"{new_challenger} new challenger interactions since the last look (a look every {size})"
    minutes = (now - rollout.last_decided_at).total_seconds() / 60
    if min_minutes_per_step > 0 and minutes >= min_minutes_per_step:
        return f"{minutes:.0f} minutes since the last look (the step's minimum is {min_minutes_per_step:g})"
    return None
