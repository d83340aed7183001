"""Lineage: from a model version back to the interactions it learned from, and from an interaction forward.

A version's tags name its task and the dataset's Iceberg snapshot; time travel to that snapshot of the
task's `<task>__sft_dataset` lists the interaction ids, and the interactions table names the landing segment
each came from.
"""

from __future__ import annotations

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

