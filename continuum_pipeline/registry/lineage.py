"""Lineage: from a model version back to the interactions it learned from, and from an interaction forward.

A version's tags name the dataset's Iceberg snapshot; time travel to that snapshot lists the interaction
ids, and the interactions table names the landing segment each came from.
"""

from __future__ import annotations

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


def dataset_ids(lake: Lake, snapshot_id: int) -> list[str]:
    scan = lake.table("sft_dataset").scan(snapshot_id=snapshot_id, selected_fields=("interaction_id",))
    return sorted(set(scan.to_arrow()["interaction_id"].to_pylist()))


def version_lineage(lake: Lake, tracking_uri: str, model_name: str, version: str) -> VersionLineage:
    ref = get_version(tracking_uri, model_name, version)
    snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id")
    lineage = VersionLineage(ref, int(snapshot) if snapshot else None, parent=ref.tags.get(f"{TAG}parent_version"))
    if lineage.dataset_snapshot_id is not None:
        lineage.interaction_ids = dataset_ids(lake, lineage.dataset_snapshot_id)
        rows = lake.table("interactions").scan(selected_fields=("interaction_id", "segment")).to_arrow()
        rows = rows.filter(pc.is_in(rows["interaction_id"], value_set=pa.array(lineage.interaction_ids, pa.string())))
        lineage.segments = sorted(set(rows["segment"].to_pylist()))
    return lineage


def versions_with_interaction(lake: Lake, tracking_uri: str, model_name: str, interaction_id: str) -> list[ModelVersionRef]:
    found = []
    for ref in versions(tracking_uri, model_name):
        snapshot = ref.tags.get(f"{TAG}dataset_snapshot_id")
        if snapshot and interaction_id in set(dataset_ids(lake, int(snapshot))):
            found.append(ref)
    return found

