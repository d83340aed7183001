"""Consent, exclusion rules (task YAML and the shared rules file) and sampling: what each keeps out of the SFT
dataset and the production golden sets, counted per rule; `keep_excluded_for_monitoring: false` takes excluded
interactions out of the task's SQL models too; a bad SQL predicate is named at `continuum check` and at
materialization."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow as pa
import pytest

from continuum_pipeline.judge.verifier import ProgrammaticVerifier
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.privacy.rules import (
    RULES_ENV,
    NamedRule,
    PrivacyPolicy,
    PrivacyRuleError,
    check_rules,
    rules_for,
    sample_keeps,
)
from continuum_pipeline.task.config import ExclusionRule

from .conftest import feedback, interaction, label_task, task_config, write_segment

RULES = [
    {"name": "opted_out", "users": ["opt_out"]},
    {"name": "test_sessions", "sessions": ["s_test"]},
    {"name": "acme_contract", "metadata": {"tenant": "acme"}},
    {"name": "legacy_slow", "where": "model = 'legacy' and latency_ms > 5.5"},
]
SHARED = """
- {name: global_opt_out, users: [shared_out]}
- {name: recipes_only, task: recipe_answer, users: [other_task_out]}
- {name: desk_only, task: support_answer, sessions: [s_desk]}
"""
ALLOWED = {"i000000", "i000005", "i000010", "i000011"}


def traffic(lake, settings) -> None:
    """Thirteen right answers (the judge gives each 1.0); which rule catches which is in the comments."""
    write_segment(settings.landing_dir, "20261121T000000Z-p", [
        interaction(0, user_id="u1"),                                        # kept
        interaction(1, user_id="opt_out"),                                   # opted_out
        interaction(2, user_id="opt_out", session_id="s_test"),              # opted_out (first rule that holds)
        interaction(3, session_id="s_test"),                                 # test_sessions
        interaction(4, metadata=json.dumps({"i": 4, "tenant": "acme"})),     # acme_contract
        interaction(5, model="legacy"),                                      # kept: latency 5 ≤ 5.5
        interaction(6, model="legacy"),                                      # legacy_slow
        interaction(7, consent="unknown"),                                   # consent unknown
        interaction(8, consent="denied"),                                    # consent denied
        interaction(9, user_id="shared_out"),                                # global_opt_out (shared file)
        interaction(10, user_id="other_task_out"),                           # kept: that shared rule is another task's
        interaction(11),                                                     # kept: no user id is no match
        interaction(12, session_id="s_desk"),                                # desk_only (shared, this task's)
    ])
    ingest_landing(lake, settings.landing_dir)


def run_task(lake, task, settings, instance, raise_on_error=True):
    """Labels, the task's SQL models (with the lake binding the assets use), its golden set and dataset."""
    from continuum_pipeline.defs.flywheel.curation import sft_dataset
    from continuum_pipeline.defs.flywheel.evaluation import golden_sets
    from continuum_pipeline.defs.resources import resources_from_settings
    from continuum_pipeline.sql_models.project import SqlProject
    from continuum_pipeline.sql_models.runner import run_all, run_model
    from continuum_pipeline.task.sql import task_binding

    from .conftest import SQL_DIR

    label_task(lake, task, [ProgrammaticVerifier(lambda item: (1.0, "right"), name="kb")])
    run_all(lake, SqlProject.load(SQL_DIR))
    project = SqlProject.load_task_models(SQL_DIR)
    for name in project.order():
        run_model(lake, project, name, task_binding(task, lake))
    return dg.materialize([*golden_sets(task), sft_dataset(task)], instance=instance, raise_on_error=raise_on_error,
                          resources={"lake": resources_from_settings(settings)["lake"]})


def latest(instance, *path) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(["support_answer", *path]))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_each_rule_consent_and_the_shared_file_keep_interactions_out_and_are_counted(lake, settings, tmp_path,
                                                                                      monkeypatch):
    shared = tmp_path / "privacy_rules.yaml"
    shared.write_text(SHARED)
    monkeypatch.setenv(RULES_ENV, str(shared))
    traffic(lake, settings)
    task = task_config(curation={"min_reward": 0.8, "validation_fraction": 0.0},
                       golden_sets=[{"name": "prod", "from_production": {"size": 2, "min_reward": 0.9, "seed": 1}}],
                       privacy={"exclude": RULES})
    assert [r.name for r in rules_for(task)] == [*(r["name"] for r in RULES), "global_opt_out", "desk_only"]
    with dg.instance_for_test() as instance:
        assert run_task(lake, task, settings, instance).success
        golden = set(lake.read_arrow(task.table("golden__prod"))["interaction_id"].to_pylist())
        dataset = set(lake.read_arrow(task.table("sft_dataset"))["interaction_id"].to_pylist())
        assert len(golden) == 2 and golden <= ALLOWED
        assert dataset == ALLOWED - golden  # every excluded one is in neither
        meta = latest(instance, "sft_dataset")
        counts = {"consent denied": 1, "consent unknown": 1, "excluded: opted_out": 2, "excluded: test_sessions": 1,
                  "excluded: acme_contract": 1, "excluded: legacy_slow": 1, "excluded: global_opt_out": 1,
                  "excluded: desk_only": 1}
        assert {k.removeprefix("removed: "): v for k, v in meta.items() if k.removeprefix("removed: ") in counts} \
            == counts
        assert meta["excluded_by_privacy"] == 9 and meta["removed: held out for evaluation"] == 2
        assert "| excluded: legacy_slow | 1 |" in meta["privacy"]
        gmeta = latest(instance, "golden", "prod")
        assert {k: gmeta[f"removed: {k}"] for k in counts} == counts  # the golden set counts the same removals
        # builtin:tiny pre-trains on the task's traffic: only on what the policy allows (pre-training is training)
        from continuum_pipeline.defs.flywheel.training import _captured_conversations
        from continuum_pipeline.defs.resources import resources_from_settings

        pretraining = _captured_conversations(resources_from_settings(settings)["lake"], task)
        assert sorted(c[0]["content"] for c in pretraining) == sorted(f"question {int(i[1:])}" for i in ALLOWED)
        assert gmeta["removed: dropped from the frozen set"] == 0

        # A new rule that catches a frozen golden item takes it out of the next version (and of the dataset)
        (caught,) = sorted(golden)[:1]
        later = task_config(curation={"min_reward": 0.8, "validation_fraction": 0.0},
                            golden_sets=[{"name": "prod", "from_production": {"size": 2, "min_reward": 0.9,
                                                                              "seed": 1}}],
                            privacy={"exclude": [*RULES, {"name": "late_request", "where": f"interaction_id = '{caught}'"}]})
        assert run_task(lake, later, settings, instance).success
        golden2 = set(lake.read_arrow(task.table("golden__prod"))["interaction_id"].to_pylist())
        dataset2 = set(lake.read_arrow(task.table("sft_dataset"))["interaction_id"].to_pylist())
        assert caught not in golden2 | dataset2 and len(golden2) == 2 and golden2 | dataset2 == ALLOWED - {caught}
        assert latest(instance, "golden", "prod")["removed: dropped from the frozen set"] == 1
        assert latest(instance, "sft_dataset")["removed: excluded: late_request"] == 1  # privacy filters come first


def test_keep_excluded_for_monitoring_false_takes_rule_matches_out_of_the_sql_models(lake, settings):
    from continuum_pipeline.sql_models.project import SqlProject
    from continuum_pipeline.sql_models.runner import run_all, run_model
    from continuum_pipeline.task.sql import task_binding

    from .conftest import SQL_DIR

    traffic(lake, settings)
    everything = {f"i{i:06d}" for i in range(13)}
    label_task(lake, task_config(), [ProgrammaticVerifier(lambda item: (1.0, "right"), name="kb")])
    run_all(lake, SqlProject.load(SQL_DIR))
    project = SqlProject.load_task_models(SQL_DIR)
    for keep, expected in ((True, everything), (False, everything - {"i000001", "i000002", "i000003", "i000004",
                                                                    "i000006"})):
        task = task_config(privacy={"exclude": RULES, "keep_excluded_for_monitoring": keep})
        if not keep:
            with pytest.raises(PrivacyRuleError, match="need the lake"):
                task_binding(task)
        for name in project.order():
            run_model(lake, project, name, task_binding(task, lake))
        rewards = set(lake.read_arrow(task.table("interaction_rewards"))["interaction_id"].to_pylist())
        candidates = set(lake.read_arrow(task.table("sft_candidates"))["interaction_id"].to_pylist())
        assert rewards == candidates == expected  # consent-denied/unknown still count: that is a training policy
        daily = lake.read_arrow(task.table("quality_daily"))
        assert sum(daily["interactions"].to_pylist()) == len(expected)

    # the task's SQL assets bind the lake themselves
    from continuum_pipeline.defs.flywheel.sql import task_models
    from continuum_pipeline.defs.resources import resources_from_settings

    lake.replace_table(task.table("interaction_rewards"), lake.read_arrow(task.table("interaction_rewards")).slice(0, 0))
    with dg.instance_for_test() as instance:
        assert dg.materialize(task_models(task, SQL_DIR), instance=instance,
                              resources={"lake": resources_from_settings(settings)["lake"]}).success
    assert set(lake.read_arrow(task.table("interaction_rewards"))["interaction_id"].to_pylist()) == expected


def test_a_bad_predicate_is_named_at_check_time_and_at_materialization(lake, settings, tmp_path):
    from continuum_pipeline.task.doctor import check_tasks

    def named(where: str) -> list[NamedRule]:
        return [NamedRule(ExclusionRule(name="bad", where=where), "privacy.exclude[0]")]

    with pytest.raises(PrivacyRuleError, match=r"privacy.exclude\[0\] \(bad\): where: .*usr_id.*fix `where`"):
        check_rules(named("usr_id = 'x'"))
    with pytest.raises(PrivacyRuleError, match="is a DOUBLE, not a condition"):
        check_rules(named("latency_ms + 1"))
    with pytest.raises(PrivacyRuleError, match="more than one expression|does not run"):
        check_rules(named("true; drop table interactions"))
    check_rules(named("json_extract_string(metadata, '$.tenant') = 'acme' or user_id is null"))  # fine

    yaml_file = tmp_path / "defs.yaml"
    yaml_file.write_text(json.dumps({"attributes": {
        "name": "support_answer",
        "judges": [{"name": "kb", "kind": "python", "function": "continuum_pipeline_tests.judge_functions:plain_check"}],
        "golden_sets": [{"name": "g", "from_production": {"size": 2}}],
        "gate": {"metrics": {"accuracy": {"judge": "kb"}}},
        "privacy": {"exclude": [{"name": "typo", "where": "modle = 'legacy'"}]}}}))
    (result,) = check_tasks([yaml_file])
    errors = [f for f in result.findings if f.level == "error"]
    assert [e.where for e in errors] == ["privacy.exclude"] and "(typo)" in errors[0].message
    assert "modle" in errors[0].message and "interaction_id" in errors[0].message  # lists the columns to use

    traffic(lake, settings)
    task = task_config(golden_sets=[{"name": "prod", "from_production": {"size": 2}}],
                       privacy={"exclude": [{"name": "typo", "where": "modle = 'legacy'"}]})
    with dg.instance_for_test() as instance:
        result = run_task(lake, task, settings, instance, raise_on_error=False)
    assert not result.success
    failures = " ".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
    assert "privacy.exclude[0] (typo)" in failures and "fix `where`" in failures


def test_the_shared_rules_file_names_its_bad_entry(tmp_path, monkeypatch):
    shared = tmp_path / "rules.yaml"
    shared.write_text("- {name: ok, users: [a]}\n- {name: empty}\n")
    monkeypatch.setenv(RULES_ENV, str(shared))
    with pytest.raises(PrivacyRuleError, match=r"rules.yaml\[1\].*no condition"):
        rules_for(task_config())
    shared.write_text("- {name: same, users: [a]}\n")
    with pytest.raises(PrivacyRuleError, match="also used by privacy.exclude"):
        rules_for(task_config(privacy={"exclude": [{"name": "same", "users": ["b"]}]}))


def test_sampling_is_deterministic_by_id_nested_across_rates_and_counted():
    ids = [f"interaction-{i}" for i in range(4000)]
    half = {i for i in ids if sample_keeps(i, 0.5)}
    tenth = {i for i in ids if sample_keeps(i, 0.1)}
    assert 0.47 < len(half) / len(ids) < 0.53 and 0.085 < len(tenth) / len(ids) < 0.115
    assert tenth <= half  # a lower rate keeps a subset: lowering it never brings back a dropped interaction
    assert half == {i for i in ids if sample_keeps(i, 0.5)}
    table = pa.table({"interaction_id": ids, "consent": ["granted"] * len(ids)})
    removed: dict[str, int] = {}
    kept = PrivacyPolicy(sampling_rate=0.5).apply(table, removed)
    assert set(kept["interaction_id"].to_pylist()) == half
    assert removed == {"consent denied": 0, "consent unknown": 0, "sampling (rate 0.5)": len(ids) - len(half)}


def test_privacy_report_counts_pii_kinds_consent_rule_matches_and_deletions_per_task_and_day(lake, settings,
                                                                                              monkeypatch, capsys):
    from datetime import UTC, date, datetime

    from continuum_pipeline.cli import main
    from continuum_pipeline.privacy.forget import RECEIPTS, RECEIPTS_TABLE
    from continuum_pipeline.privacy.report import privacy_report

    day1, day2 = "2026-11-20T09:00:00.000000Z", "2026-11-21T09:00:00.000000Z"
    email, phone = json.dumps({"EMAIL_ADDRESS": 1}), json.dumps({"PHONE_NUMBER": 2})
    write_segment(settings.landing_dir, "20261121T000000Z-r", [
        # what the redactor leaves: placeholders in the text, kind → count in `redactions`
        interaction(0, ts=day1, prompt="mail <EMAIL>", redactions=email, user_id="opt_out"),
        interaction(1, ts=day1, consent="unknown", redactions=json.dumps({"EMAIL_ADDRESS": 1, "CREDIT_CARD": 1})),
        interaction(2, ts=day1, consent="denied"),
        interaction(3, ts=day2, model="legacy", latency_ms=9.0),
        interaction(4, ts=day2, task="recipe_answer", redactions=phone),  # another captured task
        feedback(0, "i000000", comment="again <EMAIL>", redactions=email),  # same kind, same interaction: once
        feedback(1, "i000003", comment="call <PHONE>", redactions=phone),  # the feedback carries the PII
    ])
    write_segment(settings.landing_dir, "20261121T000001Z-r", [  # a redelivery counts once
        interaction(0, ts=day1, prompt="mail <EMAIL>", redactions=email, user_id="opt_out")])
    ingest_landing(lake, settings.landing_dir)
    # receipts as `continuum forget` and retention write them (hashed subjects only)
    at = datetime(2026, 11, 21, 10, tzinfo=UTC)
    lake.replace_table(RECEIPTS_TABLE, pa.Table.from_pylist([
        {"receipt_id": "r1", "reason": "request", "task": None, "requested_by": "dpo", "requested_at": at,
         "completed_at": at, "subjects": json.dumps([{"kind": "user", "subject_hash": "ab12"}]), "interactions": 2,
         "tables": json.dumps({"interactions": {"rows_removed": 2}, "feedback_events": {"rows_removed": 2}}),
         "rows_removed": 4, "affected_versions": json.dumps([{"model": "continuum-support", "version": "3"}])},
        {"receipt_id": "r2", "reason": "retention", "task": None, "requested_by": "upkeep", "requested_at": at,
         "completed_at": at, "subjects": json.dumps({"retention_days": 30}), "interactions": 5,
         "tables": json.dumps({"interactions": {"rows_removed": 5}}), "rows_removed": 5,
         "affected_versions": "[]"}], schema=RECEIPTS))

    task = task_config(privacy={"exclude": RULES})
    report = privacy_report(lake, [task], today=date(2026, 11, 21))
    by_day = {d["day"].isoformat(): d for d in report.days}
    assert list(by_day) == ["2026-11-20", "2026-11-21"] and {d["task"] for d in report.days} == {"support_answer"}
    first, second = by_day["2026-11-20"], by_day["2026-11-21"]
    assert (first["interactions"], first["consent_granted"], first["consent_unknown"], first["consent_denied"]) \
        == (3, 1, 1, 1)
    assert first["pii"] == {"EMAIL_ADDRESS": 2, "CREDIT_CARD": 1} and second["pii"] == {"PHONE_NUMBER": 1}
    assert first["excluded"]["opted_out"] == 1 and second["excluded"]["legacy_slow"] == 1
    assert sum(d["excluded"]["test_sessions"] for d in report.days) == 0
    assert report.deletions == [{"day": date(2026, 11, 21), "task": None, "receipts": 2, "rows_removed": 9,
                                 "what": "request (user), retention", "versions": "continuum-support@3"}]
    assert [d["day"].isoformat() for d in privacy_report(lake, [task], days=1, today=date(2026, 11, 21)).days] \
        == ["2026-11-21"]
    # no task instances: per captured task name, without rules
    captured = privacy_report(lake, today=date(2026, 11, 21))
    assert {(d["task"], d["day"].isoformat()): d["pii"] for d in captured.days}[("recipe_answer", "2026-11-21")] \
        == {"PHONE_NUMBER": 1}
    markdown = report.markdown()
    assert "| PII EMAIL_ADDRESS |" in markdown.splitlines()[0] and "**Deletions**" in markdown

    # the CLI over the task instances of CONTINUUM_TASKS
    yaml_file = settings.home / "defs.yaml"
    yaml_file.write_text(json.dumps({"attributes": {
        "name": "support_answer",
        "judges": [{"name": "kb", "kind": "python", "function": "continuum_pipeline_tests.judge_functions:plain_check"}],
        "golden_sets": [{"name": "g", "from_production": {"size": 2}}], "gate": {"metrics": {"accuracy": {"judge": "kb"}}},
        "privacy": {"exclude": RULES}}}))
    monkeypatch.setenv("CONTINUUM_TASKS", str(yaml_file))
    assert main(["privacy", "report", "--days", "3650"]) == 0
    out = capsys.readouterr().out
    header, _, row1, row2, *rest = out.splitlines()
    assert header.split()[:6] == ["task", "day", "interactions", "consent", "granted", "denied"]
    assert row1.split()[:6] == ["support_answer", "2026-11-20", "3", "1", "1", "1"] and "2026-11-21" in row2
    assert any("2026-11-21" in line and "request (user), retention" in line for line in rest)
    assert main(["privacy", "report", "--task", "nope"]) == 1
    assert "no such task instance" in capsys.readouterr().err


def test_the_report_counts_a_real_forget_and_no_longer_counts_the_forgotten(lake, settings):
    from datetime import UTC, datetime

    from continuum_pipeline.privacy.forget import run_forget, submit
    from continuum_pipeline.privacy.report import privacy_report

    traffic(lake, settings)
    task = task_config(privacy={"exclude": RULES})
    before = privacy_report(lake, [task])
    assert sum(d["excluded"]["opted_out"] for d in before.days) == 2 and before.deletions == []
    receipt = run_forget(lake, submit(settings.home, users=["opt_out"], requested_by="dpo"), home=settings.home,
                         landing=settings.landing_dir)
    after = privacy_report(lake, [task])
    assert sum(d["excluded"]["opted_out"] for d in after.days) == 0  # the person is gone, not just excluded
    assert sum(d["interactions"] for d in after.days) == sum(d["interactions"] for d in before.days) - 2
    (deleted,) = after.deletions
    assert deleted["day"] == datetime.now(UTC).date() and deleted["receipts"] == 1
    assert deleted["rows_removed"] == receipt.rows_removed > 0 and deleted["what"] == "request (user)"
