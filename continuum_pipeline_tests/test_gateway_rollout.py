"""The gateway's side of a rollout, on a real `continuum serve` with real OpenAI-protocol upstreams per arm.

Shadow copies (never reaching the user, recorded with their metadata, bounded when the arm is slow), the served
model version on every interaction, weights that survive a restart, and the local model server's champion and
challenger mounts.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest

from continuum_pipeline.server import arms as arms_file
from continuum_pipeline_tests import test_gateway
from continuum_pipeline_tests.openai_server import OpenAIServer, RecordedRequest, Reply
from continuum_pipeline_tests.served import Served
from continuum_pipeline_tests.test_gateway import KEY, TASK, client, landed

gw_settings, tiny_model = test_gateway.gw_settings, test_gateway.tiny_model  # the gateway tests' fixtures

SHADOW_TEXT = "SHADOW-ANSWER-the-user-must-never-see"


def arm(upstream: OpenAIServer | str, name: str, weight: float, **extra) -> dict:
    base = upstream if isinstance(upstream, str) else upstream.base_url
    return {"name": name, "base_url": base, "weight": weight, **extra}


def write(settings, arms: list[dict], shadow: dict | None = None, sticky: str = "none") -> None:
    entry: dict = {"sticky": sticky, "arms": arms}
    if shadow is not None:
        entry["shadow"] = shadow
    arms_file.write(settings.gateway_arms, {"default_task": TASK, "tasks": {TASK: entry}})


def interactions(settings) -> list[dict]:
    return [r for r in landed(settings) if r["kind"] == "interaction"]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the shadow copies"
        time.sleep(0.02)


def test_shadow_answers_never_reach_the_user_and_land_as_their_own_interactions(gw_settings, sdk, lake):
    from continuum_pipeline.lake.ingest import ingest_landing

    stable_answered_at: list[float] = []
    shadow_called_at: list[float] = []

    def stable(request: RecordedRequest) -> Reply:
        stable_answered_at.append(time.monotonic() + 0.3)  # the reply leaves after its 0.3 s delay
        return Reply("stable: " + request.messages[-1]["content"], delay=0.3)

    def challenger(request: RecordedRequest) -> Reply:  # answers at once: before the stable arm would
        shadow_called_at.append(time.monotonic())
        return Reply(SHADOW_TEXT)

    with OpenAIServer(handler=stable) as a, OpenAIServer(handler=challenger) as b, Served(gw_settings) as served:
        write(gw_settings, [arm(a, "stable", 1, model_version="2"), arm(b, "challenger", 0, model_version="3")],
              shadow={"arm": "challenger", "sample_rate": 1.0})
        c = client(served)
        raw = c.chat.completions.with_raw_response.create(
            model="m", user="u-1", messages=[{"role": "user", "content": "where is my refund?"}])
        served_id = raw.headers["x-continuum-interaction-id"]
        assert raw.parse().choices[0].message.content == "stable: where is my refund?"
        assert raw.headers["x-continuum-route"] == "stable"
        assert SHADOW_TEXT not in raw.text and not any(SHADOW_TEXT in v or "challenger" in v
                                                       for v in raw.headers.values())
        with c.chat.completions.with_streaming_response.create(
                model="m", user="u-2", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "stream it"}]) as streamed:
            stream_id = streamed.headers["x-continuum-interaction-id"]
            events = b"".join(streamed.iter_bytes())
        assert SHADOW_TEXT.encode() not in events
        text = "".join(json.loads(line[5:])["choices"][0]["delta"].get("content") or ""
                       for line in events.decode().splitlines()
                       if line.startswith("data:") and line != "data: [DONE]" and json.loads(line[5:])["choices"])
        assert text == "stable: stream it"
        wait_for(lambda: len(b.chat_requests) == 2)

        # The copies started after the stable answer was produced, as non-streaming requests marked as shadow.
        assert all(s >= t - 0.01 for s, t in zip(shadow_called_at, stable_answered_at, strict=True))
        copies = b.chat_requests
        assert [r.messages[-1]["content"] for r in copies] == ["where is my refund?", "stream it"]
        assert all("stream" not in r.body and "stream_options" not in r.body for r in copies)
        assert all(r.headers["x-continuum-shadow"] == "1" for r in copies)
        assert all(55 < float(r.headers["x-continuum-shadow-deadline"]) - time.time() <= 60 for r in copies)
        wait_for(lambda: httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"].get("answered") == 2)
        health = httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"]
        assert health["sampled"] == 2 and health["sent"] == 2 and not health.get("dropped_busy")

    ingest_landing(lake, gw_settings.landing_dir)
    rows = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    assert len(rows) == 4
    shadows = {json.loads(r["metadata"])["shadow_of"]: r for r in rows.values()
               if json.loads(r["metadata"]).get("shadow") is True}
    assert set(shadows) == {served_id, stream_id}
    for parent, row in shadows.items():
        meta = json.loads(row["metadata"])
        assert row["route"] == "challenger" and row["model_version"] == "3" and row["status"] == "ok"
        assert row["response"] == SHADOW_TEXT and row["source"] == "gateway" and row["task"] == TASK
        assert row["user_id"] == rows[parent]["user_id"] and row["messages"] == rows[parent]["messages"]
        assert meta["gateway"]["stream"] is False and meta["gateway"]["served_stream"] == (parent == stream_id)
        assert rows[parent]["route"] == "stable" and rows[parent]["model_version"] == "2"
        assert not json.loads(rows[parent]["metadata"]).get("shadow")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_failing_or_slow_shadow_arm_never_slows_or_fails_the_user(gw_settings, sdk, transport, monkeypatch):
    monkeypatch.setenv("CONTINUUM_GATEWAY_HTTP", transport)
    with OpenAIServer(chat=lambda m: "stable answer") as a, OpenAIServer() as b, Served(gw_settings) as served:
        write(gw_settings, [arm(a, "stable", 1), arm(b, "challenger", 0)],
              shadow={"arm": "challenger", "sample_rate": 1.0, "timeout_s": 0.5, "max_in_flight": 1})
        c = client(served)
        b.push(Reply.error(500, "challenger broke"))
        assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "one"}]
                                         ).choices[0].message.content == "stable answer"
        wait_for(lambda: len(b.chat_requests) == 1)
        wait_for(lambda: httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"].get("failed") == 1)

        # A slow shadow arm: the user's calls stay fast; one copy in flight, the others are dropped and counted.
        b.push(*[Reply("too late", delay=3.0)] * 3)
        took = []
        for i in range(3):
            t0 = time.monotonic()
            answer = c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"slow {i}"}])
            took.append(time.monotonic() - t0)
            assert answer.choices[0].message.content == "stable answer"
        assert max(took) < 0.5, f"the user waited on the shadow arm: {took}"
        wait_for(lambda: httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"].get("timed_out") == 1)
        health = httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"]
        assert health["sampled"] == 4 and health["sent"] == 2 and health["dropped_busy"] == 2
        assert health["in_flight"] == 0

        # An unreachable shadow arm: the same, recorded as a failed copy.
        write(gw_settings, [arm(a, "stable", 1), arm("http://127.0.0.1:9/v1", "challenger", 0)],
              shadow={"arm": "challenger", "sample_rate": 1.0})
        assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "gone"}]
                                         ).choices[0].message.content == "stable answer"
        wait_for(lambda: httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"].get("failed") == 2)
    rows = interactions(gw_settings)
    served_rows = [r for r in rows if not json.loads(r["metadata"]).get("shadow")]
    shadow_rows = [r for r in rows if json.loads(r["metadata"]).get("shadow")]
    assert len(served_rows) == 5 and all(r["status"] == "ok" and r["route"] == "stable" for r in served_rows)
    assert [r["status"] for r in shadow_rows] == ["error"] * 3 and all(r["route"] == "challenger"
                                                                        for r in shadow_rows)
    assert [r["error_type"] for r in shadow_rows][:2] == ["UpstreamHTTPError", "ShadowTimeout"]
    assert "challenger broke" in shadow_rows[0]["error_message"]
    assert shadow_rows[2]["error_type"] in ("ClientConnectorError", "ConnectError")


def test_sampled_share_and_no_copy_of_a_request_the_shadow_arm_served(gw_settings, sdk):
    with OpenAIServer(chat=lambda m: "a") as a, OpenAIServer(chat=lambda m: "b") as b, Served(gw_settings) as served:
        write(gw_settings, [arm(a, "stable", 1), arm(b, "challenger", 1)],
              shadow={"arm": "challenger", "sample_rate": 0.5})
        c = client(served)
        routes = Counter(c.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": f"q{i}"}]).headers["x-continuum-route"]
            for i in range(80))
        wait_for(lambda: httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"].get("in_flight") == 0)
    shadow_rows = [r for r in interactions(gw_settings) if json.loads(r["metadata"]).get("shadow")]
    # Only requests served by `stable` are copied, about half of them.
    assert 0.2 * routes["stable"] <= len(shadow_rows) <= 0.8 * routes["stable"]
    assert len(b.chat_requests) == routes["challenger"] + len(shadow_rows)


def test_model_version_from_the_arm_else_from_the_answer(gw_settings, sdk):
    # openai_server answers under the model it was asked for: the arm's `model` plays the upstream's name.
    with OpenAIServer(chat=lambda m: "x") as up, Served(gw_settings) as served:
        c = client(served)
        cases = [({"model": "student@7"}, False, "7"), ({"model": "student@7"}, True, "7"),
                 ({"model": "student@7", "model_version": "5"}, False, "5"), ({"model": "gpt-4o-mini"}, False, None),
                 ({"model": "org/model@main"}, False, None),
                 ({}, False, None)]
        for extra, stream, _ in cases:
            write(gw_settings, [arm(up, "stable", 1, **extra)])
            if stream:
                list(c.chat.completions.create(model="champion", stream=True,
                                               messages=[{"role": "user", "content": "hi"}]))
            else:
                c.chat.completions.create(model="champion", messages=[{"role": "user", "content": "hi"}])
    rows = interactions(gw_settings)
    assert [r.get("model_version") for r in rows] == [want for _, _, want in cases]
    assert rows[-1]["model"] == "champion"


def test_weights_survive_a_restart_of_the_gateway(gw_settings, sdk):
    users = [f"user-{i}" for i in range(30)]

    def routes(served: Served) -> dict[str, str]:
        c = client(served)
        return {u: c.chat.completions.with_raw_response.create(
            model="m", user=u, messages=[{"role": "user", "content": "hi"}]).headers["x-continuum-route"]
            for u in users}

    with OpenAIServer(chat=lambda m: "a") as a, OpenAIServer(chat=lambda m: "b") as b:
        stable, challenger = arm(a, "stable", 0.75), arm(b, "challenger", 0.25)
        write(gw_settings, [stable, challenger], sticky="user")
        with Served(gw_settings) as first:
            at_25 = routes(first)
            write(gw_settings, [{**stable, "weight": 0.5}, {**challenger, "weight": 0.5}], sticky="user")  # a step
            at_50 = routes(first)
        with Served(gw_settings) as second:  # a new process reads the file: the last weights written
            after_restart = routes(second)
    assert after_restart == at_50 != at_25
    share = Counter(at_50.values())["challenger"] / len(users)
    assert Counter(at_25.values())["challenger"] < Counter(at_50.values())["challenger"] and 0.25 < share < 0.75
    # a user on the challenger at 25% stays on it at 50% (cumulative weights: the canary only grows)
    assert all(at_50[u] == "challenger" for u in users if at_25[u] == "challenger")


def test_local_server_serves_each_registry_alias_at_its_mount_and_shadows_between_them(gw_settings, sdk, tiny_model,
                                                                                      monkeypatch):
    from continuum_pipeline.registry import models as registry
    from continuum_pipeline.server import local_model
    from continuum_pipeline.serving.generate import Generator

    uri = gw_settings.mlflow_uri
    experiment = registry.ensure_experiment(uri, "gateway-rollout-test")
    runs = registry.client(uri)
    for _ in range(2):  # v1: champion (the first), v2: challenger — a real MLflow registry
        registry.register(uri, "student", tiny_model, runs.create_run(experiment).info.run_id, {"task": TASK})
    loaded: list = []
    load = Generator.from_pretrained
    monkeypatch.setattr(Generator, "from_pretrained", lambda *a, **k: loaded.append(a) or load(*a, **k))
    monkeypatch.setattr(local_model, "ALIAS_CHECK_SECONDS", 0.0)  # see an alias move at once

    def shadows_answered(served: Served) -> int:
        return httpx.get(f"{served.url}/healthz").json()["gateway"]["shadow"].get("answered", 0)

    with Served(gw_settings, ["champion:student", "challenger:student"]) as served:
        base = f"{served.url}/local"
        write(gw_settings, [arm(f"{base}/champion/v1", "stable", 1, api_key_env="GW_TEST_LOCAL_KEY"),
                            arm(f"{base}/challenger/v1", "challenger", 0, api_key_env="GW_TEST_LOCAL_KEY")],
              shadow={"arm": "challenger", "sample_rate": 1.0, "timeout_s": 120})
        c = client(served)
        question = [{"role": "user", "content": "How do I reset my password?"}]
        assert c.chat.completions.create(model="champion", max_tokens=4, messages=question).model == "student@1"
        wait_for(lambda: shadows_answered(served) == 1, 60)
        names = {alias: httpx.get(f"{base}/{alias}/v1/models", headers={"authorization": f"Bearer {KEY}"}
                                  ).json()["data"][0]["id"] for alias in ("champion", "challenger")}
        assert names == {"champion": "student@1", "challenger": "student@2"}
        assert httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 404

        registry.promote(uri, "student", "2")  # the champion mount serves v2 from the next call on
        assert c.chat.completions.create(model="champion", max_tokens=4, messages=question).model == "student@2"
        wait_for(lambda: shadows_answered(served) == 2, 60)
    rows = interactions(gw_settings)
    served_rows = [r for r in rows if r["route"] == "stable"]
    shadow_rows = [r for r in rows if r["route"] == "challenger"]
    assert [r["model_version"] for r in served_rows] == ["1", "2"]  # parsed from the answers' NAME@VERSION
    assert [r["model_version"] for r in shadow_rows] == ["2", "2"]
    assert [json.loads(r["metadata"])["shadow_of"] for r in shadow_rows] == [r["interaction_id"] for r in served_rows]
    # greedy decoding of one set of weights: the same answer through either mount
    assert len({r["response"] for r in rows}) == 1
    # v1 and v2 loaded once each; after the promotion both aliases name v2 and share its loaded model
    assert len(loaded) == 2


def test_one_generation_at_a_time_served_requests_before_shadow_copies_expired_copies_skipped():
    from continuum_pipeline.server.local_model import GenerationTurn, ShadowExpired

    turn = GenerationTurn(threads=1)
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with turn.turn(shadow=False):
            holding.set()
            release.wait(10)
            order.append("first")

    def waiter(name: str, shadow: bool, deadline: float | None = None) -> None:
        try:
            with turn.turn(shadow=shadow, deadline=deadline):
                order.append(name)
        except ShadowExpired:
            order.append(f"{name} expired")

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(10)
    for name, shadow, deadline in (("shadow", True, time.time() + 30), ("late shadow", True, time.time() + 0.05),
                                   ("served", False, None)):
        threads.append(threading.Thread(target=waiter, args=(name, shadow, deadline)))
        threads[-1].start()
        time.sleep(0.15)  # the shadow copies queue first...
    release.set()
    for t in threads:
        t.join(10)
    # ...and still go after the user's request; the copy whose deadline passed never generates
    assert order == ["late shadow expired", "first", "served", "shadow"]


def test_shadow_and_version_settings_are_checked(tmp_path):
    path = tmp_path / "arms.json"
    arms = [{"name": "stable", "base_url": "http://a/v1"}, {"name": "challenger", "base_url": "http://b/v1",
                                                            "weight": 0, "model_version": 3}]
    arms_file.write(path, {"tasks": {"t": {"arms": arms, "shadow": {"arm": "challenger", "sample_rate": 0.1}}}})
    task = arms_file.load(path).tasks["t"]
    assert task.shadow.arm.name == "challenger" and task.shadow.sample_rate == 0.1
    assert task.arms[1].model_version == "3" and task.shadow.max_in_flight == 4
    bad = [({"arm": "nope", "sample_rate": 0.1}, "not one of the task's arms"),
           ({"arm": "challenger", "sample_rate": 1.5}, "sample_rate"),
           ({"arm": "challenger", "sample_rate": 0.1, "max_in_flight": 0}, "max_in_flight"),
           ({"arm": "challenger", "sample_rate": 0.1, "timeout_s": 0}, "timeout_s"),
           ({"sample_rate": 0.1}, "\"arm\"")]
    for shadow, says in bad:
        with pytest.raises(arms_file.ArmsError, match=says):
            arms_file.write(path, {"tasks": {"t": {"arms": arms, "shadow": shadow}}})
    with pytest.raises(arms_file.ArmsError, match="model_version"):
        arms_file.write(path, {"tasks": {"t": {"arms": [{**arms[0], "model_version": True}]}}})
    with pytest.raises(arms_file.ArmsError, match="names must differ"):
        arms_file.write(path, {"tasks": {"t": {"arms": [arms[0], arms[0]]}}})


def test_model_dir_specs_are_checked(gw_settings, tmp_path, monkeypatch):
    from continuum_pipeline.server import local_model

    with pytest.raises(ValueError, match="threads must be"):
        local_model.routes(gw_settings, ["champion:a"], threads=0)
    monkeypatch.setenv("CONTINUUM_SERVE_THREADS", "two")
    with pytest.raises(ValueError, match="CONTINUUM_SERVE_THREADS"):
        local_model.routes(gw_settings, ["champion:a"])
    monkeypatch.setenv("CONTINUUM_SERVE_THREADS", "3")
    assert local_model.default_threads() == 3
    with pytest.raises(ValueError, match="no such folder"):
        local_model.routes(gw_settings, [str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="different alias"):
        local_model.routes(gw_settings, ["champion:a", "champion:b"])
    paths = {r.path for r in local_model.routes(gw_settings, ["champion:a"], threads=1)}
    assert paths == {"/local/champion/v1/chat/completions", "/local/champion/v1/models",
                     "/local/v1/chat/completions", "/local/v1/models"}
