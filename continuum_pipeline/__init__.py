"""Continuum: a continuous-learning flywheel for LLM applications.

Importing the package is cheap: `capture` and `feedback` load on first use, and nothing here
imports dagster, pyarrow or torch (users import this inside their production apps).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["FlywheelComponent", "capture", "feedback", "Settings", "get_settings"]


def __getattr__(name: str) -> Any:
    if name == "capture":
        return importlib.import_module("continuum_pipeline.capture")
    if name == "feedback":
        return importlib.import_module("continuum_pipeline.capture.feedback")
    if name == "FlywheelComponent":  # the Dagster component: imports dagster, so only on first use
        return importlib.import_module("continuum_pipeline.component").FlywheelComponent
    if name in ("Settings", "get_settings"):
        return getattr(importlib.import_module("continuum_pipeline.settings"), name)
    raise AttributeError(f"module 'continuum_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    # dg's plugin discovery lists the package with dir(): the lazy FlywheelComponent must show up there.
    return sorted({*globals(), *__all__})
