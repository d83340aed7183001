"""Judges: the programmatic verifier, and the LLM judge against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading

import openai
import pytest

from continuum_pipeline.judge import (
    BudgetExhausted,
    CriterionScore,
    Judge,
    JudgeCache,
    JudgeError,
    JudgeInput,
    LLMJudge,
    Prices,
    ProgrammaticVerifier,
    RubricCriterion,
    exact_match_check,
)
from continuum_pipeline.judge.labeling import judge_items, label_interactions
from continuum_pipeline_tests.openai_server import OpenAIServer, Reply

RUBRIC = (RubricCriterion("accuracy", "The answer is factually correct for the user's account.", weight=2.0),
          RubricCriterion("tone", "Polite, concise and on-brand.", weight=1.0))


def item(i: int = 1, response: str = "Your refund was issued on May 2.", **metadata) -> JudgeInput:
    return JudgeInput(f"i{i}", prompt=f"Where is my refund? ({i})",
                      messages=[{"role": "system", "content": "You are the support bot."},
                                {"role": "user", "content": f"Where is my refund? ({i})"}],
                      response=response, metadata=metadata, contexts=["Refund #88 issued 2026-05-02."])


def verdict(**scores: object) -> str:
    entries = {name: {"score": s, "reason": f"{name} because"} for name, s in scores.items()}
    return json.dumps({"criteria": entries})


@pytest.fixture
def server():
    with OpenAIServer() as running:
        yield running


def llm_judge(server: OpenAIServer, **overrides) -> LLMJudge:
    return LLMJudge(**{"base_url": server.base_url, "model": "judge-model", "criteria": RUBRIC, **overrides})


# --- programmatic verifier ---


def test_verifier_wraps_a_check_and_validates_its_scores():
    verifier = ProgrammaticVerifier(lambda it: (0.75, f"kb says {it.metadata['k']}"), name="kb", version="3")
    [v] = verifier.judge([item(k="v")])
    assert (v.interaction_id, v.judge, v.judge_version, v.score) == ("i1", "kb", "3", 0.75)
    assert [(c.criterion, c.score, c.weight, c.rationale) for c in v.criteria] == [
        ("correct", 0.75, 1.0, "kb says v")]
    assert ProgrammaticVerifier(lambda it: (True, "ok")).judge([item()])[0].score == 1.0
    assert ProgrammaticVerifier(lambda it: (1 + 1e-12, "float noise")).judge([item()])[0].score == 1.0
    assert isinstance(verifier, Judge)

    for bad in (math.nan, 1.5, -0.1, "1", None):
        with pytest.raises(JudgeError, match=r"judge 'verifier'.*interaction 'i7'.*criterion 'correct'"):
            ProgrammaticVerifier(lambda it, bad=bad: (bad, "?")).judge([item(7)])
    with pytest.raises(JudgeError, match=r"interaction 'i2'.*\(score, rationale\)"):
        ProgrammaticVerifier(lambda it: 1.0).judge([item(2)])  # type: ignore[arg-type, return-value]
    with pytest.raises(JudgeError, match=r"interaction 'i3'.*ZeroDivisionError") as raised:
        ProgrammaticVerifier(lambda it: (1 / 0, "")).judge([item(3)])
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    with pytest.raises(ValueError, match="check"):
        ProgrammaticVerifier("not callable")  # type: ignore[arg-type]


def test_exact_match_check_normalizes_case_whitespace_and_trailing_punctuation():
    verifier = ProgrammaticVerifier(exact_match_check("answer"))
    items = [item(1, "  the  ANSWER is\n42 . ", answer="The answer is 42"),
             item(2, "Paris!", answer=["paris", "Paris, France"]),
             item(3, "42", answer=42),
             item(4, "43", answer="42"),
             item(5, None, answer="42")]
    verdicts = verifier.judge(items)
    assert [v.score for v in verdicts] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert verdicts[3].criteria[0].rationale == "expected '42', got '43'"
    with pytest.raises(JudgeError, match=r"interaction 'i9'.*no 'answer'"):
        verifier.judge([item(9, "42", expected="42")])


# --- LLM judge ---


def test_llm_judge_combines_weighted_criteria_and_sends_the_rubric(server: OpenAIServer):
    server.push(verdict(accuracy=5, tone=1))
    [v] = llm_judge(server, name="support_judge", version="7").judge([item()])

    assert (v.interaction_id, v.judge, v.judge_version) == ("i1", "support_judge", "7")
    assert v.score == pytest.approx((2 * 1.0 + 1 * 0.0) / 3)
    assert [(c.criterion, c.score, c.weight, c.rationale) for c in v.criteria] == [
        ("accuracy", 1.0, 2.0, "accuracy because"), ("tone", 0.0, 1.0, "tone because")]

    [request] = server.requests
    assert request.path == "/v1/chat/completions" and request.model == "judge-model"
    assert request.body["response_format"] == {"type": "json_object"} and request.body["temperature"] == 0.0
    system, user = request.messages
    for needle in ("accuracy (weight 2)", "factually correct", "tone (weight 1)", "Polite, concise",
                   "from 1 (worst) to 5 (best)", "JSON"):
        assert needle in system["content"]
    for needle in ("You are the support bot.", "Where is my refund? (1)", "Refund #88 issued",
                   "Your refund was issued on May 2."):
        assert needle in user["content"]


def test_llm_judge_parses_fenced_and_loosely_typed_verdicts(server: OpenAIServer):
    server.push("<think>hmm</think>Sure:\n```json\n" + verdict(accuracy="4", tone=2.5) + "\n```",
                json.dumps({"accuracy": 3, "tone": {"score": 5}}))  # no "criteria" wrapper, bare score
    first, second = llm_judge(server, concurrency=1).judge([item(1), item(2)])
    assert [c.score for c in first.criteria] == [0.75, 0.375]
    assert [c.score for c in second.criteria] == [0.5, 1.0] and second.criteria[1].rationale is None


def test_llm_judge_reasks_after_malformed_json(server: OpenAIServer):
    server.push("I think it's great!", verdict(accuracy=3, tone=5))
    [v] = llm_judge(server).judge([item()])
    assert v.score == pytest.approx((2 * 0.5 + 1.0) / 3)
    retry = server.requests[1].messages
    assert retry[2] == {"role": "assistant", "content": "I think it's great!"}
    assert retry[3]["role"] == "user" and "not valid JSON" in retry[3]["content"]


def test_llm_judge_gives_up_on_always_malformed_output(server: OpenAIServer):
    server.push(*["I think it's great!"] * 3)
    with pytest.raises(JudgeError) as raised:
        llm_judge(server, max_retries=2).judge([item(5)])
    message = str(raised.value)
    for needle in ("'llm_judge'", "interaction 'i5'", "after 3 attempts",
                   "whole verdict (criteria accuracy, tone)", "not valid JSON", "I think it's great!"):
        assert needle in message
    assert len(server.requests) == 3


def test_llm_judge_truncates_raw_output_in_errors(server: OpenAIServer):
    server.push("x" * 5000)
    with pytest.raises(JudgeError) as raised:
        llm_judge(server, max_retries=0).judge([item()])
    assert "x" * 500 + "…" in str(raised.value) and "x" * 501 not in str(raised.value)


@pytest.mark.parametrize(("answer", "problem"), [
    (verdict(accuracy=5), "criterion 'tone': missing"),
    (verdict(accuracy=9, tone=3), "criterion 'accuracy': score 9 is outside the scale 1-5"),
    (verdict(accuracy=0, tone=3), "criterion 'accuracy': score 0 is outside the scale 1-5"),
    (verdict(accuracy=4, tone="great"), "criterion 'tone': score 'great' is not a number"),
    (verdict(accuracy=4, tone=True), "criterion 'tone': score True is not a number"),
    ('{"criteria": [4, 5]}', '"criteria" is not an object'),
])
def test_llm_judge_rejects_unusable_verdicts(server: OpenAIServer, answer: str, problem: str):
    server.push(answer, answer)
    with pytest.raises(JudgeError, match=re.escape(problem)) as raised:
        llm_judge(server, max_retries=1).judge([item(4)])
    assert "interaction 'i4'" in str(raised.value) and answer[:40] in str(raised.value)
    assert len(server.requests) == 2 and problem in server.requests[1].messages[-1]["content"]


def test_llm_judge_survives_http_500_via_sdk_retries(server: OpenAIServer):
    server.push(Reply.error(500), Reply.error(500), verdict(accuracy=5, tone=5))
    assert llm_judge(server, max_retries=2).judge([item()])[0].score == 1.0
    assert len(server.requests) == 3


def test_llm_judge_reports_a_persistently_failing_endpoint(server: OpenAIServer):
    server.push(*[Reply.error(500, "model crashed")] * 2)
    with pytest.raises(JudgeError) as raised:
        llm_judge(server, max_retries=1).judge([item(6)])
    message = str(raised.value)
    for needle in (server.base_url, "'judge-model'", "interaction 'i6'", "InternalServerError",
                   "model crashed"):
        assert needle in message
    assert isinstance(raised.value.__cause__, openai.InternalServerError)
    assert len(server.requests) == 2


def test_llm_judge_waits_out_a_429(server: OpenAIServer):
    server.push(Reply.rate_limited(retry_after=0), verdict(accuracy=1, tone=1))
    assert llm_judge(server).judge([item()])[0].score == 0.0
    assert len(server.requests) == 2


def test_llm_judge_times_out_on_a_slow_endpoint(server: OpenAIServer):
    server.push(Reply(verdict(accuracy=5, tone=5), delay=5))
    with pytest.raises(JudgeError, match="APITimeoutError"):
        llm_judge(server, timeout=0.3, max_retries=0).judge([item()])


def test_llm_judge_runs_concurrently_and_keeps_input_order():
    barrier = threading.Barrier(4, timeout=5)  # only passes if 4 requests are in flight at once

    def answer(request) -> Reply:
        i = int(re.search(r"refund\? \((\d+)\)", request.text).group(1))
        barrier.wait()
        # Later items answer sooner, so completion order is the reverse of input order.
        return Reply(verdict(accuracy=1 + i % 5, tone=5), delay=0.02 * (8 - i))

    with OpenAIServer(handler=answer) as server:
        verdicts = llm_judge(server, concurrency=4).judge([item(i) for i in range(8)])
    assert server.errors == []
    assert [v.interaction_id for v in verdicts] == [f"i{i}" for i in range(8)]
    assert [v.criteria[0].score for v in verdicts] == [(i % 5) / 4 for i in range(8)]


@pytest.mark.parametrize(("overrides", "argument"), [
    ({"criteria": ()}, "criteria"),
    ({"criteria": (RubricCriterion("a", "x", weight=0),)}, "criteria"),
    ({"criteria": (RubricCriterion("a", "x", weight=-1),)}, "criteria"),
    ({"criteria": (RubricCriterion("a", "x"), RubricCriterion("a", "y"))}, "criteria"),
    ({"scale": (5, 1)}, "scale"),
    ({"scale": (1, 1)}, "scale"),
    ({"scale": (0.0, 1.0)}, "scale"),
    ({"max_retries": -1}, "max_retries"),
    ({"concurrency": 0}, "concurrency"),
    ({"timeout": 0}, "timeout"),
    ({"model": ""}, "model"),
])
def test_llm_judge_validates_its_arguments(overrides: dict, argument: str):
    kwargs = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "criteria": RUBRIC, **overrides}
    with pytest.raises(ValueError, match=f"^{argument}:"):
        LLMJudge(**kwargs)


def test_llm_judge_is_a_judge_and_the_package_does_not_import_openai():
    assert isinstance(LLMJudge(base_url="http://127.0.0.1:9/v1", model="m", criteria=RUBRIC), Judge)
    code = "import sys, continuum_pipeline.judge; assert 'openai' not in sys.modules, 'openai imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the shared fake OpenAI server ---


def test_server_answers_as_a_plain_chat_model_and_streams():
    with OpenAIServer(chat=lambda messages: messages[-1]["content"].upper(), models=("tiny",)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        reply = client.chat.completions.create(model="tiny",
                                               messages=[{"role": "user", "content": "hello there"}])
        assert reply.choices[0].message.content == "HELLO THERE" and reply.model == "tiny"
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "stream me please"}], stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "STREAM ME PLEASE"
        assert chunks[-1].usage.completion_tokens == 3
        assert server.requests[1].headers["authorization"] == "Bearer k"
        assert len(server.chat_requests) == 2


def test_server_fails_fast_when_the_script_runs_out():
    with OpenAIServer(replies=["scripted"]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=3)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "scripted" and server.pending == 0
        with pytest.raises(openai.InternalServerError, match="no scripted reply"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert len(server.requests) == 2 and "no scripted reply" in server.errors[0]


# --- spend, budget and cache ---


def words(text: str) -> int:
    return len(text.split())


def expected_cost(server: OpenAIServer, reply: str, input_per_1m: float, output_per_1m: float) -> float:
    """What the server's `usage` (words as tokens) bills at these prices, request by request."""
    prompt = sum(words(str(m.get("content", ""))) for r in server.chat_requests for m in r.messages)
    return (prompt * input_per_1m + len(server.chat_requests) * words(reply) * output_per_1m) / 1e6


def test_llm_judge_meters_spend_from_each_responses_usage(server: OpenAIServer):
    answer = verdict(accuracy=4, tone=5)
    server.chat = lambda messages: answer
    judge = llm_judge(server, prices=Prices(input_per_1m_tokens=3.0, output_per_1m_tokens=15.0))
    assert (judge.spent_usd, judge.requests, judge.budget_exhausted) == (0.0, 0, False)
    judge.judge([item(i) for i in range(3)])
    assert judge.requests == 3 and judge.cache_hits == 0
    assert judge.spent_usd == pytest.approx(expected_cost(server, answer, 3.0, 15.0)) and judge.spent_usd > 0


def test_llm_judge_shows_the_reference_answer_when_asked(server: OpenAIServer):
    server.chat = lambda messages: verdict(accuracy=5, tone=5)
    with_ref = JudgeInput("r1", "q", None, "Paris", {}, reference=["Paris", "Paris, France"])
    llm_judge(server, use_reference=True).judge([with_ref, item()])
    # the two requests run concurrently: tell them apart by the response they evaluate, not by arrival
    first, second = sorted(server.chat_requests, key=lambda r: "Paris" not in r.text)
    assert "## Reference answer\n- Paris\n- Paris, France" in first.messages[1]["content"]
    assert "ground truth" in first.messages[0]["content"] and "Reference answer" not in second.text
    llm_judge(server).judge([with_ref])
    assert "Reference answer" not in server.chat_requests[-1].text  # off by default


def test_llm_judge_stops_starting_requests_once_its_budget_is_spent(server: OpenAIServer):
    answer = verdict(accuracy=5, tone=5)
    server.chat = lambda messages: answer
    # $1 per completion token, one verdict = words(answer) tokens: the budget covers 1.5 verdicts.
    per_verdict = float(words(answer))
    judge = llm_judge(server, concurrency=1, prices=Prices(output_per_1m_tokens=1e6),
                      cost_budget_usd=1.5 * per_verdict)
    events: list[dict] = []
    run = judge_items(judge, [item(i) for i in range(200)], lambda event, info: events.append(info))
    # The first verdict leaves $0.5 of budget, so a second request starts; after it nothing does.
    assert [v.interaction_id for v in run.verdicts] == ["i0", "i1"]
    assert (run.over_budget, run.failed, run.requests, len(server.chat_requests)) == (198, 0, 2, 2)
    assert run.spent_usd == pytest.approx(2 * per_verdict) and judge.budget_exhausted
    assert run.budget_stop == (f"judge 'llm_judge' v1: cost budget of ${1.5 * per_verdict:g} reached after "
                               f"${2 * per_verdict:g} spent; the rest are labelled next run")
    # The labelling loop stopped calling the judge after the first chunk instead of failing item by item.
    assert events == [{"judge": "llm_judge", "done": 64, "total": 200}]
    with pytest.raises(BudgetExhausted, match="the rest are labelled next run"):
        judge.judge([item(500)])
    again = judge_items(judge, [item(i) for i in range(3)])
    assert (again.over_budget, again.requests, len(again.verdicts)) == (3, 0, 0)


def test_a_cached_rerun_costs_nothing_and_sends_nothing(server: OpenAIServer, tmp_path):
    answer = verdict(accuracy=3, tone=4)
    server.chat = lambda messages: answer
    path = tmp_path / "cache" / "judges.sqlite"
    prices = Prices(input_per_1m_tokens=1.0, output_per_1m_tokens=2.0)
    first = llm_judge(server, version="abc", prices=prices, cache=JudgeCache(path))
    verdicts = first.judge([item(i) for i in range(4)])
    assert (first.requests, first.cache_hits) == (4, 0) and first.spent_usd > 0

    # A new run (new judge, new connection to the same file): every verdict from the cache.
    again = llm_judge(server, version="abc", prices=prices, cache=JudgeCache(path))
    run = judge_items(again, [item(i) for i in range(4)])
    assert (run.requests, run.cache_hits, run.spent_usd, len(server.chat_requests)) == (0, 4, 0.0, 4)
    assert [v.criteria for v in run.verdicts] == [v.criteria for v in verdicts]
    assert [v.judge_version for v in run.verdicts] == ["abc"] * 4

    # Same interaction content under another id hits too; a new judge version (changed rubric) misses.
    assert again.judge([item(1, response="Your refund was issued on May 2.")])[0].interaction_id == "i1"
    assert again.requests == 0
    changed = llm_judge(server, version="abd", cache=JudgeCache(path))
    changed.judge([item(0)])
    assert (changed.requests, changed.cache_hits) == (1, 0)

    # Another process reuses the entries: no request from it either.
    code = (f"from continuum_pipeline.judge import JudgeCache, JudgeInput, LLMJudge, RubricCriterion\n"
            f"from continuum_pipeline_tests.test_judges import RUBRIC, item\n"
            f"j = LLMJudge(base_url={server.base_url!r}, model='judge-model', criteria=RUBRIC, version='abc', "
            f"cache=JudgeCache({str(path)!r}))\n"
            f"vs = j.judge([item(i) for i in range(4)])\n"
            f"print(j.requests, j.cache_hits, round(vs[0].score, 6))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["0", "4", str(round(verdicts[0].score, 6))]
    assert len(server.chat_requests) == 5


def test_judge_cache_is_safe_across_threads_and_ignores_unreadable_entries(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from continuum_pipeline.judge.cache import cache_key, dump_criteria, load_criteria

    cache = JudgeCache(tmp_path / "c.sqlite")
    criteria = (CriterionScore("accuracy", 0.5, 2.0, "half"), CriterionScore("tone", 1.0, 1.0, None))
    keys = [cache_key("v1", {"messages": [i]}) for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: cache.put(k, dump_criteria(criteria)), keys))
        assert all(pool.map(lambda k: load_criteria(cache.get(k)) == criteria, keys))
    assert len(cache) == 200 and cache.get(cache_key("v2", {"messages": [0]})) is None
    assert load_criteria("not json") is None and load_criteria('[["a", "x", 1, null]]') is None
    cache.close()
    with JudgeCache(tmp_path / "c.sqlite") as reopened:
        assert load_criteria(reopened.get(keys[7])) == criteria


def test_judge_items_isolates_failures_without_rejudging_the_chunk(server: OpenAIServer):
    def answer(request) -> Reply:
        i = int(re.search(r"refund\? \((\d+)\)", request.text).group(1))
        return Reply("not json at all") if i == 2 else Reply(verdict(accuracy=5, tone=5))

    server.handler = answer
    run = judge_items(llm_judge(server, max_retries=0), [item(i) for i in range(5)])
    assert [v.interaction_id for v in run.verdicts] == ["i0", "i1", "i3", "i4"] and run.failed == 1
    assert run.requests == 5  # each item asked once: a bad verdict costs only itself


def test_label_report_counts_spend_requests_cache_hits_and_budget(lake, settings, tmp_path):
    from continuum_pipeline.lake.ingest import ingest_landing

    from .conftest import interaction, write_segment

    # Four interactions, two of them asking and answering exactly the same thing.
    same = {"prompt": "same", "messages": [{"role": "user", "content": "same"}], "response": "same answer"}
    write_segment(settings.landing_dir, "20261121T000000Z-c", [interaction(1, **same), interaction(2, **same),
                                                               interaction(3), interaction(4)])
    ingest_landing(lake, settings.landing_dir)
    answer = verdict(accuracy=5, tone=3)
    with OpenAIServer(chat=lambda messages: answer) as srv:
        judge = llm_judge(srv, concurrency=1, cache=JudgeCache(tmp_path / "judges.sqlite"),
                          prices=Prices(output_per_1m_tokens=1e6), cost_budget_usd=2.5 * words(answer))
        report = label_interactions(lake, [judge])
    assert report.labelled == {"llm_judge": 4} and report.over_budget == {"llm_judge": 0}
    assert report.requests == {"llm_judge": 3} and report.cache_hits == {"llm_judge": 1}
    assert report.spent_usd["llm_judge"] == pytest.approx(3 * words(answer)) and report.budget_stop == {}


def test_labelling_reads_a_captured_reference_answer_from_metadata(lake, settings):
    from continuum_pipeline.judge import ReferenceMatchSpec
    from continuum_pipeline.lake.ingest import ingest_landing

    from .conftest import interaction, write_segment

    write_segment(settings.landing_dir, "20261121T000000Z-r", [
        interaction(1, response="Paris.", metadata=json.dumps({"reference": ["paris", "Paris, France"]})),
        interaction(2, response="Lyon", metadata=json.dumps({"reference": "Paris"})),
        interaction(3, response="Paris", metadata=json.dumps({"topic": "geography"}))])  # no known answer
    ingest_landing(lake, settings.landing_dir)
    judge = ReferenceMatchSpec(kind="reference_match", name="capital").build()
    report = label_interactions(lake, [judge])
    assert report.labelled == {"capital": 2} and report.failed == {"capital": 1}
    assert report.mean_score == {"capital": 0.5}
    again = label_interactions(lake, [judge])  # the unlabelled one is tried again, and fails again
    assert again.already_labelled == {"capital": 2} and again.failed == {"capital": 1}
