"""The OpenAI-compatible gateway, driven by the real `openai` SDK against a running `continuum serve` on 127.0.0.1.

Upstream arms: the scriptable OpenAI-protocol server (openai_server.py) and a tiny local HF model served by the
same `continuum serve --model-dir` at /local/v1. Everything ends as rows in the lake after ingest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from continuum_pipeline.capture import feedback
from continuum_pipeline.capture.writer import WRITER
from continuum_pipeline.server import arms as arms_file
from continuum_pipeline_tests.openai_server import OpenAIServer, Reply
from continuum_pipeline_tests.served import Served, free_port

KEY = "sk-continuum-test-gateway"
UPSTREAM_KEY = "sk-upstream-secret-never-captured"
TASK = "support_answer"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from continuum_pipeline.training import base_model as bm
    from continuum_pipeline_tests.test_training import TINY, VOCAB, toy_conversations

    return bm.build_base_model(toy_conversations(24), VOCAB, tmp_path_factory.mktemp("gw-base"), TINY)


@pytest.fixture
def gw_settings(settings, monkeypatch):
    monkeypatch.setenv("GW_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GW_TEST_LOCAL_KEY", KEY)
    return replace(settings, serve_api_keys=(KEY,), serve_allow_no_auth=False)


def write_arms(settings, arms: list[dict], sticky: str = "none", default: bool = True) -> None:
    data = {"tasks": {TASK: {"sticky": sticky, "arms": arms}}}
    if default:
        data["default_task"] = TASK
    arms_file.write(settings.gateway_arms, data)


def mock_arm(upstream: OpenAIServer, weight: float = 1, name: str = "teacher") -> dict:
    return {"name": name, "base_url": upstream.base_url, "model": "teacher-model", "api_key_env": "GW_TEST_UPSTREAM_KEY",
            "weight": weight, "price": {"prompt_per_1m": 1000.0, "completion_per_1m": 2000.0}}


def local_arm(served: Served, weight: float = 1) -> dict:
    return {"name": "student", "base_url": f"{served.url}/local/v1", "model": "student-model",
            "api_key_env": "GW_TEST_LOCAL_KEY", "weight": weight}


def client(served: Served, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0, timeout=30, **kw)


def echo(messages):
    return "echo: " + str(messages[-1]["content"])


def landed(settings) -> list[dict]:
    WRITER.flush()
    rows = []
    for path in sorted(Path(settings.landing_dir).glob("*.jsonl*")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def test_non_streaming_streaming_tools_feedback_end_in_the_lake(gw_settings, lake, sdk, tiny_model):
    from continuum_pipeline.lake.ingest import ingest_landing

    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
        "type": "object", "properties": {"order": {"type": "string"}}}}}]
    with OpenAIServer(chat=echo) as upstream, Served(gw_settings, tiny_model) as served:
        write_arms(gw_settings, [mock_arm(upstream)])
        c = client(served)
        raw = c.chat.completions.with_raw_response.create(
            model="anything", messages=[{"role": "user", "content": "where is my order?"}], user="u-1",
            tools=tools, extra_headers={"x-continuum-session": "s-1"})
        answer = raw.parse()
        iid = raw.headers["x-continuum-interaction-id"]
        assert answer.choices[0].message.content == "echo: where is my order?"
        assert raw.headers["x-continuum-route"] == "teacher"
        sent = upstream.chat_requests[-1]
        assert sent.model == "teacher-model" and sent.body["tools"] == tools  # tools passed through
        assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the arm's key, not the client's

        chunks = list(c.chat.completions.create(model="x", messages=[{"role": "user", "content": "stream me"}],
                                                stream=True, stream_options={"include_usage": True}, user="u-2"))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == "echo: stream me" and chunks[-1].usage.completion_tokens == 3

        # The local student behind the gateway: a real HF model answering through /local/v1.
        write_arms(gw_settings, [local_arm(served)])
        local = c.chat.completions.with_raw_response.create(
            model="x", messages=[{"role": "user", "content": "How do I reset my password?"}], user="u-3",
            max_tokens=12)
        assert local.headers["x-continuum-route"] == "student"
        assert local.parse().usage.prompt_tokens > 0 and local.parse().model == tiny_model.name
        streamed = list(c.chat.completions.create(model="x", stream=True, user="u-3", max_tokens=12,
                                                  messages=[{"role": "user", "content": "How do I reset my password?"}]))
        assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == \
            local.parse().choices[0].message.content

    feedback.record(iid, score=1.0, label="thumbs_up", comment="right answer")
    rows = landed(gw_settings)
    assert UPSTREAM_KEY not in json.dumps(rows) and KEY not in json.dumps(rows)  # no credentials captured
    ingest_landing(lake, gw_settings.landing_dir)
    table = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    assert len(table) == 4
    first = table[iid]
    assert first["source"] == "gateway" and first["task"] == TASK and first["route"] == "teacher"
    assert first["model"] == "teacher-model" and first["user_id"] == "u-1" and first["session_id"] == "s-1"
    assert first["prompt_tokens"] == 4 and first["completion_tokens"] == 5 and first["status"] == "ok"
    assert first["messages"][0]["content"] == "where is my order?" and first["response"].startswith("echo:")
    assert first["cost_usd"] == pytest.approx((4 * 1000 + 5 * 2000) / 1e6)
    assert json.loads(first["metadata"])["gateway"]["tools"] == 1
    by_user = {r["user_id"]: r for r in table.values() if r["user_id"] != "u-3"}
    streamed_row = by_user["u-2"]
    assert streamed_row["response"] == "echo: stream me" and streamed_row["completion_tokens"] == 3
    assert streamed_row["ttft_ms"] is not None and streamed_row["ttft_ms"] <= streamed_row["latency_ms"]
    students = [r for r in table.values() if r["route"] == "student"]
    assert len(students) == 2 and all(r["model"] == "student-model" and r["status"] == "ok" for r in students)
    assert students[0]["response"] == students[1]["response"]
    fb = lake.read_arrow("feedback_events").to_pylist()
    assert [(f["interaction_id"], f["score"], f["label"]) for f in fb] == [(iid, 1.0, "thumbs_up")]


def test_weights_split_sticky_users_and_live_weight_changes(gw_settings, sdk):
    with OpenAIServer(chat=echo) as a, OpenAIServer(chat=lambda m: "from b") as b, Served(gw_settings) as served:
        write_arms(gw_settings, [mock_arm(a, 1, "a"), mock_arm(b, 1, "b")])
        c = client(served)
        routes = Counter()
        for i in range(40):
            raw = c.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
            routes[raw.headers["x-continuum-route"]] += 1
        assert routes["a"] >= 8 and routes["b"] >= 8 and len(a.chat_requests) + len(b.chat_requests) == 40

        write_arms(gw_settings, [mock_arm(a, 1, "a"), mock_arm(b, 1, "b")], sticky="user")
        for user in ("alice", "bob", "carol", "dave", "erin"):
            seen = {c.chat.completions.with_raw_response.create(
                model="m", user=user, messages=[{"role": "user", "content": "hi"}]).headers["x-continuum-route"]
                for _ in range(5)}
            assert len(seen) == 1, f"{user} moved between arms: {seen}"
        sticky_session = {c.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-continuum-user": "frank"}
        ).headers["x-continuum-route"] for _ in range(5)}
        assert len(sticky_session) == 1

        write_arms(gw_settings, [mock_arm(a, 0, "a"), mock_arm(b, 1, "b")], sticky="user")  # while serving
        after = {c.chat.completions.with_raw_response.create(
            model="m", user=u, messages=[{"role": "user", "content": "hi"}]).headers["x-continuum-route"]
            for u in ("alice", "bob", "carol", "dave", "erin")}
        assert after == {"b"}
    rows = [r for r in landed(gw_settings) if r["kind"] == "interaction"]
    assert len(rows) == 40 + 25 + 5 + 5 and all(r["source"] == "gateway" for r in rows)
    assert Counter(r["route"] for r in rows[:40]) == routes


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_upstream_errors_pass_through_and_are_captured(gw_settings, sdk, transport, monkeypatch):
    monkeypatch.setenv("CONTINUUM_GATEWAY_HTTP", transport)
    with OpenAIServer(chat=echo) as upstream, Served(gw_settings) as served:
        write_arms(gw_settings, [mock_arm(upstream)])
        upstream.push(Reply.error(500, "boom upstream"), Reply.rate_limited(7))
        c = client(served)
        with pytest.raises(openai.InternalServerError) as e500:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        assert e500.value.status_code == 500 and "boom upstream" in str(e500.value)
        assert e500.value.response.headers["x-continuum-interaction-id"]
        with pytest.raises(openai.RateLimitError) as e429:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}], stream=True)
        assert e429.value.response.headers["retry-after"] == "7"
        # an arm that cannot be reached: 502, captured
        write_arms(gw_settings, [{"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"}])
        with pytest.raises(openai.APIStatusError) as e502:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "c"}])
        assert e502.value.status_code == 502
    rows = [r for r in landed(gw_settings) if r["kind"] == "interaction"]
    assert [r["status"] for r in rows] == ["error"] * 3
    statuses = [json.loads(r["metadata"])["gateway"].get("upstream_status") for r in rows]
    assert statuses == [500, 429, None]
    assert "boom upstream" in rows[0]["error_message"] and rows[0]["error_type"] == "UpstreamHTTPError"
    assert rows[2]["route"] == "dead" and rows[2]["error_type"] in ("ConnectError", "ClientConnectorError")
    assert UPSTREAM_KEY not in json.dumps(rows)


def test_bad_requests_get_clear_4xx(gw_settings, sdk):
    small = replace(gw_settings, serve_max_body_bytes=2000)
    with OpenAIServer(chat=echo) as upstream, Served(small) as served:
        url = f"{served.url}/v1/chat/completions"
        auth = {"authorization": f"Bearer {KEY}"}
        ok = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url, json=ok, headers=auth)
        assert r.status_code == 400 and "no arms configured" in r.json()["error"]["message"]
        write_arms(gw_settings, [mock_arm(upstream)], default=False)
        assert httpx.post(url, json=ok, headers=auth).status_code == 400  # no task, no default
        r = httpx.post(url, json=ok, headers={**auth, "x-continuum-task": "nope"})
        assert r.status_code == 400 and "unknown task" in r.json()["error"]["message"]
        task = {**auth, "x-continuum-task": TASK}
        assert httpx.post(url, json=ok, headers=task).status_code == 200
        # the task (and session) from the body's metadata instead: Continuum's keys never go upstream
        meta = {**ok, "metadata": {"continuum_task": TASK, "session_id": "s-9", "app": "kept"}}
        assert httpx.post(url, json=meta, headers=auth).status_code == 200
        assert upstream.chat_requests[-1].body["metadata"] == {"app": "kept"}
        assert httpx.post(url, json={**ok, "user": f"task:{TASK}"}, headers=auth).status_code == 200
        assert "user" not in upstream.chat_requests[-1].body
        assert httpx.post(url, content=b"{not json", headers=task).status_code == 400
        assert httpx.post(url, json={"model": "m"}, headers=task).status_code == 400
        assert httpx.post(url, json={"model": "m", "messages": []}, headers=task).status_code == 400
        r = httpx.post(url, json={**ok, "metadata": {"consent": "maybe"}}, headers=task)
        assert r.status_code == 400
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
        assert httpx.post(url, json=big, headers=task).status_code == 413
        chunked = httpx.post(url, content=iter([b"x" * 1500, b"y" * 1500]), headers=task)  # no content-length
        assert chunked.status_code == 413

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-continuum-task": TASK})
        assert httpx.get(f"{served.url}/v1/models").status_code == 401
        models = client(served).models.list()
        assert {m.id for m in models.data} == {TASK, "teacher-model"}
    assert len(upstream.chat_requests) == 3
    rows = [r for r in landed(gw_settings) if r["kind"] == "interaction"]
    assert len(rows) == 3 and rows[1]["session_id"] == "s-9" and rows[1]["task"] == TASK


def test_httpx_transport_answers_and_streams(gw_settings, sdk, monkeypatch):
    monkeypatch.setenv("CONTINUUM_GATEWAY_HTTP", "httpx")
    with OpenAIServer(chat=echo) as upstream, Served(gw_settings) as served:
        write_arms(gw_settings, [mock_arm(upstream)])
        c = client(served)
        assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}]
                                         ).choices[0].message.content == "echo: a"
        chunks = list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}], stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "echo: b"
    rows = [r for r in landed(gw_settings) if r["kind"] == "interaction"]
    assert [r["response"] for r in rows] == ["echo: a", "echo: b"] and rows[1]["ttft_ms"] is not None


def test_arms_file_sticky_hash_and_last_good_file_kept(tmp_path, caplog):
    path = tmp_path / "arms.json"
    state = arms_file.ArmsState(path)
    assert state.get().tasks == {}  # no file: no arms
    arms = [{"name": "a", "base_url": "http://a/v1", "weight": 3}, {"name": "b", "base_url": "http://b/v1", "weight": 1}]
    arms_file.write(path, {"tasks": {"t": {"sticky": "session", "arms": arms}}})
    task = state.get().tasks["t"]
    picks = Counter(task.pick(session_id=f"s{i}").name for i in range(4000))
    assert 0.7 < picks["a"] / 4000 < 0.8  # by weight
    assert {task.pick(session_id="s1").name for _ in range(10)} == {task.pick(session_id="s1").name}
    path.write_text("{broken")
    assert state.get().tasks["t"] is task and "invalid" in caplog.text  # the last good file stays in force
    yaml_path = tmp_path / "arms.yaml"
    yaml_path.write_text("tasks:\n  t:\n    arms:\n      - {name: only, base_url: 'http://x/v1', weight: 1}\n")
    assert arms_file.ArmsState(yaml_path).get().tasks["t"].pick().name == "only"
    for bad in ({"tasks": {"t": {"arms": []}}}, {"tasks": {"t": {"sticky": "ip", "arms": arms}}},
                {"tasks": {"t": {"arms": [{"name": "a", "base_url": "u", "weight": -1}]}}},
                {"default_task": "x", "tasks": {"t": {"arms": arms}}}):
        with pytest.raises(arms_file.ArmsError):
            arms_file.write(path, bad)


def test_local_arm_serves_the_registry_champion(gw_settings, sdk, tiny_model, monkeypatch):
    from continuum_pipeline.registry import models as registry
    from continuum_pipeline.server import local_model

    current: dict = {}
    monkeypatch.setattr(local_model, "ALIAS_CHECK_SECONDS", 0.0)
    monkeypatch.setattr(registry, "by_alias", lambda uri, name, alias: current.get(name) if alias == "champion"
                        else None)
    monkeypatch.setattr(registry, "model_dir", lambda uri, ref, cache: tiny_model)
    with Served(gw_settings, "champion:student") as served:
        write_arms(gw_settings, [local_arm(served)])
        c = client(served)
        with pytest.raises(openai.APIStatusError) as none_yet:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert none_yet.value.status_code == 503 and "no champion" in str(none_yet.value)
        for version in ("1", "2"):
            current["student"] = registry.ModelVersionRef("student", version, "run", ("champion",), {})
            answer = c.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
            assert answer.model == f"student@{version}"
    rows = [r for r in landed(gw_settings) if r["kind"] == "interaction"]
    assert [r["status"] for r in rows] == ["error", "ok", "ok"] and all(r["route"] == "student" for r in rows)
