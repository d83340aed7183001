"""Judges label captured interactions with rewards: programmatic verifiers and rubric-based LLM judges.

Import-light: the openai SDK is only imported when an LLMJudge is constructed.
"""

from continuum_pipeline.judge.base import CriterionScore, Judge, JudgeError, JudgeInput, Verdict
from continuum_pipeline.judge.llm import LLMJudge, RubricCriterion
from continuum_pipeline.judge.verifier import ProgrammaticVerifier, exact_match_check, normalize_answer

__all__ = [
    "CriterionScore", "Judge", "JudgeError", "JudgeInput", "LLMJudge", "ProgrammaticVerifier",
    "RubricCriterion", "Verdict", "exact_match_check", "normalize_answer",
]
