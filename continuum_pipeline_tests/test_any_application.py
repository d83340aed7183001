"""A second application, not the support desk, through the same doors: a recipe assistant (RAG) with its own
task YAML (`recipe_task/defs.yaml`), its traffic through @capture with contexts, implicit signals and explicit
scores, an llm_rubric and a ragas judge served by the local OpenAI-protocol server, a python judge, a
reference_match judge and its own golden file with two slices — labels, reward, dataset, training, gate
pass and gate block, registration and lineage, through dg.materialize and through a sensor tick, loaded
side by side with the support desk."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest

from continuum_pipeline import capture
from continuum_pipeline.definitions import build_definitions
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.registry import lineage, models
from continuum_pipeline.settings import Settings
from continuum_pipeline.task.config import load_task_config

from . import recipe_app
from .conftest import REPO_ROOT
from .openai_server import OpenAIServer, RecordedRequest, Reply

pytest.importorskip("ragas", reason="the recipe task has a ragas judge")

TASK = load_task_config(recipe_app.TASK_DIR / "defs.yaml")
SUPPORT_DESK = REPO_ROOT / "continuum_pipeline/scenario/defs/support_desk/defs.yaml"
PREFIX = "recipe_answer"
RUN_CONFIG = {"ops": {f"{PREFIX}__base_model": {"config": {"pretrain_max_steps": 250}},
                      f"{PREFIX}__candidate_model": {"config": {"max_steps": 120}}}}
DISHES = {d.replace("_", " "): d for d in recipe_app.RECIPES}


def rubric_or_ragas(request: RecordedRequest) -> Reply:
    """The judge model: ragas's structured prompts get ragas answers, the rubric gets a verdict that scores 5
    when the response is about the dish the user asked for, else 1."""
    if request.json_schema is not None:
        from .test_ragas_judge import ragas_server_answer

        return ragas_server_answer(request)
    text = request.text
    conversation, _, response = text.partition("## Response to evaluate")
    asked = [d for d in DISHES if d in conversation.split("## Retrieved context")[0].casefold()]
    right = bool(asked) and asked[0] in response.casefold()
    names = re.findall(r"^- (\w+) \(weight", request.messages[0]["content"], re.MULTILINE)
    score = 5 if right else 1
    return Reply(json.dumps({"criteria": {n: {"reason": "checked", "score": score} for n in names}}))


@pytest.fixture
def judge_server(monkeypatch):
    with OpenAIServer(handler=rubric_or_ragas) as server:
        monkeypatch.setenv("CONTINUUM_JUDGE_BASE_URL", server.base_url)
        monkeypatch.setenv("CONTINUUM_JUDGE_MODEL", "judge-model")
        yield server


@pytest.fixture
def both_tasks(settings, monkeypatch) -> tuple[Settings, dg.Definitions]:
    import os

    monkeypatch.setenv("CONTINUUM_TASKS", os.pathsep.join([str(recipe_app.TASK_DIR), str(SUPPORT_DESK)]))
    both = Settings.from_env()
    return both, build_definitions(both)


def checks_of(result) -> list:
    return [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]


def test_two_task_instances_load_side_by_side(both_tasks):
    _, defs = both_tasks
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for task in ("recipe_answer", "support_answer"):
        assert {f"{task}/{a}" for a in ("reward_labels", "interaction_rewards", "sft_candidates", "quality_daily",
                                        "sft_dataset", "golden/golden", "base_model", "candidate_model",
                                        "registered_model")} <= keys
    assert {"interactions", "stg_interactions", "quality_daily"} <= keys  # one shared data plane
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {"recipe_answer_training_job", "support_answer_training_job", "ingest_job"} <= jobs
    sensors = {s.name for s in defs.sensors}
    assert {"recipe_answer_sample_count_sensor", "support_answer_sample_count_sensor"} <= sensors
    # the recipe task has no schedule (schedule: null); the support desk keeps its own
    assert {s.name for s in defs.schedules} == {"lake_maintenance_schedule", "privacy_upkeep_schedule",
                                          "support_answer_periodic_training"}
    key = dg.AssetKey(["recipe_answer", "sft_dataset"])
    assert defs.resolve_assets_def(key).group_names_by_key[key] == "recipe_answer_curation"


def test_recipe_assistant_learns_gates_registers_and_retrains_from_a_sensor(both_tasks, sdk, judge_server):
    settings, defs = both_tasks
    start = datetime.now(UTC) - timedelta(days=2)
    recipe_app.serve_traffic(320, seed=1, start=start)
    capture.flush()
    lake = Lake.from_settings(settings)
    ingest_landing(lake, settings.landing_dir)

    recipe_assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    checks = list(defs.asset_checks)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*recipe_assets, *checks], instance=instance, resources=defs.resources, run_config=RUN_CONFIG,
            # the task's flywheel, as its training job selects it (the rollout is its canary sensor's to drive)
            selection=dg.AssetSelection.key_prefixes([PREFIX]) - dg.AssetSelection.groups(f"{PREFIX}_rollout")
            | dg.AssetSelection.groups("sql"))
        assert result.success
        gate = checks_of(result)
        assert [g.passed for g in gate] == [True]
        table = gate[0].metadata["slices"].value
        assert "cuisine=italian" in table and "kind=dessert" in table and "coverage" in table

        # labels: every judge scored the task's interactions (and nothing of another task)
        labels = lake.read_arrow(TASK.table("reward_labels"))
        per_judge = labels.group_by("judge").aggregate([("interaction_id", "count_distinct")]).to_pylist()
        assert {r["judge"]: r["interaction_id_count_distinct"] for r in per_judge} == {
            "ingredients": 320, "exact": 320, "rubric": 320, "rag": 320}
        rubric = [r for r in labels.to_pylist() if r["judge"] == "rubric"]
        assert {r["score"] for r in rubric} == {0.0, 1.0}  # 5 → 1.0 for right answers, 1 → 0.0 for wrong ones
        assert judge_server.chat_requests  # real HTTP to the local server

        # reward: wrong answers (retried, scored 0 by the judges) rank below right ones; the dataset keeps the right
        rewards = {r["interaction_id"]: r for r in lake.read_arrow(TASK.table("interaction_rewards")).to_pylist()}
        interactions = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
        right = [r["target_reward"] for i, r in rewards.items()
                 if json.loads(interactions[i]["metadata"])["reference"] == interactions[i]["response"]]
        wrong = [r["target_reward"] for i, r in rewards.items()
                 if json.loads(interactions[i]["metadata"])["reference"] != interactions[i]["response"]]
        assert wrong and right and max(wrong) < min(right)
        assert all(r["implicit_score"] is not None for r in rewards.values())
        dataset = lake.read_arrow(TASK.table("sft_dataset"))
        assert 0 < dataset.num_rows <= len(right)
        for row in dataset.to_pylist():
            meta = json.loads(interactions[row["interaction_id"]]["metadata"])
            assert row["messages"][-1]["content"] == meta["reference"]

        # registration and lineage, both ways
        v1 = models.champion(settings.mlflow_uri, TASK.registered_model_name)
        assert v1 is not None and v1.tags["continuum.task"] == PREFIX
        trace = lineage.version_lineage(lake, settings.mlflow_uri, TASK.registered_model_name, v1.version)
        assert trace.interaction_ids == sorted(dataset["interaction_id"].to_pylist()) and trace.segments
        assert [v.version for v in lineage.versions_with_interaction(
            lake, settings.mlflow_uri, [TASK.registered_model_name, "continuum-support"],
            trace.interaction_ids[0])] == [v1.version]
        assert models.versions(settings.mlflow_uri, "continuum-support") == []  # the other task trained nothing

        # a candidate trained on shuffled answers is blocked: nothing is registered
        rows = dataset.to_pylist()
        answers = [r["messages"][-1]["content"] for r in rows]
        random.Random(0).shuffle(answers)
        for r, wrong_answer in zip(rows, answers, strict=True):
            r["messages"] = r["messages"][:-1] + [{"role": "assistant", "content": wrong_answer}]
        lake.replace_table(TASK.table("sft_dataset"), pa.Table.from_pylist(rows, schema=dataset.schema))
        corrupt = dg.materialize(
            [*recipe_assets, *checks], instance=instance, resources=defs.resources, raise_on_error=False,
            run_config={"ops": {f"{PREFIX}__candidate_model": {"config": {"max_steps": 120}}}},
            selection=[dg.AssetKey([PREFIX, "candidate_model"]), dg.AssetKey([PREFIX, "registered_model"])])
        assert not corrupt.success
        assert [g.passed for g in checks_of(corrupt)] == [False]
        assert [v.version for v in models.versions(settings.mlflow_uri, TASK.registered_model_name)] == [v1.version]

        # a sensor tick: new traffic → the sample-count sensor asks for a training run of this task only.
        # Repeats of known questions would dedup away (the sensor counts what the dataset would gain): new wordings.
        recipe_app.serve_traffic(240, seed=2, start=start + timedelta(days=1), questions=recipe_app.LATER_QUESTIONS)
        capture.flush()
        ingest_landing(lake, settings.landing_dir)
        sql = dg.materialize([*recipe_assets, *checks], instance=instance, resources=defs.resources,
                             selection=dg.AssetSelection.keys(dg.AssetKey([PREFIX, "reward_labels"]))
                             | dg.AssetSelection.groups("sql", f"{PREFIX}_sql"))
        assert sql.success
        sensor = defs.resolve_sensor_def(f"{PREFIX}_sample_count_sensor")
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            requests = sensor(context)
        requests = list(requests) if not isinstance(requests, dg.RunRequest | dg.SkipReason) else [requests]
        assert len(requests) == 1 and isinstance(requests[0], dg.RunRequest), requests
        assert requests[0].run_key.startswith(f"{PREFIX}:sample_count:")
        job = defs.resolve_job_def(f"{PREFIX}_training_job")
        run = job.execute_in_process(instance=instance, tags=requests[0].tags, run_config=RUN_CONFIG,
                                     raise_on_error=False)
        assert run.success, [e.message for e in run.all_events if e.is_failure]
        v2 = models.versions(settings.mlflow_uri, TASK.registered_model_name)[-1]
        assert v2.version != v1.version and v2.tags["continuum.parent_version"] == v1.version
