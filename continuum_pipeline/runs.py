"""Runs of the code location as Dagster itself makes them, executed by the command that asked for them.

A run is created from the code location's own job — the same steps as `dagster job launch` — so it carries the
code location's origin and the job's snapshot: the UI lists it under its job and on the timeline, and re-executes it
without a "different version" warning. It then executes in this process under run_guard (a signal stops it within
seconds, a dead run never holds a pool slot), where `dg launch` would execute it without those guards and a launcher
would need a code server and the daemon.

Sensors are evaluated through the sensor daemon's own tick function: the tick, its cursor, run key and skip reason
are recorded exactly as under `continuum ui`; the runs a tick requests go to the instance's run queue, and
`execute_queued` takes them off it here (what the daemon's queue would do, in this process).

Stdlib at import time, like run_guard: `continuum settings` must not pay for importing Dagster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from continuum_pipeline import run_guard

MODULE = "continuum_pipeline.definitions"
# `continuum ui` runs `dg dev -m MODULE`, which names the code location after the module: runs must carry that name
# to be listed under their job.
LOCATION = MODULE


def _origin():
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    return InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=MODULE, working_directory=os.getcwd()),
        location_name=LOCATION)


@contextlib.contextmanager
def code_location(instance) -> Iterator[Any]:
    """The code location, loaded in this process (the definitions are built from the settings in effect now)."""
    with _origin().create_location(instance) as location:
        yield location


def _repository(location):
    return next(iter(location.get_repositories().values()))


def create_run(instance, location, job_name: str, run_config: Mapping[str, Any] | None = None,
               tags: Mapping[str, str] | None = None, run_id: str | None = None):
    """A NOT_STARTED run of the code location's job, with its origin and snapshots."""
    from dagster._cli.job import _create_run  # what `dagster job launch` runs; no public equivalent in 1.13

    repo = _repository(location)
    if not repo.has_job(job_name):
        raise KeyError(f"no job {job_name!r} in the code location; its jobs: "
                       + ", ".join(sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__"))))
    return _create_run(instance=instance, code_location=location, remote_repo=repo,
                       remote_job=repo.get_full_job(job_name), run_config=dict(run_config or {}),
                       tags=dict(tags or {}), op_selection=None, run_id=run_id)


def _execute(instance, location, run, *, wait_seconds: float, raise_on_error: bool, say: run_guard.Say):
    from dagster._core.definitions.reconstruct import ReconstructableJob
    from dagster._core.execution.api import execute_run

    # Dagster caches the last job definition per code pointer, not per settings: a process that switches homes
    # (tests, the demo's phases) must build it anew, from the settings in effect.
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    recon = location.get_reconstructable_job(_repository(location).name, run.job_name)

    def start(run_id: str):
        return execute_run(recon, instance.get_run_by_id(run_id), instance, raise_on_error=raise_on_error)

    return run_guard.execute(instance, run.run_id, start, wait_seconds=wait_seconds, say=say)


def execute_job(job_name: str, instance, *, wait_seconds: float, run_config: Mapping[str, Any] | None = None,
                tags: Mapping[str, str] | None = None, raise_on_error: bool = True, say: run_guard.Say = run_guard._say):
    """Create a run of the code location's job and execute it here; returns Dagster's JobExecutionResult."""
    with code_location(instance) as location:
        run = create_run(instance, location, job_name, run_config, {**(tags or {}), **run_guard.process_tags()})
        return _execute(instance, location, run, wait_seconds=wait_seconds, raise_on_error=raise_on_error, say=say)


@dataclass
class Tick:
    """One sensor evaluation as the daemon recorded it."""

    sensor: str
    status: str  # SUCCESS (requested runs) | SKIPPED | FAILURE | NOT_EVALUATED
    run_ids: list[str] = field(default_factory=list)
    reason: str = ""
    cursor: str | None = None


def tick_sensors(instance, names: list[str], due: bool = False) -> list[Tick]:
    """Evaluate these sensors once each, in this order, through the sensor daemon's tick function. A stopped sensor
    is not evaluated; one evaluated within its minimum interval neither (the daemon would not either), unless `due`:
    for a caller whose clock runs faster than the interval (the demo's week passes in minutes)."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, SensorInstigatorData
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.sensor import _process_tick_generator  # the daemon's per-sensor tick, no public API
    from dagster._time import get_current_timestamp

    logger = logging.getLogger("continuum.sensors")
    ticks = []
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(_origin())) as context:
        location = context.create_request_context().get_code_location(LOCATION)
        repo = _repository(location)
        for name in names:
            sensor = repo.get_sensor(name)
            origin_id, selector_id = sensor.get_remote_origin_id(), sensor.selector_id
            state = sensor.get_current_instigator_state(instance.get_instigator_state(origin_id, selector_id))
            if not state.is_running:
                ticks.append(Tick(name, "NOT_EVALUATED", reason="the sensor is stopped"))
                continue
            if instance.get_instigator_state(origin_id, selector_id) is None:  # first evaluation: as the daemon does
                state = InstigatorState(sensor.get_remote_origin(), InstigatorType.SENSOR,
                                        InstigatorStatus.DECLARED_IN_CODE,
                                        SensorInstigatorData(min_interval=sensor.min_interval_seconds,
                                                             last_sensor_start_timestamp=get_current_timestamp(),
                                                             sensor_type=sensor.sensor_type))
                instance.add_instigator_state(state)
            elif due and (data := state.instigator_data) is not None:
                past = get_current_timestamp() - (sensor.min_interval_seconds or 0)
                state = state.with_data(data._replace(last_tick_timestamp=past, last_tick_start_timestamp=past))
                instance.update_instigator_state(state)
            before = instance.get_ticks(origin_id, selector_id, limit=1)
            for _ in _process_tick_generator(context, logger, sensor, state, None,
                                             instance.get_tick_retention_settings(InstigatorType.SENSOR), None):
                pass
            after = instance.get_ticks(origin_id, selector_id, limit=1)
            if not after or (before and after[0].tick_id == before[0].tick_id):
                ticks.append(Tick(name, "NOT_EVALUATED",
                                  reason=f"evaluated less than {sensor.min_interval_seconds}s ago (its minimum interval)"))
                continue
            tick = after[0]
            error = tick.tick_data.error.message.strip() if tick.tick_data.error else ""
            ticks.append(Tick(name, tick.status.value, list(tick.run_ids),
                              tick.skip_reason or error or "", tick.tick_data.cursor))
    return ticks


def execute_queued(instance, run_ids: list[str], *, wait_seconds: float, raise_on_error: bool = False,
                   say: run_guard.Say = run_guard._say) -> dict[str, Any]:
    """Take these runs off the run queue and execute each here, as the queue daemon would launch them."""
    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.storage.dagster_run import DagsterRunStatus

    results = {}
    with code_location(instance) as location:
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            if run is None or run.status not in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
                continue  # someone else (a daemon) took it
            instance.add_run_tags(run_id, run_guard.process_tags())
            # what DagsterInstance.launch_run records before handing a run to its launcher
            instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.PIPELINE_STARTING.value,
                                                       job_name=run.job_name), run_id=run_id, log_level=logging.DEBUG)
            results[run_id] = _execute(instance, location, instance.get_run_by_id(run_id), wait_seconds=wait_seconds,
                                       raise_on_error=raise_on_error, say=say)
    return results
