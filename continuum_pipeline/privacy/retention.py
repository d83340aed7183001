"""Retention: a task's interactions older than `privacy.retention_days` are forgotten the way a person is —
every derived row, the landing lines, physically, with a receipt (reason `retention`, the cutoff and a count
instead of hashed ids) — on the upkeep schedule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.privacy.forget import Progress, Receipt, run_forget, submit


@dataclass
class RetentionResult:
    task: str
    days: int | None
    cutoff: datetime | None
    interactions: int = 0
    receipt: Receipt | None = None


def retention_ids(lake: Lake, selection_sql: str, cutoff: datetime) -> list[str]:
    """Interaction ids of a task (its selection, a DuckDB condition over `interactions`) captured before `cutoff`."""
    import duckdb

    if not lake.table_exists("interactions") or lake.table("interactions").current_snapshot() is None:
        return []
    con = duckdb.connect()
    try:
        lake.register_duckdb(con, "interactions", "interactions")
        rows = con.execute(f"select distinct interaction_id from interactions where ({selection_sql}) and ts < ? "
                           "and interaction_id is not null", [cutoff]).fetchall()
    finally:
        con.close()
    return sorted(r[0] for r in rows)


def apply_retention(lake: Lake, task, *, home: Path, landing: Path, tracking_uri: str | None = None,
                    now: datetime | None = None, requested_by: str = "retention policy",
                    progress: Progress | None = None) -> RetentionResult:
    """Forget the task's (a TaskConfig) interactions older than its retention; nothing when it has none."""
    days = task.privacy.retention_days
    if not days:
        return RetentionResult(task.name, None, None)
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=days)
    ids = retention_ids(lake, task.selection_sql(), cutoff)
    result = RetentionResult(task.name, days, cutoff, len(ids))
    if ids:
        request = submit(home, interactions=ids, requested_by=requested_by, reason="retention", task=task.name,
                         retention={"days": days, "cutoff": cutoff.isoformat()}, now=now)
        result.receipt = run_forget(lake, request, home=home, landing=landing, tracking_uri=tracking_uri,
                                    progress=progress)
    return result
