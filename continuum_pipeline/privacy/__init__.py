"""Privacy: PII redaction before disk, exclusion rules, the right to be forgotten, retention and reports.

`redact` is SDK-safe (stdlib plus the pure-Python validators `phonenumbers` and `python-stdnum`, imported
lazily): the capture writer runs it on its background thread. The rest is domain code over the lake.
"""
