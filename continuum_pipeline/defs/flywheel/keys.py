"""Asset keys, groups and job names of one task (one place, so every module agrees)."""

import dagster as dg

from continuum_pipeline.task.config import TaskConfig


def key(task: TaskConfig, *name: str) -> dg.AssetKey:
    return dg.AssetKey([task.name, *name])


def group(task: TaskConfig, stage: str) -> str:
    return f"{task.name}_{stage}"


def golden_key(task: TaskConfig, name: str) -> dg.AssetKey:
    return key(task, "golden", name)


def job_name(task: TaskConfig, kind: str) -> str:
    return f"{task.name}_{kind}_job"
