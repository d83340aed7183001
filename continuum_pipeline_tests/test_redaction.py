"""The redactor: every canary of every kind, no false positives on ordinary or support-desk text,
idempotence, whole landing records, the vectorised pre-filter, and configuration from the environment
and from a task's `privacy.redaction` section."""

from __future__ import annotations

import json
import re
import time

import phonenumbers
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stdnum import iban, luhn

from continuum_pipeline.privacy.redact import KINDS, PLACEHOLDERS, RedactionConfigError, Redactor, redactor
from continuum_pipeline.task.config import RedactionSpec
from continuum_pipeline_tests.pii_canaries import (
    CANARIES,
    NEGATIVES,
    PLACEHOLDER,
    all_canaries,
    canary_texts,
    mixed_text,
    needles,
    support_desk_texts,
)

_ENV = ("CONTINUUM_REDACT_KINDS", "CONTINUUM_REDACT_PATTERNS", "CONTINUUM_REDACT_DENY_FILE",
        "CONTINUUM_REDACT_PHONE_REGION")


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


# --- the corpus itself is real ----------------------------------------------------------------------------------
def test_canaries_are_valid_values_of_their_kind():
    assert set(CANARIES) == set(KINDS) and PLACEHOLDER == PLACEHOLDERS
    for card in CANARIES["CREDIT_CARD"]:
        assert luhn.is_valid(re.sub(r"\D", "", card)), card
    for code in CANARIES["IBAN_CODE"]:
        assert iban.is_valid(code), code
    assert {c[:2] for c in CANARIES["IBAN_CODE"]} == {"DE", "GB", "FR", "NL", "ES"}
    for number in CANARIES["PHONE_NUMBER"]:
        assert phonenumbers.is_valid_number(phonenumbers.parse(number, "US")), number
    values = [v for _, v in all_canaries()]
    assert len(values) == len(set(values)), "each canary must be unique so a file search finds it"


# --- recall -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_canary_is_redacted_to_its_placeholder(kind):
    r = redactor()
    texts = [(t, v) for t, k, v in canary_texts() if k == kind]
    assert len(texts) >= 12
    for text, value in texts:
        out, counts = r.redact(text)
        assert counts == {kind: 1}, (text, out, counts)
        assert PLACEHOLDERS[kind] in out
        assert not any(n in out for n in needles(value)), out


def test_one_text_with_every_canary_counts_each_kind():
    text, expected = mixed_text()
    out, counts = redactor().redact(text)
    assert counts == expected
    assert not any(n in out for _, v in all_canaries() for n in needles(v))
    assert out.count("<") == sum(expected.values())


# --- precision --------------------------------------------------------------------------------------------------
def test_negatives_stay_intact():
    r = redactor()
    for text in NEGATIVES:
        assert r.redact(text) == (text, {}), text


def test_support_desk_texts_stay_intact():
    texts = support_desk_texts()
    assert len(texts) > 5000 and any(re.search(r"#\d{5}", t) for t in texts)
    r = redactor()
    changed = [(t, r.redact(t)) for t in texts if r.redact(t)[1]]
    assert changed == []


def test_a_card_followed_by_more_digits_is_still_found():
    r = redactor()
    text = "card 4546848745268594 12/27 cvv 123; or 4546 8487 4526 8594 123. Call 212-555-0144. 415.555.0173 x"
    assert r.redact(text) == ("card <CARD> 12/27 cvv 123; or <CARD> 123. Call <PHONE>. <PHONE> x",
                              {"CREDIT_CARD": 2, "PHONE_NUMBER": 2})


@pytest.mark.parametrize("number", ["+1 (415) 555-0132", "1-800-555-0199", "+44 (0)20 7946 0958", "0044 20 7946 0958",
                                    "+14155550132", "(415)555-0132", "+81 3-1234-5678", "+55 11 91234-5678"])
def test_more_phone_formats(number):
    assert redactor().redact(f"tel. {number}, ext. 12") == ("tel. <PHONE>, ext. 12", {"PHONE_NUMBER": 1})


def test_ibans_typed_in_lower_case_and_followed_by_words():
    text = "pay to de24 3411 6339 7359 2960 37 asap, or nl30whwh8189192863 THEN; not de00 1234 5678 9012 3456 78"
    assert redactor().redact(text) == ("pay to <IBAN> asap, or <IBAN> THEN; not de00 1234 5678 9012 3456 78",
                                       {"IBAN_CODE": 2})


def test_phone_numbers_written_with_no_break_spaces():
    text = "appelez le +33\u00a06\u00a012\u00a034\u00a056\u00a078 svp"
    assert redactor().redact(text) == ("appelez le <PHONE> svp", {"PHONE_NUMBER": 1})
    assert redactor().flags(pa.array([text])).tolist() == [True]


def test_adversarial_texts_take_linear_time():
    """No catastrophic backtracking: 200k-character texts built to stress each pattern finish in about a second."""
    r = redactor()
    cases = ["a" * 200_000 + "@x", "1 " * 100_000, "1." * 100_000, "(1) " * 50_000, "1-" * 100_000, ":" * 200_000,
             "-----BEGIN RSA PRIVATE KEY-----\n" + "A" * 200_000, "x@" + "a-" * 100_000, "DE12 " + "ABCD " * 40_000,
             "eyJ" + "a" * 100_000 + ".eyJ" + "b" * 100_000]
    start = time.perf_counter()
    for text in cases:
        r.redact(text)
    assert time.perf_counter() - start < 10
    many = "Call +1 415 555 0132 or mail a@b.io. " * 2000
    assert r.redact(many)[1] == {"PHONE_NUMBER": 2000, "EMAIL_ADDRESS": 2000}


def test_credentials_in_urls_are_secrets_and_the_host_stays():
    r = redactor()
    assert r.redact("REDIS_URL=redis://:pw123@cache:6379, docs https://a:b@c.io, mail mailto:jane@x.io") == (
        "REDIS_URL=redis://<SECRET>@cache:6379, docs https://<SECRET>@c.io, mail mailto:<EMAIL>",
        {"SECRET": 2, "EMAIL_ADDRESS": 1})


def test_versions_stay_but_bare_dotted_quads_are_ips():
    r = redactor()
    assert r.redact("Upgrade to version 1.2.3.4 or v1.2.3.4 (build 4.3.2.1).")[1] == {}
    assert r.redact("The request came from 1.2.3.4 at noon.")[1] == {"IP_ADDRESS": 1}


# --- idempotence and determinism --------------------------------------------------------------------------------
def test_redacting_a_redacted_text_changes_nothing():
    r = redactor()
    for text in [t for t, _, _ in canary_texts()] + [mixed_text()[0]]:
        once, _ = r.redact(text)
        assert r.redact(once) == (once, {}), once


def test_overlaps_resolve_longest_then_most_specific():
    r = Redactor(patterns={"CUSTOMER": r"jane\.doe"}, deny_list=["4546 8487"])
    # The email is longer than the user pattern and the deny-list entry inside it.
    assert r.redact("mail jane.doe+refunds@example.com") == ("mail <EMAIL>", {"EMAIL_ADDRESS": 1})
    assert r.redact("card 4546 8487 4526 8594") == ("card <CARD>", {"CREDIT_CARD": 1})
    # Same span, two kinds: the deny-list (most specific) wins, every time.
    same = Redactor(patterns={"ORDER_REF": r"ORD\d{4}"}, deny_list=["ORD1234"])
    assert [same.redact("see ORD1234 now") for _ in range(3)] == [("see <DENIED> now", {"DENIED": 1})] * 3


# --- records ----------------------------------------------------------------------------------------------------
def _interaction() -> dict:
    return {
        "v": 1, "kind": "interaction", "interaction_id": "i-203.0.113.195", "ts": "2026-11-22T04:41:26.000000Z",
        "session_id": "s-1", "user_id": "jane.doe+refunds@example.com", "task": "support_answer",
        "model": "tiny-10.213.7.42", "consent": "granted", "status": "ok", "source": "sdk",
        "prompt": "My card is 4546 8487 4526 8594",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "call (212) 555-0187"}]},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_1", "type": "function",
                          "function": {"name": "lookup", "arguments": "{\"iban\": \"DE24 3411 6339 7359 2960 37\"}"}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "SSN on file: 536-22-8491"}],
        "response": "Done. Key AKIAWKH5DNSIPZZ5FK2Z rotated.",
        "tool_calls": json.dumps([{"name": "email", "arguments": {"to": "JOHN.SMITH77@EXAMPLE.ORG"}}]),
        "contexts": ["Customer IP 172.31.254.9", "Refund policy: 30 days."],
        "error_message": "upstream 2001:db8:85a3::8a2e:370:7334 refused",
        "metadata": json.dumps({"intent": "refund", "contact": {"phone": "+44 20 7946 0958"}, "n": 3,
                                "orders": ["#48213", "GB92BGYJ05477303879507"]}),
        "redactions": json.dumps({"EMAIL_ADDRESS": 2}),
    }


def test_redact_record_covers_every_free_text_field_of_an_interaction():
    r = redactor()
    record = _interaction()
    before = dict(record)
    counts = r.redact_record(record)
    assert counts == {"CREDIT_CARD": 1, "PHONE_NUMBER": 2, "IBAN_CODE": 2, "US_SSN": 1, "SECRET": 1,
                      "EMAIL_ADDRESS": 1, "IP_ADDRESS": 2}
    dumped = json.dumps(record)
    for _, value in all_canaries():
        if value not in (before["user_id"],) and value not in before["interaction_id"] + before["model"]:
            assert value not in dumped, value
    # Ids, timestamps, enums and the model name are not free text.
    for field in ("interaction_id", "ts", "user_id", "task", "model", "consent", "status", "source"):
        assert record[field] == before[field]
    assert record["prompt"] == "My card is <CARD>"
    assert record["messages"][1]["content"] == [{"type": "text", "text": "call <PHONE>"}]
    assert record["messages"][2]["tool_calls"][0]["function"]["arguments"] == "{\"iban\": \"<IBAN>\"}"
    assert record["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "SSN on file: <SSN>"}
    assert json.loads(record["tool_calls"]) == [{"name": "email", "arguments": {"to": "<EMAIL>"}}]
    assert record["contexts"] == ["Customer IP <IP>", "Refund policy: 30 days."]
    assert json.loads(record["metadata"]) == {"intent": "refund", "contact": {"phone": "<PHONE>"}, "n": 3,
                                              "orders": ["#48213", "<IBAN>"]}
    # Merged into the counts already there; a second pass finds nothing and leaves the record as it is.
    assert json.loads(record["redactions"]) == {**counts, "EMAIL_ADDRESS": 3}
    again = dict(record)
    assert r.redact_record(again) == {} and again == record


def test_redact_record_covers_feedback_and_keeps_clean_json_byte_for_byte():
    r = redactor()
    metadata = '{ "agent": "a-17",  "note": "ok" }'
    record = {"v": 1, "kind": "feedback", "feedback_id": "f-1", "interaction_id": "i-1", "ts": "2026-11-22T00:00:00Z",
              "label": "wrong_answer 646 555 0111", "comment": "Mail me at customer.4711@shop.example.net",
              "correction": "Refund sent to NL30WHWH8189192863.", "signal": "copy", "outcome": "ticket_reopened",
              "metadata": metadata, "source": "sdk"}
    counts = r.redact_record(record)
    assert counts == {"PHONE_NUMBER": 1, "EMAIL_ADDRESS": 1, "IBAN_CODE": 1}
    assert record["comment"] == "Mail me at <EMAIL>" and record["correction"] == "Refund sent to <IBAN>."
    assert record["label"] == "wrong_answer <PHONE>"
    assert record["metadata"] is metadata  # nothing to redact: not even re-serialised
    assert json.loads(record["redactions"]) == counts
    assert r.redact_record({"kind": "feedback", "metadata": "not json sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj"}) \
        == {"SECRET": 1}


def test_redact_record_leaves_an_unreadable_count_field_to_ingest_but_redacts_it_as_text():
    r = redactor()
    for bad in ("[1]", '{"EMAIL_ADDRESS": -1}', '{"EMAIL_ADDRESS": 1.5}', "three emails"):
        record = {"prompt": "mail a.b_c-d@sub.domain-x.io", "redactions": bad}
        assert r.redact_record(record) == {"EMAIL_ADDRESS": 1}
        assert record == {"prompt": "mail <EMAIL>", "redactions": bad}
    record = {"prompt": "hi", "redactions": "sent to a.b_c-d@sub.domain-x.io"}
    assert r.redact_record(record) == {} and record["redactions"] == "sent to <EMAIL>"


# --- the vectorised pre-filter ----------------------------------------------------------------------------------
def _assert_flags_cover(r: Redactor, texts: list[str]) -> None:
    mask = r.flags(pa.array(texts, type=pa.string()))
    missed = [t for t, flagged in zip(texts, mask, strict=True) if not flagged and r.redact(t)[1]]
    assert missed == []


def test_flags_cover_every_canary_and_pass_clean_text():
    r = redactor()
    texts = [t for t, _, _ in canary_texts()]
    assert r.flags(pa.array(texts)).all()
    desk = support_desk_texts(300)
    mask = r.flags(pa.chunked_array([pa.array(desk[:100]), pa.array(desk[100:])]))
    assert mask.dtype == bool and len(mask) == len(desk)
    assert mask.mean() < 0.02, "clean support-desk text should skip the exact redactor"
    assert r.flags(pa.array([None, "x@example.com"], type=pa.string())).tolist() == [False, True]
    _assert_flags_cover(r, NEGATIVES + desk)


_NOISE = st.text(alphabet="0123456789 .-()+@:/#,_abcdefXYZAKI\n\"{}\u00a0é", max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_NOISE, after=_NOISE, canary=st.sampled_from([v for _, v in all_canaries()]))
def test_flags_never_miss_what_redact_changes(before, after, canary):
    r = redactor()
    _assert_flags_cover(r, [before + canary + after, before + after, before, after])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_NOISE, after=_NOISE, canary=st.sampled_from([v for _, v in all_canaries()]),
       ascii_json=st.booleans())
@example(before="", after="", canary="+1 415 555 0132", ascii_json=True)
def test_flags_on_json_text_never_miss_what_redact_record_changes(before, after, canary, ascii_json):
    """Ingest flags JSON text columns as they are stored (maybe \\u-escaped); redact_record reads them decoded."""
    r = redactor()
    value = before + canary.replace(" ", "\u00a0") + after
    metadata = json.dumps({"note": value}, ensure_ascii=ascii_json)
    counts = r.redact_record({"metadata": metadata})
    assert counts == r.redact(value)[1], metadata  # escaped or not, JSON text redacts as its decoded value
    if counts:
        assert r.flags(pa.array([metadata])).tolist() == [True], metadata


def test_flags_cover_user_patterns_and_deny_list_even_where_re2_cannot_run_them():
    r = Redactor(kinds=(), patterns={"TICKET": r"SUP-\d{6}(?!\d)"}, deny_list=["Ada Quill", "#77"])
    texts = ["ticket SUP-884213", "ticket SUP-8842139", "from Ada Quill", "order #77", "clean"]
    assert r.flags(pa.array(texts)).tolist() == [True, False, True, True, False]  # Python `re` ran the lookahead
    _assert_flags_cover(r, texts)
    plain = Redactor(kinds=(), patterns={"TICKET": r"SUP-\d{6}"}, deny_list=["Ada Quill", "#77"])  # RE2 runs these
    assert plain.flags(pa.array(texts)).tolist() == [True, True, True, True, False]
    assert Redactor(kinds=()).flags(pa.array(["x@example.com"])).tolist() == [False]
    # Python's \d is Unicode, RE2's is ASCII: non-ASCII rows go to the exact pass when user patterns are set.
    unicode_digits = Redactor(kinds=(), patterns={"TICKET": r"T-\d{3}"})
    texts = ["T-\u0661\u0662\u0663", "T-12", "naïve"]
    assert unicode_digits.redact(texts[0]) == ("<TICKET>", {"TICKET": 1})
    assert unicode_digits.flags(pa.array(texts)).tolist() == [True, False, True]
    _assert_flags_cover(unicode_digits, texts)


# --- configuration ----------------------------------------------------------------------------------------------
def test_kinds_from_the_environment(monkeypatch):
    text = "mail a.b_c-d@sub.domain-x.io from 10.213.7.42 or call 212-555-0144"
    monkeypatch.setenv("CONTINUUM_REDACT_KINDS", "-IP_ADDRESS,-PHONE")
    assert redactor().redact(text) == ("mail <EMAIL> from 10.213.7.42 or call 212-555-0144", {"EMAIL_ADDRESS": 1})
    monkeypatch.setenv("CONTINUUM_REDACT_KINDS", "IP_ADDRESS")
    assert redactor().redact(text)[1] == {"IP_ADDRESS": 1}
    monkeypatch.setenv("CONTINUUM_REDACT_KINDS", "none")
    assert redactor().redact(text) == (text, {})
    monkeypatch.setenv("CONTINUUM_REDACT_KINDS", "all")
    assert redactor().redact(text)[1] == {"EMAIL_ADDRESS": 1, "IP_ADDRESS": 1, "PHONE_NUMBER": 1}
    assert redactor() is redactor()  # cached per configuration


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("CONTINUUM_REDACT_KINDS", "EMAIL_ADDRESS,PASSPORT", "CONTINUUM_REDACT_KINDS: unknown kind 'PASSPORT'"),
    ("CONTINUUM_REDACT_KINDS", "EMAIL_ADDRESS,-IP_ADDRESS", "mixes kinds and -removals"),
    ("CONTINUUM_REDACT_PATTERNS", "{not json", "CONTINUUM_REDACT_PATTERNS is not JSON"),
    ("CONTINUUM_REDACT_PATTERNS", '["T-\\\\d+"]', "must be a JSON object"),
    ("CONTINUUM_REDACT_PATTERNS", '{"ticket": "T-\\\\d+"}', "must be UPPER_SNAKE_CASE"),
    ("CONTINUUM_REDACT_PATTERNS", '{"TICKET": "T-(\\\\d+"}', "CONTINUUM_REDACT_PATTERNS.TICKET: .* is not a regular"),
    ("CONTINUUM_REDACT_PATTERNS", '{"EMAIL_ADDRESS": "x"}', "is a built-in kind"),
    ("CONTINUUM_REDACT_PATTERNS", '{"ANY": "a*"}', "matches the empty string"),
    ("CONTINUUM_REDACT_DENY_FILE", "/nonexistent/deny.txt", "CONTINUUM_REDACT_DENY_FILE=.* cannot be read"),
    ("CONTINUUM_REDACT_PHONE_REGION", "XX", "CONTINUUM_REDACT_PHONE_REGION='XX': XX is not a region"),
    ("CONTINUUM_REDACT_PHONE_REGION", "US, UK", "CONTINUUM_REDACT_PHONE_REGION='US, UK': UK is not a region"),
])
def test_bad_settings_name_the_variable_and_the_fix(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(RedactionConfigError, match=message):
        redactor()


def test_patterns_deny_file_and_phone_region_from_the_environment(monkeypatch, tmp_path):
    deny = tmp_path / "deny.txt"
    deny.write_text("Ada Quill\n\nProject Nightjar\n", encoding="utf-8")
    monkeypatch.setenv("CONTINUUM_REDACT_PATTERNS", json.dumps({"TICKET_ID": r"SUP-\d{6}"}))
    monkeypatch.setenv("CONTINUUM_REDACT_DENY_FILE", str(deny))
    text = "Ada Quill (SUP-884213) on Project Nightjar; not Ada Quills."
    assert redactor().redact(text) == ("<DENIED> (<TICKET_ID>) on <DENIED>; not Ada Quills.",
                                       {"DENIED": 2, "TICKET_ID": 1})
    deny.write_text("Ada Quills\n", encoding="utf-8")  # an edited file is read again
    assert redactor().redact(text)[0] == "Ada Quill (<TICKET_ID>) on Project Nightjar; not <DENIED>."
    uk = "ring 020 7946 0958 today"
    assert redactor().redact(uk)[1] == {}
    monkeypatch.setenv("CONTINUUM_REDACT_PHONE_REGION", "gb")
    assert redactor().redact(uk) == ("ring <PHONE> today", {"PHONE_NUMBER": 1})
    assert redactor().redact("or 212-555-0144")[1] == {}  # a US national number is no GB number
    monkeypatch.setenv("CONTINUUM_REDACT_PHONE_REGION", "US,GB")
    assert redactor().redact(uk + " or 212-555-0144") == ("ring <PHONE> today or <PHONE>", {"PHONE_NUMBER": 2})


def test_a_tasks_redaction_section_merges_with_the_settings(monkeypatch):
    monkeypatch.setenv("CONTINUUM_REDACT_PATTERNS", json.dumps({"TICKET_ID": r"SUP-\d{6}"}))
    spec = RedactionSpec(disable=["IP_ADDRESS"], patterns={"ORDER_REF": r"#\d{5}\b"}, deny_list=["Ada Quill"])
    text = "Ada Quill, order #48213, ticket SUP-884213, ip 10.213.7.42, key ghp_aF1LlqsajAIxNKu8iS2G8NPRVdD53X83RZJz"
    expected = ("<DENIED>, order <ORDER_REF>, ticket <TICKET_ID>, ip 10.213.7.42, key <SECRET>",
                {"DENIED": 1, "ORDER_REF": 1, "TICKET_ID": 1, "SECRET": 1})
    assert redactor(spec).redact(text) == expected
    assert redactor(spec.model_dump()).redact(text) == expected
    assert redactor(spec) is redactor(spec.model_dump())
    assert redactor().redact(text)[1] == {"TICKET_ID": 1, "IP_ADDRESS": 1, "SECRET": 1}


@pytest.mark.parametrize(("section", "message"), [
    ({"disable": ["PASSPORT"]}, r"privacy.redaction.disable: unknown kinds \['PASSPORT'\]"),
    ({"disable": "IP_ADDRESS"}, "must be a list of kinds"),
    ({"patterns": {"ORDER": "("}}, "privacy.redaction.patterns.ORDER: .* is not a regular expression"),
    ({"deny_list": "Ada"}, "deny_list must be a list of strings"),
    ({"redact": []}, "unknown fields"),
    (["IP_ADDRESS"], "must be a mapping"),
])
def test_a_bad_task_section_names_the_field(section, message):
    with pytest.raises(RedactionConfigError, match=message):
        redactor(section)
