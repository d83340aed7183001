"""One redactor for every door: typed placeholders for PII and secrets, counts per kind, never the values.

CONTRACT (other modules code against this; keep it):
- `Redactor.redact(text) -> (redacted_text, {KIND: count})`; the same text redacts the same way everywhere.
- `Redactor.redact_record(record) -> {KIND: count}`: in place, every free-text field of a landing record
  (interaction or feedback: prompt, messages[*].content, response, tool_calls, contexts[*], error_message,
  comment, correction, label, metadata — JSON text: its string values, keys kept); merges the counts into
  `record["redactions"]` (JSON object text, sorted keys) and returns this call's counts. Ids, timestamps,
  model names, enums are never touched.
- `Redactor.flags(texts: pyarrow string array) -> numpy bool mask`: a vectorised, conservative pre-filter
  (no false negatives): rows whose text could hold anything the redactor would replace. Ingest runs the
  exact redactor only on flagged rows.
- `redactor(task_spec=None)`: the redactor of the current settings (CONTINUUM_REDACT_* environment), merged
  with a task's `privacy.redaction` section (a `RedactionSpec`, or its dict); cached per configuration.
- Entity names are Presidio's (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN, IP_ADDRESS) plus
  SECRET; user patterns use their own UPPER_SNAKE names; the deny-list is DENIED.
"""

from __future__ import annotations

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
