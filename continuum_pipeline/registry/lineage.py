"""Lineage: from a model version back to the interactions it learned from, and from an interaction forward.

A version's tags name its task and the dataset's Iceberg snapshot; time travel to that snapshot of the
task's `<task>__sft_dataset` lists the interaction ids, and the interactions table names the landing segment
each came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.registry.models import TAG, ModelVersionRef, get_version, versions


@dataclass
class VersionLineage:
    version: ModelVersionRef
    dataset_snapshot_id: int | None
    interaction_ids: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    parent: str | None = None  # the version it continued from ("base" for the first)


def dataset_table(ref: ModelVersionRef) -> str:
    task = ref.tags.get(f"{TAG}task")
    return f"{task}__sft_dataset" if task else "sft_dataset"


def dataset_ids(lake: Lake, snapshot_id: int, table: str = "sft_dataset") -> list[str]:
    scan = lake.table(table).scan(snapshot_id=snapshot_id, selected_fields=("interaction_id",))
    return sorted(set(scan.to_arrow()["interaction_id"].to_pylist()))


def version_lineage(lake: Lake, tracking_uri: str, model_name: str, version: str) -> VersionLineage:
    ref = get_version(tracking_uri, model_name, version)
    snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id")
    lineage = VersionLineage(ref, int(snapshot) if snapshot else None, parent=ref.tags.get(f"{TAG}parent_version"))
    if lineage.dataset_snapshot_id is not None:
        lineage.interaction_ids = dataset_ids(lake, lineage.dataset_snapshot_id, dataset_table(ref))
        rows = lake.table("interactions").scan(selected_fields=("interaction_id", "segment")).to_arrow()
        rows = rows.filter(pc.is_in(rows["interaction_id"], value_set=pa.array(lineage.interaction_ids, pa.string())))
        lineage.segments = sorted(set(rows["segment"].to_pylist()))
    return lineage


def versions_with_interaction(lake: Lake, tracking_uri: str, model_names: str | Sequence[str],
                              interaction_id: str) -> list[ModelVersionRef]:
    """Every version (of any of the named models: one per task) whose dataset held the interaction."""
    found = []
    for name in [model_names] if isinstance(model_names, str) else model_names:
        for ref in versions(tracking_uri, name):
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


def versions_trained_on(lake: Lake, tracking_uri: str, interaction_ids: Sequence[str],
                        model_names: Sequence[str] | None = None) -> list[AffectedVersion]:
    """Every registered version (of `model_names`, default every model whose versions carry Continuum's lineage
    tags) whose dataset snapshot or golden-set versions held any of `interaction_ids`. Run it *before* a deletion:
    the deletion takes the rows out of those snapshots."""
    from continuum_pipeline.registry.models import client

    ids = pa.array(sorted(set(interaction_ids)), pa.string())
    if not len(ids):
        return []
    names = list(model_names) if model_names is not None else sorted(
        m.name for m in client(tracking_uri).search_registered_models())
    found: list[AffectedVersion] = []
    for name in names:
        for ref in versions(tracking_uri, name):
            affected = AffectedVersion(ref)
            snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id")
            if snapshot and snapshot.isdigit():
                _count(lake, dataset_table(ref), int(snapshot), ids, "dataset", affected)
            task = ref.tags.get(f"{TAG}task")
            try:
                golden = json.loads(ref.tags.get(f"{TAG}golden_set_versions") or "{}")
            except ValueError:
                golden = {}
            for set_name, golden_version in (golden.items() if task and isinstance(golden, dict) else ()):
                table = f"{task}__golden__{set_name}"
                snap = _golden_snapshot(lake, table, str(golden_version))
                if snap is None:
                    if lake.table_exists(table):
                        affected.unknown.append(f"golden:{set_name}")
                    continue
                _count(lake, table, snap, ids, f"golden:{set_name}", affected)
            if affected.via or affected.unknown:
                found.append(affected)
    return found


def _count(lake: Lake, table: str, snapshot_id: int, ids: pa.Array, via: str, affected: AffectedVersion) -> None:
    try:
        held = lake.table(table).scan(snapshot_id=snapshot_id, selected_fields=("interaction_id",)).to_arrow()
    except Exception:  # the table or snapshot is gone (expired): say so rather than guess
        affected.unknown.append(via)
        return
    hits = pc.sum(pc.is_in(held["interaction_id"], value_set=ids)).as_py() or 0
    if hits:
        affected.via[via] = int(hits)


def _golden_snapshot(lake: Lake, table: str, golden_version: str) -> int | None:
    """The newest snapshot of a golden-set table that holds `golden_version` (the asset tags each version's commit)."""
    if not golden_version or not lake.table_exists(table):
        return None
    matching = [s for s in lake.table(table).snapshots()
                if s.summary and s.summary.additional_properties.get(GOLDEN_VERSION_PROPERTY) == golden_version]
    return max(matching, key=lambda s: s.timestamp_ms).snapshot_id if matching else None
