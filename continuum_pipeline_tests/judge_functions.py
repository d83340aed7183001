"""`python` judges for the spec tests, imported by "continuum_pipeline_tests.judge_functions:<name>"."""

from __future__ import annotations

from continuum_pipeline.judge import JudgeInput

KB = {"phase": "before"}


def kb_check(item: JudgeInput) -> tuple[float, str]:
    """Right when the response names the KB's current refund window."""
    window = "5 days" if KB["phase"] == "before" else "10 days"
    return (1.0, f"says {window}") if window in (item.response or "") else (0.0, f"should say {window}")


# The knowledge base says when its answers change: a new phase relabels every interaction.
kb_check.version = lambda: f"kb-{KB['phase']}"  # type: ignore[attr-defined]


def length_check(item: JudgeInput) -> tuple[float, str]:
    return min(1.0, len(item.response or "") / 100), "longer is better, up to 100 characters"


length_check.version = "2"  # type: ignore[attr-defined]


def plain_check(item: JudgeInput) -> tuple[float, str]:
    return 1.0, "always right"


def bad_version_check(item: JudgeInput) -> tuple[float, str]:
    return 1.0, ""


bad_version_check.version = 3  # type: ignore[attr-defined]

NOT_A_FUNCTION = 42
