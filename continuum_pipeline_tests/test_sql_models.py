"""The SQL runner: dependencies from ref()/source(), order, errors, and numbers checked by hand."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from continuum_pipeline.judge.verifier import ProgrammaticVerifier
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.sql_models.project import SqlProject, SqlProjectError
from continuum_pipeline.sql_models.runner import run_all, run_model

from .conftest import SQL_DIR, feedback, interaction, label_task, run_task_sql, task_config, write_segment


def test_project_reads_dependencies_and_orders_models():
    project = SqlProject.load(SQL_DIR)
    assert set(project.models) == {"stg_interactions", "stg_feedback_events", "interaction_feedback", "quality_daily"}
    assert project.models["stg_interactions"].sources == (("lake", "interactions"),)
    assert set(project.models["quality_daily"].refs) == {"stg_interactions", "interaction_feedback"}
    order = project.order()
    for model in project.models.values():
        for ref in model.refs:
            assert order.index(ref) < order.index(model.name)
    assert project.sources() == {("lake", "interactions"), ("lake", "feedback_events")}


def test_task_models_read_the_tasks_tables_and_config_and_ref_the_shared_models():
    task = SqlProject.load_task_models(SQL_DIR)
    assert set(task.models) == {"interaction_rewards", "sft_candidates", "quality_daily"}
    assert task.shared is not None and "quality_daily" in task.shared.models  # same name, its own table
    rewards = task.models["interaction_rewards"]
    assert set(rewards.refs) == {"stg_interactions", "stg_feedback_events"}
    assert set(rewards.sources) == {("task", "reward_labels"), ("config", "judge_weights"),
                                    ("config", "implicit_signals"), ("config", "outcomes"),
                                    ("config", "excluded_interactions")}
    assert set(task.models["quality_daily"].refs) == {"stg_interactions", "interaction_feedback", "interaction_rewards"}
    assert set(task.models["sft_candidates"].refs) == {"stg_interactions", "interaction_rewards"}
    order = task.order()
    assert order.index("interaction_rewards") < order.index("sft_candidates")
    assert order.index("interaction_rewards") < order.index("quality_daily")
    assert set(order) == set(task.models)  # the shared models it refs run in the shared project


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
    with pytest.raises(SqlProjectError, match="only source schema is 'lake'"):  # task sources: task models only
        SqlProject.load(write_sql(tmp_path / "e", {"z.sql": "select * from {{ source('task', 'reward_labels') }}"}))
    with pytest.raises(SqlProjectError, match="'lake', 'task' or 'config'"):
        SqlProject.load_task_models(write_sql(tmp_path / "f", {"task/z.sql": "select * from {{ source('raw', 't') }}"}))
    with pytest.raises(SqlProjectError, match=r"ref\('nope'\) names no model"):
        SqlProject.load_task_models(write_sql(tmp_path / "g", {"task/z.sql": "select * from {{ ref('nope') }}"}))
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
    assert a1["task"] == "support_answer" and "mean_reward" not in a1  # rewards are per task
    assert a1["interactions"] == 4
    assert a1["mean_score"] == pytest.approx((0.75 + 0.0) / 2)  # mean of per-interaction means, scored ones only
    assert a1["interactions_with_feedback"] == 3
    assert a1["negative_feedback_rate"] == pytest.approx(1 / 3)
    assert a1["latency_p50_ms"] == pytest.approx(25.0)
    assert a1["latency_p95_ms"] == pytest.approx(10 + 0.95 * 3 * 10)  # linear interpolation over 10..40
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
    with pytest.raises(LookupError, match=r"source\('lake', 'interactions'\) is not in the lake yet \(table "
                                          r"interactions\); materialize the asset that writes it first"):
        run_model(Lake.from_settings(settings), SqlProject.load(root), "m")


def judged_by(scores: dict[int, float], name: str = "kb"):
    """A judge giving interaction i the score scores[i]."""
    return ProgrammaticVerifier(lambda item: (scores[int(item.interaction_id[1:])], "as given"), name=name)


def rewards_by_id(lake, task) -> dict[str, dict]:
    return {r["interaction_id"]: r for r in lake.read_arrow(task.table("interaction_rewards")).to_pylist()}


def test_rewards_follow_the_tasks_weights_signals_outcomes_and_corrections(lake, settings):
    judges = [{"name": n, "kind": "python", "function": "continuum_pipeline_tests.judge_functions:plain_check"}
              for n in ("kb", "style", "noise")]
    reward = {"judges": {"kb": 3, "style": 1},  # noise is a judge but not in the reward: weight 0
              "weights": {"judges": 0.6, "explicit": 0.3, "implicit": 0.1},
              "implicit_signals": {"copy": 1.0, "retry": 0.0}, "outcomes": {"ticket_reopened": 0.0, "escalated": 0.25},
              "corrections": {"as_target": False, "target_reward": 0.9}}
    task = task_config(judges=judges, reward=reward)
    write_segment(settings.landing_dir, "20261121T000000Z-w1", [
        *[interaction(i) for i in range(1, 8)], interaction(10, task="other_task"),
        feedback(1, "i000002", score=0.5), feedback(2, "i000002", score=None, signal="copy"),
        feedback(3, "i000003", score=None, signal="retry"), feedback(4, "i000003", score=None, signal="share"),
        feedback(5, "i000004", score=1.0), feedback(6, "i000004", score=None, outcome="escalated"),
        feedback(7, "i000005", score=None, outcome="escalated"), feedback(8, "i000005", score=None, outcome="ticket_reopened"),
        feedback(9, "i000006", score=1.0), feedback(10, "i000006", score=None, outcome="resolved"),
        feedback(11, "i000007", score=None, correction="the fixed answer"),
    ])
    ingest_landing(lake, settings.landing_dir)
    label_task(lake, task, [judged_by({1: 1, 2: 1, 3: 0, 4: 1, 5: 1, 6: 1, 7: 0}, "kb"),
                            judged_by({1: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 0, 7: 0}, "style"),
                            judged_by(dict.fromkeys(range(1, 8), 0.0), "noise")])
    # arrive after labelling: feedback only, and nothing at all
    write_segment(settings.landing_dir, "20261121T000001Z-w2", [
        interaction(8), interaction(9), feedback(12, "i000008", score=0.0), feedback(13, "i000008", score=None, signal="copy")])
    ingest_landing(lake, settings.landing_dir)
    results = run_task_sql(lake, task)
    assert results["interaction_rewards"].rows == 9  # the other task's interaction is not this task's

    r = rewards_by_id(lake, task)
    expected = {  # (judge_score, response_reward); target_reward is the same here: one judge version
        "i000001": (0.75, 0.75),  # judges (3·1 + 1·0)/4; nothing else
        "i000002": (1.0, (0.6 * 1.0 + 0.3 * 0.5 + 0.1 * 1.0) / 1.0),  # rating 0.5, copy → 0.85
        "i000003": (0.25, (0.6 * 0.25 + 0.1 * 0.0) / 0.7),  # retry → 0; share is no configured signal
        "i000004": (1.0, 0.25),  # an outcome replaces the combined reward
        "i000005": (1.0, 0.0),  # several outcomes: the lowest
        "i000006": (0.75, (0.6 * 0.75 + 0.3 * 1.0) / 0.9),  # "resolved" is no configured outcome
        "i000007": (0.0, 0.0),  # an edit says the answer was wrong
        "i000008": (None, (0.3 * 0.0 + 0.1 * 1.0) / 0.4),  # no judge yet: feedback alone
        "i000009": (None, None),  # nothing known: no reward, not 0
    }
    for iid, (judge_score, reward_value) in expected.items():
        row = r[iid]
        assert row["judge_score"] == pytest.approx(judge_score) and row["response_reward"] == pytest.approx(
            reward_value), (iid, row)
        assert row["target_reward"] == pytest.approx(reward_value), (iid, row)
    assert (r["i000001"]["judges"], r["i000008"]["judges"]) == (2, 0)  # noise does not count
    assert (r["i000002"]["feedback_score"], r["i000002"]["implicit_score"]) == (0.5, 1.0)
    assert r["i000003"]["implicit_score"] == 0.0 and r["i000003"]["feedback_score"] is None
    assert (r["i000004"]["outcome_reward"], r["i000005"]["outcome_reward"], r["i000006"]["outcome_reward"]) == (
        0.25, 0.0, None)
    assert r["i000007"]["correction"] is None  # as_target false: the edit is not a training target
    candidates = {c["interaction_id"]: c for c in lake.read_arrow(task.table("sft_candidates")).to_pylist()}
    assert (candidates["i000007"]["target_response"], candidates["i000007"]["target_source"],
            candidates["i000007"]["reward"]) == ("answer 7", "response", 0.0)

    # as_target true: the edit becomes the target at the configured reward; what the model said still scores 0
    as_target = task_config(judges=judges, reward={**reward, "corrections": {"as_target": True, "target_reward": 0.9}})
    run_task_sql(lake, as_target)
    corrected = rewards_by_id(lake, as_target)["i000007"]
    assert (corrected["response_reward"], corrected["target_reward"], corrected["correction"]) == (
        0.0, 0.9, "the fixed answer")
    candidate = next(c for c in lake.read_arrow(task.table("sft_candidates")).to_pylist()
                     if c["interaction_id"] == "i000007")
    assert (candidate["target_response"], candidate["target_source"], candidate["reward"]) == (
        "the fixed answer", "correction", 0.9)

    # no `reward.judges`: every judge counts, weight 1
    equal = task_config(judges=judges, reward={k: v for k, v in reward.items() if k != "judges"})
    run_task_sql(lake, equal)
    r = rewards_by_id(lake, equal)
    assert r["i000001"]["judge_score"] == pytest.approx(1 / 3) and r["i000001"]["judges"] == 3
    assert r["i000002"]["judge_score"] == pytest.approx(2 / 3)


def test_each_task_has_its_own_quality_daily_with_mean_reward(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-t", [
        interaction(1, ts="2026-11-20T08:00:00Z", model="A"),
        interaction(2, ts="2026-11-20T09:00:00Z", model="A"),
        interaction(3, ts="2026-11-20T10:00:00Z", model="A", status="error", response=None, error_type="Timeout"),
        interaction(4, ts="2026-11-20T11:00:00Z", model="A", task="recipe_answer"),
        interaction(5, ts="2026-11-21T08:00:00Z", model="A"),
        interaction(6, ts="2026-11-20T12:00:00Z", model="B"),
        interaction(7, ts="2026-11-20T13:00:00Z", model="A", task="recipe_answer"),
        feedback(1, "i000001", score=1.0), feedback(2, "i000006", score=0.0), feedback(3, "i000007", score=0.0),
    ])
    ingest_landing(lake, settings.landing_dir)
    support, recipes = task_config(), task_config(name="recipe_answer")
    label_task(lake, support, [judged_by({1: 1.0, 2: 0.0, 5: 1.0, 6: 0.0})])
    label_task(lake, recipes, [judged_by({4: 0.5, 7: 1.0})])
    run_task_sql(lake, support)
    run_task_sql(lake, recipes)

    def daily(table: str) -> dict:
        return {(r["day"], r["model"]): r for r in lake.read_arrow(table).to_pylist()}

    d20, d21 = date(2026, 11, 20), date(2026, 11, 21)
    mine = daily("support_answer__quality_daily")
    assert set(mine) == {(d20, "A"), (d20, "B"), (d21, "A")}  # the recipe task's interactions are not here
    a1 = mine[(d20, "A")]
    assert a1["interactions"] == 3 and a1["mean_reward"] == pytest.approx(0.5)  # 1.0 and 0.0; the failed call: none
    assert a1["error_rate"] == pytest.approx(1 / 3) and a1["interactions_with_feedback"] == 1
    assert a1["negative_feedback_rate"] == 0.0 and a1["mean_score"] == 1.0
    assert mine[(d20, "B")]["mean_reward"] == 0.0 and mine[(d20, "B")]["negative_feedback_rate"] == 1.0
    assert mine[(d21, "A")]["mean_reward"] == 1.0 and mine[(d21, "A")]["negative_feedback_rate"] is None

    theirs = daily("recipe_answer__quality_daily")
    assert set(theirs) == {(d20, "A")}
    assert theirs[(d20, "A")]["interactions"] == 2
    assert theirs[(d20, "A")]["mean_reward"] == pytest.approx((0.5 + 0.7 * 1.0) / 2)  # i7: (0.7·1 + 0.3·0) / 1
    assert theirs[(d20, "A")]["negative_feedback_rate"] == 1.0

    shared = {(r["day"], r["task"], r["model"]): r["interactions"] for r in lake.read_arrow("quality_daily").to_pylist()}
    assert shared == {(d20, "support_answer", "A"): 3, (d20, "support_answer", "B"): 1,
                      (d21, "support_answer", "A"): 1, (d20, "recipe_answer", "A"): 2}


def test_staging_counts_a_redelivered_call_once_and_spreads_trace_level_scores(lake, settings):
    trace = "0af7651916cd43dd8448eb211c80319c"
    first, second = f"otel-{trace}-b7ad6b7169203331", f"otel-{trace}-00f067aa0ba902b7"
    other = "otel-11111111111111111111111111111111-2222222222222222"
    write_segment(settings.landing_dir, "20261121T000000Z-a", [
        interaction(1, interaction_id=first), interaction(2, interaction_id=second),
        interaction(3, interaction_id=other), feedback(1, first, score=1.0)])
    # an exporter that lost our 200 sends the same span and score again, in a later segment
    write_segment(settings.landing_dir, "20261121T000001Z-b", [
        interaction(1, interaction_id=first), feedback(1, first, score=1.0),
        feedback(2, f"otel-{trace}", score=0.0, label="trace_verdict")])  # a trace-level score
    ingest_landing(lake, settings.landing_dir)
    assert lake.read_arrow("interactions").num_rows == 4  # the lake keeps what arrived, raw
    run_all(lake, SqlProject.load(SQL_DIR))
    staged = lake.read_arrow("stg_interactions")["interaction_id"].to_pylist()
    assert sorted(staged) == sorted([first, second, other])
    events = sorted((r["feedback_id"], r["interaction_id"]) for r in lake.read_arrow("stg_feedback_events").to_pylist())
    assert events == sorted([("f000001", first), ("f000002", first), ("f000002", second)])
    per = {r["interaction_id"]: r for r in lake.read_arrow("interaction_feedback").to_pylist()}
    assert per[first]["feedback_events"] == 2 and per[second]["negative_events"] == 1
    assert per[other]["feedback_events"] == 0
