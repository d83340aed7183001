"""Labels, rewards, curation and trigger decisions — real Iceberg, DuckDB and judges, through a task's tables."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from continuum_pipeline.curation.dataset import CurationPolicy, curate_sft
from continuum_pipeline.evaluation.triggers import (
    DailyQuality,
    cooling_down,
    error_rate,
    quality_drop,
    sample_count,
)
from continuum_pipeline.judge.base import JudgeError
from continuum_pipeline.judge.llm import LLMJudge, RubricCriterion
from continuum_pipeline.judge.verifier import ProgrammaticVerifier
from continuum_pipeline.lake.ingest import ingest_landing

from .conftest import feedback, interaction, label_task, run_task_sql, task_config, write_segment
from .openai_server import OpenAIServer

TASK = task_config()


def answer_check(item):
    """A verifier that knows the right answer: 'answer <n>' is right for even n."""
    n = int(item.interaction_id[1:])
    return (1.0, "matches the KB") if n % 2 == 0 else (0.0, "wrong")


def test_labels_are_incremental_per_judge_version_and_survive_a_bad_verdict(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-l1", [interaction(i) for i in range(6)])
    ingest_landing(lake, settings.landing_dir)
    v1 = ProgrammaticVerifier(answer_check, name="kb", version="v1")
    first = label_task(lake, TASK, [v1])
    assert first.labelled == {"kb": 6} and first.mean_score["kb"] == pytest.approx(0.5)
    again = label_task(lake, TASK, [v1])
    assert again.labelled == {"kb": 0} and again.already_labelled == {"kb": 6} and again.snapshot_id is None

    write_segment(settings.landing_dir, "20261121T000001Z-l2", [interaction(i) for i in range(6, 9)])
    ingest_landing(lake, settings.landing_dir)
    assert label_task(lake, TASK, [v1]).labelled == {"kb": 3}
    assert label_task(lake, TASK, [ProgrammaticVerifier(answer_check, name="kb", version="v2")]).labelled == {"kb": 9}

    def flaky(item):
        if item.interaction_id == "i000004":
            return float("nan"), "broken"
        return 1.0, "ok"

    report = label_task(lake, TASK, [ProgrammaticVerifier(flaky, name="flaky")])
    assert report.labelled == {"flaky": 8} and report.failed == {"flaky": 1}
    labels = lake.read_arrow("support_answer__reward_labels")
    assert labels.num_rows == 6 + 3 + 9 + 8
    assert not lake.table_exists("reward_labels")  # labels belong to a task: no shared table


def test_labelling_selects_the_task_by_models_and_metadata(lake, settings):
    def meta(team="billing", vip=True, tier=2) -> str:
        return json.dumps({"team": {"name": team}, "vip": vip, "tier": tier})

    write_segment(settings.landing_dir, "20261121T000000Z-s", [
        interaction(0, model="m1", metadata=meta()),  # selected
        interaction(1, model="m2", metadata=meta(tier="2")),  # selected: "2" is the number 2
        interaction(2, model="m1", metadata=meta(tier=2.0)),  # selected: 2.0 is 2
        interaction(3, model="m3", metadata=meta()),  # another model
        interaction(4, model="m1", metadata=meta(team="shipping")),  # another team (a nested field)
        interaction(5, model="m1", metadata=meta(vip=False)),  # not a VIP
        interaction(6, model="m1", metadata=meta(tier="gold")),  # no number: no match (and no cast error)
        interaction(7, model="m1", metadata=None),  # no metadata at all
        interaction(8, model="m1", metadata=meta(), task="recipe_answer"),  # another task
        interaction(9, model="m1", metadata=meta(), status="error", response=None),  # failed call: nothing to judge
    ])
    ingest_landing(lake, settings.landing_dir)
    task = task_config(select={"models": ["m1", "m2"], "metadata": {"team.name": "billing", "vip": True, "tier": 2}})
    seen: list[str] = []

    def record(item):
        seen.append(item.interaction_id)
        return 1.0, "ok"

    report = label_task(lake, task, [ProgrammaticVerifier(record, name="kb")])
    assert report.labelled == {"kb": 3} and sorted(seen) == ["i000000", "i000001", "i000002"]
    # the task's SQL models select the same interactions (the failed call too: it has a reward row, no label)
    rewards = run_task_sql(lake, task)
    assert rewards["interaction_rewards"].rows == 4
    ids = sorted(lake.read_arrow(task.table("interaction_rewards"))["interaction_id"].to_pylist())
    assert ids == ["i000000", "i000001", "i000002", "i000009"]

    # `select.task` names the captured task when the task's own name differs; its tables are its own
    recipes = task_config(name="recipes", select={"task": "recipe_answer"})
    seen.clear()
    assert label_task(lake, recipes, [ProgrammaticVerifier(record, name="kb")]).labelled == {"kb": 1}
    assert seen == ["i000008"] and lake.read_arrow("recipes__reward_labels").num_rows == 1
    assert lake.read_arrow(task.table("reward_labels")).num_rows == 3


def test_llm_judge_labels_through_an_openai_compatible_server(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-j", [interaction(i) for i in range(3)])
    ingest_landing(lake, settings.landing_dir)
    verdict = '{"criteria": {"correct": {"score": 5, "reason": "right"}, "helpful": {"score": 1, "reason": "terse"}}}'
    with OpenAIServer(chat=lambda messages: verdict) as server:
        judge = LLMJudge(base_url=server.base_url, model="judge-model", criteria=[
            RubricCriterion("correct", "states the right facts", 2.0), RubricCriterion("helpful", "says what to do", 1.0)])
        report = label_task(lake, TASK, [judge])
        assert report.labelled == {"llm_judge": 3}
        assert report.mean_score["llm_judge"] == pytest.approx(2 / 3)
        assert all(r.model == "judge-model" for r in server.chat_requests)
    rows = lake.read_arrow(TASK.table("reward_labels")).to_pylist()
    assert {(r["criterion"], r["score"], r["weight"]) for r in rows} == {("correct", 1.0, 2.0), ("helpful", 0.0, 1.0)}


def test_unusable_llm_verdict_leaves_the_interaction_for_the_next_run(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-b", [interaction(1)])
    ingest_landing(lake, settings.landing_dir)
    with OpenAIServer(chat=lambda messages: "I think it is fine") as server:
        judge = LLMJudge(base_url=server.base_url, model="m", criteria=[RubricCriterion("correct", "right facts")],
                         max_retries=1)
        with pytest.raises(JudgeError, match="correct"):
            judge.judge([label_input()])
        report = label_task(lake, TASK, [judge])
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
    label_task(lake, TASK, [ProgrammaticVerifier(answer_check, name="kb")])
    run_task_sql(lake, TASK)
    return lake.read_arrow(TASK.table("sft_candidates"))


def test_curation_filters_with_hand_checked_counts(lake, settings):
    candidates = build_candidates(lake, settings)
    assert candidates.num_rows == 7
    dataset = curate_sft(candidates, CurationPolicy(min_reward=0.8, validation_fraction=0.0))
    assert dict(dataset.removed) == {"consent denied": 1, "consent unknown": 0, "call failed": 1,
                                     "no target answer": 0, "reward below 0.8": 1, "duplicate (same content hash)": 1}
    rows = {r["interaction_id"]: r for r in dataset.table.to_pylist()}
    assert set(rows) == {"i000000", "i000005", "i000006"}
    corrected = rows["i000005"]
    assert corrected["target_source"] == "correction" and corrected["reward"] == 1.0
    assert corrected["messages"][-1] == {"role": "assistant", "content": "the corrected answer"}
    assert corrected["messages"][0] == {"role": "user", "content": "question 5"}
    assert {r["split"] for r in rows.values()} == {"train"}
    split = curate_sft(candidates, CurationPolicy(validation_fraction=1.0))
    assert split.count("validation") == 3 and split.count("train") == 0


def consent_candidates(lake, settings):
    """Five right answers (reward 1.0): two with consent granted, two unknown, one denied."""
    write_segment(settings.landing_dir, "20261121T000000Z-u", [
        interaction(0), interaction(1, consent="unknown"), interaction(2, consent="unknown"),
        interaction(3, consent="denied"), interaction(4)])
    ingest_landing(lake, settings.landing_dir)
    label_task(lake, TASK, [ProgrammaticVerifier(lambda item: (1.0, "right"), name="kb")])
    run_task_sql(lake, TASK)
    return lake.read_arrow(TASK.table("sft_candidates"))


def ids(dataset) -> list[str]:
    return sorted(dataset.table["interaction_id"].to_pylist())


def test_curation_trains_on_unknown_consent_only_when_listed_and_never_on_denied(lake, settings):
    candidates = consent_candidates(lake, settings)
    default = curate_sft(candidates, CurationPolicy(validation_fraction=0.0))
    assert ids(default) == ["i000000", "i000004"]
    assert default.removed["consent denied"] == 1 and default.removed["consent unknown"] == 2

    both = curate_sft(candidates, CurationPolicy(validation_fraction=0.0, consent=("granted", "unknown")))
    assert ids(both) == ["i000000", "i000001", "i000002", "i000004"]
    assert both.removed["consent denied"] == 1 and both.removed["consent not allowed"] == 0
    assert "consent unknown" not in both.removed

    listed = curate_sft(candidates, CurationPolicy(validation_fraction=0.0, consent=("granted", "unknown", "denied")))
    assert ids(listed) == ids(both) and listed.removed["consent denied"] == 1  # denied never trains

    held = curate_sft(candidates, CurationPolicy(validation_fraction=0.0, consent=("granted", "unknown"),
                                                 held_out=frozenset({"i000000", "i000001", "i000003"})))
    assert ids(held) == ["i000002", "i000004"]
    assert held.removed["held out for evaluation"] == 2  # i3 (denied) was already out: counted once, there
    assert list(held.removed) == ["consent denied", "consent not allowed", "call failed", "held out for evaluation",
                                  "no target answer", "reward below 0.8", "duplicate (same content hash)"]


def test_sft_dataset_asset_applies_the_yaml_consent_and_holds_out_the_production_golden_set(lake, settings):
    import dagster as dg

    from continuum_pipeline.defs.flywheel.curation import held_out_ids, sft_dataset
    from continuum_pipeline.defs.flywheel.evaluation import golden_sets
    from continuum_pipeline.defs.resources import resources_from_settings

    consent_candidates(lake, settings)
    task = task_config(curation={"min_reward": 0.8, "validation_fraction": 0.0, "consent": ["granted", "unknown"]},
                       golden_sets=[{"name": "prod", "from_production": {"size": 2, "min_reward": 0.9, "seed": 3}}])
    with dg.instance_for_test() as instance:
        result = dg.materialize([*golden_sets(task), sft_dataset(task)], instance=instance,
                                resources={"lake": resources_from_settings(settings)["lake"]})
        assert result.success
        meta = instance.get_latest_materialization_event(dg.AssetKey(["support_answer", "sft_dataset"])) \
            .asset_materialization.metadata
    golden = lake.read_arrow("support_answer__golden__prod")["interaction_id"].to_pylist()
    assert held_out_ids(lake, task) == frozenset(golden) and len(golden) == 2
    assert "i000003" not in golden  # a denied interaction is no evaluation example either
    dataset = sorted(lake.read_arrow(task.table("sft_dataset"))["interaction_id"].to_pylist())
    assert dataset == sorted({"i000000", "i000001", "i000002", "i000004"} - set(golden))
    assert meta["removed: held out for evaluation"].value == 2 and meta["removed: consent denied"].value == 1
    assert meta["removed: consent not allowed"].value == 0 and meta["eligible_rows"].value == 2


def test_rewards_keep_the_at_the_time_label_for_monitoring_and_the_latest_for_training(lake, settings):
    write_segment(settings.landing_dir, "20261121T000000Z-k", [interaction(0)])
    ingest_landing(lake, settings.landing_dir)
    label_task(lake, TASK, [ProgrammaticVerifier(lambda item: (1.0, "right then"), name="kb", version="before")])
    label_task(lake, TASK, [ProgrammaticVerifier(lambda item: (0.0, "stale now"), name="kb", version="after")])
    run_task_sql(lake, TASK)
    (row,) = lake.read_arrow(TASK.table("interaction_rewards")).to_pylist()
    assert row["response_reward"] == 1.0 and row["target_reward"] == 0.0


def day(d: int, reward: float, negative: float | None = None, n: int = 100) -> DailyQuality:
    return DailyQuality(date(2026, 11, d), n, reward, negative, n if negative is not None else 0)


def test_trigger_decisions():
    assert sample_count(450, 200, 200).fire and not sample_count(350, 200, 200).fire
    steady = [day(1, 0.9), day(2, 0.92), day(3, 0.88), day(4, 0.89)]
    assert not quality_drop(steady, window_days=3, max_drop=0.15).fire
    dropped = steady + [day(5, 0.6)]
    decision = quality_drop(dropped, window_days=3, max_drop=0.15)
    assert decision.fire and decision.key == "quality-drop:base:2026-11-05" and "drop" in decision.reason
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
