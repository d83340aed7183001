"""A task's YAML: every validation error names its path and the fix; the component loads through Dagster's
own YAML loader and dg plugin discovery; `dg scaffold defs` and `continuum init` write a template that
validates once filled in; `continuum check` says what is missing; `continuum tasks` lists the lake's tasks."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from continuum_pipeline.task.config import TaskConfigError, load_task_config, parse_task_config
from continuum_pipeline.task.scaffold import render_template

from .conftest import REPO_ROOT, interaction, write_segment

VALID = {
    "name": "recipe_answer",
    "judges": [
        {"name": "exact", "kind": "reference_match"},
        {"name": "rubric", "kind": "llm_rubric", "base_url": "http://127.0.0.1:9/v1", "model": "m",
         "criteria": [{"name": "correct", "description": "right", "weight": 2.0}]},
    ],
    "golden_sets": [{"name": "golden", "file": "golden.jsonl", "slices": ["metadata.cuisine"]}],
    "gate": {"metrics": {"accuracy": {"judge": "exact", "min_delta": 0.0}}},
}


def broken(path: str, value) -> dict:
    """VALID with one value replaced (dotted path, list indexes as numbers); value None deletes the key."""
    data = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is None:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


def test_a_valid_task_has_documented_defaults():
    task = parse_task_config(VALID)
    assert task.registered_model_name == "continuum-recipe-answer"
    assert task.base_model.id == "builtin:tiny" and task.curation.consent == ["granted"]
    assert task.reward.weights.judges == 0.7 and task.reward.outcomes["ticket_reopened"] == 0.0
    assert task.triggers.schedule == "0 4 * * 1" and task.training.lora.target_modules == "auto"
    assert task.table("reward_labels") == "recipe_answer__reward_labels"
    assert task.selection_sql("i") == "i.task = 'recipe_answer'"
    assert task.judge_weights() == {"exact": 1.0, "rubric": 1.0}


@pytest.mark.parametrize(("path", "value", "message"), [
    ("judges.1.criteria.0.weight", 0, r"judges\[1\]\.criteria\[0\]\.weight: .*> 0"),
    ("judges.0.kind", "oracle", r"judges\[0\]"),
    ("judges", [], r"judges: .*at least 1"),
    ("name", "Recipe-Answer", r"name: .*lower_snake_case"),
    ("golden_sets.0.slices", ["cuisine"], r"golden_sets\[0\]\.slices: .*metadata\.<key>"),
    ("golden_sets.0.from_production", {"size": 10}, r"golden_sets\[0\]: .*exactly one of `file` or `from_production`"),
    ("golden_sets.0.file", "golden.csv", r"golden_sets\[0\]: .*\.jsonl or \.parquet"),
    ("gate.metrics.accuracy.judge", "nobody", r"gate\.metrics\.accuracy\.judge: 'nobody' is not one of the judges"),
    ("gate.metrics.accuracy.min_delta", 2, r"gate\.metrics\.accuracy\.min_delta: .*\[-1, 1\]"),
    ("gate", None, r"gate: .*required"),
    ("reward.judges", {"ghost": 1.0}, r"reward\.judges\.ghost: no judge of that name"),
    ("reward.judges", {"exact": 0}, r"reward\.judges: .*must be > 0"),
    ("reward.implicit_signals", {"copy": 2}, r"reward\.implicit_signals: .*\[0, 1\]"),
    ("curation.consent", ["denied"], r"curation\.consent\[0\]"),
    ("curation.min_reward", 1.5, r"curation\.min_reward: .*1"),
    ("base_model.pretraining_corpus", "not a path", r"base_model\.pretraining_corpus: .*package\.module:function"),
    ("training.recipe", "ppo", r"training\.recipe"),
    ("triggers.quality_drop", 0, r"triggers\.quality_drop: must be > 0"),
    ("select.modles", ["m"], r"select\.modles: unknown setting — remove it or check its spelling"),
    ("gate.metrics", {}, r"gate\.metrics"),
])
def test_every_validation_error_names_the_yaml_path_and_the_fix(path, value, message):
    with pytest.raises(TaskConfigError, match=message):
        parse_task_config(broken(path, value), source="defs.yaml")


def test_duplicate_judge_and_golden_set_names_are_refused():
    data = broken("judges.1.name", "exact")
    with pytest.raises(TaskConfigError, match="judges: names must be unique"):
        parse_task_config(data)
    data = copy.deepcopy(VALID)
    data["golden_sets"].append(dict(data["golden_sets"][0]))
    with pytest.raises(TaskConfigError, match="golden_sets: names must be unique"):
        parse_task_config(data)


def test_selection_by_models_and_metadata_is_quoted_sql():
    task = parse_task_config({**VALID, "select": {"task": "it's", "models": ["a", "b"], "metadata": {"lang": "en"}}})
    assert task.selection_sql() == ("task = 'it''s' and model in ('a', 'b') and "
                                    "json_extract_string(metadata, '$.lang') = 'en'")


def test_the_component_loads_through_dagsters_yaml_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import dagster as dg

    from continuum_pipeline.component import FlywheelComponent

    monkeypatch.chdir(tmp_path)  # Dagster's test tree treats the working directory as the defs folder
    folder = tmp_path / "recipe_answer"
    folder.mkdir()
    (folder / "golden.jsonl").write_text('{"prompt": "q", "reference": "a", "metadata": {"cuisine": "x"}}\n')
    (folder / "defs.yaml").write_text(yaml.safe_dump({"type": "continuum_pipeline.FlywheelComponent",
                                                      "attributes": VALID}))
    context = dg.ComponentTree.for_test().load_context
    loaded = dg.Component.from_yaml_path(folder / "defs.yaml", context)  # the defs folder, as dg loads it
    found = [c for child in loaded.children.values() for c in getattr(child, "components", [child])]
    assert [type(c) for c in found] == [FlywheelComponent] and found[0].name == "recipe_answer"
    defs = found[0].build_defs(context)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"recipe_answer/sft_dataset", "recipe_answer/golden/golden", "recipe_answer/registered_model"} <= keys
    assert {s.name for s in defs.sensors} >= {"recipe_answer_sample_count_sensor"}
    bad = {**VALID, "judges": [{**VALID["judges"][1], "criteria": [{"name": "c", "description": "d", "weight": -1}]}]}
    (folder / "defs.yaml").write_text(yaml.safe_dump({"type": "continuum_pipeline.FlywheelComponent",
                                                      "attributes": bad}))
    with pytest.raises(Exception) as failed:  # Dagster's error tree, caused by the task's own validation error
        dg.Component.from_yaml_path(folder / "defs.yaml", dg.ComponentTree.for_test().load_context)
    causes, exc = [], failed.value
    while exc is not None:
        causes.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert "defs.yaml" in causes[0] and any("criteria" in c and "weight" in c and "must be > 0" in c for c in causes)


def test_dg_lists_the_component_and_scaffolds_a_template_that_validates(tmp_path: Path):
    dg = Path(sys.executable).parent / "dg"
    listed = subprocess.run([str(dg), "list", "components", "--json"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "continuum_pipeline.FlywheelComponent" in listed.stdout

    text = render_template("support_bot", captured_task="support-bot")
    data = yaml.safe_load(text)
    assert data["type"] == "continuum_pipeline.FlywheelComponent"
    assert data["attributes"]["select"] == {"task": "support-bot"}
    assert "# reward:" in text and "cost_budget_usd" in text  # every key documented, commented
    task = parse_task_config(data["attributes"])  # the template is a valid task as written
    assert task.judges[0].kind == "llm_rubric" and task.golden_sets[0].from_production.size == 100


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "continuum"
    return subprocess.run([str(cli), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_tasks_init_and_check_commands(settings, tmp_path: Path):
    write_segment(settings.landing_dir, "20261121T000000Z-t1",
                  [interaction(i) for i in range(5)] + [interaction(i, task="triage-bot", consent="unknown")
                                                        for i in range(5, 8)])
    assert run_cli("ingest").returncode == 0
    listed = run_cli("tasks")
    assert listed.returncode == 0, listed.stderr
    assert "support_answer" in listed.stdout and "triage-bot" in listed.stdout
    assert "none: continuum init triage-bot" in listed.stdout

    made = run_cli("init", "triage-bot", "--into", str(tmp_path / "tasks"))
    assert made.returncode == 0, made.stderr
    written = tmp_path / "tasks" / "triage_bot" / "defs.yaml"
    assert load_task_config(written).select.task == "triage-bot"
    assert run_cli("init", "triage-bot", "--into", str(tmp_path / "tasks")).returncode == 1  # never overwrites

    checked = run_cli("check", str(written), env={"CONTINUUM_JUDGE_BASE_URL": ""})
    assert checked.returncode == 1
    assert "judges[0] (quality): no endpoint" in checked.stdout and "3 captured interactions" in checked.stdout
    ok = run_cli("check")  # the packaged support desk is complete
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "golden_sets[0] (golden): 104 examples" in ok.stdout


def test_a_missing_task_path_stops_the_code_location_not_the_capture_sdk(settings, monkeypatch, tmp_path: Path):
    from continuum_pipeline.definitions import build_definitions
    from continuum_pipeline.settings import Settings, SettingsError

    monkeypatch.setenv("CONTINUUM_TASKS", str(tmp_path / "nowhere"))
    apps_view = Settings.from_env()  # what @capture reads inside an app: task files are none of its business
    assert apps_view.tasks == (tmp_path / "nowhere",)
    with pytest.raises(SettingsError, match="CONTINUUM_TASKS names .*nowhere, which does not exist"):
        build_definitions(apps_view)


def test_lineage_of_a_missing_version_is_one_readable_line(settings):
    result = run_cli("lineage", "continuum-support@42")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("continuum lineage: no model version continuum-support@42")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "q", "reference": "a"}', "not json"], r"golden\.jsonl:2: not valid JSON"),
    (['{"reference": "a"}'], r"golden\.jsonl:1: needs `messages`"),
    (['{"prompt": "q", "reference": 3}'], r"golden\.jsonl:1: reference: expected a string or a list of strings"),
    (['{"prompt": "q", "metadata": "[1]"}'], r"golden\.jsonl:1: metadata: expected an object"),
    (['{"id": "x", "prompt": "q"}', '{"id": "x", "prompt": "r"}'], r"golden\.jsonl:2: id 'x' repeats"),
    ([], r"has no examples"),
])
def test_a_bad_golden_file_names_the_line_and_the_field(tmp_path: Path, lines, message):
    from continuum_pipeline.evaluation.golden import GoldenSetError, read_golden_file

    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GoldenSetError, match=message):
        read_golden_file(path, ["metadata.cuisine"])
    with pytest.raises(GoldenSetError, match="does not exist"):
        read_golden_file(tmp_path / "missing.jsonl", [])


def test_golden_rows_are_sliced_by_the_named_fields(tmp_path: Path):
    from continuum_pipeline.evaluation.golden import items, read_golden_file

    path = tmp_path / "golden.jsonl"
    path.write_text('{"prompt": "q", "system": "s", "reference": ["a", "b"], "route": "r1", '
                    '"metadata": {"cuisine": "thai"}}\n')
    (item,) = items(read_golden_file(path, ["metadata.cuisine", "route", "metadata.missing"]), prefix="golden/")
    assert item.slices == ("golden/cuisine=thai", "golden/route=r1", "golden/all")
    assert item.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert item.reference == ("a", "b") and item.metadata == {"cuisine": "thai"}
