"""Langfuse-compatible feedback (issue 9): the real `langfuse` SDK and raw HTTP against a running `continuum serve`."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json

import httpx
import pytest

from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.settings import Settings
from continuum_pipeline_tests.served import Served

PUBLIC, SECRET = "pk-lf-test", "sk-lf-test-secret"
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


@pytest.fixture
def served(settings: Settings, sdk):
    """`continuum serve` (create_app under uvicorn) on a free 127.0.0.1 port, with a Langfuse key pair."""
    conf = dataclasses.replace(settings, langfuse_public_key=PUBLIC, langfuse_secret_key=SECRET,
                               serve_max_body_bytes=64 << 10, serve_allow_no_auth=False)
    with Served(conf) as server:
        yield conf, server.url, server.app


def _auth(public: str = PUBLIC, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{public}:{secret}".encode()).decode()}


def _feedback(settings, lake, sdk) -> dict[str, dict]:
    sdk.flush()
    ingest_landing(lake, settings.landing_dir)
    rows = lake.read_arrow("feedback_events").to_pylist()
    return {r["feedback_id"]: r for r in rows}


def test_langfuse_sdk_scores_become_feedback_events(served, settings, lake, sdk):
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider

    conf, url, app = served
    # Its own TracerProvider: the SDK would otherwise install itself as the process's global one.
    lf = Langfuse(public_key=PUBLIC, secret_key=SECRET, base_url=url, tracer_provider=TracerProvider(),
                  flush_at=100, flush_interval=0.1)
    try:
        assert lf.auth_check() is True
        with lf.start_as_current_observation(as_type="generation", name="support_answer", model="gpt-test",
                                             input=[{"role": "user", "content": "How do I reset?"}],
                                             output="Hold the button.") as gen:
            trace_id, observation_id = gen.trace_id, gen.id
            gen.score(name="helpfulness", value=0.75, comment="clear steps")
            gen.score_trace(name="user_verdict", value="thumbs_down", data_type="CATEGORICAL", comment="slow")
        lf.create_score(name="resolved", value=True, data_type="BOOLEAN", trace_id=trace_id,
                        observation_id=observation_id, score_id="score-bool-1")
        lf.create_score(name="stars", value=4, data_type="NUMERIC", trace_id=trace_id, score_id="score-stars-1")
        lf.flush()
    finally:
        lf.shutdown()

    rows = _feedback(conf, lake, sdk)
    by_name = {json.loads(r["metadata"])["langfuse"]["name"]: r for r in rows.values()}
    assert set(by_name) == {"helpfulness", "user_verdict", "resolved", "stars"}
    gen_key, trace_key = f"otel-{trace_id}-{observation_id}", f"otel-{trace_id}"
    assert all(r["source"] == "langfuse" for r in rows.values())

    helpful = by_name["helpfulness"]
    assert (helpful["interaction_id"], helpful["score"], helpful["label"], helpful["comment"]) == (
        gen_key, 0.75, "helpfulness", "clear steps")
    verdict = by_name["user_verdict"]
    assert (verdict["interaction_id"], verdict["score"], verdict["label"], verdict["comment"]) == (
        trace_key, None, "thumbs_down", "slow")
    assert json.loads(verdict["metadata"])["langfuse"]["scope"] == "trace"
    resolved = rows["score-bool-1"]
    assert (resolved["interaction_id"], resolved["score"], resolved["label"]) == (gen_key, 1.0, "resolved")
    stars = rows["score-stars-1"]  # outside [0, 1]: no score, the value kept in metadata
    assert (stars["interaction_id"], stars["score"], stars["label"]) == (trace_key, None, "stars")
    assert json.loads(stars["metadata"])["langfuse"]["value"] == 4
    for row in rows.values():
        assert SECRET not in json.dumps(row, default=str) and PUBLIC not in json.dumps(row, default=str)

    # The generation itself arrives through the OTLP receiver (another part of issue 9). When it is served,
    # the trace-level key is the prefix of the generation's interaction id.
    if any(getattr(r, "path", "") == "/api/public/otel/v1/traces" for r in app.routes):
        interactions = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
        assert gen_key in interactions, sorted(interactions)
        assert interactions[gen_key]["model"] == "gpt-test"
        # The trace-level score's key resolves to the trace's generation interactions by prefix.
        assert [i for i in interactions if i.startswith(verdict["interaction_id"] + "-")] == [gen_key]


def test_scores_array_and_single_object(served, settings, lake, sdk):
    conf, url, _ = served
    single = {"id": "s-single", "traceId": TRACE.upper(), "observationId": SPAN, "name": "accuracy", "value": 0.5,
              "dataType": "NUMERIC", "comment": "half right", "timestamp": "2026-11-20T12:00:00Z"}
    r = httpx.post(f"{url}/api/public/scores", json=single, headers=_auth())
    assert r.status_code == 202, r.text
    assert r.json() == {"message": "Accepted"}
    many = [{"id": "s-a", "traceId": TRACE, "name": "tone", "value": "rude"},  # no dataType: CATEGORICAL
            {"id": "s-b", "traceId": TRACE, "observationId": SPAN, "name": "ok", "value": False},  # BOOLEAN
            {"id": "s-c", "traceId": TRACE, "observationId": SPAN, "name": "fix", "value": "Hold it 5 s.",
             "dataType": "CORRECTION"},
            {"id": "s-d", "traceId": TRACE, "name": "note", "value": "too long", "dataType": "TEXT", "comment": "c"},
            {"id": "s-e", "traceId": "whatever", "name": "thumbs", "value": 1, "dataType": "BOOLEAN",
             "metadata": {"continuum_interaction_id": "gw-123"}}]
    r = httpx.post(f"{url}/api/public/scores", json=many, headers=_auth())
    assert r.status_code == 202, r.text

    rows = _feedback(conf, lake, sdk)
    key = f"otel-{TRACE}-{SPAN}"
    s = rows["s-single"]
    assert (s["interaction_id"], s["score"], s["label"], s["comment"]) == (key, 0.5, "accuracy", "half right")
    assert s["ts"].isoformat().startswith("2026-11-20T12:00:00")
    assert (rows["s-a"]["interaction_id"], rows["s-a"]["label"], rows["s-a"]["score"]) == (f"otel-{TRACE}", "rude", None)
    assert (rows["s-b"]["interaction_id"], rows["s-b"]["score"], rows["s-b"]["label"]) == (key, 0.0, "ok")
    assert (rows["s-c"]["correction"], rows["s-c"]["label"]) == ("Hold it 5 s.", "fix")
    assert rows["s-d"]["comment"] == "too long\n\nc"
    assert (rows["s-e"]["interaction_id"], rows["s-e"]["score"]) == ("gw-123", 1.0)


def test_scores_partial_207_names_the_field(served, settings, lake, sdk):
    conf, url, _ = served
    batch = [{"id": "good-1", "traceId": TRACE, "observationId": SPAN, "name": "accuracy", "value": 1},
             {"id": "bad-1", "traceId": TRACE, "value": 0.5},  # no name
             {"id": "bad-2", "traceId": TRACE, "name": "x", "value": "high", "dataType": "NUMERIC"},
             {"id": "bad-3", "sessionId": "sess-1", "name": "x", "value": 0.5},
             {"id": "bad-4", "traceId": TRACE, "name": "x", "value": 2, "dataType": "BOOLEAN"},
             {"id": "bad-5", "traceId": TRACE, "name": "x", "value": 0.5, "dataType": "PERCENT"},
             "not an object"]
    r = httpx.post(f"{url}/api/public/scores", json=batch, headers=_auth())
    assert r.status_code == 207, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (1, 6)
    messages = [e["message"] for e in body["errors"]]
    assert "'name'" in messages[0] and "bad-1" in messages[0]
    assert "'value'" in messages[1] and "finite number" in messages[1]
    assert "'traceId'" in messages[2] and "session" in messages[2]
    assert "BOOLEAN" in messages[3]
    assert "'dataType'" in messages[4]
    assert "JSON object" in messages[5]
    # One invalid object on its own is a 400 with the same reason.
    r = httpx.post(f"{url}/api/public/scores", json={"traceId": TRACE, "name": "x"}, headers=_auth())
    assert r.status_code == 400 and "'value'" in r.json()["message"]

    rows = _feedback(conf, lake, sdk)
    assert list(rows) == ["good-1"]


def test_ingestion_batch_with_score_create(served, settings, lake, sdk):
    conf, url, _ = served
    batch = {"batch": [
        {"id": "ev-1", "type": "score-create", "timestamp": "2026-11-20T12:00:00Z",
         "body": {"id": "sc-1", "traceId": TRACE, "observationId": SPAN, "name": "quality", "value": 0.25,
                  "comment": "meh"}},
        {"id": "ev-2", "type": "score-create", "timestamp": "2026-11-20T12:00:00Z",
         "body": {"id": "sc-2", "traceId": TRACE, "name": "quality"}},
        {"id": "ev-3", "type": "trace-create", "timestamp": "2026-11-20T12:00:00Z", "body": {"id": TRACE}},
    ], "metadata": {"sdk_name": "python", "sdk_version": "2.60.0"}}
    r = httpx.post(f"{url}/api/public/ingestion", json=batch, headers=_auth())
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["successes"] == [{"id": "ev-1", "status": 201}]
    errors = {e["id"]: e for e in body["errors"]}
    assert set(errors) == {"ev-2", "ev-3"}
    assert errors["ev-2"]["status"] == 400 and "'value'" in errors["ev-2"]["message"]
    assert "trace-create" in errors["ev-3"]["message"] and "OTLP" in errors["ev-3"]["message"]
    r = httpx.post(f"{url}/api/public/ingestion", json={"events": []}, headers=_auth())
    assert r.status_code == 400

    rows = _feedback(conf, lake, sdk)
    assert (rows["sc-1"]["interaction_id"], rows["sc-1"]["score"], rows["sc-1"]["comment"], rows["sc-1"]["label"]) == (
        f"otel-{TRACE}-{SPAN}", 0.25, "meh", "quality")
    assert len(rows) == 1


def test_projects_auth_and_bad_requests(served, settings, lake, sdk):
    conf, url, _ = served
    r = httpx.get(f"{url}/api/public/projects", headers=_auth())
    assert r.status_code == 200 and r.json()["data"][0]["id"]
    one = {"traceId": TRACE, "name": "x", "value": 0.5}
    for headers in ({}, _auth(secret="wrong"), _auth(public="pk-other"), {"Authorization": "Basic !!!"},
                    {"Authorization": f"Bearer {SECRET}"}):
        for method, path in (("GET", "projects"), ("POST", "scores"), ("POST", "ingestion")):
            r = httpx.request(method, f"{url}/api/public/{path}", json=one, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert SECRET not in r.text
    # Over the size limit (64 KiB here): 413, declared or gzipped.
    big = [dict(one, comment="x" * 1000) for _ in range(100)]
    r = httpx.post(f"{url}/api/public/scores", json=big, headers=_auth())
    assert r.status_code == 413 and "limit" in r.json()["message"]
    r = httpx.post(f"{url}/api/public/scores", content=gzip.compress(json.dumps(big).encode()),
                   headers={**_auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 413
    # A small gzipped body is fine.
    r = httpx.post(f"{url}/api/public/scores", content=gzip.compress(json.dumps(one).encode()),
                   headers={**_auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 202, r.text
    # Malformed JSON, the wrong shape, an empty array, the wrong content type: clear 4xx.
    r = httpx.post(f"{url}/api/public/scores", content=b'[{"traceId": ', headers={**_auth(),
                   "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    assert httpx.post(f"{url}/api/public/scores", json="x", headers=_auth()).status_code == 400
    assert httpx.post(f"{url}/api/public/scores", json=[], headers=_auth()).status_code == 400
    r = httpx.post(f"{url}/api/public/scores", content=b"a=b", headers={**_auth(), "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(f"{url}/api/public/scores", content=b"\x1f\x8bnot gzip",
                   headers={**_auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert httpx.get(f"{url}/api/public/scores", headers=_auth()).status_code == 405

    rows = _feedback(conf, lake, sdk)
    assert len(rows) == 1  # only the small gzipped score


def test_saturated_writer_answers_503_with_retry_after(served, monkeypatch, sdk):
    conf, url, _ = served
    monkeypatch.setattr(sdk, "_capacity", 0)  # every submit is dropped as queue_full
    r = httpx.post(f"{url}/api/public/scores", json={"traceId": TRACE, "name": "x", "value": 1.0}, headers=_auth())
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    r = httpx.post(f"{url}/api/public/ingestion", headers=_auth(), json={"batch": [
        {"id": "e", "type": "score-create", "body": {"traceId": TRACE, "name": "x", "value": 1.0}}]})
    assert r.status_code == 503
