"""Every `continuum` error is one readable line with the fix; a traceback only with --debug."""

from __future__ import annotations

import socket

import dagster as dg
import pytest

from continuum_pipeline import cli
from continuum_pipeline.definitions import build_definitions
from continuum_pipeline.judge import JudgeInput, LLMJudge, RubricCriterion


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    lines = [line for line in err if line.startswith("continuum")]
    assert len(lines) == 1, err
    return lines[0]


def test_lineage_of_a_missing_model_or_version_says_where_to_look(settings, capsys):
    assert cli.main(["lineage", "no-such-model@3"]) == 1
    line = one_line(capsys)
    assert "no model version no-such-model@3" in line and "continuum tasks" in line


def test_unreachable_mlflow_names_the_server_and_the_setting(settings, monkeypatch, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("CONTINUUM_MLFLOW_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in a second, not after minutes of backoff
    for argv in (["lineage", "continuum-support@1"], ["lineage", "--interaction", "i1"]):
        assert cli.main(argv) == 1
        line = one_line(capsys)
        assert line.startswith("continuum lineage: cannot reach " + url) and "CONTINUUM_MLFLOW_URI" in line
    with pytest.raises(Exception, match="Connection refused|Failed to establish"):  # --debug: the real error
        cli.main(["--debug", "lineage", "--interaction", "i1"])


def test_training_before_the_base_model_exists_says_to_materialize_it(settings, capsys):
    defs = build_definitions(settings)
    job = defs.resolve_job_def("support_answer_training_job").get_subset(
        asset_selection={dg.AssetKey(["support_answer", "candidate_model"])})
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "materialize `support_answer/base_model` first" in failure.event_specific_data.error.message
        assert "Repo id" not in failure.event_specific_data.error.message
        with pytest.raises(Exception) as raised:  # what a CLI command running the job gets, as one line
            job.execute_in_process(instance=instance)
    line = cli.error_line(raised.value, "train")
    assert line.startswith("continuum train: support_answer/candidate_model: no base model at ")
    assert "set base_model.id" in line and "\n" not in line


def test_unreachable_judge_endpoint_names_it_and_the_task_setting():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    judge = LLMJudge(base_url=url, model="m", criteria=[RubricCriterion("accuracy", "correct")], max_retries=0)
    with pytest.raises(Exception) as raised:  # what the labelling step raises inside a CLI command's run
        judge.judge([JudgeInput("i1", "q", None, "a", {})])
    line = cli.error_line(raised.value, "demo")
    assert line.startswith(f"continuum demo: cannot reach {url.removesuffix('/v1')}")
    assert "judge's base_url in the task YAML" in line
