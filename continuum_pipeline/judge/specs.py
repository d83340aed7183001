"""Judges as configuration: the `judges:` entries of a task's YAML, validated, versioned and built.

    judges:
      - {kind: llm_rubric, name: helpfulness, criteria: [{name: correct, description: "...", weight: 2}]}
      - {kind: ragas, name: rag, metrics: [faithfulness, rouge_score]}
      - {kind: python, name: kb, function: "my_app.checks:kb_check"}
      - {kind: reference_match, name: exact, reference_field: metadata.expected}

A judge's version is a short hash of the configuration that decides its scores (model, rubric, scale,
metrics, …, not where the endpoint lives nor what it costs), so changing a rubric relabels every
interaction under the new version while moving the endpoint relabels nothing. A `python` judge adds
its function's own `version` attribute: a str, or a zero-argument callable returning one.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from continuum_pipeline.config_errors import format_validation_error, register_union_tags
from continuum_pipeline.judge.base import Judge, JudgeConfigError
from continuum_pipeline.judge.cache import VerdictCache
from continuum_pipeline.judge.ragas_judge import RAGAS_METRICS

# Bumped when the LLM judge's prompt wording changes: the same rubric then asks something new.
LLM_RUBRIC_PROMPT_REVISION = 1

BASE_URL_ENV, MODEL_ENV, API_KEY_ENV = "CONTINUUM_JUDGE_BASE_URL", "CONTINUUM_JUDGE_MODEL", "CONTINUUM_JUDGE_API_KEY"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FUNCTION = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class JudgeEnvironment:
    """What building a judge may read besides its YAML: the environment (endpoint defaults, API keys;
    None = os.environ) and the verdict cache shared by the run's model-based judges (None = no cache)."""

    environ: Mapping[str, str] | None = None
    cache: VerdictCache | None = None

    def get(self, variable: str) -> str | None:
        value = (os.environ if self.environ is None else self.environ).get(variable)
        return value or None


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str

    @model_validator(mode="before")
    @classmethod
    def _unknown_settings(cls, data: Any) -> Any:
        # extra="forbid" would say "extra inputs are not permitted"; say which setting was probably meant.
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if isinstance(key, str) and key not in known:
                    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]!r}?" if close else f"the settings are {', '.join(sorted(known))}"
                    raise ValueError(f"unknown setting {key!r} — {hint}")
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"must be letters, digits, '_', '.' or '-' (it names the judge's labels), got {value!r}")
        return value

    def version(self, env: JudgeEnvironment | None = None) -> str:
        return _digest(self._version_payload(env or JudgeEnvironment()))

    def build(self, env: JudgeEnvironment | None = None) -> Judge:
        raise NotImplementedError

    def _version_payload(self, env: JudgeEnvironment) -> dict[str, Any]:
        raise NotImplementedError


class PricesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_1m_tokens: float = Field(0.0, ge=0)
    output_per_1m_tokens: float = Field(0.0, ge=0)


class _EndpointSpec(_Spec):
    """An OpenAI-compatible endpoint; None falls back to CONTINUUM_JUDGE_BASE_URL / CONTINUUM_JUDGE_MODEL."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = API_KEY_ENV  # the NAME of the variable holding the key: keys never go in YAML
    temperature: float = Field(0.0, ge=0)
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    prices: PricesSpec = Field(default_factory=PricesSpec)
    cost_budget_usd: float | None = Field(None, ge=0)  # per run; None = unlimited

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL such as http://127.0.0.1:8000/v1, got {value!r}")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"must name the model (or leave it out to use ${MODEL_ENV})")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _api_key_env(cls, value: str) -> str:
        if not _ENV_VAR.match(value):
            raise ValueError("must be the name of the environment variable holding the key (e.g. "
                             "OPENAI_API_KEY), never the key itself")
        return value

    def _endpoint(self, env: JudgeEnvironment) -> tuple[str, str, str | None]:
        base_url = self.base_url or env.get(BASE_URL_ENV)
        if not base_url:
            raise JudgeConfigError("base_url", f"not set: give base_url in the judge's configuration or set "
                                               f"${BASE_URL_ENV}")
        return base_url, self._model_name(env), env.get(self.api_key_env)

    def _model_name(self, env: JudgeEnvironment) -> str:
        model = self.model or env.get(MODEL_ENV)
        if not model:
            raise JudgeConfigError("model", f"not set: give model in the judge's configuration or set ${MODEL_ENV}")
        return model

    def _prices(self) -> Any:
        from continuum_pipeline.judge.spend import Prices

        return Prices(self.prices.input_per_1m_tokens, self.prices.output_per_1m_tokens)


class CriterionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    weight: float = 1.0

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: float) -> float:
        if not value > 0:  # also rejects NaN
            raise ValueError("must be > 0")
        return value


class LLMRubricSpec(_EndpointSpec):
    """A weighted rubric scored by an LLM on an integer scale."""

    kind: Literal["llm_rubric"]
    criteria: list[CriterionSpec] = Field(min_length=1)
    scale: tuple[int, int] = (1, 5)
    use_reference: bool = False  # show the item's reference answer to the judge when it has one

    @field_validator("criteria")
    @classmethod
    def _distinct(cls, value: list[CriterionSpec]) -> list[CriterionSpec]:
        names = [c.name for c in value]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"criterion names must be distinct; {', '.join(map(repr, twice))} appear(s) twice")
        return value

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not value[0] < value[1]:
            raise ValueError(f"must be [low, high] with low < high, e.g. [1, 5]; got {list(value)}")
        return value

    def _version_payload(self, env: JudgeEnvironment) -> dict[str, Any]:
        return {"kind": self.kind, "prompt": LLM_RUBRIC_PROMPT_REVISION, "model": self._model_name(env),
                "criteria": [c.model_dump() for c in self.criteria], "scale": list(self.scale),
                "temperature": self.temperature, "use_reference": self.use_reference}

    def build(self, env: JudgeEnvironment | None = None) -> Judge:
        from continuum_pipeline.judge.llm import LLMJudge, RubricCriterion

        env = env or JudgeEnvironment()
        base_url, model, api_key = self._endpoint(env)
        return LLMJudge(base_url=base_url, model=model, api_key=api_key, name=self.name, version=self.version(env),
                        criteria=[RubricCriterion(c.name, c.description, c.weight) for c in self.criteria],
                        scale=self.scale, temperature=self.temperature, concurrency=self.max_concurrency,
                        timeout=self.timeout_s, max_retries=self.max_retries, prices=self._prices(),
                        cost_budget_usd=self.cost_budget_usd, cache=env.cache, use_reference=self.use_reference)


class RagasSpec(_EndpointSpec):
    """Named ragas metrics, each one criterion. LLM metrics use the endpoint; embedding metrics use
    `embeddings_model` on the same endpoint (/v1/embeddings) or a local sentence-transformers folder."""

    kind: Literal["ragas"]
    metrics: list[str] = Field(min_length=1)
    weights: dict[str, float] = Field(default_factory=dict)  # per metric; 1 when left out
    embeddings_model: str | None = None
    embeddings_path: str | None = None

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        for metric in value:
            if metric not in RAGAS_METRICS:
                close = difflib.get_close_matches(metric, RAGAS_METRICS, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"use any of {', '.join(sorted(RAGAS_METRICS))}"
                raise ValueError(f"unknown metric {metric!r} — {hint}")
        if twice := sorted({m for m in value if value.count(m) > 1}):
            raise ValueError(f"each metric once; {', '.join(map(repr, twice))} appear(s) twice")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for metric, weight in value.items():
            if not weight > 0:
                raise ValueError(f"{metric}: must be > 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RagasSpec:
        if stray := sorted(set(self.weights) - set(self.metrics)):
            raise ValueError(f"weights name metric(s) {stray} that are not in metrics {self.metrics}")
        if self.embeddings_model and self.embeddings_path:
            raise ValueError("set embeddings_model (served by the endpoint) or embeddings_path (a local model), "
                             "not both")
        return self

    def _uses(self, what: str) -> bool:
        return any(getattr(RAGAS_METRICS[m], what) for m in self.metrics)

    def _version_payload(self, env: JudgeEnvironment) -> dict[str, Any]:
        payload: dict[str, Any] = {"kind": self.kind, "metrics": self.metrics,
                                   "weights": {m: self.weights.get(m, 1.0) for m in self.metrics}}
        try:  # ragas's prompts change between its releases, so its minor version is part of the judge's
            payload["ragas"] = ".".join(metadata.version("ragas").split(".")[:2])
        except metadata.PackageNotFoundError:
            payload["ragas"] = None
        if self._uses("llm"):
            payload |= {"model": self._model_name(env), "temperature": self.temperature}
        if self._uses("embeddings"):
            # The model, not where it is stored: moving the folder must not relabel.
            payload["embeddings"] = self.embeddings_model or PurePath(self.embeddings_path or "").name
        return payload

    def build(self, env: JudgeEnvironment | None = None) -> Judge:
        from continuum_pipeline.judge.ragas_judge import RagasJudge

        env = env or JudgeEnvironment()
        needs_endpoint = self._uses("llm") or (self._uses("embeddings") and not self.embeddings_path)
        base_url, model, api_key = self._endpoint(env) if needs_endpoint else (None, None, None)
        return RagasJudge(metrics=self.metrics, name=self.name, version=self.version(env), weights=self.weights,
                          base_url=base_url, model=model if self._uses("llm") else None, api_key=api_key,
                          embeddings_model=self.embeddings_model, embeddings_path=self.embeddings_path,
                          temperature=self.temperature, max_concurrency=self.max_concurrency,
                          timeout=self.timeout_s, max_retries=self.max_retries, prices=self._prices(),
                          cost_budget_usd=self.cost_budget_usd, cache=env.cache)


class PythonJudgeSpec(_Spec):
    """`function(item: JudgeInput) -> (score in [0, 1], rationale)`, imported from "package.module:function"."""

    kind: Literal["python"]
    function: str
    criterion: str = Field("correct", min_length=1)

    @field_validator("function")
    @classmethod
    def _function(cls, value: str) -> str:
        if not _FUNCTION.match(value):
            raise ValueError(f"must be 'package.module:function' (a module path, a colon, the function's name), "
                             f"got {value!r}")
        return value

    def load(self) -> Callable[..., Any]:
        """The function itself; JudgeConfigError naming `function` and the fix when it cannot be imported."""
        module_name, _, attr = self.function.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise JudgeConfigError("function", f"no module named {exc.name!r} (from {self.function!r}); "
                                                   f"install the package that has it or add its folder to "
                                                   f"PYTHONPATH") from exc
            raise JudgeConfigError("function", f"importing {module_name!r} failed: it imports {exc.name!r}, which "
                                               f"is not installed") from exc
        except Exception as exc:
            raise JudgeConfigError("function", f"importing {module_name!r} raised {type(exc).__name__}: {exc}; "
                                               f"fix the module") from exc
        for part in attr.split("."):
            if not hasattr(target, part):
                names = sorted(n for n in dir(target) if not n.startswith("_"))
                close = difflib.get_close_matches(part, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "check the name after the ':'"
                raise JudgeConfigError("function", f"{module_name!r} has no {part!r} — {hint}")
            target = getattr(target, part)
        if not callable(target):
            raise JudgeConfigError("function", f"{self.function!r} is a {type(target).__name__}, not a function "
                                               f"taking a JudgeInput")
        return target

    def function_version(self, function: Callable[..., Any] | None = None) -> str | None:
        """The function's own `version` (a str, or a zero-argument callable returning one), if it has one."""
        function = function or self.load()
        version = getattr(function, "version", None)
        if callable(version):
            try:
                version = version()
            except Exception as exc:
                raise JudgeConfigError("function", f"{self.function}.version() raised {type(exc).__name__}: "
                                                   f"{exc}") from exc
        if version is not None and not (isinstance(version, str) and version):
            raise JudgeConfigError("function", f"{self.function}.version must be a non-empty str or a "
                                               f"zero-argument callable returning one, got {version!r}")
        return version

    def version(self, env: JudgeEnvironment | None = None, *, function: Callable[..., Any] | None = None) -> str:
        config = super().version(env)
        own = self.function_version(function)
        return f"{config}-{own}" if own else config

    def _version_payload(self, env: JudgeEnvironment) -> dict[str, Any]:
        return {"kind": self.kind, "function": self.function, "criterion": self.criterion}

    def build(self, env: JudgeEnvironment | None = None) -> Judge:
        from continuum_pipeline.judge.verifier import ProgrammaticVerifier

        function = self.load()
        return ProgrammaticVerifier(function, name=self.name, version=self.version(env, function=function),
                                    criterion=self.criterion)


class ReferenceMatchSpec(_Spec):
    """1 when the response equals the known right answer (any accepted one) after `normalize_answer`."""

    kind: Literal["reference_match"]
    reference_field: str = "reference"  # the item's reference answer, or a dotted path: metadata.expected

    @field_validator("reference_field")
    @classmethod
    def _reference_field(cls, value: str) -> str:
        if value != "reference" and not re.match(r"^metadata(\.[^.\s]+)+$", value):
            raise ValueError(f"must be 'reference' (the item's reference answer) or a path into its metadata such "
                             f"as 'metadata.expected', got {value!r}")
        return value

    def _version_payload(self, env: JudgeEnvironment) -> dict[str, Any]:
        return {"kind": self.kind, "reference_field": self.reference_field}

    def build(self, env: JudgeEnvironment | None = None) -> Judge:
        from continuum_pipeline.judge.verifier import ReferenceMatchJudge

        return ReferenceMatchJudge(name=self.name, version=self.version(env), reference_field=self.reference_field)


JudgeSpec = Annotated[LLMRubricSpec | RagasSpec | PythonJudgeSpec | ReferenceMatchSpec, Field(discriminator="kind")]
JUDGE_KINDS = ("llm_rubric", "ragas", "python", "reference_match")
register_union_tags(JUDGE_KINDS)

_JUDGES: TypeAdapter[list[Any]] = TypeAdapter(list[JudgeSpec])


def parse_judges(data: Any, prefix: str = "judges") -> list[LLMRubricSpec | RagasSpec | PythonJudgeSpec |
                                                           ReferenceMatchSpec]:
    """Validate a `judges:` list; ValueError with one `judges[1].criteria[0].weight: must be > 0` line per problem."""
    try:
        specs = _JUDGES.validate_python(data)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, prefix)) from None
    names = [s.name for s in specs]
    if twice := [f"{prefix}[{i}].name: {n!r} is already the name of {prefix}[{names.index(n)}] — names must be "
                 f"distinct" for i, n in enumerate(names) if names.index(n) != i]:
        raise ValueError("\n".join(twice))
    return specs
