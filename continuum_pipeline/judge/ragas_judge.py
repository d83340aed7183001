"""Ragas metrics as a judge: each named metric is one criterion of the verdict.

Uses ragas's own metric objects (`ragas.metrics.collections`) and their scoring API, with ragas's LLM
wrapper (`llm_factory`, instructor in JSON mode) on an openai SDK client pointed at any
OpenAI-compatible endpoint. ragas is heavy (seconds to import): it is imported when a judge is built,
never when this module is.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from continuum_pipeline.judge.base import (
    CriterionScore,
    JudgeConfigError,
    JudgeError,
    JudgeInput,
    Verdict,
    weighted_mean,
)
from continuum_pipeline.judge.cache import VerdictCache, cache_key, dump_criteria, load_criteria
from continuum_pipeline.judge.spend import Metered, Prices, SpendMeter


@dataclass(frozen=True)
class RagasMetric:
    cls: str  # class name in ragas.metrics.collections
    inputs: tuple[str, ...]  # what its ascore() needs, in ragas's names
    llm: bool = False
    embeddings: bool = False


_Q, _R, _C, _REF = "user_input", "response", "retrieved_contexts", "reference"
# The metrics a single-turn JudgeInput can feed (agent, tool-call, multimodal and SQL metrics need
# inputs an interaction does not carry). Names are ragas's own metric names, plus its documented aliases.
RAGAS_METRICS: dict[str, RagasMetric] = {
    # LLM-judged, no reference needed
    "faithfulness": RagasMetric("Faithfulness", (_Q, _R, _C), llm=True),
    "answer_relevancy": RagasMetric("AnswerRelevancy", (_Q, _R), llm=True, embeddings=True),
    "response_relevancy": RagasMetric("AnswerRelevancy", (_Q, _R), llm=True, embeddings=True),
    "context_utilization": RagasMetric("ContextUtilization", (_Q, _R, _C), llm=True),
    "context_precision_without_reference": RagasMetric("ContextPrecisionWithoutReference", (_Q, _R, _C),
                                                       llm=True),
    "context_relevance": RagasMetric("ContextRelevance", (_Q, _C), llm=True),
    "response_groundedness": RagasMetric("ResponseGroundedness", (_R, _C), llm=True),
    # LLM-judged against the reference answer
    "answer_accuracy": RagasMetric("AnswerAccuracy", (_Q, _R, _REF), llm=True),
    "answer_correctness": RagasMetric("AnswerCorrectness", (_Q, _R, _REF), llm=True, embeddings=True),
    "factual_correctness": RagasMetric("FactualCorrectness", (_R, _REF), llm=True),
    "context_recall": RagasMetric("ContextRecall", (_Q, _C, _REF), llm=True),
    "context_precision": RagasMetric("ContextPrecision", (_Q, _REF, _C), llm=True),
    "context_precision_with_reference": RagasMetric("ContextPrecisionWithReference", (_Q, _REF, _C), llm=True),
    "context_entity_recall": RagasMetric("ContextEntityRecall", (_REF, _C), llm=True),
    "noise_sensitivity": RagasMetric("NoiseSensitivity", (_Q, _R, _REF, _C), llm=True),
    # Embeddings only
    "semantic_similarity": RagasMetric("SemanticSimilarity", (_REF, _R), embeddings=True),
    # No model at all: string metrics against the reference (or the contexts)
    "exact_match": RagasMetric("ExactMatch", (_REF, _R)),
    "string_presence": RagasMetric("StringPresence", (_REF, _R)),
    "string_present": RagasMetric("StringPresence", (_REF, _R)),
    "non_llm_string_similarity": RagasMetric("NonLLMStringSimilarity", (_REF, _R)),
    "bleu_score": RagasMetric("BleuScore", (_REF, _R)),
    "rouge_score": RagasMetric("RougeScore", (_REF, _R)),
    "chrf_score": RagasMetric("CHRFScore", (_REF, _R)),
    "quoted_spans_alignment": RagasMetric("QuotedSpansAlignment", (_R, _C)),
}

# Scores this close outside the metric's range are float noise, not a bug.
_TOLERANCE = 1e-9


def import_ragas() -> Any:
    # ragas phones home with usage analytics unless told not to; a labelling pipeline must not.
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    try:
        import ragas.metrics.collections as collections
    except ImportError as exc:
        raise JudgeConfigError("kind", f"ragas judges need the ragas package, which failed to import "
                                       f"({type(exc).__name__}: {exc}); install the judges extra: "
                                       f"pip install 'continuum-pipeline[judges]'") from exc
    return collections


class RagasJudge(Metered):
    """Scores each item on every configured ragas metric; the verdict's score is their weighted mean.

    Metrics run concurrently (at most `max_concurrency` items at once) on one event loop per `judge` call.
    A metric that cannot score an item (its inputs are missing, the endpoint fails, it returns NaN)
    fails that item with a JudgeError; spend, budget and cache work as for the LLM judge, per item.
    """

    def __init__(self, *, metrics: Sequence[str], name: str = "ragas", version: str = "1",
                 weights: Mapping[str, float] | None = None, base_url: str | None = None,
                 model: str | None = None, api_key: str | None = None, embeddings_model: str | None = None,
                 embeddings_path: str | None = None, temperature: float = 0.0, max_concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 3, prices: Prices | None = None,
                 cost_budget_usd: float | None = None, cache: VerdictCache | None = None):
        metrics = list(metrics)
        unknown = [m for m in metrics if m not in RAGAS_METRICS]
        if not metrics or unknown:
            raise JudgeConfigError("metrics", f"unknown metric(s) {unknown}; use any of {sorted(RAGAS_METRICS)}"
                                   if unknown else "name at least one metric")
        weights = dict(weights or {})
        if set(weights) - set(metrics):
            raise JudgeConfigError("weights", f"{sorted(set(weights) - set(metrics))} are not among the "
                                              f"metrics {metrics}")
        specs = [RAGAS_METRICS[m] for m in metrics]
        if any(s.llm for s in specs) and not (base_url and model):
            need = [m for m, s in zip(metrics, specs, strict=True) if s.llm]
            raise JudgeConfigError("base_url" if not base_url else "model",
                                   f"metrics {need} are judged by an LLM: set base_url and model (or "
                                   f"CONTINUUM_JUDGE_BASE_URL / CONTINUUM_JUDGE_MODEL)")
        if any(s.embeddings for s in specs) and not (embeddings_path or (base_url and embeddings_model)):
            need = [m for m, s in zip(metrics, specs, strict=True) if s.embeddings]
            raise JudgeConfigError("embeddings_model", f"metrics {need} compare embeddings: set embeddings_model "
                                                       f"(served at base_url's /v1/embeddings) or embeddings_path "
                                                       f"(a local sentence-transformers model folder)")
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise JudgeConfigError("max_concurrency", f"expected an integer >= 1, got {max_concurrency!r}")
        self.meter = SpendMeter(prices, cost_budget_usd)
        self._collections = import_ragas()  # fails here, at build time, when ragas is not installed
        self.metrics, self.weights = metrics, {m: float(weights.get(m, 1.0)) for m in metrics}
        self.name, self.version = name, version
        self.base_url, self.model, self.api_key = base_url, model, api_key
        self.embeddings_model, self.embeddings_path = embeddings_model, embeddings_path
        self.temperature, self.max_concurrency = temperature, max_concurrency
        self.timeout, self.max_retries, self.cache = timeout, max_retries, cache
        self._local_embeddings: Any = None  # a sentence-transformers model loads once per judge

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
        outcomes = self.judge_each(items)
        for outcome in outcomes:
            if isinstance(outcome, JudgeError):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def judge_each(self, items: Sequence[JudgeInput]) -> list[Verdict | JudgeError]:
        items = list(items)
        if not items:
            return []
        return _run_coroutine(self._judge_all(items))

    # --- internals ---

    def _where(self, item: JudgeInput) -> str:
        return f"judge {self.name!r} v{self.version}, interaction {item.interaction_id!r}"

    async def _judge_all(self, items: list[JudgeInput]) -> list[Verdict | JudgeError]:
        # The async client lives and dies with this event loop: its connections cannot outlive it.
        client = None
        if self.base_url:
            import openai

            client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self.api_key or "not-needed", max_retries=self.max_retries,
                timeout=self.timeout,
                http_client=openai.DefaultAsyncHttpxClient(event_hooks=self.meter.httpx_hooks(asynchronous=True)))
        try:
            metrics = self._metric_objects(client)
            gate = asyncio.Semaphore(self.max_concurrency)

            async def one(item: JudgeInput) -> Verdict | JudgeError:
                async with gate:
                    try:
                        return await self._judge_one(item, metrics)
                    except JudgeError as exc:
                        return exc

            return list(await asyncio.gather(*(one(item) for item in items)))
        finally:
            if client is not None:
                await client.close()

    def _metric_objects(self, client: Any) -> dict[str, Any]:
        llm = embeddings = None
        if client is not None and any(RAGAS_METRICS[m].llm for m in self.metrics):
            from ragas.llms import llm_factory

            # top_p 1: with temperature 0 it changes nothing, and some servers reject top_p with greedy decoding.
            llm = llm_factory(self.model, client=client, temperature=self.temperature, top_p=1.0)
        if any(RAGAS_METRICS[m].embeddings for m in self.metrics):
            embeddings = self._embeddings(client)
        out = {}
        for metric in self.metrics:
            spec = RAGAS_METRICS[metric]
            kwargs: dict[str, Any] = {}
            if spec.llm:
                kwargs["llm"] = llm
            if spec.embeddings:
                kwargs["embeddings"] = embeddings
            out[metric] = getattr(self._collections, spec.cls)(**kwargs)
        return out

    def _embeddings(self, client: Any) -> Any:
        from ragas.embeddings import HuggingFaceEmbeddings, OpenAIEmbeddings

        if self.embeddings_path:
            if self._local_embeddings is None:
                try:
                    self._local_embeddings = HuggingFaceEmbeddings(model=self.embeddings_path)
                except (ImportError, OSError, ValueError) as exc:
                    raise JudgeConfigError("embeddings_path", f"cannot load a sentence-transformers model from "
                                                              f"{self.embeddings_path!r} ({type(exc).__name__}: "
                                                              f"{exc}); point it at the model's folder and "
                                                              f"install sentence-transformers") from exc
            return self._local_embeddings
        return OpenAIEmbeddings(client=client, model=self.embeddings_model)

    def _inputs(self, item: JudgeInput) -> dict[str, Any]:
        """What the metrics get from the item; a metric whose input is missing fails the item, never scores 0."""
        available: dict[str, Any] = {}
        if item.user_input:
            available[_Q] = item.user_input
        if item.response:
            available[_R] = item.response
        if item.contexts:
            available[_C] = list(item.contexts)
        if item.reference:
            refs = [item.reference] if isinstance(item.reference, str) else [str(r) for r in item.reference if r]
            if refs:
                available[_REF] = refs
        missing = {m: [i for i in RAGAS_METRICS[m].inputs if i not in available] for m in self.metrics}
        missing = {m: need for m, need in missing.items() if need}
        if missing:
            words = {_Q: "a user question", _R: "a response", _C: "retrieved contexts", _REF: "a reference answer"}
            problems = "; ".join(f"{m} needs {' and '.join(words[i] for i in need)}" for m, need in missing.items())
            raise JudgeError(f"{self._where(item)}: cannot score: {problems}, and the interaction has none")
        return available

    async def _judge_one(self, item: JudgeInput, metrics: dict[str, Any]) -> Verdict:
        inputs = self._inputs(item)
        key = None
        if self.cache is not None:
            key = cache_key(self.version, {"metrics": self.metrics, "inputs": inputs})
            cached = self.cache.get(key)
            criteria = load_criteria(cached) if cached is not None else None
            if criteria is not None and [c.criterion for c in criteria] == self.metrics:
                self.meter.cache_hit()
                return Verdict(item.interaction_id, self.name, self.version, weighted_mean(criteria), criteria)
        scores = await asyncio.gather(*(self._score(item, m, metrics[m], inputs) for m in self.metrics),
                                      return_exceptions=True)
        for result in scores:
            if isinstance(result, BaseException):
                raise result
        criteria = tuple(scores)  # type: ignore[arg-type]
        if key is not None:
            self.cache.put(key, dump_criteria(criteria))  # type: ignore[union-attr]
        return Verdict(item.interaction_id, self.name, self.version, weighted_mean(criteria), criteria)

    async def _score(self, item: JudgeInput, name: str, metric: Any, inputs: dict[str, Any]) -> CriterionScore:
        spec = RAGAS_METRICS[name]
        kwargs = {i: inputs[i] for i in spec.inputs}
        references = kwargs.pop(_REF, None)
        if spec.llm or spec.embeddings:
            # One model call per accepted answer would multiply the cost: a model judges the first one.
            candidates = [{**kwargs, _REF: references[0]}] if references else [kwargs]
            self.meter.check(f"judge {self.name!r} v{self.version}")
        else:
            # String metrics are free: the best match over the accepted answers.
            candidates = [{**kwargs, _REF: r} for r in references] if references else [kwargs]
        best: tuple[float, str | None] | None = None
        for candidate in candidates:
            try:
                result = await metric.ascore(**candidate)
            except Exception as exc:  # ragas, instructor and the SDK raise anything; the item just stays unlabelled
                raise JudgeError(f"{self._where(item)}: metric {name!r} failed: {type(exc).__name__}: "
                                 f"{_root_cause(exc)}") from exc
            value = _normalized(result.value, getattr(metric, "allowed_values", (0.0, 1.0)))
            if value is None:
                raise JudgeError(f"{self._where(item)}: metric {name!r} returned {result.value!r}, not a score "
                                 f"(e.g. the model found no statements to check); labelled again next run")
            reason = getattr(result, "reason", None)
            if best is None or value > best[0]:
                best = (value, None if reason is None else str(reason))
        assert best is not None
        return CriterionScore(name, best[0], self.weights[name], best[1])


def _normalized(value: Any, allowed: Any) -> float | None:
    """A metric's value mapped onto [0, 1] by its declared range; None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    lo, hi = (allowed[0], allowed[-1]) if isinstance(allowed, tuple | range) and len(allowed) else (0.0, 1.0)
    if hi > lo and (lo, hi) != (0.0, 1.0):
        value = (value - lo) / (hi - lo)
    if not -_TOLERANCE <= value <= 1 + _TOLERANCE:
        return None
    return min(1.0, max(0.0, float(value)))


def _root_cause(exc: BaseException) -> str:
    """The innermost message: instructor and the SDK wrap the endpoint's own error several times."""
    seen = exc
    while seen.__cause__ is not None and seen.__cause__ is not seen:
        seen = seen.__cause__
    text = str(seen) or type(seen).__name__
    return text if seen is exc else f"{text} ({type(seen).__name__})"


def _run_coroutine(coro: Any) -> Any:
    """Run on a fresh event loop; from inside a running loop (a notebook, an async asset), on a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="ragas-judge")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def metric_inputs(metric: str) -> tuple[str, ...]:
    """The ascore() parameters ragas's metric class requires (for tests keeping RAGAS_METRICS honest)."""
    cls = getattr(import_ragas(), RAGAS_METRICS[metric].cls)
    return tuple(p for p, v in inspect.signature(cls.ascore).parameters.items()
                 if p != "self" and v.default is inspect.Parameter.empty and v.kind is not v.VAR_KEYWORD)
