"""Labels, rewards, curation, gate statistics and trigger decisions — real Iceberg, DuckDB and judges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from continuum_pipeline.curation.dataset import CurationPolicy, curate_sft
from continuum_pipeline.evaluation.gate import GoldenExample, compare, mcnemar_p
from continuum_pipeline.evaluation.triggers import (
    DailyQuality,
    cooling_down,
    error_rate,
    quality_drop,
    sample_count,
)
from continuum_pipeline.judge.base import JudgeError
from continuum_pipeline.judge.labeling import label_interactions
from continuum_pipeline.judge.llm import LLMJudge, RubricCriterion
from continuum_pipeline.judge.verifier import ProgrammaticVerifier
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.sql_models.project import SqlProject
from continuum_pipeline.sql_models.runner import run_all

from .conftest import REPO_ROOT, feedback, interaction, write_segment
from .openai_server import OpenAIServer


def answer_check(item):
    """A verifier that knows the right answer: 'answer <n>' is right for even n."""
    n = int(item.interaction_id[1:])
    return (1.0, "matches the KB") if n % 2 == 0 else (0.0, "wrong")


def test_labels_are_incremental_per_judge_version_and_survive_a_bad_verdict(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-l1", [interaction(i) for i in range(6)])
    ingest_landing(lake, settings.landing_dir)
    v1 = ProgrammaticVerifier(answer_check, name="kb", version="v1")
    first = label_interactions(lake, [v1])
    assert first.labelled == {"kb": 6} and first.mean_score["kb"] == pytest.approx(0.5)
    again = label_interactions(lake, [v1])
    assert again.labelled == {"kb": 0} and again.already_labelled == {"kb": 6} and again.snapshot_id is None

    write_segment(settings.landing_dir, "20261121T000001Z-l2", [interaction(i) for i in range(6, 9)])
    ingest_landing(lake, settings.landing_dir)
    assert label_interactions(lake, [v1]).labelled == {"kb": 3}
    assert label_interactions(lake, [ProgrammaticVerifier(answer_check, name="kb", version="v2")]).labelled == {"kb": 9}

    def flaky(item):
        if item.interaction_id == "i000004":
            return float("nan"), "broken"
        return 1.0, "ok"

    report = label_interactions(lake, [ProgrammaticVerifier(flaky, name="flaky")])
    assert report.labelled == {"flaky": 8} and report.failed == {"flaky": 1}
    labels = lake.read_arrow("reward_labels")
    assert labels.num_rows == 6 + 3 + 9 + 8


def test_llm_judge_labels_through_an_openai_compatible_server(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-j", [interaction(i) for i in range(3)])
    ingest_landing(lake, settings.landing_dir)
    verdict = '{"criteria": {"correct": {"score": 5, "reason": "right"}, "helpful": {"score": 1, "reason": "terse"}}}'
    with OpenAIServer(chat=lambda messages: verdict) as server:
        judge = LLMJudge(base_url=server.base_url, model="judge-model", criteria=[
            RubricCriterion("correct", "states the right facts", 2.0), RubricCriterion("helpful", "says what to do", 1.0)])
        report = label_interactions(lake, [judge])
        assert report.labelled == {"llm_judge": 3}
        assert report.mean_score["llm_judge"] == pytest.approx(2 / 3)
        assert all(r.model == "judge-model" for r in server.chat_requests)
    rows = lake.read_arrow("reward_labels").to_pylist()
    assert {(r["criterion"], r["score"], r["weight"]) for r in rows} == {("correct", 1.0, 2.0), ("helpful", 0.0, 1.0)}


def test_unusable_llm_verdict_leaves_the_interaction_for_the_next_run(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-b", [interaction(1)])
    ingest_landing(lake, settings.landing_dir)
    with OpenAIServer(chat=lambda messages: "I think it is fine") as server:
        judge = LLMJudge(base_url=server.base_url, model="m", criteria=[RubricCriterion("correct", "right facts")],
                         max_retries=1)
        with pytest.raises(JudgeError, match="correct"):
            judge.judge([label_input()])
        report = label_interactions(lake, [judge])
    assert report.labelled == {"llm_judge": 0} and report.failed == {"llm_judge": 1}


def label_input():
    from continuum_pipeline.judge.base import JudgeInput

    return JudgeInput("i1", "q", None, "a", {})


def build_candidates(lake, settings):
    """6 interactions with hand-picked rewards, consent, status and duplicates; then the SQL models."""
    same = {"prompt": "same question", "messages": [{"role": "user", "content": "same question"}], "response": "same answer"}
    recs = [
        interaction(0),  # judge 1.0, rating 1.0 → reward 1.0 → kept
        interaction(1),  # judge 0.0 → reward 0 → below threshold
        interaction(2, consent="denied"),  # judge 1.0 but consent denied → never passes
        interaction(3, status="error", response=None, error_type="Timeout"),  # failed call
        interaction(4, **same),  # duplicate pair: both judge 1.0; the newer one (6) is kept
        interaction(6, **same),
        interaction(5),  # judge 0.0 but an agent corrected it → target = correction, reward 1.0 → kept
        feedback(1, "i000000", score=1.0),
        feedback(2, "i000005", score=None, correction="the corrected answer"),
    ]
    write_segment(settings.landing_dir, "20261121T000000Z-c", recs)
    ingest_landing(lake, settings.landing_dir)
    label_interactions(lake, [ProgrammaticVerifier(answer_check, name="kb")])
    run_all(lake, SqlProject.load(REPO_ROOT / "dbt_like_sql"))
    return lake.read_arrow("sft_candidates")


def test_curation_filters_with_hand_checked_counts(lake, settings):
    candidates = build_candidates(lake, settings)
    assert candidates.num_rows == 7
    dataset = curate_sft(candidates, CurationPolicy(min_reward=0.8, validation_fraction=0.0))
    assert dict(dataset.removed) == {"consent denied": 1, "call failed": 1, "no target answer": 0,
                                     "reward below 0.8": 1, "duplicate (same content hash)": 1}
    rows = {r["interaction_id"]: r for r in dataset.table.to_pylist()}
    assert set(rows) == {"i000000", "i000005", "i000006"}
    corrected = rows["i000005"]
    assert corrected["target_source"] == "correction" and corrected["reward"] == 1.0
    assert corrected["messages"][-1] == {"role": "assistant", "content": "the corrected answer"}
    assert corrected["messages"][0] == {"role": "user", "content": "question 5"}
    assert {r["split"] for r in rows.values()} == {"train"}
    split = curate_sft(candidates, CurationPolicy(validation_fraction=1.0))
    assert split.count("validation") == 3 and split.count("train") == 0


def test_rewards_keep_the_at_the_time_label_for_monitoring_and_the_latest_for_training(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-k", [interaction(0)])
    ingest_landing(lake, settings.landing_dir)
    label_interactions(lake, [ProgrammaticVerifier(lambda item: (1.0, "right then"), name="kb", version="before")])
    label_interactions(lake, [ProgrammaticVerifier(lambda item: (0.0, "stale now"), name="kb", version="after")])
    run_all(lake, SqlProject.load(REPO_ROOT / "dbt_like_sql"))
    (row,) = lake.read_arrow("interaction_rewards").to_pylist()
    assert row["response_reward"] == 1.0 and row["target_reward"] == 0.0


def ex(i: int, *slices: str) -> GoldenExample:
    return GoldenExample(f"g{i}", (*slices, "all"), [{"role": "user", "content": str(i)}], {})


def test_gate_compares_slices_with_margins_and_mcnemar():
    items = [ex(i, "a") for i in range(10)] + [ex(i, "b") for i in range(10, 20)]
    champion = [True] * 20
    candidate = [True] * 10 + [True] * 8 + [False] * 2  # slice b drops 20 points
    result = compare(items, champion, candidate, {"b": 0.1}, default_margin=0.05)
    by = {s.slice: s for s in result.slices}
    assert by["a"].passed and not by["b"].passed and not by["all"].passed  # all: -10 points > 5
    assert by["b"].delta == pytest.approx(-0.2) and by["b"].p_value == pytest.approx(0.5)
    assert not result.passed and [s.slice for s in result.failures] == ["all", "b"]
    assert compare(items, champion, champion).passed
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024) and mcnemar_p(0, 0) == 1.0


def day(d: int, reward: float, negative: float | None = None, n: int = 100) -> DailyQuality:
    return DailyQuality(date(2026, 11, d), n, reward, negative, n if negative is not None else 0)


def test_trigger_decisions():
    assert sample_count(450, 200, 200).fire and not sample_count(350, 200, 200).fire
    steady = [day(1, 0.9), day(2, 0.92), day(3, 0.88), day(4, 0.89)]
    assert not quality_drop(steady, window_days=3, max_drop=0.15).fire
    dropped = steady + [day(5, 0.6)]
    decision = quality_drop(dropped, window_days=3, max_drop=0.15)
    assert decision.fire and decision.key == "quality-drop-2026-11-05" and "drop" in decision.reason
    assert not quality_drop([day(1, 0.9)], 3, 0.15).fire
    assert error_rate([day(1, 0.9, 0.1), day(2, 0.9, 0.45)], max_rate=0.3).fire
    assert not error_rate([day(1, 0.9, 0.45, n=5)], max_rate=0.3).fire  # too little feedback to tell
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert cooling_down(now - timedelta(hours=1), now, timedelta(hours=6)).fire
    assert not cooling_down(now - timedelta(hours=7), now, timedelta(hours=6)).fire
    assert not cooling_down(None, now, timedelta(hours=6)).fire


def test_quality_rows_from_several_models_merge_by_day():
    rows = [DailyQuality(date(2026, 11, 1), 100, 1.0, None), DailyQuality(date(2026, 11, 1), 300, 0.6, None),
            DailyQuality(date(2026, 11, 2), 100, 0.65, None)]
    assert not quality_drop(rows, 3, 0.1).fire  # day 1 is 0.7 interaction-weighted, not 0.8
