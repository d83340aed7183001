"""Declarative automation, on by default: reward labels and the SQL models follow ingest, including interactions
ingested before automation ever evaluated (Dagster's `eager()` alone waits for the next ingest), evaluated with
`dg.evaluate_automation_conditions` on the code location's definitions and with one real tick of the asset daemon."""

from __future__ import annotations

import json
import logging

import dagster as dg
import pytest

from continuum_pipeline.defs.ingest.assets import ingest_landing_segments
from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.settings import Settings

from .conftest import feedback, interaction, task_config, write_segment

TASK = task_config()
SENSOR = "continuum_automation_sensor"


@pytest.fixture
def home_instance(settings):
    """The home's instance (its run queue holds what a tick requests), entered: a code location loaded in this
    process reads its state storage from the instance in context, not from one a previous test left behind."""
    with dg.DagsterInstance.get() as instance:
        yield instance


def code_location(settings, monkeypatch, tmp_path) -> dg.Definitions:
    from continuum_pipeline.definitions import build_definitions

    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "defs.yaml").write_text(json.dumps(TASK.model_dump(mode="json", exclude={"source_dir"})))
    monkeypatch.setenv("CONTINUUM_TASKS", str(task_dir))
    return build_definitions(Settings.from_env())  # with the task: the resources the code location binds


def ingested_before_automation(settings, instance) -> None:
    """A real ingest run, with no automation evaluated yet (the 500 rows a first `continuum ui` found)."""
    write_segment(settings.landing_dir, "20261120T000000Z-a",
                  [interaction(i) for i in range(30)] + [feedback(i, f"i{i:06d}") for i in range(10)])
    result = dg.materialize([ingest_landing_segments], instance=instance, resources=resources_from_settings(Settings.from_env()))
    assert result.success


def followers(defs: dg.Definitions) -> set[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    return {k for k in graph.materializable_asset_keys if graph.get(k).automation_condition is not None}


def test_labels_and_sql_models_follow_what_was_ingested_before_automation(settings, monkeypatch, tmp_path):
    defs = code_location(settings, monkeypatch, tmp_path)
    sensor = defs.resolve_sensor_def(SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert "default_automation_condition_sensor" not in {s.name for s in defs.sensors}  # ours covers them all
    follow = followers(defs)
    assert {dg.AssetKey([TASK.name, "reward_labels"]), dg.AssetKey([TASK.name, "quality_daily"]),
            dg.AssetKey("stg_interactions")} <= follow
    with dg.instance_for_test() as instance:
        ingested_before_automation(settings, instance)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert {r.key for r in first.results if r.true_subset.size} == follow  # labels and every SQL model
        # requested once: a run that fails is not retried every 30 s; the next ingest triggers them again
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.total_requested == 0
        ingested_before_automation(settings, instance)  # nothing new in landing, but interactions materialized again
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert dg.AssetKey([TASK.name, "reward_labels"]) in {r.key for r in third.results if r.true_subset.size}


def test_one_tick_of_the_automation_sensor_queues_the_labels_and_sql_run(settings, monkeypatch, tmp_path,
                                                                        home_instance):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.asset_daemon import AssetDaemon  # the daemon's own iteration: no public API

    from continuum_pipeline import runs

    defs = code_location(settings, monkeypatch, tmp_path)
    instance = home_instance
    ingested_before_automation(settings, instance)
    daemon = AssetDaemon(settings=instance.get_auto_materialize_settings(), pre_sensor_interval_seconds=0)
    daemon._logger = logging.getLogger("continuum.automation")
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(runs._origin())) as context:
        daemon._run_iteration_impl(context, threadpool_executor=None, amp_tick_futures={}, debug_crash_flags={})
        repo = next(iter(context.create_request_context().get_code_location(runs.LOCATION)
                         .get_repositories().values()))
        sensor = repo.get_sensor(SENSOR)
        ticks = instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)
    assert len(ticks) == 1 and ticks[0].status.value == "SUCCESS", ticks
    queued = [instance.get_run_by_id(run_id) for run_id in ticks[0].run_ids]
    assert queued and all(r.status == dg.DagsterRunStatus.QUEUED for r in queued)
    assert set().union(*(r.asset_selection for r in queued)) == followers(defs)
