"""Runs of the code location: the CLI's runs belong to their job (origin, snapshot, repository label), and a sensor
evaluated through the daemon's tick function records its tick and cursor and queues the run it requests."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

from continuum_pipeline import runs
from continuum_pipeline.cli import run_job

from .conftest import interaction, write_segment

LABEL = f"__repository__@{runs.LOCATION}"


@pytest.fixture
def instance(settings):
    """The home's instance, entered: the code location loaded in process reads its storage from the instance in
    context, not from one an earlier test left behind."""
    with dg.DagsterInstance.get() as home:
        yield home


def test_a_cli_run_belongs_to_its_job_in_the_code_location(settings, instance):
    write_segment(settings.landing_dir, "20261121T000000Z-r1", [interaction(i) for i in range(3)])
    result = run_job("ingest_job", instance=instance, tags={"continuum/source": "test"})
    assert result.success
    listed = instance.get_runs(dg.RunsFilter(job_name="ingest_job", tags={REPOSITORY_LABEL_TAG: LABEL}))
    assert [r.run_id for r in listed] == [result.run_id]
    run = listed[0]
    assert run.remote_job_origin.location_name == runs.LOCATION and run.tags["continuum/source"] == "test"
    with runs.code_location(instance) as location:
        job = next(iter(location.get_repositories().values())).get_full_job("ingest_job")
        assert run.job_snapshot_id == job.identifying_job_snapshot_id  # re-executes as the same version
    assert instance.get_latest_materialization_event(dg.AssetKey("interactions")).run_id == run.run_id


def test_an_unknown_job_names_the_jobs_there_are(instance):
    try:
        run_job("no_such_job", instance=instance)
    except KeyError as exc:
        assert "ingest_job" in str(exc)
    else:
        raise AssertionError("expected a KeyError")


def test_a_sensor_tick_is_recorded_and_its_queued_run_executes_here(settings, instance):
    write_segment(settings.landing_dir, "20261121T000000Z-r2", [interaction(i) for i in range(4)])
    [tick] = runs.tick_sensors(instance, ["landing_sensor"])
    assert tick.status == "SUCCESS" and len(tick.run_ids) == 1 and "20261121T000000Z-r2" in tick.cursor
    run = instance.get_run_by_id(tick.run_ids[0])
    assert run.status == dg.DagsterRunStatus.QUEUED and run.tags["dagster/sensor_name"] == "landing_sensor"
    assert instance.get_runs(dg.RunsFilter(run_ids=[run.run_id], tags={REPOSITORY_LABEL_TAG: LABEL}))

    results = runs.execute_queued(instance, tick.run_ids, wait_seconds=30)
    assert results[run.run_id].success
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS

    # evaluated again at once: within its minimum interval the daemon would not evaluate it, nor do we
    [again] = runs.tick_sensors(instance, ["landing_sensor"])
    assert again.status == "NOT_EVALUATED" and "minimum interval" in again.reason
    assert runs.execute_queued(instance, tick.run_ids, wait_seconds=30) == {}  # already taken off the queue
    [due] = runs.tick_sensors(instance, ["landing_sensor"], due=True)  # a clock faster than the interval
    assert due.status == "SKIPPED" and "no new segments" in due.reason
