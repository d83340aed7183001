"""Config errors people can act on: pydantic's errors rendered as `judges[1].criteria[0].weight: must be > 0`.

Stdlib only at import (pydantic is imported by whoever calls this with a pydantic error).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Pydantic puts the tag of a discriminated union's member into an error's location
# (judges[0].llm_rubric.criteria); the YAML has no such level, so these names are dropped from paths.
_UNION_TAGS: set[str] = set()

# Pydantic's wording, rewritten to say the fix; other types keep pydantic's message.
_MESSAGES = {
    "missing": "missing — this setting is required",
    "extra_forbidden": "unknown setting — remove it or check its spelling",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "takes at most {max_length} item(s)",
    "string_too_short": "must not be empty",
    "union_tag_invalid": "unknown kind {tag!r} — use one of {expected_tags}",
    "union_tag_not_found": "missing {discriminator} — say which kind this is",
    "literal_error": "must be one of {expected}",
}


def register_union_tags(tags: Iterable[str]) -> None:
    """Tags of a discriminated union (its `kind` values) to leave out of error paths."""
    _UNION_TAGS.update(tags)


def error_path(loc: Iterable[Any], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _UNION_TAGS:
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def format_validation_error(exc: Any, prefix: str = "") -> str:
    """One line per problem, `path: what is wrong — the fix`; `prefix` is the path of the validated value
    inside its file (e.g. "judges[1]" when one judge is validated on its own)."""
    lines = []
    for err in exc.errors(include_url=False):
        ctx = err.get("ctx") or {}
        kind = err["type"]
        template = _MESSAGES.get(kind)
        try:
            shown = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}  # 0, not 0.0
            message = template.format(**shown) if template else None
        except (KeyError, IndexError, ValueError):
            message = None
        if message is None:
            message = err["msg"]
            if kind in ("value_error", "assertion_error"):
                message = str(ctx.get("error", message)).removeprefix("Assertion failed, ")
            message = message.removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            if kind not in ("value_error", "assertion_error") and not isinstance(err.get("input"), dict | list):
                message += f" (got {err.get('input')!r})"
        lines.append(f"{error_path(err['loc'], prefix) or '(top level)'}: {message}")
    return "\n".join(lines)
