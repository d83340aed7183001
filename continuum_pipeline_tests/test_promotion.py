"""Promotion in Dagster: the promotion job moves MLflow aliases (champion, previous) and records it on the task's
champion and registered_model assets, so the UI's latest events and the registry (`continuum lineage`) agree."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pytest

from continuum_pipeline.defs.flywheel import build_task_definitions
from continuum_pipeline.defs.flywheel.keys import key
from continuum_pipeline.defs.flywheel.registry import registered_model
from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.registry import models

from .conftest import SQL_DIR, task_config

pytest.importorskip("torch")


@pytest.fixture
def registry(settings, lake, tmp_path):
    """A task whose v1 was registered through the registered_model asset (a real tiny model) and whose v2 is
    the challenger; the instance that saw the registration."""
    from continuum_pipeline.training import base_model as bm
    from continuum_pipeline_tests.test_training import TINY, VOCAB, toy_conversations

    task = task_config()
    snapshot = lake.replace_table(task.table("sft_dataset"), pa.table({"interaction_id": ["a0", "a1"],
                                                                        "split": ["train", "validation"]}))
    merged = bm.build_base_model(toy_conversations(8), VOCAB, tmp_path / "merged", TINY)
    defs = dg.Definitions.merge(build_task_definitions(task, SQL_DIR),
                                dg.Definitions(resources=resources_from_settings(settings)))
    uri = settings.mlflow_uri
    experiment = models.ensure_experiment(uri, "promotion-test")
    client = models.client(uri)
    with dg.instance_for_test() as instance:
        run_id = client.create_run(experiment).info.run_id
        instance.report_runless_asset_event(dg.AssetMaterialization(key(task, "candidate_model"), metadata={
            "merged_dir": str(merged), "mlflow_run_id": run_id, "task": task.name, "dataset_snapshot_id": str(snapshot),
            "golden_set_versions": "{}", "parent_version": "base", "eligible_rows": 2}))
        registered = dg.materialize([registered_model(task)], instance=instance,
                                    resources=resources_from_settings(settings))
        assert registered.success
        v2 = models.register(uri, task.registered_model_name, merged, client.create_run(experiment).info.run_id,
                             {"task": task.name, "parent_version": "1"})
        yield task, defs, instance, v2


def latest_champion(instance, task) -> dict:
    event = instance.get_latest_materialization_event(key(task, "champion"))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def latest_aliases_observation(instance, task) -> dict[str, str]:
    [record] = instance.fetch_observations(key(task, "registered_model"), limit=1).records
    table = record.asset_observation.metadata["versions"]
    return {r.data["version"]: r.data["aliases"] for r in table.records}


def registry_aliases(uri: str, name: str) -> dict[str, str]:
    return {v.version: ", ".join(sorted(v.aliases)) for v in models.versions(uri, name)}


def run_promotion(defs, instance, task, **config):
    job = defs.resolve_job_def(f"{task.name}_promotion_job")
    return job.execute_in_process(instance=instance, raise_on_error=False,
                                  run_config={"ops": {f"{task.name}__promote": {"config": config}}})


def test_first_registration_records_v1_as_champion(registry, settings):
    task, _, instance, _ = registry
    champion = latest_champion(instance, task)
    assert (champion["version"], champion["previous"], champion["reason"]) == ("1", "", "first registered version")
    assert "champion=1" in champion["aliases"]
    assert "mlflow_version_url" not in champion  # a SQLite tracking store has no pages to link to


def test_promotion_job_promotes_the_challenger_and_rollback_switches_back(registry, settings):
    task, defs, instance, v2 = registry
    uri, name = settings.mlflow_uri, task.registered_model_name

    assert run_promotion(defs, instance, task, reason="canary passed").success
    champion = latest_champion(instance, task)
    assert (champion["version"], champion["previous"], champion["reason"]) == (v2.version, "1", "canary passed")
    # the registry (what `continuum lineage` prints) and the UI's latest events agree
    assert set(models.get_version(uri, name, v2.version).aliases) == {"champion", "challenger"}
    assert set(models.get_version(uri, name, "1").aliases) == {"previous"}
    assert models.champion(uri, name).version == champion["version"]
    assert latest_aliases_observation(instance, task) == registry_aliases(uri, name) == {
        "1": "previous", v2.version: "challenger, champion"}

    assert run_promotion(defs, instance, task, action="rollback", reason="error rate up").success
    champion = latest_champion(instance, task)
    assert (champion["version"], champion["previous"], champion["reason"]) == ("1", v2.version, "error rate up")
    assert models.champion(uri, name).version == "1"
    assert latest_aliases_observation(instance, task) == registry_aliases(uri, name) == {
        "1": "champion", v2.version: "challenger, previous"}
    runs = instance.get_runs(dg.RunsFilter(job_name=f"{task.name}_promotion_job"))
    assert len(runs) == 2 and all(r.is_success for r in runs)


def test_promoting_a_missing_version_fails_with_the_fix_and_changes_nothing(registry, settings):
    task, defs, instance, _ = registry
    result = run_promotion(defs, instance, task, version="v9")
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "has no version 9" in failure.event_specific_data.error.message
    assert "continuum lineage" in failure.event_specific_data.error.message
    assert models.champion(settings.mlflow_uri, task.registered_model_name).version == "1"
    assert latest_champion(instance, task)["version"] == "1"


def test_rollback_without_a_previous_champion_says_what_to_do(registry, settings):
    task, defs, instance, _ = registry
    result = run_promotion(defs, instance, task, action="rollback")
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no `previous` version to roll back to" in failure.event_specific_data.error.message
