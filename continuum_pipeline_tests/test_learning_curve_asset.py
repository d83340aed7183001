"""The learning curve as an asset: success per golden slice for the base model and every registered version (the
gate's judge), production reward and cost per query from quality_daily, a table and decodable PNG plots; a
version already evaluated on the same golden set comes from the Iceberg cache."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from continuum_pipeline.defs.flywheel.curve import learning_curve, learning_curve_table
from continuum_pipeline.defs.flywheel.evaluation import golden_sets
from continuum_pipeline.defs.flywheel.keys import key
from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.evaluation import curve, golden
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.registry import models

from .conftest import interaction, label_task, run_task_sql, task_config, write_segment

pytest.importorskip("torch")

GOLDEN = [{"id": f"g{i}", "prompt": q, "metadata": {"topic": topic}}
          for i, (q, topic) in enumerate([("Where is my refund for order #48213?", "refund"),
                                           ("Where is my refund for order #48220?", "refund"),
                                           ("Where is my refund for order #48227?", "refund"),
                                           ("How do I reset my password?", "password"),
                                           ("How do I reset my password now?", "password")])]


def materialize_curve(task, settings, instance) -> dict:
    result = dg.materialize([learning_curve(task)], instance=instance, resources=resources_from_settings(settings))
    assert result.success
    [mat] = result.asset_materializations_for_node(learning_curve(task).op.name)
    return mat.metadata


def expected_success(model_dir, items) -> dict[str, float]:
    """What the gate's judge (length_check: characters / 100, at most 1) gives the model's own greedy answers,
    per slice, computed here by hand."""
    answers = golden.answer(model_dir, items)
    scores: dict[str, list[float]] = {}
    for item, answer in zip(items, answers, strict=True):
        score = min(1.0, len(answer) / 100)
        for s in dict.fromkeys((*item.slices, "all")):
            scores.setdefault(s, []).append(score)
    return {s: sum(v) / len(v) for s, v in scores.items()}


def test_learning_curve_rows_plots_production_and_cache(settings, lake, tmp_path):
    from continuum_pipeline.training import base_model as bm
    from continuum_pipeline_tests.test_training import TINY, VOCAB, toy_conversations

    golden_file = tmp_path / "golden.jsonl"
    golden_file.write_text("".join(json.dumps(r) + "\n" for r in GOLDEN))
    task = task_config(
        judges=[{"name": "len", "kind": "python", "function": "continuum_pipeline_tests.judge_functions:length_check"}],
        golden_sets=[{"name": "golden", "file": str(golden_file), "slices": ["metadata.topic"]}])
    home = settings.home / "tasks" / task.name
    base = bm.build_base_model(toy_conversations(8), VOCAB, home / "base", TINY)  # where builtin:tiny lives
    v1_dir = bm.build_base_model(toy_conversations(8), VOCAB, tmp_path / "v1", replace(TINY, pretrain_max_steps=20))
    v2_dir = bm.build_base_model(toy_conversations(8), VOCAB, tmp_path / "v2", replace(TINY, seed=1))

    # production: v1 served 4 calls at $0.002 each, a teacher 2 at $0.01; the judge scores "answer N" 8/100
    write_segment(settings.landing_dir, "20261121T000000Z-a",
                  [interaction(i, model="student", model_version="1", cost_usd=0.002) for i in range(4)]
                  + [interaction(i, model="teacher", cost_usd=0.01) for i in range(4, 6)])
    ingest_landing(lake, settings.landing_dir)
    from continuum_pipeline.judge.specs import JudgeEnvironment

    label_task(lake, task, [spec.build(JudgeEnvironment()) for spec in task.judges])
    run_task_sql(lake, task)

    uri = settings.mlflow_uri
    experiment = models.ensure_experiment(uri, "curve-test")
    client = models.client(uri)
    v1 = models.register(uri, task.registered_model_name, v1_dir, client.create_run(experiment).info.run_id, {})
    resources = resources_from_settings(settings)
    with dg.instance_for_test() as instance:
        assert dg.materialize(golden_sets(task), instance=instance, resources=resources).success
        meta = materialize_curve(task, settings, instance)
        assert meta["models_evaluated_now"].value == "base, v1" and meta["models_from_cache"].value == 0

        items = golden.items(lake.read_arrow(task.table("golden__golden")))
        cached = lake.read_arrow(task.table("learning_curve")).to_pylist()
        slices = {"all", "topic=refund", "topic=password"}
        assert meta["dagster/row_count"].value == len(cached) == 2 * len(slices)  # a row per version × slice
        for model, folder in (("base", base), ("v1", v1_dir)):
            rows = {r["slice"]: r for r in cached if r["model"] == model}
            assert set(rows) == slices
            assert {s: r["success"] for s, r in rows.items()} == pytest.approx(expected_success(folder, items))
            assert rows["topic=refund"]["examples"] == 3 and rows["all"]["examples"] == 5
        assert {r["model_version"] for r in cached} == {None, v1.version}

        # the table: a row per model, production figures where there are any, n/a where not
        table = {line.split("|")[1].strip(): line for line in meta["curve"].value.splitlines()[2:]}
        assert set(table) == {"base", "v1", "teacher"}
        assert "0.080" in table["v1"] and "0.002000" in table["v1"] and "| 4 |" in table["v1"]
        assert table["base"].count("n/a") == 2  # never served: no reward, no cost
        assert "0.010000" in table["teacher"] and "| n/a | n/a | n/a |" in table["teacher"]  # not evaluated

        # the plots: inline (data URI) and as files under the task folder, both decodable PNGs
        from PIL import Image

        for name in ("success_plot", "cost_quality_plot"):
            path = meta[f"{name}_png"].value
            assert path.startswith(str(home / "learning_curve"))
            inline = meta[name].value.split("base64,")[1].rstrip(")")
            assert base64.b64decode(inline) == Path(path).read_bytes()
            with Image.open(io.BytesIO(base64.b64decode(inline))) as image:
                assert image.format == "PNG" and image.size[0] > 300

        # a new registration: only v2 answers the golden set; base and v1 come from the cache unchanged
        v2 = models.register(uri, task.registered_model_name, v2_dir, client.create_run(experiment).info.run_id, {})
        meta = materialize_curve(task, settings, instance)
        assert meta["models_evaluated_now"].value == f"v{v2.version}" and meta["models_from_cache"].value == 2
        again = lake.read_arrow(task.table("learning_curve")).to_pylist()
        assert [r for r in again if r["model"] != f"v{v2.version}"] == cached
        assert {r["slice"]: r["success"] for r in again if r["model"] == "v2"} == pytest.approx(
            expected_success(v2_dir, items))
        assert "| v2 |" in meta["curve"].value

    # the demo's table: the same rows outside a run, all from the cache now
    said: list[str] = []
    assert curve.markdown(learning_curve_table(settings, task, said.append)) == meta["curve"].value and not said


def test_pareto_front_and_production_summary():
    points = [("v1", 0.002, 0.6), ("v2", 0.002, 0.8), ("teacher", 0.01, 0.9), ("v3", 0.005, 0.7)]
    # v1 is beaten by v2 (same cost, better); v3 by v2 (cheaper and better); the teacher is the best, at a price
    assert curve.pareto_front(points) == ["v2", "teacher"]
    served = curve.production([
        {"model": "student", "model_version": "1", "interactions": 3, "mean_reward": 0.5, "cost_usd": 0.03},
        {"model": "student", "model_version": "1", "interactions": 1, "mean_reward": 0.9, "cost_usd": None},
        {"model": "teacher", "model_version": None, "interactions": 2, "mean_reward": None, "cost_usd": None}])
    one = served[("student", "1")]
    assert (one.interactions, one.mean_reward, one.cost_per_query_usd) == (4, pytest.approx(0.6), pytest.approx(0.01))
    teacher = served[("teacher", None)]
    assert (teacher.mean_reward, teacher.cost_per_query_usd) == (None, None)
    assert key(task_config(), "learning_curve").to_user_string() == "support_answer/learning_curve"


def test_learning_curve_before_the_golden_set_says_what_to_materialize(settings, lake):
    task = task_config()
    with dg.instance_for_test() as instance:
        result = dg.materialize([learning_curve(task)], instance=instance, raise_on_error=False,
                                resources=resources_from_settings(settings))
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "materialize `support_answer/golden/golden` first" in failure.event_specific_data.error.message
