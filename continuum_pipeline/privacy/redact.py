"""One redactor for every door: typed placeholders for PII and secrets, counts per kind, never the values.

CONTRACT (other modules code against this; keep it):
- `Redactor.redact(text) -> (redacted_text, {KIND: count})`; the same text redacts the same way everywhere.
- `Redactor.redact_record(record) -> {KIND: count}`: in place, every free-text field of a landing record
  (interaction or feedback: prompt, messages[*].content, response, tool_calls, contexts[*], error_message,
  comment, correction, label, metadata — JSON text: its string values, keys kept); merges the counts into
  `record["redactions"]` (JSON object text, sorted keys) and returns this call's counts. Ids, timestamps,
  model names, enums are never touched. (Addition: a `redactions` value that is no count object is left for
  ingest to quarantine, only redacted as text; redact_record never raises for it.)
- `Redactor.flags(texts: pyarrow string array) -> numpy bool mask`: a vectorised, conservative pre-filter
  (no false negatives): rows whose text could hold anything the redactor would replace. Ingest runs the
  exact redactor only on flagged rows.
- `Redactor.find(text) -> [(start, end, KIND)]`: the spans one pass of redact() replaces (addition).
- `redactor(task_spec=None)`: the redactor of the current settings (CONTINUUM_REDACT_* environment), merged
  with a task's `privacy.redaction` section (a `RedactionSpec`, or its dict); cached per configuration.
- `task_redactors(task_paths=None) -> TaskRedactors`: captured task name → its YAML's redactor, None → the
  strictest (addition; used by the service, ingest and normalize).
- Entity names are Presidio's (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN, IP_ADDRESS) plus
  SECRET; user patterns use their own UPPER_SNAKE names; the deny-list is DENIED.

How it works (additions to the contract):
- Candidates come from regexes and are kept only if a validator accepts them: Luhn and a card-network
  prefix (python-stdnum), the IBAN checksum and country format (python-stdnum), `phonenumbers`
  (run only on digit runs that could be a phone), the SSA's never-issued SSN areas, `ipaddress`, JWT
  headers that decode to JSON, and the published key formats (OpenAI, AWS, GitHub, Slack, Stripe, Google,
  PEM private-key blocks), and `user:password@` in URLs.
- Overlaps resolve deterministically: the longest span wins; on equal length, the more specific kind
  (DENIED, user patterns, SECRET, IBAN_CODE, CREDIT_CARD, US_SSN, EMAIL_ADDRESS, IP_ADDRESS, PHONE_NUMBER).
- Idempotent: nothing overlapping an existing placeholder (`<EMAIL>`, `<NAME>` …) is replaced again, and
  redact() repeats its pass until nothing more is found (a replacement can free a neighbour that was glued
  to it), so a redacted text redacts to itself and counts nothing.
- Not covered (known gaps): SSNs written as 9 bare digits, phone numbers in non-ASCII
  digits, national-format numbers of regions not in CONTINUUM_REDACT_PHONE_REGION, AWS secret access
  keys (40 characters with no prefix), personal names (no NER here; use the deny-list or a pattern).
- Clean text costs one scan of a combined trigger regex (`TRIGGER`), the same pattern `flags` runs in RE2.
- Versions stay: a dotted quad after `v`, `version`, `release` or `build` is not an IP address. Identifiers
  stay: a digit run glued to letters or a `-`/`/`-joined id (INV-2026-004512) is not a phone number.

Settings (environment, read here so the SDK path needs no other module):
  CONTINUUM_REDACT_KINDS         all (default) | none | EMAIL_ADDRESS,SECRET,… | -IP_ADDRESS,-PHONE_NUMBER,…
  CONTINUUM_REDACT_PATTERNS      JSON object NAME → regular expression (Python syntax), e.g. {"TICKET": "T-\\d{6}"}
  CONTINUUM_REDACT_DENY_FILE     a UTF-8 file of exact strings to redact as <DENIED>, one per line
  CONTINUUM_REDACT_PHONE_REGION  region(s) for numbers written without +country: US (default) or a comma list,
                                 e.g. US,GB (each region added also adds its false positives: 5-digit ids …)
"""

from __future__ import annotations

import base64
import bisect
import ipaddress
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from continuum_pipeline.settings import SettingsError, task_yaml_files

PLACEHOLDERS = {
    "EMAIL_ADDRESS": "<EMAIL>",
    "PHONE_NUMBER": "<PHONE>",
    "CREDIT_CARD": "<CARD>",
    "IBAN_CODE": "<IBAN>",
    "US_SSN": "<SSN>",
    "IP_ADDRESS": "<IP>",
    "SECRET": "<SECRET>",
}
KINDS = tuple(PLACEHOLDERS)
DENIED = "DENIED"
# Short names accepted in CONTINUUM_REDACT_KINDS besides the entity names (the placeholders' words).
ALIASES = {placeholder.strip("<>"): kind for kind, placeholder in PLACEHOLDERS.items()}
DEFAULT_PHONE_REGION = "US"
# Lower = more specific, wins an overlap of equal length.
_PRIORITY = {DENIED: 0, "SECRET": 2, "IBAN_CODE": 3, "CREDIT_CARD": 4, "US_SSN": 5, "EMAIL_ADDRESS": 6,
             "IP_ADDRESS": 7, "PHONE_NUMBER": 8}
_USER_PRIORITY = 1
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class RedactionConfigError(SettingsError):
    """A redaction setting or a task's `privacy.redaction` section Continuum cannot use; names the field and fix."""


# --- the trigger: one pattern, valid in Python `re` and in RE2 (pyarrow), that every detection contains ---------
# Each alternative is implied by a detector below: `@` by emails; a run of 7+ digits and separators by phones,
# cards, SSNs and dotted quads; a country code, check digits and a 4-char group by IBANs; `hex:hex:` by IPv6;
# the key prefixes by secrets. Keep it in step with the detectors (test_redaction checks flags ⊇ redact).
_TRIGGER_PARTS = (
    r"@",
    "[0-9][0-9 \u00a0().\\-]{5,}[0-9]",  # the no-break space too (French and German phone formatting)
    r"[A-Za-z]{2}[0-9]{2} ?[A-Za-z0-9]{4}",
    r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:",
    r"sk-|AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|gh[pousr]_|github_pat_|eyJ|-----BEGIN|xox[abprs]-|AIza"
    r"|[sr]k_live_|[sr]k_test_",
    r"\\u00[aA]0",  # a JSON-escaped no-break space: JSON text columns are flagged raw but redacted decoded
)
TRIGGER = "|".join(_TRIGGER_PARTS)

# --- detectors ---------------------------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w\-]|\.[A-Za-z0-9])")
# Digits with optional single separators; the validator checks length, separators and the checksum.
_CARD = re.compile(r"(?<![\w\-.])[2-6](?:[ .\-]?[0-9]){12,18}(?![\w\-]|[.][0-9])")
_IBAN = re.compile(r"(?<![\w\-])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w\-])", re.IGNORECASE)
_SSN = re.compile(r"(?<![\w\-.])([0-9]{3})([ \-])([0-9]{2})\2([0-9]{4})(?![\w\-]|[.][0-9])")
_IPV4 = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![\w]|\.[0-9])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?"
                   r"(?![\w:])")
_VERSION_BEFORE = re.compile(r"(?:\b[vV]|\b(?:version|release|build|ver)\.?\s*)$", re.IGNORECASE)
# Where a phone number could be: a digit run with phone separators and an optional +country / (area) start.
_PHONE_RUN = re.compile("\\+?\\(?[0-9][0-9 \u00a0().\\-]{5,}[0-9]")
# Gates: one cheap scan decides whether a family of detectors needs to run at all (parts of TRIGGER).
_DIGIT_RUN = re.compile(_TRIGGER_PARTS[1])
_HEX_COLONS = re.compile(_TRIGGER_PARTS[3])
_SECRET_PREFIX = re.compile(_TRIGGER_PARTS[4])
_SECRETS = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"|(?:(?:\s|\\[nr])*[A-Za-z0-9+/=:\-]+)*)"  # cut short: the header and all base64-like text after it
    r"|(?<![\w\-])sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)[0-9]{2}-)?[A-Za-z0-9_\-]{20,}"  # OpenAI, Anthropic
    r"|(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Za-z0-9])"  # AWS key ids
    r"|(?<![\w])gh[pousr]_[A-Za-z0-9]{36,255}(?![\w])|(?<![\w])github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    r"|(?<![\w\-])xox[abprs]-[A-Za-z0-9\-]{10,}"                                                 # Slack
    r"|(?<![\w])[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"                                             # Stripe
    r"|(?<![\w\-])AIza[A-Za-z0-9_\-]{35}"                                                         # Google
    r"|(?<![\w\-])eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"                  # JWT
    r"|(?<=://)[^\s:/?#@\"'<>]{0,256}:[^\s/?#@\"'<>]{1,256}(?=@)",   # user:password in a URL (postgres://u:p@host)
    re.DOTALL)
# An email right after `scheme://user:` is the password and host of a URL: the SECRET above takes the credentials.
_URL_USERINFO_BEFORE = re.compile(r"://[^\s:/?#@]*:$")
# SSA: never issued — area 000, 666, 900-999; group 00; serial 0000; and the famous published examples.
_SSN_PUBLISHED = {"078051120", "219099999", "457555462"}
# Card networks' leading digits (IIN): Mastercard 2221-2720 and 51-55, Amex 34/37, Diners 30/36/38/39,
# JCB 35, Visa 4, Discover/UnionPay/Maestro 6x, Maestro 50/56-58.
_CARD_IIN = re.compile(r"^(?:222[1-9]|22[3-9][0-9]|2[3-6][0-9]{2}|27[01][0-9]|2720|3[0456789]|4|5[0-8]|6)")


def _valid_card(digits: str, raw: str) -> bool:
    from stdnum import luhn

    separators = set(re.sub(r"[0-9]", "", raw))
    return (13 <= len(digits) <= 19 and len(separators) <= 1 and _CARD_IIN.match(digits) is not None
            and luhn.is_valid(digits))


def _card_end(raw: str) -> int | None:
    """Length of the longest valid card number that `raw` starts with, cut at a separator (a card followed by
    ` 123` or ` 12/27` makes a longer digit run), or None."""
    ends = [len(raw)] + [i for i in range(len(raw) - 1, 12, -1) if raw[i] in " .-" and raw[i - 1].isdigit()]
    for end in ends:
        head = raw[:end]
        if _valid_card(re.sub(r"[^0-9]", "", head), head):
            return end
    return None


_SENTENCE_BREAK = re.compile(r"\.\s|\s{2,}")


def _pieces(text: str, start: int, end: int, found: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """[start, end) minus the spans in `found`, split at sentence breaks."""
    pieces = [(start, end)]
    for s, e, _ in found:
        if s < end and e > start:
            pieces = [p for a, b in pieces for p in ((a, min(b, s)), (max(a, e), b)) if p[1] > p[0]]
    out = []
    for a, b in pieces:
        for part in _SENTENCE_BREAK.split(text[a:b]) if _SENTENCE_BREAK.search(text, a, b) else [text[a:b]]:
            at = text.index(part, a) if part else a
            if part:
                out.append((at, at + len(part)))
            a = at + len(part)
    return out


def _valid_ssn(area: str, group: str, serial: str) -> bool:
    return not (area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000"
                or area + group + serial in _SSN_PUBLISHED)


def _valid_jwt(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        return isinstance(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))), dict)
    except ValueError:
        return False


def _glued(text: str, start: int, end: int) -> bool:
    """True when [start, end) is part of a longer identifier: letters/digits directly around it, or a
    `-`/`/`-joined neighbour (INV-2026-004512, 1Z999AA10123456784)."""
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if before.isalnum() or after.isalnum() or before == "_" or after == "_":
        return True
    if before in "-/" and start >= 2 and text[start - 2].isalnum():
        return True
    return after in "-/" and end + 1 < len(text) and text[end + 1].isalnum()


class Redactor:
    """Finds PII and secrets and replaces them with typed placeholders. Immutable; safe across threads."""

    def __init__(self, kinds: Iterable[str] = KINDS, patterns: dict[str, str] | None = None,
                 deny_list: Iterable[str] = (), phone_region: str = DEFAULT_PHONE_REGION) -> None:
        self.kinds = frozenset(kinds)
        unknown = self.kinds - set(KINDS)
        if unknown:
            raise RedactionConfigError(f"unknown PII kinds {sorted(unknown)}; use {', '.join(KINDS)}")
        self.patterns = dict(sorted((patterns or {}).items()))
        self.deny_list = tuple(sorted({s for s in deny_list if s}, key=lambda s: (-len(s), s)))
        self.phone_region = phone_region
        self._regions = tuple(r.strip().upper() for r in phone_region.split(",") if r.strip())
        self._user = [(name, _compile_pattern(name, rx, "patterns")) for name, rx in self.patterns.items()]
        self._deny = re.compile("|".join(
            (r"(?<!\w)" if s[0].isalnum() or s[0] == "_" else "") + re.escape(s)
            + (r"(?!\w)" if s[-1].isalnum() or s[-1] == "_" else "") for s in self.deny_list)) if self.deny_list else None
        names = [re.escape(p.strip("<>")) for p in PLACEHOLDERS.values()] + [re.escape(n) for n in self.patterns]
        self._placeholder = re.compile(r"<(?:" + "|".join([*names, DENIED]) + r")>")
        # Clean text costs one scan of TRIGGER (plus one per user pattern and one for the deny-list).
        self._checks = ([re.compile(TRIGGER)] if self.kinds else []) + [rx for _, rx in self._user]
        if self._deny is not None:
            self._checks.append(self._deny)
        # The same checks as one RE2 pattern for flags() (RE2 reads re.escape's output as the same literal).
        parts = [*([TRIGGER] if self.kinds else []), *self.patterns.values(), *map(re.escape, self.deny_list)]
        self._flag_pattern = "|".join(f"(?:{p})" for p in parts)

    def __repr__(self) -> str:
        return (f"Redactor(kinds={sorted(self.kinds)}, patterns={sorted(self.patterns)}, "
                f"deny_list={len(self.deny_list)} strings, phone_region={self.phone_region!r})")

    def _could_hold(self, text: str) -> bool:
        return any(check.search(text) is not None for check in self._checks)

    # --- detection ---------------------------------------------------------------------------------------------
    def _spans(self, text: str) -> list[tuple[int, int, str]]:
        found: list[tuple[int, int, str]] = []
        add = found.append
        kinds = self.kinds
        if self._deny is not None:
            for m in self._deny.finditer(text):
                add((m.start(), m.end(), DENIED))
        for name, rx in self._user:
            for m in rx.finditer(text):
                if m.end() > m.start():
                    add((m.start(), m.end(), name))
        digits = _DIGIT_RUN.search(text) is not None  # cards, SSNs, IPv4, phones all hold 7+ digits/separators
        if "SECRET" in kinds and (_SECRET_PREFIX.search(text) or ("://" in text and "@" in text)):
            for m in _SECRETS.finditer(text):
                if not m.group().startswith("eyJ") or _valid_jwt(m.group()):
                    add((m.start(), m.end(), "SECRET"))
        if "EMAIL_ADDRESS" in kinds and "@" in text:
            for m in _EMAIL.finditer(text):
                local = m.group().split("@", 1)[0]
                if ".." not in local and not local.endswith(".") and not (
                        text[m.start() - 1:m.start()] == ":"
                        and _URL_USERINFO_BEFORE.search(text, max(0, m.start() - 300), m.start())):
                    add((m.start(), m.end(), "EMAIL_ADDRESS"))
        if "IBAN_CODE" in kinds:
            for m in _IBAN.finditer(text):
                span = _iban_span(text, m.start(), m.end())
                if span:
                    add((*span, "IBAN_CODE"))
        if "CREDIT_CARD" in kinds and digits:
            for m in _CARD.finditer(text):
                end = _card_end(m.group())
                if end:
                    add((m.start(), m.start() + end, "CREDIT_CARD"))
        if "US_SSN" in kinds and digits:
            for m in _SSN.finditer(text):
                if _valid_ssn(m.group(1), m.group(3), m.group(4)):
                    add((m.start(), m.end(), "US_SSN"))
        if "IP_ADDRESS" in kinds:
            for m in _IPV4.finditer(text) if digits else ():
                if _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()):
                    continue
                try:
                    ipaddress.IPv4Address(m.group())
                except ValueError:
                    continue
                add((m.start(), m.end(), "IP_ADDRESS"))
            if ":" in text and _HEX_COLONS.search(text):
                for m in _IPV6.finditer(text):
                    candidate = m.group()
                    if len(candidate) < 6 or candidate.count(":") < 2:
                        continue
                    try:
                        ipaddress.IPv6Address(candidate)
                    except ValueError:
                        continue
                    add((m.start(), m.end(), "IP_ADDRESS"))
        if "PHONE_NUMBER" in kinds and digits:
            found.extend(self._phones(text, found))
        return found

    def _phones(self, text: str, found: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        import phonenumbers

        out = []
        for run in _PHONE_RUN.finditer(text):
            # Only the parts of the run outside what is already found (a card, an IBAN …), split where a
            # sentence ends (`2. 415…`): the matcher then sees short chunks, each at most one number.
            for a, b in _pieces(text, run.start(), run.end(), found):
                chunk = text[a:b]
                if sum(c.isdigit() for c in chunk) < 7:
                    continue
                # `00` is the international prefix in most of the world (not in the default region US): read
                # `0044 20 …` as `+44 20 …`, shifting offsets back by the one character saved.
                shift = 1 if chunk.startswith("00") else 0
                for region in self._regions:
                    for match in phonenumbers.PhoneNumberMatcher("+" + chunk[2:] if shift else chunk, region,
                                                                 leniency=phonenumbers.Leniency.VALID):
                        start = a + (match.start + shift if match.start else 0)
                        end = a + match.end + shift
                        if not _glued(text, start, end):
                            out.append((start, end, "PHONE_NUMBER"))
        return out

    def _resolve(self, text: str, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        """Non-overlapping spans, longest first, then most specific; none touching an existing placeholder."""
        # Taken intervals never overlap, so sorted starts and ends answer "does [start, end) overlap?" by bisection.
        starts: list[int] = []
        ends: list[int] = []
        if "<" in text:
            for m in self._placeholder.finditer(text):
                starts.append(m.start())
                ends.append(m.end())
        chosen: list[tuple[int, int, str]] = []
        for start, end, kind in sorted(set(spans), key=lambda s: (s[0] - s[1], _PRIORITY.get(s[2], _USER_PRIORITY),
                                                                 s[0], s[2])):
            i = bisect.bisect_right(starts, start)
            if (i and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
                continue
            starts.insert(i, start)
            ends.insert(i, end)
            chosen.append((start, end, kind))
        chosen.sort()
        return chosen

    # --- the contract ------------------------------------------------------------------------------------------
    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, KIND) of what one pass of redact() replaces, in text order (for audits and benchmarks)."""
        if not text or not self._could_hold(text):
            return []
        return self._resolve(text, self._spans(text))

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with every finding replaced by its placeholder, and the count per kind."""
        counts: dict[str, int] = {}
        # Replacing a span can free a neighbour that was glued to it (an email right before `+1 415 …`):
        # passes repeat until nothing more is found, so a redacted text redacts to itself.
        for _ in range(4):
            if not text or not self._could_hold(text):
                break
            spans = self._resolve(text, self._spans(text))
            if not spans:
                break
            pieces, last = [], 0
            for start, end, kind in spans:
                pieces.append(text[last:start])
                pieces.append(PLACEHOLDERS.get(kind) or f"<{kind}>")
                counts[kind] = counts.get(kind, 0) + 1
                last = end
            pieces.append(text[last:])
            text = "".join(pieces)
        return text, counts

    def redact_record(self, record: dict[str, Any]) -> dict[str, int]:
        """Redact a landing record's free-text fields in place; merge the counts into record["redactions"]."""
        counts: dict[str, int] = {}
        for field in ("prompt", "response", "error_message", "comment", "correction", "label"):
            value = record.get(field)
            if isinstance(value, str):
                record[field] = self._text(value, counts)
        messages = record.get("messages")
        if isinstance(messages, list):
            record["messages"] = [self._message(m, counts) for m in messages]
        elif isinstance(messages, str):  # some producers write messages as JSON text
            record["messages"] = self._json_text(messages, counts, _MESSAGE_KEYS)
        contexts = record.get("contexts")
        if isinstance(contexts, list):
            record["contexts"] = [self._text(c, counts) if isinstance(c, str) else self._value(c, counts, ())
                                  for c in contexts]
        for field in ("tool_calls", "metadata"):
            value = record.get(field)
            if isinstance(value, str):
                record[field] = self._json_text(value, counts, ())
            elif isinstance(value, dict | list):
                record[field] = self._value(value, counts, ())
        merged = _loads_counts(record.get("redactions"))
        if merged is None:
            # Not a count object: ingest quarantines the record for it (naming the field); here it is only
            # redacted as text, so that whatever it holds reaches no file verbatim.
            if isinstance(record["redactions"], str):
                record["redactions"] = self.redact(record["redactions"])[0]
            return counts
        for kind, n in counts.items():
            merged[kind] = merged.get(kind, 0) + n
        record["redactions"] = json.dumps(merged, sort_keys=True, separators=(",", ":"))
        return counts

    def flags(self, texts: Any) -> Any:
        """numpy bool mask: True where the text could hold something redact() replaces (never a false negative)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if not isinstance(texts, pa.Array):
            texts = pa.array(list(texts), type=pa.string())
        if texts.type in (pa.large_string(), pa.string_view()):
            texts = texts.cast(pa.string())
        if not self._flag_pattern:
            return np.zeros(len(texts), dtype=bool)
        try:
            hits = pc.match_substring_regex(texts, self._flag_pattern)
        except pa.ArrowInvalid:
            # A user pattern RE2 cannot run (lookaround, backreference): fall back to the Python trigger per row.
            return np.fromiter((t is not None and self._could_hold(t) for t in texts.to_pylist()),
                               dtype=bool, count=len(texts))
        if self._user:
            # RE2's \d, \w, \s, \b are ASCII; Python's (which redact() runs) are Unicode: a user pattern may
            # match more in non-ASCII text than RE2 sees, so such rows always go to the exact pass.
            hits = pc.or_(hits, pc.invert(pc.string_is_ascii(texts)))
        return hits.fill_null(False).to_numpy(zero_copy_only=False)

    # --- record helpers ----------------------------------------------------------------------------------------
    def _text(self, text: str, counts: dict[str, int]) -> str:
        out, found = self.redact(text)
        for kind, n in found.items():
            counts[kind] = counts.get(kind, 0) + n
        return out

    def _value(self, value: Any, counts: dict[str, int], skip: tuple[str, ...]) -> Any:
        """String values of a JSON-like value redacted (dict keys kept; values under `skip` keys kept)."""
        if isinstance(value, str):
            return self._text(value, counts)
        if isinstance(value, dict):
            return {k: v if k in skip else self._value(v, counts, skip) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v, counts, skip) for v in value]
        return value

    def _message(self, message: Any, counts: dict[str, int]) -> Any:
        return self._value(message, counts, _MESSAGE_KEYS) if isinstance(message, dict) else message

    def _json_text(self, text: str, counts: dict[str, int], skip: tuple[str, ...]) -> str:
        """JSON text: its string values redacted, rewritten only when something changed; not JSON: as text."""
        if not self._could_hold(text):
            return text
        try:
            value = json.loads(text)
        except ValueError:
            return self._text(text, counts)
        found: dict[str, int] = {}
        value = self._value(value, found, skip)
        if not found:
            return text
        for kind, n in found.items():
            counts[kind] = counts.get(kind, 0) + n
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# Message fields that are structure, not content.
_MESSAGE_KEYS = ("role", "type", "id", "tool_call_id", "name")


def _iban_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The longest checksum-valid IBAN starting at `start` within the candidate (trailing groups may be words)."""
    from stdnum import iban

    candidate = text[start:end]
    while len(candidate.replace(" ", "")) >= 15:
        if iban.is_valid(candidate):
            return start, start + len(candidate)
        cut = candidate.rfind(" ")
        candidate = candidate[:cut] if cut > 0 else candidate[:-1]
    return None


def _loads_counts(raw: Any) -> dict[str, int] | None:
    """The counts a record already carries ({} when none); None when the field is not a count object."""
    if raw is None or raw == "":
        return {}
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items()):
        return None
    return dict(value)


def _compile_pattern(name: str, pattern: str, where: str) -> re.Pattern[str]:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RedactionConfigError(f"{where}: entity name {name!r} must be UPPER_SNAKE_CASE (it becomes the "
                                   f"placeholder <NAME>), e.g. TICKET_ID")
    if name in PLACEHOLDERS or name == DENIED or name in ALIASES:
        raise RedactionConfigError(f"{where}: {name} is a built-in kind; give your pattern another name, "
                                   f"e.g. CUSTOM_{name}")
    if not isinstance(pattern, str) or not pattern:
        raise RedactionConfigError(f"{where}.{name}: the pattern must be a non-empty regular expression string")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise RedactionConfigError(f"{where}.{name}: {pattern!r} is not a regular expression ({exc}); "
                                   "fix the pattern (Python `re` syntax)") from None
    if compiled.match(""):
        raise RedactionConfigError(f"{where}.{name}: {pattern!r} matches the empty string; make it match "
                                   "at least one character")
    return compiled


# --- configuration -----------------------------------------------------------------------------------------------
def parse_kinds(raw: str | None, where: str = "CONTINUUM_REDACT_KINDS") -> frozenset[str]:
    """`all` (or empty), `none`, a comma list of kinds, or a comma list of `-KIND` removals from all."""
    if raw is None or not raw.strip() or raw.strip().lower() == "all":
        return frozenset(KINDS)
    if raw.strip().lower() == "none":
        return frozenset()
    items = [item.strip() for item in raw.split(",") if item.strip()]
    removals = [i.startswith("-") for i in items]
    if any(removals) and not all(removals):
        raise RedactionConfigError(f"{where}={raw!r} mixes kinds and -removals; write either a list of the kinds "
                                   "to redact (EMAIL_ADDRESS,SECRET) or only removals (-IP_ADDRESS,-PHONE_NUMBER)")
    names = set()
    for item in items:
        name = item.lstrip("-").upper()
        name = ALIASES.get(name, name)
        if name not in PLACEHOLDERS:
            raise RedactionConfigError(f"{where}: unknown kind {item!r}; use all, none, or kinds among "
                                       f"{', '.join(KINDS)} (or -KIND to remove one)")
        names.add(name)
    return frozenset(KINDS) - names if all(removals) else frozenset(names)


def _env_patterns(raw: str | None) -> dict[str, str]:
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise RedactionConfigError(f"CONTINUUM_REDACT_PATTERNS is not JSON ({exc}); set it to a JSON object "
                                   'NAME → regex, e.g. {"TICKET_ID": "T-\\\\d{6}"}') from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RedactionConfigError("CONTINUUM_REDACT_PATTERNS must be a JSON object of NAME → regex strings, "
                                   'e.g. {"TICKET_ID": "T-\\\\d{6}"}')
    for name, pattern in value.items():
        _compile_pattern(name, pattern, "CONTINUUM_REDACT_PATTERNS")
    return value


def _deny_file(path: str | None) -> tuple[str, ...]:
    if not path:
        return ()
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            return tuple(line.rstrip("\r\n") for line in handle if line.strip())
    except OSError as exc:
        raise RedactionConfigError(f"CONTINUUM_REDACT_DENY_FILE={path!r} cannot be read ({exc.strerror}); point it "
                                   "at a UTF-8 file of exact strings, one per line, or unset it") from None
    except UnicodeDecodeError:
        raise RedactionConfigError(f"CONTINUUM_REDACT_DENY_FILE={path!r} is not UTF-8 text; save it as UTF-8") from None


def _task_section(task_spec: Any) -> tuple[frozenset[str], dict[str, str], tuple[str, ...]]:
    if task_spec is None:
        return frozenset(), {}, ()
    if hasattr(task_spec, "model_dump"):
        task_spec = task_spec.model_dump()
    if not isinstance(task_spec, dict):
        raise RedactionConfigError(f"privacy.redaction must be a mapping (disable, patterns, deny_list), got "
                                   f"{type(task_spec).__name__}")
    unknown = set(task_spec) - {"disable", "patterns", "deny_list"}
    if unknown:
        raise RedactionConfigError(f"privacy.redaction: unknown fields {sorted(unknown)}; use disable, patterns, "
                                   "deny_list")
    disable = task_spec.get("disable") or []
    if isinstance(disable, str) or not isinstance(disable, list | tuple):
        raise RedactionConfigError("privacy.redaction.disable must be a list of kinds, e.g. [IP_ADDRESS]")
    bad = [k for k in disable if k not in PLACEHOLDERS]
    if bad:
        raise RedactionConfigError(f"privacy.redaction.disable: unknown kinds {bad}; use {', '.join(KINDS)}")
    patterns = task_spec.get("patterns") or {}
    if not isinstance(patterns, dict):
        raise RedactionConfigError("privacy.redaction.patterns must be a mapping NAME → regex")
    for name, pattern in patterns.items():
        _compile_pattern(name, pattern, "privacy.redaction.patterns")
    deny = task_spec.get("deny_list") or []
    if isinstance(deny, str) or not all(isinstance(s, str) for s in deny):
        raise RedactionConfigError("privacy.redaction.deny_list must be a list of strings")
    return frozenset(disable), dict(patterns), tuple(deny)


_CACHE: dict[tuple, Redactor] = {}
_LOCK = threading.Lock()


def redactor(task_spec: Any = None) -> Redactor:
    """The redactor of the CONTINUUM_REDACT_* settings merged with a task's `privacy.redaction` (a
    RedactionSpec or its dict): the task's `disable` kinds are kept verbatim, its patterns and deny-list
    add to the settings' (a task pattern replaces a setting's pattern of the same name)."""
    kinds = parse_kinds(os.environ.get("CONTINUUM_REDACT_KINDS"))
    patterns = _env_patterns(os.environ.get("CONTINUUM_REDACT_PATTERNS"))
    raw_region = os.environ.get("CONTINUUM_REDACT_PHONE_REGION") or DEFAULT_PHONE_REGION
    region = ",".join(r.strip().upper() for r in raw_region.split(",") if r.strip()) or DEFAULT_PHONE_REGION
    deny_path = os.environ.get("CONTINUUM_REDACT_DENY_FILE") or None
    disable, task_patterns, task_deny = _task_section(task_spec)
    deny_stamp = None
    if deny_path:
        try:
            deny_stamp = os.stat(os.path.expanduser(deny_path)).st_mtime_ns
        except OSError:
            deny_stamp = -1  # _deny_file raises the clear error below
    key = (kinds - disable, tuple(sorted({**patterns, **task_patterns}.items())), task_deny, region, deny_path,
           deny_stamp)
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    import phonenumbers

    unknown = [r for r in region.split(",") if r not in phonenumbers.SUPPORTED_REGIONS]
    if unknown:
        raise RedactionConfigError(f"CONTINUUM_REDACT_PHONE_REGION={raw_region!r}: {', '.join(unknown)} is not a region "
                                   "phonenumbers knows; use two-letter country codes such as US, GB or DE")
    built = Redactor(kinds - disable, {**patterns, **task_patterns}, (*_deny_file(deny_path), *task_deny), region)
    with _LOCK:
        if len(_CACHE) > 64:
            _CACHE.clear()
        return _CACHE.setdefault(key, built)


# --- per task: the redactors of the task YAMLs ----------------------------------------------------------------
class TaskRedactors:
    """Captured task name → the redactor of that task's `privacy.redaction` section (over the shared settings),
    loaded from the task YAMLs in the settings (CONTINUUM_TASKS) and reloaded when one of them changes.

    A task with no YAML gets the shared settings' redactor. Where no task is known (feedback events, quarantined
    lines, the `None` key), `strictest`: the shared settings plus every task's own patterns and deny-list, and no
    kind turned off, so a term some task denies cannot slip in through a feedback comment. Several YAMLs selecting
    the same captured task combine the same way: what any adds is redacted, a kind stays only if all keep it.
    """

    def __init__(self, task_paths: tuple[Path, ...]):
        self.task_paths = tuple(task_paths)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._checked = -math.inf
        self._by_task: dict[str | None, Any] = {}
        self._shared: Any = None

    def __call__(self, task: str | None) -> Any:
        """The task's redactor; the YAMLs are looked at again at most once a second (the writer asks per record)."""
        self.refresh(max_age=1.0)
        return self.get(task)

    def get(self, task: str | None) -> Any:
        return self._by_task.get(task, self._shared)

    def refresh(self, max_age: float = 0.0) -> None:
        """Reload if a task YAML was added, removed or changed since the last look (more than max_age s ago)."""
        now = time.monotonic()
        if now - self._checked < max_age:
            return
        self._checked = now
        files = task_yaml_files(self.task_paths)
        stamp = tuple((str(f), _mtime(f)) for f in files)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp != self._stamp:
                self._by_task, self._shared = self._load(files)
                self._stamp = stamp

    @staticmethod
    def _load(files: list[Path]) -> tuple[dict[str | None, Any], Any]:
        from continuum_pipeline.task.config import RedactionSpec, load_task_config

        specs: dict[str, list[RedactionSpec]] = {}
        for path in files:  # a broken YAML raises TaskConfigError naming it: redacting without it could leak
            task = load_task_config(path)
            specs.setdefault(task.select.task or task.name, []).append(task.privacy.redaction)
        everything = [s for group in specs.values() for s in group]
        by_task: dict[str | None, Any] = {name: redactor(_combined(group)) for name, group in specs.items()}
        by_task[None] = redactor(_combined(everything, keep_disabled=False))
        return by_task, redactor()


def _combined(specs: list, keep_disabled: bool = True) -> Any:
    from continuum_pipeline.task.config import RedactionSpec

    disabled = set.intersection(*(set(s.disable) for s in specs)) if specs and keep_disabled else set()
    patterns: dict[str, str] = {}
    for s in specs:
        for name, pattern in s.patterns.items():
            # Two tasks naming one entity differently: both patterns apply, as NAME and NAME_2.
            key, i = name, 1
            while key in patterns and patterns[key] != pattern:
                i += 1
                key = f"{name}_{i}"
            patterns[key] = pattern
    deny = sorted({term for s in specs for term in s.deny_list})
    return RedactionSpec(disable=sorted(disabled), patterns=patterns, deny_list=deny)


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


_REDACTORS: dict[tuple, TaskRedactors] = {}


def task_redactors(task_paths: tuple[Path, ...] | None = None) -> TaskRedactors:
    """The TaskRedactors of these task YAMLs (default: the current settings'), one per set of paths."""
    if task_paths is None:
        from continuum_pipeline.settings import get_settings

        task_paths = get_settings().tasks
    key = tuple(task_paths)
    if key not in _REDACTORS:
        _REDACTORS[key] = TaskRedactors(key)
    return _REDACTORS[key]
