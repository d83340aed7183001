"""The rollout end to end on a real Dagster instance, lake, MLflow registry and arms file: the canary sensor (through
the sensor daemon's own tick function) starts a rollout when a challenger is registered and requests a decision
run per look; traffic lands as the gateway records it (route = arm, model_version), is judged and rewarded by the
task's SQL models; a degraded challenger is rolled back at its first step, a good one ramps to 100% and is
promoted (the old champion kept as `previous`); `continuum rollout` acts through the same job."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from continuum_pipeline import runs
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.registry import models
from continuum_pipeline.rollout import log
from continuum_pipeline.server import arms

from .conftest import interaction, label_task, run_task_sql, task_config, write_segment
from .test_forget import _register

JUDGES = [{"name": "quality", "kind": "python", "function": "continuum_pipeline_tests.test_rollout_flow:quality"}]
ROLLOUT = {"steps": [0.25, 0.5, 1.0], "min_interactions_per_step": 20, "min_minutes_per_step": 0,
           "metrics": {"reward": {"kind": "mean", "max_change": 0.05}}}
TASK = task_config(judges=JUDGES, rollout=ROLLOUT)
SENSOR = f"{TASK.name}_canary_sensor"
JOB = f"{TASK.name}_rollout_job"


def quality(item):
    """The task's judge: the interaction's metadata carries how good the answer was."""
    return float(item.metadata["quality"]), ""


@pytest.fixture
def world(settings, lake, monkeypatch, tmp_path):
    """The task in the code location (CONTINUUM_TASKS), v1 champion and v2 challenger, the home's instance."""
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "defs.yaml").write_text(json.dumps(TASK.model_dump(mode="json", exclude={"source_dir"})))
    monkeypatch.setenv("CONTINUUM_TASKS", str(task_dir))
    name = TASK.registered_model_name
    v1 = _register(settings.mlflow_uri, name, {"task": TASK.name}, champion=True)
    v2 = _register(settings.mlflow_uri, name, {"task": TASK.name})
    models.client(settings.mlflow_uri).set_registered_model_alias(name, models.CHALLENGER, v2)
    with dg.DagsterInstance.get() as instance:
        yield {"settings": settings, "lake": lake, "instance": instance, "v1": v1, "v2": v2, "next": [0]}


def weights(settings) -> dict[str, float]:
    task_arms = arms.load(settings.gateway_arms).tasks[TASK.name]
    return {a.name: a.weight for a in task_arms.arms}


def serve(world, total: int, quality_of: dict[str, float]):
    """`total` interactions routed as the gateway would by the arms file's weights now (deterministically split),
    landed, ingested, judged and rewarded (the labels and SQL models automation would refresh)."""
    settings, lake = world["settings"], world["lake"]
    entry = {a["name"]: a for a in json.loads(settings.gateway_arms.read_text())["tasks"][TASK.name]["arms"]}
    share = entry["challenger"]["weight"] / (entry["challenger"]["weight"] + entry["stable"]["weight"])
    n_challenger = round(total * share)
    now = datetime.now(UTC)
    recs = []
    for k in range(total):
        i = world["next"][0] = world["next"][0] + 1
        arm = "challenger" if k < n_challenger else "stable"
        q = quality_of[arm] + (0.05 if k % 2 else -0.05)  # a spread, so the variance is not zero
        recs.append(interaction(i, ts=(now + timedelta(milliseconds=k)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                                route=arm, model="champion", model_version=entry[arm]["model_version"],
                                latency_ms=100.0, metadata=json.dumps({"quality": q})))
    write_segment(settings.landing_dir, f"{now:%Y%m%dT%H%M%S%f}Z-rollout", recs)
    ingest_landing(lake, settings.landing_dir)
    label_task(lake, TASK, [spec.build() for spec in TASK.judges])
    run_task_sql(lake, TASK)
    return n_challenger


def tick(world) -> runs.Tick:
    """One canary sensor tick; the run it requested (if any) executed as the queue daemon would."""
    instance = world["instance"]
    (result,) = runs.tick_sensors(instance, [SENSOR], due=True)
    assert result.status in ("SUCCESS", "SKIPPED"), result
    if result.run_ids:
        done = runs.execute_queued(instance, result.run_ids, wait_seconds=30)
        for outcome in done.values():
            assert outcome.success
    return result


def last_row(world) -> dict:
    return log.read(world["lake"], TASK)[-1]


def materialization(world, run_id: str) -> dict:
    (event,) = [e for e in world["instance"].all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                if e.asset_materialization.asset_key == dg.AssetKey([TASK.name, "rollout"])]
    return event.asset_materialization.metadata


def test_a_degraded_challenger_is_rolled_back_at_its_first_step(world):
    settings, v1, v2 = world["settings"], world["v1"], world["v2"]
    started = tick(world)
    assert started.status == "SUCCESS" and len(started.run_ids) == 1
    run = world["instance"].get_run_by_id(started.run_ids[0])
    assert run.job_name == JOB and run.tags["dagster/run_key"] == f"{TASK.name}:rollout:v{v2}:start"
    assert weights(settings) == {"stable": 0.75, "challenger": 0.25}
    entry = json.loads(settings.gateway_arms.read_text())["tasks"][TASK.name]
    assert [(a["name"], a["model_version"], a["base_url"]) for a in entry["arms"]] == [
        ("stable", v1, "http://127.0.0.1:4318/local/champion/v1"),
        ("challenger", v2, "http://127.0.0.1:4318/local/challenger/v1")]
    assert last_row(world)["action"] == "start"
    again = tick(world)  # no traffic yet: nothing to look at
    assert again.status == "SKIPPED" and "0 new challenger interactions" in again.reason

    n = serve(world, 80, {"stable": 0.9, "challenger": 0.5})
    assert n == 20
    looked = tick(world)
    assert looked.status == "SUCCESS"
    assert world["instance"].get_run_by_id(looked.run_ids[0]).tags["dagster/run_key"] == \
        f"{TASK.name}:rollout:v{v2}:look1"
    row = last_row(world)
    assert row["action"] == "rollback" and row["n_challenger"] == 20 and row["n_stable"] == 60, row
    assert row["reward_challenger"] == pytest.approx(0.5) and row["reward_stable"] == pytest.approx(0.9)
    assert "reward" in row["reason"] and "worse than the allowed 0.05" in row["reason"]
    assert weights(settings) == {"stable": 1.0, "challenger": 0.0}  # all traffic back to stable, before 25% grew
    meta = materialization(world, looked.run_ids[0])
    assert meta["action"].value == "rollback" and meta["decision"].value.startswith("**rollback**")
    assert meta["statistics"].value["reward"]["verdict"] == "worse"
    assert meta["statistics"].value["reward"]["p_worse"] <= 0.05
    assert meta["plot"].value.startswith("![rollout](data:image/png;base64,")
    # the registry is untouched: v1 serves, v2 keeps alias challenger, and it is never rolled out again
    assert models.champion(settings.mlflow_uri, TASK.registered_model_name).version == v1
    assert models.by_alias(settings.mlflow_uri, TASK.registered_model_name, models.CHALLENGER).version == v2
    serve(world, 80, {"stable": 0.9, "challenger": 0.5})
    after = tick(world)
    assert after.status == "SKIPPED" and f"the rollout of v{v2} is rolled_back" in after.reason
    assert weights(settings) == {"stable": 1.0, "challenger": 0.0}


def test_a_good_challenger_ramps_step_by_step_and_is_promoted(world):
    settings, v1, v2 = world["settings"], world["v1"], world["v2"]
    tick(world)
    seen = [weights(settings)["challenger"]]
    actions = []
    for _ in range(12):
        serve(world, 80, {"stable": 0.9, "challenger": 0.9})
        result = tick(world)
        assert result.status == "SUCCESS", result
        actions.append(last_row(world)["action"])
        seen.append(weights(settings)["challenger"])
        if actions[-1] == "promote":
            break
    assert actions[-1] == "promote" and "rollback" not in actions, actions
    assert [w for k, w in enumerate(seen) if k == 0 or w != seen[k - 1]] == [0.25, 0.5, 1.0], seen
    champion = models.champion(settings.mlflow_uri, TASK.registered_model_name)
    assert champion.version == v2
    assert models.by_alias(settings.mlflow_uri, TASK.registered_model_name, models.PREVIOUS).version == v1
    assert weights(settings) == {"stable": 0.0, "challenger": 1.0}
    # the promotion is recorded on the champion asset in the decision's run
    event = world["instance"].get_latest_materialization_event(dg.AssetKey([TASK.name, "champion"]))
    assert event.asset_materialization.metadata["version"].value == v2
    assert event.asset_materialization.metadata["previous"].value == v1
    done = tick(world)
    assert done.status == "SKIPPED" and "no challenger waiting" in done.reason
    from continuum_pipeline.rollout.plot import plot_rollout

    png = plot_rollout(world["lake"], TASK)
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")


def rollout_command(*argv: str) -> int:
    """`continuum rollout …`, the installed command in its own process on this test's home; its output is echoed
    here for capfd."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([str(Path(sys.executable).with_name("continuum")), "rollout", *argv], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    print(done.stdout + done.stderr)
    return done.returncode


def test_a_person_pauses_resumes_promotes_and_rolls_back_through_the_rollout_job(world, capfd):
    settings, v1, v2 = world["settings"], world["v1"], world["v2"]
    assert rollout_command("status", TASK.name) == 0
    assert "no rollout yet" in capfd.readouterr().out
    tick(world)
    serve(world, 8, {"stable": 0.9, "challenger": 0.9})

    assert rollout_command("pause", TASK.name, "--reason", "holding for the release freeze") == 0
    out = capfd.readouterr().out
    assert "paused" in out and "holding for the release freeze" in out and "stable" in out
    paused = tick(world)
    assert paused.status == "SKIPPED" and f"the rollout of v{v2} is paused" in paused.reason
    assert weights(settings) == {"stable": 0.75, "challenger": 0.25}  # a pause holds the weights
    assert rollout_command("resume", TASK.name) == 0
    assert log.current(log.read(world["lake"], TASK), v2).active

    assert rollout_command("promote", TASK.name) == 0  # by hand, at 25%
    assert models.champion(settings.mlflow_uri, TASK.registered_model_name).version == v2
    assert weights(settings) == {"stable": 0.0, "challenger": 1.0}
    out = capfd.readouterr().out
    assert "promoted by hand at 25%" in out and f"champion=v{v2}" in out

    # blue-green switch-back: v1 is champion again and takes all traffic on the stable arm
    assert rollout_command("rollback", TASK.name) == 0
    assert models.champion(settings.mlflow_uri, TASK.registered_model_name).version == v1
    assert weights(settings) == {"stable": 1.0, "challenger": 0.0}
    entry = json.loads(settings.gateway_arms.read_text())["tasks"][TASK.name]
    assert entry["arms"][0]["model_version"] == v1
    assert tick(world).status == "SKIPPED"  # v2 is the challenger again, but its rollout is over

    assert rollout_command("pause", TASK.name) == 1  # nothing active: the run fails and says why
    assert f"the rollout of v{v2} is rolled_back: only an active one pauses" in capfd.readouterr().out
    job_runs = world["instance"].get_runs(dg.RunsFilter(job_name=JOB))
    by_action = sorted(r.tags.get("continuum/rollout_action", "sensor") for r in job_runs)
    assert by_action == ["pause", "pause", "promote", "resume", "rollback", "sensor"]
    assert [r["action"] for r in log.read(world["lake"], TASK)] == ["start", "pause", "resume", "promote",
                                                                     "rollback"]


def test_blue_green_starts_with_a_shadow_pass_and_a_failed_look_is_retried_then_left(world):
    """blue_green's first step serves the challenger to nobody: weight 0 and a shadow copy of a sample of requests
    (the arms file's `shadow`). A decision that fails (here: no latency recorded while a latency guard is on) is
    requested again under a new run key, at most twice, then the sensor says why it stopped."""
    from continuum_pipeline.defs.flywheel import rollout
    from continuum_pipeline.defs.resources import resources_from_settings

    settings, v2 = world["settings"], world["v2"]
    green = task_config(judges=JUDGES, rollout={"strategy": "blue_green", "min_interactions_per_step": 4,
                                                "min_minutes_per_step": 0, "shadow": {"sample_rate": 0.2},
                                                "hard_guards": {"min_interactions": 1}})
    resources = resources_from_settings(settings)
    asset, job, sensor = rollout.definitions(green)
    instance = world["instance"]
    result = dg.materialize([asset], instance=instance, resources=resources,
                            run_config=rollout.run_config(green, "start"))
    assert result.success
    entry = json.loads(settings.gateway_arms.read_text())["tasks"][green.name]
    assert [a["weight"] for a in entry["arms"]] == [1.0, 0.0]
    assert entry["shadow"] == {"arm": "challenger", "sample_rate": 0.2}
    assert arms.load(settings.gateway_arms).tasks[green.name].pick().name == "stable"  # nobody sees the challenger

    # shadow copies land without latency: the latency guard cannot be judged, the look fails
    serve(world, 8, {"stable": 0.9, "challenger": 0.9})  # weight 0: all served by stable …
    now = datetime.now(UTC)
    write_segment(settings.landing_dir, f"{now:%Y%m%dT%H%M%S%f}Z-shadow", [  # … and these copies to the challenger
        interaction(900 + k, ts=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), route="challenger", model_version=v2,
                    latency_ms=None, metadata=json.dumps({"quality": 0.9, "shadow": True})) for k in range(4)])
    ingest_landing(world["lake"], settings.landing_dir)
    decision_job = dg.Definitions(assets=[asset], jobs=[job], resources=resources).resolve_job_def(job.name)
    keys = []
    for _ in range(4):
        context = dg.build_sensor_context(instance=instance, resources={"lake": resources["lake"],
                                                                        "mlflow": resources["mlflow"]})
        request = sensor(context)
        if isinstance(request, dg.SkipReason):
            break
        keys.append(request.run_key)
        failed = decision_job.execute_in_process(instance=instance, run_config=request.run_config,
                                                 tags=request.tags, raise_on_error=False)
        (failure,) = [e for e in failed.all_events if e.is_step_failure]
        assert "challenger.latency_p95_ms is None but a latency guard is on" in str(failure.step_failure_data.error)
    assert keys == [f"{green.name}:rollout:v{v2}:look1", f"{green.name}:rollout:v{v2}:look1:retry1",
                    f"{green.name}:rollout:v{v2}:look1:retry2"]
    assert "look 1 of v" in request.skip_message and "failed 3 times" in request.skip_message
    assert log.current(log.read(world["lake"], green), v2).phase == "active"  # nothing was decided


def judged_quality(item):
    """The judge of the gateway test: each upstream says how good its answer is (`q=0.9`)."""
    import re

    return float(re.search(r"q=([0-9.]+)", item.response or "").group(1)), ""


def test_through_the_real_gateway_a_degraded_challenger_is_rolled_back(settings, lake, sdk, monkeypatch, tmp_path):
    """`continuum serve`'s gateway with an OpenAI-protocol upstream per arm: the rollout's arms file routes a
    quarter of the users to the degraded challenger, the gateway records route and version, the judge scores the
    answers, and the sensor's look sends every user back to stable."""
    from dataclasses import replace

    from continuum_pipeline.server.arms import write as write_arms
    from continuum_pipeline_tests.openai_server import OpenAIServer
    from continuum_pipeline_tests.served import Served
    from continuum_pipeline_tests.test_gateway import KEY, client

    def answers(quality: float):
        count = [0]

        def chat(messages):
            count[0] += 1
            return f"answer q={quality + (0.05 if count[0] % 2 else -0.05):.2f}"
        return chat

    gw = replace(settings, serve_api_keys=(KEY,), serve_allow_no_auth=False)
    with OpenAIServer(chat=answers(0.9)) as good, OpenAIServer(chat=answers(0.5)) as bad, Served(gw) as served:
        task = task_config(judges=[{"name": "quality", "kind": "python",
                                    "function": "continuum_pipeline_tests.test_rollout_flow:judged_quality"}],
                           rollout={**ROLLOUT, "hard_guards": {"max_latency_p95_ratio": None},
                                    "arms": {"stable_base_url": good.base_url, "challenger_base_url": bad.base_url}})
        task_dir = tmp_path / "task"
        task_dir.mkdir()
        (task_dir / "defs.yaml").write_text(json.dumps(task.model_dump(mode="json", exclude={"source_dir"})))
        monkeypatch.setenv("CONTINUUM_TASKS", str(task_dir))
        write_arms(settings.gateway_arms, {"default_task": TASK.name, "tasks": {TASK.name: {"arms": [
            {"name": "stable", "base_url": good.base_url, "weight": 1}]}}})
        name = task.registered_model_name
        v1 = _register(settings.mlflow_uri, name, {"task": task.name}, champion=True)
        v2 = _register(settings.mlflow_uri, name, {"task": task.name})
        models.client(settings.mlflow_uri).set_registered_model_alias(name, models.CHALLENGER, v2)
        c = client(served)

        def traffic(users: range) -> list[str]:
            routes = []
            for u in users:
                raw = c.chat.completions.with_raw_response.create(
                    model="m", user=f"u-{u}", messages=[{"role": "user", "content": f"question {u}"}])
                routes.append(raw.headers["x-continuum-route"])
            sdk.flush()
            ingest_landing(lake, settings.landing_dir)
            label_task(lake, task, [spec.build() for spec in task.judges])
            run_task_sql(lake, task)
            return routes

        with dg.DagsterInstance.get() as instance:
            def tick_once() -> runs.Tick:
                (result,) = runs.tick_sensors(instance, [SENSOR], due=True)
                if result.run_ids:
                    assert all(r.success for r in runs.execute_queued(instance, result.run_ids,
                                                                      wait_seconds=30).values())
                return result

            assert tick_once().status == "SUCCESS"  # the start
            assert weights(settings) == {"stable": 0.75, "challenger": 0.25}
            routes = traffic(range(120))
            assert 10 <= routes.count("challenger") <= 50, routes.count("challenger")  # sticky by user, by weight
            looked = tick_once()
            assert looked.status == "SUCCESS", looked
            row = log.read(lake, task)[-1]
            assert row["action"] == "rollback" and "reward" in row["reason"], row
            assert row["n_challenger"] == routes.count("challenger") and row["reward_challenger"] < 0.6
            served_rows = lake.read_arrow("interactions").to_pylist()
            assert {(r["route"], r["model_version"]) for r in served_rows} == {("stable", v1), ("challenger", v2)}
            assert set(traffic(range(120, 160))) == {"stable"}  # every user back on stable at once
            assert models.champion(settings.mlflow_uri, name).version == v1


def test_the_arms_file_keeps_other_tasks_and_prices_and_looks_come_by_traffic_or_time(tmp_path):
    from continuum_pipeline.rollout.arms_file import write_weights

    path = tmp_path / "arms.json"
    arms.write(path, {"default_task": "other", "tasks": {
        "other": {"arms": [{"name": "teacher", "base_url": "https://api.example.com/v1", "weight": 1}]},
        TASK.name: {"arms": [{"name": "stable", "base_url": "http://old/v1", "weight": 1,
                              "price": {"prompt_per_1m": 0.1}}]}}})
    entry = write_weights(path, TASK, stable_version="1", challenger_version="2",
                          weights={"stable": 0.95, "challenger": 0.05})
    data = json.loads(path.read_text())
    assert data["default_task"] == "other" and data["tasks"]["other"]["arms"][0]["name"] == "teacher"
    assert data["tasks"][TASK.name] == entry and "shadow" not in entry and entry["sticky"] == "user"
    assert entry["arms"][0] == {"name": "stable", "base_url": "http://127.0.0.1:4318/local/champion/v1",
                                "model_version": "1", "weight": 0.95, "price": {"prompt_per_1m": 0.1}}
    assert {a.name: a.weight for a in arms.load(path).tasks[TASK.name].arms} == {"stable": 0.95, "challenger": 0.05}

    start = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    rollout = log.Rollout("2", "1", "active", 0, 0.05, 0.0, "{}", start, start, start, 0, "")
    assert log.look_size(200) == 50 and log.look_size(1) == 1
    assert log.look_due(rollout, 49, start + timedelta(minutes=29), 200, 30) is None
    assert "50 new challenger interactions" in log.look_due(rollout, 50, start, 200, 30)
    assert "30 minutes since the last look" in log.look_due(rollout, 0, start + timedelta(minutes=30), 200, 30)
    assert log.look_due(rollout, 0, start + timedelta(days=1), 200, 0) is None  # no minimum time: traffic only
