"""Judge specs: YAML validation with errors that name the path and the fix, versions, and building judges."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError

from continuum_pipeline.config_errors import format_validation_error
from continuum_pipeline.judge import (
    Judge,
    JudgeConfigError,
    JudgeEnvironment,
    JudgeError,
    JudgeInput,
    LLMJudge,
    LLMRubricSpec,
    ProgrammaticVerifier,
    PythonJudgeSpec,
    RagasSpec,
    ReferenceMatchJudge,
    ReferenceMatchSpec,
    parse_judges,
)
from continuum_pipeline_tests import judge_functions
from continuum_pipeline_tests.openai_server import OpenAIServer

FUNCTIONS = "continuum_pipeline_tests.judge_functions"
RUBRIC = {"kind": "llm_rubric", "name": "helpful", "model": "judge-model", "base_url": "http://127.0.0.1:9/v1",
          "criteria": [{"name": "correct", "description": "States the right facts.", "weight": 2},
                       {"name": "tone", "description": "Polite and brief."}]}

TASK_YAML = f"""
judges:
  - kind: llm_rubric
    name: helpful
    criteria:
      - {{name: correct, description: "States the right facts.", weight: 2}}
  - kind: ragas
    name: rag
    metrics: [faithfulness, rouge_score]
    weights: {{faithfulness: 3}}
  - kind: python
    name: kb
    function: "{FUNCTIONS}:kb_check"
  - kind: reference_match
    name: exact
    reference_field: metadata.expected
"""


def one(**overrides) -> dict:
    return {**RUBRIC, **overrides}


def errors_of(judges: list) -> str:
    with pytest.raises(ValueError) as raised:
        parse_judges(judges)
    return str(raised.value)


def item(response: str | None = "Refunds take 5 days.", reference=None, **metadata) -> JudgeInput:
    return JudgeInput("i1", "How long do refunds take?", None, response, metadata, reference=reference)


# --- parsing and validation ---


def test_a_task_yaml_parses_into_one_spec_per_kind_with_defaults():
    rubric, rag, kb, exact = parse_judges(yaml.safe_load(TASK_YAML)["judges"])
    assert isinstance(rubric, LLMRubricSpec) and isinstance(rag, RagasSpec)
    assert isinstance(kb, PythonJudgeSpec) and isinstance(exact, ReferenceMatchSpec)
    assert (rubric.base_url, rubric.model, rubric.api_key_env) == (None, None, "CONTINUUM_JUDGE_API_KEY")
    assert (rubric.scale, rubric.temperature, rubric.max_concurrency, rubric.max_retries) == ((1, 5), 0.0, 8, 3)
    assert (rubric.prices.input_per_1m_tokens, rubric.prices.output_per_1m_tokens, rubric.cost_budget_usd) == (
        0.0, 0.0, None)
    assert rubric.use_reference is False and rubric.criteria[0].weight == 2
    assert rag.metrics == ["faithfulness", "rouge_score"] and rag.weights == {"faithfulness": 3}
    assert (kb.function, kb.criterion) == (f"{FUNCTIONS}:kb_check", "correct")
    assert exact.reference_field == "metadata.expected"


@pytest.mark.parametrize(("judges", "expected"), [
    ([one(criteria=[{"name": "a", "description": "x", "weight": 0}])], "judges[0].criteria[0].weight: must be > 0"),
    ([one(criteria=[{"name": "a", "description": "x", "weight": -2}])], "judges[0].criteria[0].weight: must be > 0"),
    ([one(criteria=[])], "judges[0].criteria: needs at least 1 item(s)"),
    ([one(criteria=[{"name": "a", "description": "x"}, {"name": "a", "description": "y"}])],
     "judges[0].criteria: criterion names must be distinct; 'a' appear(s) twice"),
    ([one(criteria=[{"name": "a"}])], "judges[0].criteria[0].description: missing — this setting is required"),
    ([one(kind="llm")], "judges[0]: unknown kind 'llm' — use one of 'llm_rubric', 'ragas', 'python', "
                        "'reference_match'"),
    ([{"name": "x"}], "judges[0]: missing 'kind' — say which kind this is"),
    ([{k: v for k, v in RUBRIC.items() if k != "criteria"} | {"critera": []}],
     "judges[0]: unknown setting 'critera' — did you mean 'criteria'?"),
    ([one(scale=[5, 1])], "judges[0].scale: must be [low, high] with low < high, e.g. [1, 5]; got [5, 1]"),
    ([one(temperature=-1)], "judges[0].temperature: must be >= 0"),
    ([one(max_concurrency=0)], "judges[0].max_concurrency: must be >= 1"),
    ([one(timeout_s=0)], "judges[0].timeout_s: must be > 0"),
    ([one(cost_budget_usd=-1)], "judges[0].cost_budget_usd: must be >= 0"),
    ([one(prices={"input_per_1m_tokens": -0.5})], "judges[0].prices.input_per_1m_tokens: must be >= 0"),
    ([one(prices={"input": 1})], "judges[0].prices.input: unknown setting — remove it or check its spelling"),
    ([one(api_key_env="sk-live-123")], "judges[0].api_key_env: must be the name of the environment variable "
                                       "holding the key (e.g. OPENAI_API_KEY), never the key itself"),
    ([one(base_url="localhost:8000")], "judges[0].base_url: must be an http(s) URL such as "
                                       "http://127.0.0.1:8000/v1, got 'localhost:8000'"),
    ([one(name="my judge")], "judges[0].name: must be letters, digits, '_', '.' or '-'"),
    ([{k: v for k, v in RUBRIC.items() if k != "name"}], "judges[0].name: missing — this setting is required"),
    ([one(), one()], "judges[1].name: 'helpful' is already the name of judges[0] — names must be distinct"),
    ([{"kind": "ragas", "name": "r", "metrics": ["faithfullness"]}],
     "judges[0].metrics: unknown metric 'faithfullness' — did you mean 'faithfulness'?"),
    ([{"kind": "ragas", "name": "r", "metrics": []}], "judges[0].metrics: needs at least 1 item(s)"),
    ([{"kind": "ragas", "name": "r", "metrics": ["bleu_score"], "weights": {"rouge_score": 1}}],
     "judges[0]: weights name metric(s) ['rouge_score'] that are not in metrics ['bleu_score']"),
    ([{"kind": "ragas", "name": "r", "metrics": ["bleu_score"], "weights": {"bleu_score": 0}}],
     "judges[0].weights: bleu_score: must be > 0"),
    ([{"kind": "ragas", "name": "r", "metrics": ["semantic_similarity"], "embeddings_model": "e",
       "embeddings_path": "/models/minilm"}], "not both"),
    ([{"kind": "python", "name": "p", "function": "my_app.checks.kb_check"}],
     "judges[0].function: must be 'package.module:function' (a module path, a colon, the function's name), "
     "got 'my_app.checks.kb_check'"),
    ([{"kind": "reference_match", "name": "m", "reference_field": "expected"}],
     "judges[0].reference_field: must be 'reference' (the item's reference answer) or a path into its metadata"),
    ([{"kind": "python", "name": "p"}], "judges[0].function: missing — this setting is required"),
    ([one(max_retries="three")], "judges[0].max_retries: input should be a valid integer, unable to parse string "
                                 "as an integer (got 'three')"),
    ("not a list", "judges: input should be a valid list (got 'not a list')"),
])
def test_validation_errors_name_the_path_and_the_fix(judges, expected: str):
    assert expected in errors_of(judges)


def test_every_problem_is_reported_one_per_line():
    message = errors_of([one(temperature=-1, criteria=[{"name": "a", "description": "x", "weight": 0}]),
                         {"kind": "reference_match"}])
    assert message.splitlines() == ["judges[0].temperature: must be >= 0",
                                    "judges[0].criteria[0].weight: must be > 0",
                                    "judges[1].name: missing — this setting is required"]


def test_format_validation_error_renders_any_model_with_a_prefix():
    class Gate(BaseModel):
        min_delta: float = Field(gt=0)
        slices: list[str]

    with pytest.raises(ValidationError) as raised:
        Gate.model_validate({"min_delta": 0, "slices": [1]})
    assert format_validation_error(raised.value, "gate").splitlines() == [
        "gate.min_delta: must be > 0", "gate.slices[0]: input should be a valid string (got 1)"]
    assert format_validation_error(raised.value).splitlines()[0] == "min_delta: must be > 0"


# --- versions ---


def version(**overrides) -> str:
    return LLMRubricSpec.model_validate(one(**overrides)).version()


def test_version_follows_what_decides_the_scores_not_where_the_endpoint_is():
    base = version()
    assert len(base) == 12 and version() == base  # stable: a hash of the canonical config
    for same in ({"base_url": "https://judge.internal/v1"}, {"api_key_env": "OTHER_KEY"}, {"max_concurrency": 64},
                 {"timeout_s": 5}, {"max_retries": 0}, {"cost_budget_usd": 1.5}, {"name": "renamed"},
                 {"prices": {"input_per_1m_tokens": 3, "output_per_1m_tokens": 15}}):
        assert version(**same) == base, same
    changed = [version(model="bigger-model"), version(temperature=0.7), version(scale=[1, 10]),
               version(use_reference=True),
               version(criteria=[{"name": "correct", "description": "States the right facts, exactly.", "weight": 2},
                                 {"name": "tone", "description": "Polite and brief."}]),
               version(criteria=[{"name": "correct", "description": "States the right facts.", "weight": 3},
                                 {"name": "tone", "description": "Polite and brief."}])]
    assert base not in changed and len(set(changed)) == len(changed)


def test_version_reads_the_model_from_the_environment_when_the_yaml_leaves_it_out():
    spec = LLMRubricSpec.model_validate(one(model=None))
    small = spec.version(JudgeEnvironment(environ={"CONTINUUM_JUDGE_MODEL": "small"}))
    assert small != spec.version(JudgeEnvironment(environ={"CONTINUUM_JUDGE_MODEL": "large"}))
    assert small == version(model="small")
    with pytest.raises(JudgeConfigError, match=r"^model: not set: give model in the judge's configuration or set "
                                               r"\$CONTINUUM_JUDGE_MODEL"):
        spec.version(JudgeEnvironment(environ={}))


def test_ragas_version_ignores_models_its_metrics_do_not_use():
    def v(env: dict | None = None, **fields) -> str:
        spec = RagasSpec.model_validate({"kind": "ragas", "name": "r", "metrics": ["rouge_score"], **fields})
        return spec.version(JudgeEnvironment(environ=env or {}))

    strings = v()
    assert v({"CONTINUUM_JUDGE_MODEL": "any"}, base_url="http://h/v1") == strings
    assert v(metrics=["rouge_score", "bleu_score"]) != strings
    assert v(weights={"rouge_score": 2}) != strings
    llm = v({"CONTINUUM_JUDGE_MODEL": "a"}, metrics=["faithfulness"])
    assert llm != v({"CONTINUUM_JUDGE_MODEL": "b"}, metrics=["faithfulness"])
    assert llm == v({"CONTINUUM_JUDGE_MODEL": "a"}, metrics=["faithfulness"], base_url="http://elsewhere/v1")
    emb = {"metrics": ["semantic_similarity"]}
    assert v(**emb, embeddings_path="/a/all-MiniLM-L6-v2") == v(**emb, embeddings_path="/b/all-MiniLM-L6-v2")
    assert v(**emb, embeddings_path="/a/all-MiniLM-L6-v2") != v(**emb, embeddings_model="text-embedding-3-small")


# --- building ---


def test_llm_rubric_builds_against_the_endpoint_and_key_named_by_the_environment():
    spec = LLMRubricSpec.model_validate(one(base_url=None, model=None, api_key_env="MY_JUDGE_KEY",
                                            prices={"input_per_1m_tokens": 1}, cost_budget_usd=2, max_concurrency=3))
    with OpenAIServer(chat=lambda m: '{"criteria": {"correct": {"score": 5}, "tone": {"score": 3}}}') as server:
        env = JudgeEnvironment(environ={"CONTINUUM_JUDGE_BASE_URL": server.base_url,
                                        "CONTINUUM_JUDGE_MODEL": "judge-7b", "MY_JUDGE_KEY": "secret"})
        judge = spec.build(env)
        assert isinstance(judge, LLMJudge) and isinstance(judge, Judge)
        assert (judge.name, judge.version, judge.model, judge.max_concurrency) == (
            "helpful", spec.version(env), "judge-7b", 3)
        assert judge.meter.budget_usd == 2 and judge.meter.prices.input_per_1m_tokens == 1
        [v] = judge.judge([item()])
        assert v.score == pytest.approx((2 * 1.0 + 0.5) / 3) and v.judge_version == spec.version(env)
        assert server.requests[0].headers["authorization"] == "Bearer secret"
        assert server.requests[0].model == "judge-7b"
    with pytest.raises(JudgeConfigError, match=r"^base_url: not set: give base_url in the judge's configuration "
                                               r"or set \$CONTINUUM_JUDGE_BASE_URL"):
        spec.build(JudgeEnvironment(environ={"CONTINUUM_JUDGE_MODEL": "m"}))


def test_python_judge_builds_a_verifier_whose_version_follows_the_functions_own():
    spec = PythonJudgeSpec(kind="python", name="kb", function=f"{FUNCTIONS}:kb_check")
    judge = spec.build()
    assert isinstance(judge, ProgrammaticVerifier) and judge.version.endswith("-kb-before")
    assert judge.judge([item("Refunds take 5 days.")])[0].score == 1.0
    judge_functions.KB["phase"] = "after"  # the knowledge base changed: same config, new version
    try:
        relabel = spec.build()
        assert relabel.version.endswith("-kb-after") and relabel.version != judge.version
        assert relabel.judge([item("Refunds take 5 days.")])[0].score == 0.0
    finally:
        judge_functions.KB["phase"] = "before"
    assert PythonJudgeSpec(kind="python", name="l", function=f"{FUNCTIONS}:length_check").build().version.endswith("-2")
    plain = PythonJudgeSpec(kind="python", name="p", function=f"{FUNCTIONS}:plain_check", criterion="ok").build()
    assert "-" not in plain.version and len(plain.version) == 12 and plain.criterion == "ok"


@pytest.mark.parametrize(("function", "problem"), [
    ("no_such_package.checks:kb_check", "function: no module named 'no_such_package' (from "
                                        "'no_such_package.checks:kb_check'); install the package that has it or "
                                        "add its folder to PYTHONPATH"),
    (f"{FUNCTIONS}:kb_chek", f"function: '{FUNCTIONS}' has no 'kb_chek' — did you mean 'kb_check'?"),
    (f"{FUNCTIONS}:NOT_A_FUNCTION", f"function: '{FUNCTIONS}:NOT_A_FUNCTION' is a int, not a function taking a "
                                    f"JudgeInput"),
    (f"{FUNCTIONS}:bad_version_check", f"function: {FUNCTIONS}:bad_version_check.version must be a non-empty str "
                                       f"or a zero-argument callable returning one, got 3"),
    ("broken_judge_module:check", "function: importing 'broken_judge_module' raised RuntimeError: the KB file is "
                                  "missing; fix the module"),
    ("needs_missing_dep:check", "function: importing 'needs_missing_dep' failed: it imports 'not_installed_dep', "
                                "which is not installed"),
])
def test_python_judge_import_problems_name_the_field_and_the_fix(function: str, problem: str, tmp_path, monkeypatch):
    (tmp_path / "broken_judge_module.py").write_text("raise RuntimeError('the KB file is missing')\n")
    (tmp_path / "needs_missing_dep.py").write_text("import not_installed_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = PythonJudgeSpec(kind="python", name="kb", function=function)
    with pytest.raises(JudgeConfigError) as raised:
        spec.build()
    assert str(raised.value) == problem and raised.value.field == "function"


def test_reference_match_scores_against_the_reference_or_a_metadata_path():
    judge = ReferenceMatchSpec(kind="reference_match", name="exact").build()
    assert isinstance(judge, ReferenceMatchJudge) and isinstance(judge, Judge)
    verdicts = judge.judge([item("  refunds TAKE 5 days ", reference="Refunds take 5 days."),
                            item("Paris!", reference=["paris", "Paris, France"]),
                            item("43", reference="42"), item(None, reference="42")])
    assert [v.score for v in verdicts] == [1.0, 1.0, 0.0, 0.0]
    assert [c.criterion for c in verdicts[0].criteria] == ["exact_match"]
    assert verdicts[2].criteria[0].rationale == "expected '42', got '43'"
    nested = ReferenceMatchSpec(kind="reference_match", name="m", reference_field="metadata.answer.text").build()
    assert nested.judge([item("4 2", answer={"text": 42})])[0].score == 1.0
    with pytest.raises(JudgeError, match=r"judge 'exact' v\w+: cannot score interaction 'i1': it has no reference "
                                         r"answer"):
        judge.judge([item("42")])
    with pytest.raises(JudgeError, match=r"metadata.answer has no 'text' \(it has \['value'\]\)"):
        nested.judge([item("42", answer={"value": 42})])
    outcomes = judge.judge_each([item("42", reference="42"), item("42")])
    assert outcomes[0].score == 1.0 and isinstance(outcomes[1], JudgeError)
