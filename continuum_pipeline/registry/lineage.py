"""Lineage: from a model version back to the interactions it learned from, and from an interaction forward.

Registration writes one row per version × interaction into the lake table `model_lineage` (role `train`,
`validation` or `golden:<set>`), read from the dataset and golden-set snapshots the version's tags name while
they still exist. Lineage reads that table, so it survives snapshot expiry (lake upkeep, `continuum forget`);
forget's per-table delete takes a subject's rows out of it like any table with an `interaction_id`. Versions
registered before the table existed (no `continuum.lineage_rows` tag) fall back to time travel to those
snapshots. The interactions table names the landing segment each interaction came from.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.schemas import TableLayout
from continuum_pipeline.registry.models import TAG, ModelVersionRef, get_version, tag_version, versions

log = logging.getLogger(__name__)

LINEAGE_TABLE = "model_lineage"
LINEAGE_ROWS_TAG = f"{TAG}lineage_rows"  # set once the version's rows are in LINEAGE_TABLE: read them, not snapshots
LINEAGE_MISSING_TAG = f"{TAG}lineage_missing"  # JSON list of sources whose snapshot was gone when recorded
DATASET_ROLES = ("train", "validation")
LINEAGE_LAYOUT = TableLayout(LINEAGE_TABLE, pa.schema([
    pa.field("model", pa.string()),
    pa.field("version", pa.string()),
    pa.field("task", pa.string()),
    pa.field("role", pa.string()),  # train | validation | golden:<set>
    pa.field("interaction_id", pa.string()),
    pa.field("dataset_table", pa.string()),
    pa.field("dataset_snapshot_id", pa.int64()),
    pa.field("registered_at", pa.timestamp("us", tz="UTC")),
]), (), "One row per registered model version × interaction it trained, validated or was evaluated on.")
COMMIT_ATTEMPTS = 8


@dataclass
class VersionLineage:
    version: ModelVersionRef
    dataset_snapshot_id: int | None
    interaction_ids: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    parent: str | None = None  # the version it continued from ("base" for the first)
    source: str = "snapshot"  # where the ids came from: the `model_lineage` table or snapshot time travel


def dataset_table(ref: ModelVersionRef) -> str:
    task = ref.tags.get(f"{TAG}task")
    return f"{task}__sft_dataset" if task else "sft_dataset"


def dataset_ids(lake: Lake, snapshot_id: int, table: str = "sft_dataset") -> list[str]:
    scan = lake.table(table).scan(snapshot_id=snapshot_id, selected_fields=("interaction_id",))
    return sorted(set(scan.to_arrow()["interaction_id"].to_pylist()))


def _golden_sets(ref: ModelVersionRef) -> dict[str, str]:
    try:
        golden = json.loads(ref.tags.get(f"{TAG}golden_set_versions") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in golden.items()} if isinstance(golden, dict) else {}


# --- the table, written at registration ------------------------------------------------------------------------

def lineage_rows(lake: Lake, ref: ModelVersionRef, registered_at: datetime | None = None) -> tuple[pa.Table, list[str]]:
    """The version's rows for LINEAGE_TABLE, from the snapshots its tags name; and the sources whose snapshot is
    gone (`dataset`, `golden:<set>`). Golden sets from files have no interaction ids: no rows, nothing missing."""
    at = registered_at or datetime.now(UTC)
    task = ref.tags.get(f"{TAG}task") or ""
    parts: list[pa.Table] = []
    missing: list[str] = []

    def add(role: pa.Array | str, ids: pa.Array, table: str, snapshot_id: int) -> None:
        n = len(ids)
        parts.append(pa.table({
            "model": pa.array([ref.name] * n, pa.string()), "version": pa.array([ref.version] * n, pa.string()),
            "task": pa.array([task] * n, pa.string()),
            "role": role if isinstance(role, pa.Array) else pa.array([role] * n, pa.string()),
            "interaction_id": ids, "dataset_table": pa.array([table] * n, pa.string()),
            "dataset_snapshot_id": pa.array([snapshot_id] * n, pa.int64()),
            "registered_at": pa.array([at] * n, pa.timestamp("us", tz="UTC"))}, schema=LINEAGE_LAYOUT.schema))

    snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id") or ""
    if snapshot.isdigit():
        table = dataset_table(ref)
        held = _read(lake, table, int(snapshot), ("interaction_id", "split"))
        if held is None:
            missing.append("dataset")
        else:
            held = held.filter(pc.is_valid(held["interaction_id"]))
            roles = (pc.fill_null(held["split"], "train") if "split" in held.column_names
                     else pa.array(["train"] * held.num_rows, pa.string()))
            add(roles.combine_chunks() if isinstance(roles, pa.ChunkedArray) else roles,
                held["interaction_id"].combine_chunks(), table, int(snapshot))
    for set_name, golden_version in (_golden_sets(ref).items() if task else ()):
        table = f"{task}__golden__{set_name}"
        if not lake.table_exists(table):
            continue  # never materialized in this lake: nothing it could have held
        golden = lake.table(table)
        if "interaction_id" not in golden.schema().column_names:
            continue
        snap = _golden_snapshot(golden, golden_version)
        if snap is None:
            missing.append(f"golden:{set_name}")
            continue
        held = golden.scan(snapshot_id=snap, selected_fields=("interaction_id",)).to_arrow()
        ids = held.filter(pc.is_valid(held["interaction_id"]))["interaction_id"].combine_chunks()
        add(f"golden:{set_name}", ids, table, snap)
    rows = pa.concat_tables(parts) if parts else LINEAGE_LAYOUT.schema.empty_table()
    return rows, missing


def record_version_lineage(lake: Lake, tracking_uri: str, ref: ModelVersionRef,
                           registered_at: datetime | None = None) -> int:
    """Write the version's rows to LINEAGE_TABLE, replacing any it already has (a rerun never doubles them), in
    one commit; then tag the version so lineage reads the table. Returns the number of rows."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import And, EqualTo

    rows, missing = lineage_rows(lake, ref, registered_at)
    lake.ensure_table(LINEAGE_LAYOUT)
    this_version = And(EqualTo("model", ref.name), EqualTo("version", ref.version))
    for attempt in range(COMMIT_ATTEMPTS):
        table = lake.table(LINEAGE_TABLE)
        try:
            with warnings.catch_warnings():  # a first registration has no rows to replace: expected, not news
                warnings.filterwarnings("ignore", "Delete operation did not match any records")
                table.overwrite(rows, overwrite_filter=this_version,
                                snapshot_properties={"continuum.model_version": f"{ref.name}@{ref.version}"})
            break
        except CommitFailedException:  # another registration or a forget committed first: re-read and retry
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.02 * 2 ** min(attempt, 5))
    if missing:
        log.warning("lineage of %s@%s: the snapshots of %s are gone (expired); those links are unknown",
                    ref.name, ref.version, ", ".join(missing))
    # The tag comes last: until it is there (a crash in between), lineage falls back to the snapshots.
    tag_version(tracking_uri, ref.name, ref.version,
                {LINEAGE_ROWS_TAG: str(rows.num_rows), LINEAGE_MISSING_TAG: json.dumps(missing)})
    return rows.num_rows


def record_missing_lineage(lake: Lake, tracking_uri: str, model_names: Sequence[str] | None = None) -> list[str]:
    """Record the lineage of every version registered before LINEAGE_TABLE existed, while its snapshots are still
    there (run before anything expires them: `continuum forget` does). Returns the versions recorded."""
    done = []
    for name in _model_names(tracking_uri, model_names):
        for ref in versions(tracking_uri, name):
            if LINEAGE_ROWS_TAG not in ref.tags and f"{TAG}dataset_snapshot_id" in ref.tags:
                record_version_lineage(lake, tracking_uri, ref)
                done.append(f"{ref.name}@{ref.version}")
    return done


def _recorded(ref: ModelVersionRef) -> bool:
    return LINEAGE_ROWS_TAG in ref.tags


def _missing(ref: ModelVersionRef) -> list[str]:
    try:
        return list(json.loads(ref.tags.get(LINEAGE_MISSING_TAG) or "[]"))
    except ValueError:
        return []


def _table_rows(lake: Lake, *, model: str | None = None, version: str | None = None,
                interaction_ids: pa.Array | None = None) -> pa.Table:
    from pyiceberg.expressions import AlwaysTrue, And, EqualTo

    if not lake.table_exists(LINEAGE_TABLE):
        return LINEAGE_LAYOUT.schema.empty_table()
    where = AlwaysTrue()
    if model is not None:
        where = And(where, EqualTo("model", model))
    if version is not None:
        where = And(where, EqualTo("version", version))
    rows = lake.table(LINEAGE_TABLE).scan(row_filter=where).to_arrow()
    if interaction_ids is not None:
        rows = rows.filter(pc.fill_null(pc.is_in(rows["interaction_id"], value_set=interaction_ids), False))
    return rows


# --- reading ---------------------------------------------------------------------------------------------------

def version_lineage(lake: Lake, tracking_uri: str, model_name: str, version: str) -> VersionLineage:
    ref = get_version(tracking_uri, model_name, version)
    snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id")
    lineage = VersionLineage(ref, int(snapshot) if snapshot else None, parent=ref.tags.get(f"{TAG}parent_version"))
    if _recorded(ref):
        rows = _table_rows(lake, model=ref.name, version=ref.version)
        rows = rows.filter(pc.is_in(rows["role"], value_set=pa.array(DATASET_ROLES)))
        lineage.interaction_ids = sorted(set(rows["interaction_id"].to_pylist()))
        lineage.source = LINEAGE_TABLE
    elif lineage.dataset_snapshot_id is not None:
        lineage.interaction_ids = dataset_ids(lake, lineage.dataset_snapshot_id, dataset_table(ref))
    if lineage.interaction_ids:
        rows = lake.table("interactions").scan(selected_fields=("interaction_id", "segment")).to_arrow()
        rows = rows.filter(pc.is_in(rows["interaction_id"], value_set=pa.array(lineage.interaction_ids, pa.string())))
        lineage.segments = sorted(set(rows["segment"].to_pylist()))
    return lineage


def versions_with_interaction(lake: Lake, tracking_uri: str, model_names: str | Sequence[str],
                              interaction_id: str) -> list[ModelVersionRef]:
    """Every version (of any of the named models: one per task) whose dataset held the interaction."""
    rows = _table_rows(lake, interaction_ids=pa.array([interaction_id], pa.string()))
    rows = rows.filter(pc.is_in(rows["role"], value_set=pa.array(DATASET_ROLES)))
    in_table = set(zip(rows["model"].to_pylist(), rows["version"].to_pylist(), strict=True))
    found = []
    for name in [model_names] if isinstance(model_names, str) else model_names:
        for ref in versions(tracking_uri, name):
            if _recorded(ref):
                if (ref.name, ref.version) in in_table:
                    found.append(ref)
                continue
            snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id")
            if snapshot and interaction_id in set(dataset_ids(lake, int(snapshot), dataset_table(ref))):
                found.append(ref)
    return found


GOLDEN_VERSION_PROPERTY = "continuum.golden-version"  # the golden-set asset's snapshot property (defs/flywheel)


@dataclass
class AffectedVersion:
    """A model version whose training dataset or golden data held some of the given interactions."""

    version: ModelVersionRef
    via: dict[str, int] = field(default_factory=dict)  # "dataset" / "golden:<set>" → how many of them it held
    unknown: list[str] = field(default_factory=list)  # data snapshots already expired: cannot be checked

    @property
    def label(self) -> str:
        return f"{self.version.name}@{self.version.version}"


def _model_names(tracking_uri: str, model_names: Sequence[str] | None) -> list[str]:
    from continuum_pipeline.registry.models import client

    return list(model_names) if model_names is not None else sorted(
        m.name for m in client(tracking_uri).search_registered_models())


def versions_trained_on(lake: Lake, tracking_uri: str, interaction_ids: Sequence[str],
                        model_names: Sequence[str] | None = None) -> list[AffectedVersion]:
    """Every registered version (of `model_names`, default every model whose versions carry Continuum's lineage
    tags) whose dataset or golden sets held any of `interaction_ids`: from `model_lineage`, or for versions
    recorded before it, from their snapshots. Run it *before* a deletion: the deletion takes the rows out."""
    ids = pa.array(sorted(set(interaction_ids)), pa.string())
    if not len(ids):
        return []
    held = _table_rows(lake, interaction_ids=ids)
    counts: dict[tuple[str, str, str], int] = {}
    for model, version, role in zip(held["model"].to_pylist(), held["version"].to_pylist(),
                                    held["role"].to_pylist(), strict=True):
        via = "dataset" if role in DATASET_ROLES else role
        counts[(model, version, via)] = counts.get((model, version, via), 0) + 1
    found: list[AffectedVersion] = []
    for name in _model_names(tracking_uri, model_names):
        for ref in versions(tracking_uri, name):
            affected = AffectedVersion(ref)
            if _recorded(ref):
                affected.via = {via: n for (m, v, via), n in sorted(counts.items()) if (m, v) == (ref.name, ref.version)}
                affected.unknown = _missing(ref)
            else:
                _from_snapshots(lake, ref, ids, affected)
            if affected.via or affected.unknown:
                found.append(affected)
    return found


def _from_snapshots(lake: Lake, ref: ModelVersionRef, ids: pa.Array, affected: AffectedVersion) -> None:
    snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id")
    if snapshot and snapshot.isdigit():
        _count(lake, dataset_table(ref), int(snapshot), ids, "dataset", affected)
    task = ref.tags.get(f"{TAG}task")
    for set_name, golden_version in (_golden_sets(ref).items() if task else ()):
        table = f"{task}__golden__{set_name}"
        if not lake.table_exists(table):
            continue  # never materialized in this lake: nothing it could have held
        snap = _golden_snapshot(lake.table(table), golden_version)
        if snap is None:
            affected.unknown.append(f"golden:{set_name}")
            continue
        _count(lake, table, snap, ids, f"golden:{set_name}", affected)


def _read(lake: Lake, table: str, snapshot_id: int, columns: tuple[str, ...]) -> pa.Table | None:
    """The snapshot's columns (those the table has), or None when the table or snapshot is gone (expired)."""
    if not lake.table_exists(table):
        return None
    t = lake.table(table)
    if t.snapshot_by_id(snapshot_id) is None:
        return None
    have = set(t.schema().column_names)
    return t.scan(snapshot_id=snapshot_id, selected_fields=tuple(c for c in columns if c in have)).to_arrow()


def _count(lake: Lake, table: str, snapshot_id: int, ids: pa.Array, via: str, affected: AffectedVersion) -> None:
    try:
        held = lake.table(table).scan(snapshot_id=snapshot_id, selected_fields=("interaction_id",)).to_arrow()
    except Exception:  # the table or snapshot is gone (expired): say so rather than guess
        affected.unknown.append(via)
        return
    hits = pc.sum(pc.is_in(held["interaction_id"], value_set=ids)).as_py() or 0
    if hits:
        affected.via[via] = int(hits)


def _golden_snapshot(table, golden_version: str) -> int | None:
    """The newest snapshot of a golden-set table that holds `golden_version` (the asset tags each version's commit)."""
    if not golden_version:
        return None
    matching = [s for s in table.snapshots()
                if s.summary and s.summary.additional_properties.get(GOLDEN_VERSION_PROPERTY) == golden_version]
    return max(matching, key=lambda s: s.timestamp_ms).snapshot_id if matching else None
