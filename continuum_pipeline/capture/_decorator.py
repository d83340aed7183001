"""`@capture`: record a model call without changing what it returns or raises.

The wrapper's own work is an id, two clock reads and one deque append; everything else (binding
arguments, extracting prompt and response, JSON) happens on the writer thread.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from time import perf_counter_ns, time_ns
from typing import Any

from continuum_pipeline.capture.record import CONSENTS, interaction_record
from continuum_pipeline.capture.writer import WRITER

# Interaction ids: a random 64-bit process prefix plus a counter — unique without a uuid4 per call.
_PREFIX = os.urandom(8).hex()
_counter = itertools.count(1)


def _reseed_ids() -> None:
    global _PREFIX, _counter
    _PREFIX, _counter = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


def new_id() -> str:
    return f"{_PREFIX}{next(_counter):016x}"


_current: ContextVar[str | None] = ContextVar("continuum_interaction_id", default=None)
_context: ContextVar[dict[str, Any] | None] = ContextVar("continuum_capture_context", default=None)
_annotations: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class CallSpec:
    """What is fixed per decorated function."""

    fn: Callable[..., Any]
    task: str
    model: str | None
    model_version: str | None
    route: str | None
    consent: str | None
    prompt_arg: str | None
    metadata: dict[str, Any] | None
    signature: inspect.Signature | None = field(default=None, compare=False)


def _build(spec: CallSpec, iid: str, wall: int, t0: int, t1: int, args: tuple, kwargs: dict,
           result: Any, error: BaseException | None, ctx: dict[str, Any] | None) -> dict[str, Any]:
    return interaction_record(
        interaction_id=iid, wall_ns=wall, elapsed_ns=t1 - t0, spec=spec, args=args, kwargs=kwargs,
        result=result, error=error, context=ctx, annotations=_annotations.pop(iid, None),
    )


def _snapshot(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    # Apps often append the reply to the same `messages` list after the call: keep what was sent.
    if args:
        args = tuple([a[:] if a.__class__ is list else a for a in args])
    if kwargs:
        kwargs = {k: (v[:] if v.__class__ is list else v) for k, v in kwargs.items()}
    return args, kwargs


def capture(fn: Callable[..., Any] | None = None, /, *, task: str | None = None, model: str | None = None,
            model_version: str | None = None, route: str | None = None, consent: str | None = None,
            prompt_arg: str | None = None, metadata: dict[str, Any] | None = None) -> Any:
    """Record every call of `fn` as an interaction; use as `@capture` or `@capture(task=..., model=...)`."""
    if fn is None:
        return lambda f: capture(f, task=task, model=model, model_version=model_version, route=route,
                                 consent=consent, prompt_arg=prompt_arg, metadata=metadata)
    if consent is not None and consent not in CONSENTS:
        raise ValueError(f"capture(consent={consent!r}): use one of {', '.join(CONSENTS)}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    spec = CallSpec(fn, task or fn.__qualname__, model, model_version, route, consent, prompt_arg, metadata, signature)
    submit, current_set, context_get = WRITER.submit, _current.set, _context.get

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            iid = f"{_PREFIX}{next(_counter):016x}"
            current_set(iid)
            sargs, skwargs = _snapshot(args, kwargs)
            wall = time_ns()
            t0 = perf_counter_ns()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                submit((_build, (spec, iid, wall, t0, perf_counter_ns(), sargs, skwargs, None, exc, context_get())))
                raise
            submit((_build, (spec, iid, wall, t0, perf_counter_ns(), sargs, skwargs, result, None, context_get())))
            return result

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        iid = f"{_PREFIX}{next(_counter):016x}"
        current_set(iid)
        sargs, skwargs = _snapshot(args, kwargs)
        wall = time_ns()
        t0 = perf_counter_ns()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            submit((_build, (spec, iid, wall, t0, perf_counter_ns(), sargs, skwargs, None, exc, context_get())))
            raise
        submit((_build, (spec, iid, wall, t0, perf_counter_ns(), sargs, skwargs, result, None, context_get())))
        return result

    return wrapper


def last_interaction_id() -> str | None:
    """Id of the interaction most recently started in this context (inside the call or after it)."""
    return _current.get()


def annotate(**fields: Any) -> None:
    """Add fields to the interaction in progress: prompt_tokens, completion_tokens, cost_usd, ttft_ms,
    model, model_version, route, consent, contexts, tool_calls, response, metadata, ts (a datetime, for
    replays and simulations), … Call it inside the captured function; unknown keys go to metadata."""
    iid = _current.get()
    if iid is not None:
        _annotations.setdefault(iid, {}).update(fields)


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Fields for every interaction captured inside the block: session_id, user_id, consent, route,
    model_version, trace_id, contexts, metadata. Blocks nest; inner values win."""
    consent = fields.get("consent")
    if consent is not None and consent not in CONSENTS:
        raise ValueError(f"capture.context(consent={consent!r}): use one of {', '.join(CONSENTS)}")
    outer = _context.get() or {}
    merged = {**outer, **fields}
    if "metadata" in outer and "metadata" in fields:
        merged["metadata"] = {**outer["metadata"], **fields["metadata"]}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)
