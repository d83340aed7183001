"""Lineage that survives deletions and snapshot expiry: `model_lineage` rows written at registration, read by
lineage and by forget's affected-versions step after the dataset snapshots the version tags name are gone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.cli import main as cli_main
from continuum_pipeline.lake.maintenance import MaintenancePolicy, maintain
from continuum_pipeline.privacy import forget as fg
from continuum_pipeline.registry import lineage
from continuum_pipeline.registry.models import get_version

from .conftest import task_config
from .test_forget import ALICE, _alice_ids, _forget, _register, _user, build_world

BOB = "bob-1"


def _record_all(settings, lake, world) -> None:
    """What the registered_model asset does right after `models.register`, for the world's two versions."""
    for version in (world["v1"], world["v2"]):
        lineage.record_version_lineage(lake, settings.mlflow_uri, get_version(settings.mlflow_uri, world["model"], version))


def _dataset_ids_of(settings, lake, world, version: str) -> set[str]:
    snapshot = int(get_version(settings.mlflow_uri, world["model"], version).tags["continuum.dataset_snapshot_id"])
    return set(lineage.dataset_ids(lake, snapshot, world["task"].table("sft_dataset")))


def _lineage_rows(lake, model: str, version: str) -> pa.Table:
    rows = lake.read_arrow(lineage.LINEAGE_TABLE)
    return rows.filter(pc.and_(pc.equal(rows["model"], model), pc.equal(rows["version"], version)))


def test_a_second_forget_tags_a_version_whose_snapshot_the_first_expired(settings, lake):
    world = build_world(settings, lake)
    _record_all(settings, lake, world)
    v1_ids = _dataset_ids_of(settings, lake, world, world["v1"])
    bobs = {i for i in v1_ids if _user(int(i[1:])) == BOB}
    assert bobs and _alice_ids(12) & v1_ids  # v1 learned from both

    first = _forget(settings, lake, users=[ALICE])
    dataset = lake.table(world["task"].table("sft_dataset"))
    v1_snapshot = int(get_version(settings.mlflow_uri, world["model"], world["v1"]).tags["continuum.dataset_snapshot_id"])
    assert dataset.snapshot_by_id(v1_snapshot) is None  # the first forget expired v1's dataset snapshot
    assert [a["version"] for a in first.affected] == [world["v1"]]

    second = _forget(settings, lake, users=[BOB])

    by_version = {a["version"]: a for a in second.affected}
    assert by_version[world["v1"]]["via"]["dataset"] == len(bobs) and by_version[world["v1"]]["unknown"] == []
    v1 = get_version(settings.mlflow_uri, world["model"], world["v1"])
    assert v1.tags[fg.TRAINED_ON_DELETED] == "true" and v1.tags[fg.RECEIPT_TAG] == second.receipt_id
    # forget's per-table delete took both subjects' rows out of model_lineage (after counting them)
    assert second.tables[lineage.LINEAGE_TABLE]["rows_removed"] >= len(bobs)
    left = set(lake.read_arrow(lineage.LINEAGE_TABLE)["interaction_id"].to_pylist())
    assert left and not left & (bobs | _alice_ids(16))


def test_lineage_lists_the_remaining_interactions_after_maintain_and_forget(settings, lake, capfd):
    world = build_world(settings, lake)
    _record_all(settings, lake, world)
    v1_ids = _dataset_ids_of(settings, lake, world, world["v1"])
    sft = world["task"].table("sft_dataset")

    # upkeep expires v1's dataset snapshot (keep only the newest): lineage still lists all its interactions
    maintain(lake, [sft], MaintenancePolicy(snapshot_retention=timedelta(0), retain_last=1),
             now=datetime.now(UTC) + timedelta(minutes=1))
    v1_snapshot = int(get_version(settings.mlflow_uri, world["model"], world["v1"]).tags["continuum.dataset_snapshot_id"])
    assert lake.table(sft).snapshot_by_id(v1_snapshot) is None
    trace = lineage.version_lineage(lake, settings.mlflow_uri, world["model"], world["v1"])
    assert trace.source == lineage.LINEAGE_TABLE and set(trace.interaction_ids) == v1_ids
    assert trace.segments == ["20261120T000000Z-a.jsonl"]
    assert {v.version for v in lineage.versions_with_interaction(
        lake, settings.mlflow_uri, world["model"], sorted(_alice_ids(12) & v1_ids)[0])} == {world["v1"]}

    _forget(settings, lake, users=[ALICE])
    remaining = v1_ids - _alice_ids(12)
    trace = lineage.version_lineage(lake, settings.mlflow_uri, world["model"], world["v1"])
    assert set(trace.interaction_ids) == remaining and remaining
    assert cli_main(["lineage", f"{world['model']}@{world['v1']}", "--all"]) == 0
    out = capfd.readouterr().out
    printed = {line.strip() for line in out.split("interaction ids")[1].splitlines() if line.strip().startswith("i0")}
    assert printed == remaining


def test_registering_the_same_version_again_replaces_its_rows_with_roles(settings, lake):
    task = task_config(name="roles_task")
    ids = [f"r{i}" for i in range(6)]
    sft = lake.replace_table(task.table("sft_dataset"), pa.table({
        "interaction_id": ids, "split": ["train", "train", "train", "train", "validation", "validation"]}))
    # a production golden set (interaction ids) and a file golden set (none: nothing to write)
    lake.replace_table(task.table("golden__prod"), pa.table({"golden_id": ["r1", "g9"], "interaction_id": ["r1", "g9"]}),
                       {lineage.GOLDEN_VERSION_PROPERTY: "p1"})
    lake.replace_table(task.table("golden__file"), pa.table({"golden_id": ["f1"], "interaction_id": pa.array([None], pa.string())}),
                       {lineage.GOLDEN_VERSION_PROPERTY: "f1"})
    tags = {"task": task.name, "dataset_snapshot_id": str(sft), "golden_set_versions": json.dumps({"prod": "p1", "file": "f1"})}
    v1 = _register(settings.mlflow_uri, "m-roles", tags)
    v2 = _register(settings.mlflow_uri, "m-roles", tags)
    for version in (v1, v2, v1):  # v1 twice: a rerun
        assert lineage.record_version_lineage(lake, settings.mlflow_uri,
                                              get_version(settings.mlflow_uri, "m-roles", version)) == 8

    for version in (v1, v2):
        rows = _lineage_rows(lake, "m-roles", version)
        assert sorted(zip(rows["role"].to_pylist(), rows["interaction_id"].to_pylist(), strict=True)) == sorted(
            [("train", i) for i in ids[:4]] + [("validation", i) for i in ids[4:]]
            + [("golden:prod", "r1"), ("golden:prod", "g9")])
        assert set(rows["dataset_snapshot_id"].to_pylist()) == {sft, lake.current_snapshot_id(task.table("golden__prod"))}
        assert set(rows["task"].to_pylist()) == {task.name}
    assert lake.read_arrow(lineage.LINEAGE_TABLE).num_rows == 16
    assert get_version(settings.mlflow_uri, "m-roles", v1).tags[lineage.LINEAGE_ROWS_TAG] == "8"
    [affected] = [a for a in lineage.versions_trained_on(lake, settings.mlflow_uri, ["r1", "r5"], ["m-roles"])
                  if a.version.version == v1]
    assert affected.via == {"dataset": 2, "golden:prod": 1} and affected.unknown == []


def test_a_version_registered_before_the_table_resolves_through_its_snapshot(settings, lake):
    world = build_world(settings, lake)  # versions with tags only, as registered before model_lineage existed
    v1_ids = _dataset_ids_of(settings, lake, world, world["v1"])
    assert not lake.table_exists(lineage.LINEAGE_TABLE)

    trace = lineage.version_lineage(lake, settings.mlflow_uri, world["model"], world["v1"])
    assert trace.source == "snapshot" and set(trace.interaction_ids) == v1_ids
    alice_id = sorted(_alice_ids(12) & v1_ids)[0]
    assert [v.version for v in lineage.versions_with_interaction(lake, settings.mlflow_uri, world["model"], alice_id)] \
        == [world["v1"]]
    [affected] = lineage.versions_trained_on(lake, settings.mlflow_uri, [alice_id], [world["model"]])
    assert affected.version.version == world["v1"] and affected.via == {"dataset": 1, "golden:prod": 1}

    # forget records them in the table while their snapshots still exist, before expiring those
    assert lineage.record_missing_lineage(lake, settings.mlflow_uri) == [
        f"{world['model']}@{world['v1']}", f"{world['model']}@{world['v2']}"]
    assert lineage.record_missing_lineage(lake, settings.mlflow_uri) == []  # once
    trace = lineage.version_lineage(lake, settings.mlflow_uri, world["model"], world["v1"])
    assert trace.source == lineage.LINEAGE_TABLE and set(trace.interaction_ids) == v1_ids


def test_the_registered_model_asset_writes_the_versions_lineage_rows(settings, lake, tmp_path):
    """Through Dagster: the registry asset registers a real (tiny) model and writes its rows in the same step."""
    import dagster as dg

    from continuum_pipeline.defs.flywheel.keys import key
    from continuum_pipeline.defs.flywheel.registry import registered_model
    from continuum_pipeline.defs.resources import resources_from_settings
    from continuum_pipeline.registry import models
    from continuum_pipeline.training import base_model as bm
    from continuum_pipeline_tests.test_training import TINY, VOCAB, toy_conversations

    task = task_config()
    ids = [f"a{i}" for i in range(5)]
    sft = lake.replace_table(task.table("sft_dataset"), pa.table({
        "interaction_id": ids, "split": ["train"] * 4 + ["validation"]}))
    merged = bm.build_base_model(toy_conversations(8), VOCAB, tmp_path / "merged", TINY)
    import mlflow

    models.client(settings.mlflow_uri)
    experiment = models.ensure_experiment(settings.mlflow_uri, "lineage-test")
    with mlflow.start_run(experiment_id=experiment) as run:
        run_id = run.info.run_id
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(key(task, "candidate_model"), metadata={
            "merged_dir": str(merged), "mlflow_run_id": run_id, "task": task.name, "dataset_snapshot_id": str(sft),
            "golden_set_versions": "{}", "parent_version": "base"}))
        asset = registered_model(task)
        result = dg.materialize([asset], instance=instance, resources=resources_from_settings(settings))
        assert result.success
        [mat] = [m for m in result.asset_materializations_for_node(asset.op.name)
                 if m.asset_key == key(task, "registered_model")]  # the first version also records the champion
    version = mat.metadata["version"].value
    assert mat.metadata["lineage_rows"].value == 5
    rows = _lineage_rows(lake, task.registered_model_name, version)
    assert sorted(zip(rows["interaction_id"].to_pylist(), rows["role"].to_pylist(), strict=True)) == [
        ("a0", "train"), ("a1", "train"), ("a2", "train"), ("a3", "train"), ("a4", "validation")]
    assert set(rows["dataset_table"].to_pylist()) == {task.table("sft_dataset")}
    assert set(rows["dataset_snapshot_id"].to_pylist()) == {sft}
