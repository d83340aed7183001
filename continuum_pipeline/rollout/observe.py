"""What each arm did since the rollout began, read from the lake: the per-arm running sums `decide` needs.

The gateway records every interaction with `route` = the arm's name (`stable` / `challenger`, shadow copies
included) and, when the arm names it, `model_version`. The reward per interaction is the task's SQL model
`<task>__interaction_rewards` (`response_reward`: the judges' first score and feedback for what the model said);
an interaction not judged yet counts for error rate, latency and cost but not for reward. Only interactions since
the rollout began count, so the stable arm is compared with concurrent traffic (decide.py says why).

Pure: DuckDB over the lake's Iceberg tables, no Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from continuum_pipeline.rollout.decide import CHALLENGER, STABLE, ArmObservation
from continuum_pipeline.rollout.stats import ArmSums
from continuum_pipeline.task.config import ROLLOUT_METRICS, TaskConfig

ARMS = (STABLE, CHALLENGER)
# metric → the column of arm_rows() holding its per-interaction value (null: not measured for that interaction)
COLUMNS = {"reward": "reward", "error_rate": "is_error", "latency_ms": "latency_ms", "cost_usd": "cost_usd"}


def arm_rows(lake, task: TaskConfig, since: datetime, versions: Mapping[str, str] | None = None):
    """The task's interactions routed to `stable` or `challenger` since `since` (pyarrow, ordered by ts): ts,
    route, model_version, is_error (0/1), latency_ms, cost_usd, reward, shadow (a copy the user never saw).
    `versions` (arm → model version) drops rows an arm served under another version (an arm the gateway
    records no version for keeps all its rows)."""
    import duckdb
    import pyarrow as pa

    empty = pa.table({"interaction_id": pa.array([], pa.string()), "ts": pa.array([], pa.timestamp("us", "UTC")),
                      "route": pa.array([], pa.string()), "model_version": pa.array([], pa.string()),
                      "is_error": pa.array([], pa.int32()), "latency_ms": pa.array([], pa.float64()),
                      "cost_usd": pa.array([], pa.float64()), "reward": pa.array([], pa.float64()),
                      "shadow": pa.array([], pa.bool_())})
    if not lake.table_exists("interactions"):
        return empty
    con = duckdb.connect()
    try:
        lake.register_duckdb(con, "interactions", "interactions")
        rewards = task.table("interaction_rewards")
        if lake.table_exists(rewards):
            lake.register_duckdb(con, rewards, "rewards")
        else:  # nothing judged yet: every reward is null
            con.execute("create view rewards as select null::varchar as interaction_id, "
                        "null::double as response_reward where false")
        version_ok = " and ".join(
            "(i.route <> ? or coalesce(i.model_version, '') in ('', ?))" for _ in (versions or {}))
        params: list = [since]
        for arm, version in (versions or {}).items():
            params += [arm, str(version)]
        table = con.sql(f"""
            with i as (
                select * from interactions as i
                where {task.selection_sql('i')} and i.route in ('{STABLE}', '{CHALLENGER}') and i.ts >= ?
                    {'and ' + version_ok if version_ok else ''}
                qualify row_number() over (partition by interaction_id order by ingested_at, segment,
                                           segment_line) = 1
            )
            select i.interaction_id, i.ts, i.route, coalesce(i.model_version, '') as model_version,
                (i.status = 'error')::int as is_error, i.latency_ms, i.cost_usd, r.response_reward as reward,
                coalesce(try_cast(json_extract_string(i.metadata, '$.shadow') as boolean), false) as shadow
            from i left join rewards as r using (interaction_id)
            order by i.ts, i.interaction_id
        """, params=params).to_arrow_table()
        return table if table.num_rows else empty
    finally:
        con.close()


@dataclass(frozen=True)
class Observed:
    """Both arms at one look: what decide() takes, and the counts a person reads."""

    stable: ArmObservation
    challenger: ArmObservation
    interactions: Mapping[str, int]  # arm → interactions since the rollout began (judged or not)


def _p95(values: list[float]) -> float | None:
    import numpy as np

    return float(np.percentile(values, 95)) if values else None


def observe(rows, metrics: list[str], step_started_at: datetime) -> Observed:
    """Per-arm running sums of each metric (plus error_rate, which the hard guard reads) over `rows`
    (arm_rows()); the challenger's `at_step` counts its interactions since `step_started_at`."""
    unknown = sorted(set(metrics) - set(ROLLOUT_METRICS))
    if unknown:
        raise ValueError(f"metrics {unknown}: the rollout measures only {sorted(ROLLOUT_METRICS)} per arm")
    data = rows.to_pydict()
    wanted = list(dict.fromkeys([*metrics, "error_rate"]))
    out: dict[str, ArmObservation] = {}
    counts: dict[str, int] = {}
    for arm in ARMS:
        mine = [k for k, route in enumerate(data["route"]) if route == arm]
        counts[arm] = len(mine)
        sums = {m: ArmSums.of(float(data[COLUMNS[m]][k]) for k in mine if data[COLUMNS[m]][k] is not None)
                for m in wanted}
        at_step = sum(1 for k in mine if data["ts"][k] >= step_started_at)
        latency = [float(data["latency_ms"][k]) for k in mine if data["latency_ms"][k] is not None]
        out[arm] = ArmObservation(sums, at_step=at_step, latency_p95_ms=_p95(latency))
    return Observed(out[STABLE], out[CHALLENGER], counts)


def count_since(rows, arm: str, since: datetime) -> int:
    """Interactions of `arm` in `rows` at or after `since` (what decides that a new look is due)."""
    data = rows.to_pydict()
    return sum(1 for route, ts in zip(data["route"], data["ts"], strict=True) if route == arm and ts >= since)
