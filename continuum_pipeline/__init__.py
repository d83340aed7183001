"""Continuum: a continuous-learning flywheel for LLM applications.

Importing the package is cheap: `capture` and `feedback` load on first use, and nothing here
imports dagster, pyarrow or torch (users import this inside their production apps).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["capture", "feedback", "Settings", "get_settings"]


def __getattr__(name: str) -> Any:
    if name == "capture":
        return importlib.import_module("continuum_pipeline.capture")
    if name == "feedback":
        return importlib.import_module("continuum_pipeline.capture.feedback")
    if name in ("Settings", "get_settings"):
        return getattr(importlib.import_module("continuum_pipeline.settings"), name)
    raise AttributeError(f"module 'continuum_pipeline' has no attribute {name!r}")
