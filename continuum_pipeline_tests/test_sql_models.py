"""The SQL runner: dependencies from ref()/source(), order, errors, and numbers checked by hand."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.sql_models.project import SqlProject, SqlProjectError
from continuum_pipeline.sql_models.runner import run_all, run_model

from .conftest import REPO_ROOT, feedback, interaction, write_segment

SQL_DIR = REPO_ROOT / "dbt_like_sql"


def test_project_reads_dependencies_and_orders_models():
    project = SqlProject.load(SQL_DIR)
    assert project.models["stg_interactions"].sources == (("lake", "interactions"),)
    assert set(project.models["quality_daily"].refs) == {"stg_interactions", "interaction_feedback", "interaction_rewards"}
    assert project.models["interaction_rewards"].sources == (("lake", "reward_labels"),)
    order = project.order()
    for model in project.models.values():
        for ref in model.refs:
            assert order.index(ref) < order.index(model.name)
    assert project.sources() == {("lake", "interactions"), ("lake", "feedback_events"), ("lake", "reward_labels")}


def write_sql(root: Path, files: dict[str, str]) -> Path:
    for name, sql in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(sql)
    return root


def test_unknown_ref_cycle_and_bad_source_are_clear_errors(tmp_path):
    with pytest.raises(SqlProjectError, match=r"ref\('nope'\) names no model"):
        SqlProject.load(write_sql(tmp_path / "a", {"m.sql": "select * from {{ ref('nope') }}"}))
    with pytest.raises(SqlProjectError, match="cycle"):
        SqlProject.load(write_sql(tmp_path / "b", {"x.sql": "select * from {{ ref('y') }}",
                                                    "y.sql": "select * from {{ ref('x') }}"}))
    with pytest.raises(SqlProjectError, match="only source schema is 'lake'"):
        SqlProject.load(write_sql(tmp_path / "c", {"z.sql": "select * from {{ source('raw', 't') }}"}))
    with pytest.raises(SqlProjectError, match="lower_snake_case"):
        SqlProject.load(write_sql(tmp_path / "d", {"Bad-Name.sql": "select 1"}))


def test_quality_daily_matches_hand_computed_values(lake, settings):
    # Day 1, model A: latencies 10, 20, 30, 40; one error; feedback on three interactions.
    # Day 1, model B: one interaction, no feedback.  Day 2, model A: one interaction with a correction.
    recs = [
        interaction(1, ts="2026-11-20T08:00:00Z", model="A", latency_ms=10.0, prompt_tokens=5, completion_tokens=5),
        interaction(2, ts="2026-11-20T09:00:00Z", model="A", latency_ms=20.0, cost_usd=0.5),
        interaction(3, ts="2026-11-20T10:00:00Z", model="A", latency_ms=30.0, status="error", error_type="Timeout"),
        interaction(4, ts="2026-11-20T11:00:00Z", model="A", latency_ms=40.0, cost_usd=0.25),
        interaction(5, ts="2026-11-20T12:00:00Z", model="B", latency_ms=7.0),
        interaction(6, ts="2026-11-21T08:00:00Z", model="A", latency_ms=50.0),
        feedback(1, "i000001", score=1.0),
        feedback(2, "i000001", score=0.5),  # i1 mean 0.75, not negative
        feedback(3, "i000002", score=0.0),  # i2 negative
        feedback(4, "i000004", score=None, label="thumbs_up"),  # i4: feedback, no score
        feedback(5, "i000006", score=None, correction="the right answer"),  # i6 negative (an edit)
    ]
    write_segment(settings.landing_dir, "20261121T000000Z-q", recs)
    ingest_landing(lake, settings.landing_dir)
    project = SqlProject.load(SQL_DIR)
    results = {r.name: r for r in run_all(lake, project)}
    assert results["stg_interactions"].rows == 6

    rows = {(r["day"], r["model"]): r for r in lake.read_arrow("quality_daily").to_pylist()}
    a1, b1, a2 = rows[(date(2026, 11, 20), "A")], rows[(date(2026, 11, 20), "B")], rows[(date(2026, 11, 21), "A")]
    assert a1["interactions"] == 4
    assert a1["mean_score"] == pytest.approx((0.75 + 0.0) / 2)  # mean of per-interaction means, scored ones only
    assert a1["interactions_with_feedback"] == 3
    assert a1["negative_feedback_rate"] == pytest.approx(1 / 3)
    assert a1["p50_latency_ms"] == pytest.approx(25.0)
    assert a1["p95_latency_ms"] == pytest.approx(10 + 0.95 * 3 * 10)  # linear interpolation over 10..40
    assert a1["error_rate"] == pytest.approx(0.25)
    assert a1["tokens"] == 10 and a1["cost_usd"] == pytest.approx(0.75)
    assert b1["interactions"] == 1 and b1["negative_feedback_rate"] is None and b1["mean_score"] is None
    assert a2["negative_feedback_rate"] == pytest.approx(1.0)

    per = {r["interaction_id"]: r for r in lake.read_arrow("interaction_feedback").to_pylist()}
    assert per["i000001"]["feedback_events"] == 2 and per["i000001"]["mean_score"] == pytest.approx(0.75)
    assert per["i000006"]["has_correction"] and per["i000006"]["latest_correction"] == "the right answer"
    assert per["i000005"]["feedback_events"] == 0


def test_rerun_replaces_results_and_schema_changes_are_absorbed(lake, settings, tmp_path):
    write_segment(settings.landing_dir, "20261121T000000Z-r", [interaction(i) for i in range(3)])
    ingest_landing(lake, settings.landing_dir)
    root = write_sql(tmp_path / "sql", {"counts.sql": "select count(*) as n from {{ source('lake', 'interactions') }}"})
    first = run_model(lake, SqlProject.load(root), "counts")
    write_sql(root, {"counts.sql": "select count(*) as n, 'x' as label from {{ source('lake', 'interactions') }}"})
    second = run_model(lake, SqlProject.load(root), "counts")
    write_sql(root, {"counts.sql": "select distinct 'many' as n from {{ source('lake', 'interactions') }}"})
    third = run_model(lake, SqlProject.load(root), "counts")
    assert first.rows == second.rows == third.rows == 1
    assert lake.read_arrow("counts").to_pylist() == [{"n": "many"}]


def test_model_before_its_source_exists_says_what_to_do(settings, tmp_path):
    from continuum_pipeline.lake.catalog import Lake

    root = write_sql(tmp_path / "sql", {"m.sql": "select * from {{ source('lake', 'interactions') }}"})
    with pytest.raises(LookupError, match="materialize the ingest assets first"):
        run_model(Lake.from_settings(settings), SqlProject.load(root), "m")
