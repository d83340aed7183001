"""Judges label captured interactions with rewards: programmatic verifiers, reference matches, rubric-based
LLM judges and ragas metrics, configured per task as YAML specs (`continuum_pipeline.judge.specs`).

Import-light: openai is imported when an LLM judge is built, ragas when a ragas judge is, and pydantic
(for the specs) on first use of a spec name from this package.
"""

from typing import Any

from continuum_pipeline.judge.base import (
    BudgetExhausted,
    CriterionScore,
    Judge,
    JudgeConfigError,
    JudgeError,
    JudgeInput,
    Verdict,
)
from continuum_pipeline.judge.cache import JudgeCache, VerdictCache
from continuum_pipeline.judge.llm import LLMJudge, RubricCriterion
from continuum_pipeline.judge.ragas_judge import RAGAS_METRICS, RagasJudge
from continuum_pipeline.judge.spend import Prices
from continuum_pipeline.judge.verifier import (
    ProgrammaticVerifier,
    ReferenceMatchJudge,
    exact_match_check,
    normalize_answer,
)

_SPECS = ("JudgeEnvironment", "JudgeSpec", "LLMRubricSpec", "PythonJudgeSpec", "RagasSpec", "ReferenceMatchSpec",
          "CriterionSpec", "PricesSpec", "parse_judges")

__all__ = [
    "RAGAS_METRICS", "BudgetExhausted", "CriterionScore", "Judge", "JudgeCache", "JudgeConfigError", "JudgeError",
    "JudgeInput", "LLMJudge", "Prices", "ProgrammaticVerifier", "RagasJudge", "ReferenceMatchJudge",
    "RubricCriterion", "Verdict", "VerdictCache", "exact_match_check", "normalize_answer", *_SPECS,
]


def __getattr__(name: str) -> Any:
    if name in _SPECS:
        from continuum_pipeline.judge import specs

        return getattr(specs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
