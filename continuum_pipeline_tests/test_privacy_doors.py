"""Redaction at every door, before disk (issue 10, part 1): canaries of every kind go in through `@capture`, a
hand-dropped landing file, the OTLP receiver (the real OpenTelemetry exporter), the Langfuse SDK and the gateway (the
`openai` SDK), then through ingest; every file is read back — each landing segment on disk (gzip too) and each
Parquet file of the warehouse with pyarrow, every string and binary value, nested ones too — and no canary is in any
of them, while the typed placeholders and the per-kind `redactions` counts are."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from continuum_pipeline.capture.record import dumps_line
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline_tests.conftest import feedback, interaction, write_segment
from continuum_pipeline_tests.openai_server import OpenAIServer, Reply
from continuum_pipeline_tests.pii_canaries import CANARIES, PLACEHOLDER, canary_texts, mixed_text, needles
from continuum_pipeline_tests.served import Served

API_KEY = "sk-continuum-test-privacy"
LF_PUBLIC, LF_SECRET = "pk-lf-privacy-test", "sk-lf-privacy-test"
TEXTS = canary_texts()
ALL_NEEDLES = sorted({n for _, _, value in TEXTS for n in needles(value)})


# --- reading every file back -------------------------------------------------------------------------

def _strings(value) -> list[str]:
    """Every string in a (nested) Python value read from Arrow; bytes decoded as the quarantine stores them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def warehouse_files(settings) -> list[Path]:
    return sorted(p for p in Path(urlparse(settings.warehouse).path).rglob("*") if p.is_file())


def parquet_text(settings) -> dict[str, str]:
    """Every Parquet data file under the warehouse folder (not the catalog's view): all its text, by file."""
    out = {}
    for path in warehouse_files(settings):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            out[str(path)] = "\n".join(s for column in table.columns for s in _strings(column.to_pylist()))
    assert out, "no Parquet file in the warehouse"
    return out


def landing_bytes(settings) -> dict[str, bytes]:
    """Every file under the landing folder (archive/, failed/, .tmp/ included), gzip segments decompressed."""
    out = {}
    for path in sorted(Path(settings.landing_dir).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            out[str(path)] = gzip.decompress(data) if path.name.endswith(".gz") else data
    assert out, "no landing file"
    return out


def assert_no_canary(files: dict[str, str | bytes]) -> None:
    leaks = []
    for name, content in files.items():
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        leaks += [(name, n) for n in ALL_NEEDLES if n in text]
        # Raw bytes too: a Parquet footer's column statistics or a manifest's bounds would hold the value verbatim.
        if not isinstance(content, bytes) and Path(name).exists():
            raw = Path(name).read_bytes()
            leaks += [(name, n) for n in ALL_NEEDLES if n.encode() in raw]
    assert not leaks, f"{len(leaks)} canaries on disk, e.g. {leaks[:5]}"


def assert_warehouse_clean(settings) -> None:
    assert_no_canary(parquet_text(settings))
    # Iceberg's metadata (JSON, Avro manifests with column bounds) must not hold one either.
    assert_no_canary({str(p): p.read_bytes() for p in warehouse_files(settings) if p.suffix != ".parquet"})


def redaction_counts(rows: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in rows:
        for kind, n in json.loads(r["redactions"] or "{}").items():
            total[kind] = total.get(kind, 0) + n
    return total


def kinds_of(texts) -> set[str]:
    return {kind for _, kind, _ in texts}


# --- 1. the schema: an old lake gains `redactions` -----------------------------------------------------

def test_a_lake_made_before_redactions_gains_the_column_and_ingest_fills_it(settings, tmp_path):
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.lake.schemas import LAYOUTS, TableLayout

    lake = Lake.from_settings(settings)
    old = {name: TableLayout(layout.name, pa.schema([f for f in layout.schema if f.name != "redactions"]),
                             layout.partition, layout.doc) for name, layout in LAYOUTS.items()}
    for layout in old.values():  # the tables as a lake created before this column existed
        lake.ensure_table(layout)
    assert "redactions" not in lake.table("interactions").schema().column_names
    write_segment(settings.landing_dir, "before", [interaction(1)])

    # Rows written with the old schema (the previous Continuum's ingest): they must stay readable.
    old_rows = pa.table({f.name: pa.nulls(1, f.type) for f in old["interactions"].schema})
    old_rows = old_rows.set_column(0, "interaction_id", pa.array(["old-1"]))
    old_rows = old_rows.set_column(old_rows.schema.get_field_index("ts"), "ts",
                                   pa.array([interaction(0)["ts"]]).cast(pa.timestamp("us", tz="UTC")))
    lake.table("interactions").append(old_rows)

    email = CANARIES["EMAIL_ADDRESS"][0]
    write_segment(settings.landing_dir, "after", [interaction(2, prompt=f"mail me at {email}", messages=None)])
    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("interactions") == 2 and report.rows("quarantine") == 0
    for name in ("interactions", "feedback_events"):
        assert "redactions" in lake.table(name).schema().column_names, name
    rows = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    assert rows["old-1"]["redactions"] is None
    assert rows["i000001"]["redactions"] is None  # nothing to redact: nothing recorded
    assert rows["i000002"]["prompt"] == "mail me at <EMAIL>"
    assert json.loads(rows["i000002"]["redactions"]) == {"EMAIL_ADDRESS": 1}
    assert_warehouse_clean(settings)


# --- 2. the SDK: redacted on the writer thread ------------------------------------------------------

def test_capture_redacts_on_the_writer_thread_and_nothing_reaches_disk(settings, lake, sdk, monkeypatch):
    from continuum_pipeline.capture import annotate, capture, last_interaction_id
    from continuum_pipeline.capture import feedback as fb
    from continuum_pipeline.privacy.redact import redactor

    threads: list[str] = []

    def spy(task):  # the writer asks for the redactor of each record it redacts
        threads.append(threading.current_thread().name)
        return redactor()

    monkeypatch.setattr(sdk, "redactor_for", spy)
    mixed, mixed_counts = mixed_text()

    @capture(task="support_answer", model="m1")
    def answer(messages):
        text = messages[-1]["content"]
        annotate(contexts=[f"KB: {text}"], tool_calls=[{"name": "lookup", "arguments": json.dumps({"q": text})}],
                 metadata={"customer": {"note": text}}, user_id="u-1")
        if "fail" in messages[0]["content"]:
            raise RuntimeError(f"upstream refused: {text}")
        return f"Noted: {text}"

    ids = []
    for i, (text, _kind, _value) in enumerate(TEXTS):
        system = "fail" if i % 7 == 0 else "be brief"
        with contextlib.suppress(RuntimeError):
            answer([{"role": "system", "content": system}, {"role": "user", "content": text}])
        ids.append(last_interaction_id())
        fb.record(ids[-1], score=0.5, label=text, comment=text, correction=f"Better: {text}")
    answer([{"role": "system", "content": "be brief"}, {"role": "user", "content": mixed}])
    expected = 2 * len(TEXTS) + 1
    deadline = time.monotonic() + 30
    while sdk.stats()["written"] < expected:  # the writer thread drains on its own: no flush from this thread
        assert time.monotonic() < deadline, sdk.stats()
        time.sleep(0.02)
    assert threads and set(threads) == {"continuum-capture-writer"}  # never the app's thread
    assert sdk.stats()["dropped_redaction_error"] == 0

    assert_no_canary(landing_bytes(settings))
    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("interactions") == len(TEXTS) + 1 and report.rows("feedback_events") == len(TEXTS)
    assert report.rows("quarantine") == 0
    assert_no_canary(landing_bytes(settings))  # the archive too
    assert_warehouse_clean(settings)

    rows = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    for iid, (_text, kind, value) in zip(ids, TEXTS, strict=True):
        r = rows[iid]
        assert PLACEHOLDER[kind] in r["prompt"] and PLACEHOLDER[kind] in r["messages"][-1]["content"], (kind, value)
        assert PLACEHOLDER[kind] in (r["response"] or r["error_message"]) and PLACEHOLDER[kind] in r["contexts"][0]
        assert PLACEHOLDER[kind] in r["tool_calls"] and PLACEHOLDER[kind] in r["metadata"]
        assert json.loads(r["metadata"])["customer"]["note"]  # JSON text stays JSON, keys kept
        assert json.loads(r["redactions"]).get(kind, 0) >= 5, (kind, r["redactions"])  # counts, never values
    whole = next(r for r in rows.values() if r["interaction_id"] not in ids)
    got = json.loads(whole["redactions"])
    # prompt and the user message, then the response: each canary counted in each field that held it
    assert all(got.get(kind, 0) >= 3 * n for kind, n in mixed_counts.items()), got
    fb_rows = lake.read_arrow("feedback_events").to_pylist()
    assert set(redaction_counts(fb_rows)) == kinds_of(TEXTS)
    assert all(PLACEHOLDER[k] in r["comment"] for r, (_, k, _) in
               zip(sorted(fb_rows, key=lambda r: ids.index(r["interaction_id"])), TEXTS, strict=True))
    # the ordinary parts of a text stay: order numbers, versions
    assert any("order #48213" in r["prompt"] for r in rows.values())
    assert any("v2.13.0" in r["prompt"] for r in rows.values())


# --- 3. a landing file dropped by hand: ingest redacts, both paths, quarantine too ----------------------

def test_a_hand_dropped_landing_file_is_redacted_at_ingest_on_both_paths(settings, lake):
    clean, mixed_lines = [], []
    for i, (text, _kind, value) in enumerate(TEXTS):
        rec = interaction(i, prompt=text, messages=[{"role": "user", "content": text}], response=f"ok, {value}",
                          tool_calls=json.dumps([{"name": "t", "arguments": {"q": value}}]), contexts=[text],
                          metadata=json.dumps({"nested": {"list": [text]}, "n": i}), user_id=f"u{i}")
        if i % 5 == 0:
            rec.update(status="error", error_type="E", error_message=f"failed on {value}")
        fb = feedback(i, rec["interaction_id"], comment=text, correction=text, label=value[:40])
        (clean if i % 2 else mixed_lines).extend([rec, fb])
    mixed, _ = mixed_text()
    # Lines the rules refuse keep their raw bytes in quarantine: those must be redacted as well.
    email, card = CANARIES["EMAIL_ADDRESS"][0], CANARIES["CREDIT_CARD"][1]
    refused = [
        json.dumps(interaction(900, prompt=mixed, consent="maybe")).encode(),  # invalid_value, every canary inside
        json.dumps(feedback(901, "i000001", score=f"mail {email}")).encode(),  # wrong_type: the reason quotes it
        b'{"v": 1, "kind": "interaction", "prompt": "pay with ' + card.encode() + b' \xff", "oops"',  # not UTF-8
    ]
    write_segment(settings.landing_dir, "a-clean", clean)  # the fast path
    write_segment(settings.landing_dir, "b-refused", [*mixed_lines, *refused])  # line by line
    gz = Path(settings.landing_dir) / "c-gzip.jsonl.gz"
    gz.write_bytes(gzip.compress(dumps_line(interaction(950, prompt=mixed, messages=None))))

    report = ingest_landing(lake, settings.landing_dir)
    assert report.fast_path_segments >= 1 and report.fast_path_segments < len(report.segments)
    assert report.rows("interactions") == len(TEXTS) + 1 and report.rows("feedback_events") == len(TEXTS)
    assert report.rows("quarantine") == 3
    assert_warehouse_clean(settings)

    rows = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    for i, (_text, kind, _value) in enumerate(TEXTS):
        r = rows[f"i{i:06d}"]
        for field in (r["prompt"], r["messages"][0]["content"], r["response"], r["tool_calls"], r["contexts"][0],
                      r["metadata"]):
            assert PLACEHOLDER[kind] in field, (kind, field)
        assert json.loads(r["metadata"])["n"] == i
        assert json.loads(r["redactions"])[kind] >= 6
    _, mixed_counts = mixed_text()
    assert all(json.loads(rows["i000950"]["redactions"])[k] >= n for k, n in mixed_counts.items())
    fb = lake.read_arrow("feedback_events").to_pylist()
    assert set(redaction_counts(fb)) == kinds_of(TEXTS)
    # the ingest report (the asset's `pii_redacted` metadata) sums the rows' counts
    assert report.redactions["interactions"] == redaction_counts(list(rows.values()))
    assert report.redactions["feedback_events"] == redaction_counts(fb)
    quarantine = lake.read_arrow("quarantine").to_pylist()
    assert sorted(q["error"] for q in quarantine) == ["invalid_utf8", "invalid_value", "wrong_type"]
    raws = b"".join(q["raw"] for q in quarantine)
    assert all(p.encode() in raws for p in PLACEHOLDER.values()) and b"\xff" in raws  # the bad byte is kept
    assert "<EMAIL>" in next(q["reason"] for q in quarantine if q["error"] == "wrong_type")


# --- 4. the receiver: OTLP from the real exporter, Langfuse scores from the real SDK --------------------

@pytest.fixture
def serve(settings, sdk):
    settings = dataclasses.replace(settings, serve_api_keys=(API_KEY,), langfuse_public_key=LF_PUBLIC,
                                   langfuse_secret_key=LF_SECRET)
    with Served(settings) as server:
        yield server.url, settings


def test_otlp_and_langfuse_receivers_redact_before_the_landing_file(serve, lake, sdk, monkeypatch):
    import openai
    from langfuse import Langfuse
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    base, settings = serve
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")
    tp = TracerProvider(resource=Resource.create({"service.name": "support_answer", "continuum.consent": "granted"}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=base + "/v1/traces", headers={"Authorization": f"Bearer {API_KEY}"}, compression=Compression.Gzip,
        timeout=10)))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    texts = TEXTS[::4]  # every canary once, in a sentence
    try:
        with OpenAIServer(chat=lambda messages: "Noted: " + messages[-1]["content"]) as upstream:
            client = openai.OpenAI(base_url=upstream.base_url, api_key="upstream-key", max_retries=0)
            for text, _, _ in texts:
                client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": text}])
    finally:
        instrumentor.uninstrument()
        tp.shutdown()

    lf = Langfuse(public_key=LF_PUBLIC, secret_key=LF_SECRET, base_url=base, tracer_provider=TracerProvider(),
                  flush_at=1000, flush_interval=0.1)
    mixed, mixed_counts = mixed_text()
    try:  # a generation (the SDK's OTel spans, on the Langfuse path), then scores
        with lf.start_as_current_observation(as_type="generation", name="support_answer", model="gpt-test",
                                             input=[{"role": "user", "content": mixed}], output=mixed,
                                             metadata={"contact": mixed}) as gen:
            lf_key = f"otel-{gen.trace_id}-{gen.id}"
        for i, (text, _, _) in enumerate(texts):
            lf.create_score(name="verdict", value=0.5, trace_id=f"{i + 1:032x}", score_id=f"lf-{i}", comment=text)
        lf.flush()
    finally:
        lf.shutdown()
    sdk.flush()

    assert_no_canary(landing_bytes(settings))
    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("interactions") == len(texts) + 1 and report.rows("feedback_events") == len(texts)
    assert report.rows("quarantine") == 0
    assert_warehouse_clean(settings)
    rows = {r["prompt"]: r for r in lake.read_arrow("interactions").to_pylist()}
    assert {r["source"] for r in rows.values()} == {"otlp"}
    generation = next(r for r in rows.values() if r["interaction_id"] == lf_key)
    assert all(json.loads(generation["redactions"])[k] >= 3 * n for k, n in mixed_counts.items())
    for text, kind, value in texts:
        r = rows[text.replace(value, PLACEHOLDER[kind])]  # the prompt as sent, the canary replaced
        assert r["response"] == "Noted: " + r["prompt"] and json.loads(r["redactions"])[kind] >= 3, r["redactions"]
    fb = lake.read_arrow("feedback_events").to_pylist()
    assert {r["source"] for r in fb} == {"langfuse"} and set(redaction_counts(fb)) == kinds_of(texts)


# --- 5. the gateway: the openai SDK through `continuum serve` ----------------------------------------

def test_gateway_redacts_requests_answers_streams_and_upstream_errors(settings, lake, sdk, monkeypatch):
    import openai

    from continuum_pipeline.server import arms as arms_file

    monkeypatch.setenv("PRIVACY_TEST_UPSTREAM_KEY", "sk-upstream-never-captured")
    gw = dataclasses.replace(settings, serve_api_keys=(API_KEY,), serve_allow_no_auth=False)
    texts = TEXTS[1::4]  # every canary once, inside a JSON string
    mixed, _ = mixed_text()
    with OpenAIServer(chat=lambda messages: "Noted: " + messages[-1]["content"]) as upstream, Served(gw) as served:
        arms_file.write(gw.gateway_arms, {"default_task": "support_answer", "tasks": {"support_answer": {"arms": [
            {"name": "teacher", "base_url": upstream.base_url, "model": "teacher-model",
             "api_key_env": "PRIVACY_TEST_UPSTREAM_KEY", "weight": 1}]}}})
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)
        for i, (text, _, _) in enumerate(texts):
            reply = client.chat.completions.create(model="x", messages=[{"role": "user", "content": text}],
                                                   user=f"u-{i}", stream=i % 2 == 1)
            if i % 2:
                assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices) == "Noted: " + text
        for _ in client.chat.completions.create(model="x", messages=[{"role": "user", "content": mixed}],
                                                stream=True, user="u-stream"):
            pass
        upstream.push(Reply.error(500, f"cannot bill {mixed}"))
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "bill me"}],
                                           user="u-error")
    sdk.flush()

    assert_no_canary(landing_bytes(settings))
    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("interactions") == len(texts) + 2 and report.rows("quarantine") == 0
    assert_warehouse_clean(settings)
    rows = {r["user_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    assert all(r["source"] == "gateway" for r in rows.values())
    for i, (_, kind, _) in enumerate(texts):
        r = rows[f"u-{i}"]
        assert PLACEHOLDER[kind] in r["prompt"] and PLACEHOLDER[kind] in r["response"], (kind, r["response"])
    _, counts = mixed_text()
    assert all(json.loads(rows["u-stream"]["redactions"])[k] >= 2 * n for k, n in counts.items())
    error = rows["u-error"]
    assert error["status"] == "error" and all(p in error["error_message"] for p in PLACEHOLDER.values())


# --- 6. a task's privacy.redaction: kinds kept, patterns and deny-list added -------------------------

def test_a_tasks_redaction_section_applies_at_ingest_and_in_the_gateway(settings, lake, sdk, tmp_path, monkeypatch):
    import openai

    from continuum_pipeline.server import arms as arms_file

    ip = CANARIES["IP_ADDRESS"][1]
    email = CANARIES["EMAIL_ADDRESS"][0]
    task_yaml = tmp_path / "tasks" / "support_answer" / "defs.yaml"
    task_yaml.parent.mkdir(parents=True)
    task_yaml.write_text(yaml.safe_dump({"type": "continuum_pipeline.FlywheelComponent", "attributes": {
        "name": "support_answer",
        "judges": [{"name": "kb", "kind": "python", "function": "continuum_pipeline_tests.judge_functions:plain_check"}],
        "golden_sets": [{"name": "golden", "file": "golden.jsonl"}],
        "gate": {"metrics": {"accuracy": {"judge": "kb"}}},
        "privacy": {"redaction": {"disable": ["IP_ADDRESS"], "patterns": {"CONTRACT_ID": r"\bCTR-[0-9]{6}\b"},
                                  "deny_list": ["Project Nightingale"]}},
    }}))
    monkeypatch.setenv("CONTINUUM_TASKS", str(task_yaml.parent.parent))  # a folder: every defs.yaml in it
    text = f"Server {ip} for Project Nightingale, contract CTR-004512, owner {email}, order #48213."
    write_segment(settings.landing_dir, "hand", [
        interaction(1, prompt=text, messages=None),
        interaction(2, prompt=text, messages=None, task="other_task"),  # no YAML: the shared settings
        feedback(3, "i000001", comment=text),  # no task known: every task's additions, nothing kept
    ])
    ingest_landing(lake, settings.landing_dir)
    rows = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    own, other = rows["i000001"], rows["i000002"]
    assert own["prompt"] == "Server " + ip + " for <DENIED>, contract <CONTRACT_ID>, owner <EMAIL>, order #48213."
    assert json.loads(own["redactions"]) == {"CONTRACT_ID": 1, "DENIED": 1, "EMAIL_ADDRESS": 1}
    assert other["prompt"] == "Server <IP> for Project Nightingale, contract CTR-004512, owner <EMAIL>, order #48213."
    assert json.loads(other["redactions"]) == {"EMAIL_ADDRESS": 1, "IP_ADDRESS": 1}
    comment = lake.read_arrow("feedback_events").to_pylist()[0]["comment"]
    assert comment == "Server <IP> for <DENIED>, contract <CONTRACT_ID>, owner <EMAIL>, order #48213."

    # The gateway (continuum serve) applies the same section to the task's records before they are written.
    monkeypatch.setenv("PRIVACY_TEST_UPSTREAM_KEY", "sk-upstream-never-captured")
    from continuum_pipeline.settings import get_settings

    gw = dataclasses.replace(get_settings(), serve_api_keys=(API_KEY,))
    with OpenAIServer(chat=lambda messages: "ok") as upstream, Served(gw) as served:
        arms_file.write(gw.gateway_arms, {"default_task": "support_answer", "tasks": {"support_answer": {"arms": [
            {"name": "teacher", "base_url": upstream.base_url, "model": "m", "api_key_env": "PRIVACY_TEST_UPSTREAM_KEY",
             "weight": 1}]}}})
        openai.OpenAI(base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0).chat.completions.create(
            model="x", messages=[{"role": "user", "content": text}])
    sdk.flush()
    landed = [json.loads(line) for data in landing_bytes(settings).values() if b'"gateway"' in data
              for line in data.splitlines() if b'"gateway"' in line]
    assert [r["prompt"] for r in landed] == [own["prompt"]]
    assert json.loads(landed[0]["redactions"]) == {"CONTRACT_ID": 2, "DENIED": 2, "EMAIL_ADDRESS": 2}  # prompt, message


# --- 7. bad input names the field and the fix -----------------------------------------------------------

def test_a_redactions_field_that_is_no_count_object_is_quarantined_on_both_paths(settings, lake):
    email = CANARIES["EMAIL_ADDRESS"][0]
    good = interaction(1, prompt=f"to {email}", messages=None, redactions={"SECRET": 2})  # an object: stored as text
    bad = [interaction(2, redactions="three emails"), interaction(3, redactions='{"EMAIL_ADDRESS": -1}'),
           interaction(4, redactions='{"email": 1}')]
    write_segment(settings.landing_dir, "a", [good])  # the line path (an object where text is due)
    write_segment(settings.landing_dir, "b", [interaction(5, redactions='{"SECRET":1}'), *bad])  # fast, then rules
    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("interactions") == 2 and report.rows("quarantine") == 3
    rows = {r["interaction_id"]: r for r in lake.read_arrow("interactions").to_pylist()}
    assert json.loads(rows["i000001"]["redactions"]) == {"EMAIL_ADDRESS": 1, "SECRET": 2}  # merged with ingest's
    assert rows["i000001"]["prompt"] == "to <EMAIL>" and rows["i000005"]["redactions"] == '{"SECRET":1}'
    for q in lake.read_arrow("quarantine").to_pylist():
        assert (q["error"], q["field"]) == ("invalid_value", "redactions")
        assert "PII kind (UPPER_SNAKE) → count" in q["reason"] and "leave it out" in q["reason"]


def test_a_broken_task_yaml_stops_ingest_with_its_path_and_keeps_the_landing_file(settings, lake, tmp_path,
                                                                                   monkeypatch):
    from continuum_pipeline.task.config import TaskConfigError

    task_yaml = tmp_path / "broken.yaml"
    task_yaml.write_text(yaml.safe_dump({"name": "support_answer", "judges": [
        {"name": "kb", "kind": "python", "function": "continuum_pipeline_tests.judge_functions:plain_check"}],
        "golden_sets": [{"name": "golden", "file": "golden.jsonl"}], "gate": {"metrics": {"a": {"judge": "kb"}}},
        "privacy": {"redaction": {"patterns": {"lower_case": "x+"}}}}))
    monkeypatch.setenv("CONTINUUM_TASKS", str(task_yaml))
    segment = write_segment(settings.landing_dir, "waits", [interaction(1)])
    with pytest.raises(TaskConfigError, match=r"broken\.yaml.*privacy\.redaction\.patterns.*UPPER_SNAKE_CASE"):
        ingest_landing(lake, settings.landing_dir)
    assert segment.exists() and lake.read_arrow("interactions").num_rows == 0  # it waits for the fix


def test_capture_with_unusable_redaction_settings_drops_records_and_never_writes_them_raw(settings, sdk, monkeypatch,
                                                                                       caplog):
    from continuum_pipeline.capture import capture

    monkeypatch.setenv("CONTINUUM_REDACT_KINDS", "EMAIL_ADDRESS,PASSPORT")
    email = CANARIES["EMAIL_ADDRESS"][0]

    @capture(task="support_answer", model="m1")
    def answer(question):
        return f"I will write to {email}"

    assert answer(f"my mail is {email}") == f"I will write to {email}"  # the app's call is untouched
    sdk.flush()
    assert sdk.stats()["dropped_redaction_error"] == 1 and sdk.stats()["written"] == 0
    assert not [p for p in Path(settings.landing_dir).rglob("*") if p.is_file()]
    assert "CONTINUUM_REDACT_KINDS: unknown kind 'PASSPORT'" in caplog.text and email not in caplog.text
