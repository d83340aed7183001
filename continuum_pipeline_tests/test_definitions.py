"""The Dagster code location: it loads, validates, materializes with metadata, and its sensor behaves."""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg

from continuum_pipeline.definitions import build_definitions
from continuum_pipeline.defs.ingest.sensors import landing_sensor
from continuum_pipeline.defs.resources import LandingResource

from .conftest import REPO_ROOT, feedback, interaction, write_segment

INGEST = ["interactions", "feedback_events", "quarantine"]
SQL = ["stg_interactions", "stg_feedback_events", "interaction_feedback", "quality_daily"]
TASK_SQL = ["interaction_rewards", "sft_candidates", "quality_daily"]  # per task, under the task's prefix


def user_strings(keys) -> set[str]:
    return {k.to_user_string() for k in keys}


def test_definitions_load_with_groups_and_sql_dependencies(settings):
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    keys = user_strings(graph.get_all_asset_keys())
    assert set(INGEST + SQL) <= keys
    assert "lake_maintenance" not in keys  # upkeep is an op job: it makes no data
    for key in INGEST:
        assert graph.get(dg.AssetKey(key)).group_name == "ingest"
    for key in SQL:
        assert graph.get(dg.AssetKey(key)).group_name == "sql"
    assert "interaction_rewards" not in keys and "sft_candidates" not in keys  # no shared learning-loop tables
    assert user_strings(graph.get(dg.AssetKey("quality_daily")).parent_keys) == {"stg_interactions",
                                                                                  "interaction_feedback"}
    assert user_strings(graph.get(dg.AssetKey("stg_interactions")).parent_keys) == {"interactions"}

    # the packaged example task (the default CONTINUUM_TASKS): its own SQL models, labels and triggers
    for name in TASK_SQL:
        assert graph.get(dg.AssetKey(["support_answer", name])).group_name == "support_answer_sql"
    assert user_strings(graph.get(dg.AssetKey(["support_answer", "interaction_rewards"])).parent_keys) == {
        "stg_interactions", "stg_feedback_events", "support_answer/reward_labels"}
    assert user_strings(graph.get(dg.AssetKey(["support_answer", "quality_daily"])).parent_keys) == {
        "stg_interactions", "interaction_feedback", "support_answer/interaction_rewards"}
    assert user_strings(graph.get(dg.AssetKey(["support_answer", "sft_candidates"])).parent_keys) == {
        "stg_interactions", "support_answer/interaction_rewards"}
    assert user_strings(graph.get(dg.AssetKey(["support_answer", "reward_labels"])).parent_keys) == {"interactions"}
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "ingest_job", "sql_models_job", "lake_maintenance_job", "support_answer_training_job",
        "support_answer_monitoring_job"}
    assert {s.name for s in defs.sensors} >= {"landing_sensor", "support_answer_sample_count_sensor",
                                              "support_answer_quality_drop_sensor", "support_answer_error_rate_sensor"}
    assert {s.name for s in defs.schedules} >= {"lake_maintenance_schedule", "support_answer_periodic_training"}
    assert defs.resolve_schedule_def("lake_maintenance_schedule").job_name == "lake_maintenance_job"

    # every real input is declared: the start model (champion, or base) and the golden sets the candidate's
    # lineage tags name; the golden sets also feed the gate check; the learning curve follows each registration
    task = "support_answer"
    assert user_strings(graph.get(dg.AssetKey([task, "candidate_model"])).parent_keys) == {
        f"{task}/sft_dataset", f"{task}/base_model", f"{task}/champion", f"{task}/golden/golden"}
    gate = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey([task, "candidate_model"]), "eval_gate"))
    assert [d.asset_key for d in gate.additional_deps] == [dg.AssetKey([task, "golden", "golden"])]
    champion = graph.get(dg.AssetKey([task, "champion"]))
    assert not champion.is_materializable and champion.group_name == f"{task}_registry" and not champion.parent_keys
    assert f"{task}/registered_model" in user_strings(graph.get(dg.AssetKey([task, "learning_curve"])).parent_keys)
    training = defs.resolve_job_def(f"{task}_training_job").asset_layer.selected_asset_keys
    assert dg.AssetKey([task, "learning_curve"]) in training and dg.AssetKey([task, "champion"]) not in training


def test_dagster_definitions_validate_passes(settings):
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr


def test_ingest_and_sql_jobs_materialize_with_row_counts_schema_and_summary(settings):
    recs = [interaction(i) for i in range(30)] + [feedback(i, f"i{i:06d}", score=0.0) for i in range(10)]
    write_segment(settings.landing_dir, "20261121T000000Z-a", recs + [b"{not json"])
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        ingest = defs.resolve_job_def("ingest_job").execute_in_process(instance=instance)
        assert ingest.success
        sql = defs.resolve_job_def("sql_models_job").execute_in_process(instance=instance)
        assert sql.success

        def latest(key: str | list[str]) -> dict:
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            return event.asset_materialization.metadata

        expected_rows = {"interactions": 30, "feedback_events": 10, "quarantine": 1, "stg_interactions": 30,
                         "interaction_feedback": 30, "quality_daily": 1}
        for key, rows in expected_rows.items():
            meta = latest(key)
            assert meta["dagster/row_count"].value == rows, key
            assert meta["dagster/column_schema"].schema.columns, key
        assert "invalid_json" in latest("quarantine")["summary"].value
        assert "30 rows appended" in latest("interactions")["summary"].value
        columns = {c.name for c in latest("interactions")["dagster/column_schema"].schema.columns}
        assert {"interaction_id", "ts", "messages", "segment", "segment_line"} <= columns
        assert "| day |" in latest("quality_daily")["summary"].value

        # the task's monitoring job: its labels (the example's KB judge cannot check traffic without a scenario
        # intent, so every interaction stays unlabelled, to retry) and its SQL models over its 30 interactions
        monitoring = defs.resolve_job_def("support_answer_monitoring_job").execute_in_process(instance=instance)
        assert monitoring.success
        labels = latest(["support_answer", "reward_labels"])
        assert (labels["labelled"].value, labels["failed"].value, labels["dagster/row_count"].value) == (0, 30, 0)
        for name, rows in {"interaction_rewards": 30, "sft_candidates": 30, "quality_daily": 1}.items():
            meta = latest(["support_answer", name])
            assert meta["dagster/row_count"].value == rows, name
            assert meta["dagster/column_schema"].schema.columns, name
        columns = {c.name for c in latest(["support_answer", "quality_daily"])["dagster/column_schema"].schema.columns}
        assert "mean_reward" in columns


def test_lake_maintenance_job_reports_what_it_did(settings):
    for c in range(5):
        write_segment(settings.landing_dir, f"2026112{c}T000000Z-m{c}", [interaction(c * 10 + i) for i in range(3)])
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        result = defs.resolve_job_def("lake_maintenance_job").execute_in_process(
            instance=instance,
            run_config={"ops": {"lake_maintenance": {"config": {"snapshot_retention_hours": 0, "retain_last_snapshots": 1,
                                                                  "compact_min_files": 2}}}})
        assert result.success
        [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        meta = output.event_specific_data.metadata
        assert "| interactions |" in meta["summary"].value


def test_landing_sensor_requests_each_new_batch_once(settings):
    landing = LandingResource(landing_dir=str(settings.landing_dir), max_segments=10)
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"landing": landing})
        assert isinstance(landing_sensor(ctx), dg.SkipReason)

        write_segment(settings.landing_dir, "20261121T000001Z-a", [interaction(1)])
        write_segment(settings.landing_dir, "20261121T000002Z-b", [interaction(2)])
        ctx = dg.build_sensor_context(instance=instance, resources={"landing": landing}, cursor=ctx.cursor)
        first = landing_sensor(ctx)
        assert isinstance(first, dg.RunRequest) and first.run_key.startswith("landing-")
        assert first.tags["continuum/segments"] == "2"
        assert sorted(json.loads(ctx.cursor)["requested"]) == ["20261121T000001Z-a.jsonl", "20261121T000002Z-b.jsonl"]

        ctx = dg.build_sensor_context(instance=instance, resources={"landing": landing}, cursor=ctx.cursor)
        skip = landing_sensor(ctx)
        assert isinstance(skip, dg.SkipReason) and "2 waiting" in skip.skip_message
        (settings.landing_dir / "export.json").write_text("{}")  # not a segment name: said, not silently ignored
        ctx = dg.build_sensor_context(instance=instance, resources={"landing": landing}, cursor=ctx.cursor)
        assert "ignored (not *.jsonl / *.jsonl.gz): export.json" in landing_sensor(ctx).skip_message

        write_segment(settings.landing_dir, "20261121T000003Z-c", [interaction(3)])
        (settings.landing_dir / "20261121T000001Z-a.jsonl").unlink()  # archived by an ingest run
        ctx = dg.build_sensor_context(instance=instance, resources={"landing": landing}, cursor=ctx.cursor)
        second = landing_sensor(ctx)
        assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key
        assert second.tags["continuum/segments"] == "1"
        assert sorted(json.loads(ctx.cursor)["requested"]) == ["20261121T000002Z-b.jsonl", "20261121T000003Z-c.jsonl"]


def test_compact_console_logger_prints_one_short_line_per_message(capsys):
    from continuum_pipeline.defs.loggers import COMPACT_RUN_CONFIG, compact_console

    @dg.asset
    def greeting(context) -> None:
        context.log.info("hello from the asset")
        context.log.debug("too chatty for the console")

    @dg.asset
    def broken() -> None:
        raise ValueError("the reason it broke")

    defs = dg.Definitions(assets=[greeting, broken], loggers={"compact_console": compact_console})
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(run_config=COMPACT_RUN_CONFIG, raise_on_error=False)
    out = capsys.readouterr().out
    assert "      greeting: hello from the asset\n" in out
    assert "too chatty" not in out and "RUN_START" not in out and "STEP_START" not in out  # DEBUG events hidden
    assert "ValueError: the reason it broke" in out  # failures still show, with their error
