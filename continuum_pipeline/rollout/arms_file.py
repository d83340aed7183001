"""The rollout's lever: the task's entry in the gateway's arms file (server/arms.py), rewritten atomically.

The rollout owns its task's entry: two arms, `stable` (the champion) and `challenger` (the version being rolled
out), each with its `model_version` (recorded on every interaction it serves), their weights, and a `shadow`
setting at a shadow step. Other tasks and `default_task` are kept as they are; a price set by hand on an arm of
the same name is kept. Pure; no Dagster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from continuum_pipeline.rollout.decide import CHALLENGER, STABLE
from continuum_pipeline.server import arms
from continuum_pipeline.task.config import TaskConfig


def gateway_task(task: TaskConfig) -> str:
    """The task name requests carry through the gateway (the captured `task`)."""
    return task.select.task or task.name


def read_raw(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"tasks": {}}
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise arms.ArmsError(f"{path}: the arms file must hold an object with \"tasks\"")
    return data


def write_weights(path: Path, task: TaskConfig, *, stable_version: str, challenger_version: str,
                  weights: dict[str, float], shadow_sample_rate: float = 0.0) -> dict[str, Any]:
    """Point the task's two arms at these versions with these weights (stable + challenger = 1); returns the
    task's entry as written."""
    data = read_raw(path)
    tasks = data.setdefault("tasks", {})
    name = gateway_task(task)
    before = {a.get("name"): a for a in (tasks.get(name) or {}).get("arms", []) if isinstance(a, dict)}
    spec = task.rollout.arms

    def arm(arm_name: str, base_url: str, model: str | None, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": arm_name, "base_url": base_url, "model_version": str(version),
                               "weight": float(weights[arm_name])}
        if model:
            out["model"] = model
        if before.get(arm_name, {}).get("price"):
            out["price"] = before[arm_name]["price"]
        return out

    entry: dict[str, Any] = {"sticky": spec.sticky, "arms": [
        arm(STABLE, spec.stable_base_url, spec.stable_model, stable_version),
        arm(CHALLENGER, spec.challenger_base_url, spec.challenger_model, challenger_version)]}
    if shadow_sample_rate > 0:
        entry["shadow"] = {"arm": CHALLENGER, "sample_rate": float(shadow_sample_rate)}
    tasks[name] = entry
    arms.write(path, data)
    return entry
