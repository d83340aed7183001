"""The learning loop end to end through Dagster: teacher traffic → v1 registered; lineage both ways; the
registered model reloads from MLflow and generates exactly what was trained; a corrupted candidate is blocked."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from continuum_pipeline import capture
from continuum_pipeline.definitions import build_definitions
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.registry import lineage, models
from continuum_pipeline.scenario import SupportDesk, load_scenario, simulate_traffic
from continuum_pipeline.serving.generate import Generator
from continuum_pipeline.task.config import load_task_config

TASK = load_task_config(Path(__file__).resolve().parents[1] / "continuum_pipeline/scenario/defs/support_desk/defs.yaml")

# Small enough for CI on 2 cores; both gates run with their default margins: the good candidate must beat
# the base on every slice, the corrupted one below must be blocked against v1.
TRAIN = {"max_steps": 150, "threads": 1}  # two xdist workers share 2 cores
RUN_CONFIG = {"ops": {
    "support_answer__base_model": {"config": {"pretraining_conversations": 300, "pretrain_max_steps": 200}},
    "support_answer__candidate_model": {"config": TRAIN},
}}


@pytest.fixture
def flywheel(settings, sdk):
    desk = SupportDesk(load_scenario())
    start = datetime.now(UTC) - timedelta(days=2)
    simulate_traffic(desk, 360, "before", desk.teacher_serve("before", seed=1), model="teacher", model_version=None,
                     who="teacher", seed=1, start=start)
    capture.flush()
    return desk, build_definitions(settings)


def test_cycle_registers_a_version_that_reloads_identically_with_lineage_both_ways(flywheel, settings):
    desk, defs = flywheel
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        result = defs.resolve_job_def("support_answer_training_job").execute_in_process(instance=instance,
                                                                                      run_config=RUN_CONFIG)
        assert result.success
        checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert [c.event_specific_data.passed for c in checks] == [True]
        table = checks[0].event_specific_data.metadata["slices"].value
        assert "intent=refund_status" in table and "intent_group=changed_intents" in table and "Holm" in table

        model_name = TASK.registered_model_name
        v1 = models.champion(settings.mlflow_uri, model_name)
        assert v1 is not None and set(v1.aliases) == {"champion", "challenger"}
        candidate = instance.get_latest_materialization_event(
            dg.AssetKey(["support_answer", "candidate_model"])).asset_materialization
        merged_dir = candidate.metadata["merged_dir"].value

        # the registered model reloads offline and generates exactly what the trained model generated
        import mlflow.pyfunc

        conversations = [ex["messages"] for ex in Lake.from_settings(settings)
                         .read_arrow(TASK.table("golden__golden")).select(["messages"]).to_pylist()[:24]]
        reloaded = mlflow.pyfunc.load_model(v1.uri).predict(conversations)
        assert reloaded == Generator.from_pretrained(merged_dir).generate(conversations)
        assert any(reloaded)

        # lineage: version → dataset snapshot → interactions → landing segments, and back
        lake = Lake.from_settings(settings)
        trace = lineage.version_lineage(lake, settings.mlflow_uri, model_name, v1.version)
        dataset = lake.read_arrow(TASK.table("sft_dataset"))
        assert trace.interaction_ids == sorted(dataset["interaction_id"].to_pylist())
        assert trace.segments and trace.parent == "base"
        assert json.loads(v1.tags["continuum.golden_set_versions"])["golden"]
        assert json.loads(v1.tags["continuum.judge_versions"])["kb_verifier"]
        assert v1.tags["continuum.task"] == "support_answer" and v1.tags["continuum.dagster_run_id"]
        some_id = trace.interaction_ids[0]
        assert [v.version for v in lineage.versions_with_interaction(lake, settings.mlflow_uri, model_name,
                                                                     some_id)] == [v1.version]
        interactions = lake.read_arrow("interactions")
        denied = interactions.filter(pc.equal(interactions["consent"], "denied"))
        if denied.num_rows:  # consent-denied interactions never reach a dataset, so no version names them
            assert lineage.versions_with_interaction(lake, settings.mlflow_uri, model_name,
                                                     denied["interaction_id"][0].as_py()) == []

        # a candidate trained on shuffled answers must be blocked by the gate: nothing is registered
        rows = dataset.to_pylist()
        answers = [r["messages"][-1]["content"] for r in rows]
        random.Random(0).shuffle(answers)
        for r, wrong in zip(rows, answers, strict=True):
            r["messages"] = r["messages"][:-1] + [{"role": "assistant", "content": wrong}]
        lake.replace_table(TASK.table("sft_dataset"), pa.Table.from_pylist(rows, schema=dataset.schema))
        corrupt = defs.resolve_job_def("support_answer_training_job").get_subset(
            asset_selection={dg.AssetKey(["support_answer", "candidate_model"]),
                             dg.AssetKey(["support_answer", "registered_model"])})
        bad = corrupt.execute_in_process(instance=instance, raise_on_error=False,
                                         run_config={"ops": {"support_answer__candidate_model": {"config": TRAIN}}})
        assert not bad.success
        gate = [e for e in bad.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert [g.event_specific_data.passed for g in gate] == [False]
        assert "FAIL" in json.dumps(str(gate[0].event_specific_data.metadata))
        assert [v.version for v in models.versions(settings.mlflow_uri, model_name)] == [v1.version]
