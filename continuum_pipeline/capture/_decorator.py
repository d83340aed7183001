"""`@capture`: record a model call without changing what it returns or raises.

The wrapper's own work is an id, two clock reads, a size estimate from text lengths and one deque
append; everything else (binding arguments, extracting prompt and response, JSON) happens on the
writer thread. Per-call state (the id, annotate()'s fields) lives in a small list held by a ContextVar
and travels inside the queued item: nothing global is keyed by call, so a dropped record leaves nothing.
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
from continuum_pipeline.capture.writer import (
    ITEM_BYTES,
    MESSAGE_BYTES,
    OBJECT_BYTES,
    RECORD_BYTES,
    WALK,
    WRITER,
    approx_bytes,
)

# Interaction ids: a random 64-bit process prefix plus a counter — unique without a uuid4 per call.
_PREFIX = os.urandom(8).hex()
_counter = itertools.count(1)


def _reseed_ids() -> None:
    global _PREFIX, _counter
    _PREFIX, _counter = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


def new_id() -> str:
    return f"{_PREFIX}{next(_counter):016x}"


# The call most recently started in this context: [interaction id, annotate()'s fields or None]. The
# wrapper takes the fields out when the call ends and puts _ENDED in their place.
_current: ContextVar[list | None] = ContextVar("continuum_interaction", default=None)
_context: ContextVar[dict[str, Any] | None] = ContextVar("continuum_capture_context", default=None)
_ENDED: Any = object()


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


def _build(spec: CallSpec, iid: str, wall: int, t0: int, t1: int, args: tuple, kwargs: dict, result: Any,
           error: BaseException | None, ctx: dict[str, Any] | None, ann: dict[str, Any] | None) -> dict[str, Any]:
    return interaction_record(
        interaction_id=iid, wall_ns=wall, elapsed_ns=t1 - t0, spec=spec, args=args, kwargs=kwargs,
        result=result, error=error, context=ctx, annotations=ann,
    )


def _snapshot(args: tuple, kwargs: dict) -> tuple[tuple, dict, int]:
    """The arguments as sent, plus the estimated bytes the queued record holds for them (see approx_bytes).

    Apps often append the reply to the same `messages` list after the call: lists are copied. Text,
    numbers and chat-message lists are sized inline, as approx_bytes would: a call per argument costs
    more than the rest of the estimate.
    """
    size = RECORD_BYTES
    if args:
        out = []
        for a in args:
            cls = a.__class__
            if cls is str:
                size += len(a)
            elif cls is list:
                a = a[:]
                if len(a) <= WALK:
                    for m in a:
                        if m.__class__ is dict:
                            try:  # cheaper than .get() when, as usual, the key is there
                                text = m["content"]
                                size += MESSAGE_BYTES + len(text) if text.__class__ is str else MESSAGE_BYTES
                            except KeyError:
                                size += MESSAGE_BYTES
                        else:
                            size += ITEM_BYTES + (len(m) if m.__class__ is str else 0)
                else:
                    size += approx_bytes(a)
            elif not (cls is int or cls is float or cls is bool or a is None):
                size += approx_bytes(a)
            out.append(a)
        args = tuple(out)
    if kwargs:
        kw = {}
        for k, v in kwargs.items():
            cls = v.__class__
            size += ITEM_BYTES
            if cls is str:
                size += len(v)
            elif cls is list:
                v = v[:]
                size += approx_bytes(v)
            elif not (cls is int or cls is float or cls is bool or v is None):
                size += approx_bytes(v)
            kw[k] = v
        kwargs = kw
    return args, kwargs, size


def _end(call: list) -> tuple[dict[str, Any] | None, int]:
    """Close the call to annotate() and return its fields with their estimated size."""
    ann, call[1] = call[1], _ENDED
    return (None, 0) if ann is None else (ann, approx_bytes(ann))


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
            call = [iid, None]
            current_set(call)
            sargs, skwargs, size = _snapshot(args, kwargs)
            wall = time_ns()
            t0 = perf_counter_ns()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                t1 = perf_counter_ns()
                ann, ann_size = _end(call)
                submit(_build, (spec, iid, wall, t0, t1, sargs, skwargs, None, exc, context_get(), ann),
                       size + ann_size + OBJECT_BYTES)
                raise
            t1 = perf_counter_ns()
            ann, ann_size = _end(call)
            submit(_build, (spec, iid, wall, t0, t1, sargs, skwargs, result, None, context_get(), ann),
                   size + ann_size + approx_bytes(result))
            return result

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        iid = f"{_PREFIX}{next(_counter):016x}"
        call = [iid, None]
        current_set(call)
        sargs, skwargs, size = _snapshot(args, kwargs)
        wall = time_ns()
        t0 = perf_counter_ns()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            t1 = perf_counter_ns()
            ann, ann_size = _end(call)
            submit(_build, (spec, iid, wall, t0, t1, sargs, skwargs, None, exc, context_get(), ann),
                   size + ann_size + OBJECT_BYTES)
            raise
        t1 = perf_counter_ns()
        ann = call[1]  # _end() inlined: this is the hot path
        call[1] = _ENDED
        if ann is not None:
            size += approx_bytes(ann)
        submit(_build, (spec, iid, wall, t0, t1, sargs, skwargs, result, None, context_get(), ann),
               size + len(result) if result.__class__ is str else size + approx_bytes(result))
        return result

    return wrapper


def last_interaction_id() -> str | None:
    """Id of the interaction most recently started in this context (inside the call or after it)."""
    call = _current.get()
    return None if call is None else call[0]


def annotate(**fields: Any) -> None:
    """Add fields to the interaction in progress: prompt_tokens, completion_tokens, cost_usd, ttft_ms,
    model, model_version, route, consent, contexts, tool_calls, response, metadata, ts (a datetime, for
    replays and simulations), latency_ms (replaces the measured call time, same use), … Call it inside the captured function (after it returned, the record is
    already queued and the call is ignored); unknown keys go to metadata."""
    call = _current.get()
    if call is None:
        return
    ann = call[1]
    if ann is None:
        call[1] = fields  # a fresh dict per call: safe to keep
    elif ann is not _ENDED:
        ann.update(fields)


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
