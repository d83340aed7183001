"""FlywheelComponent: one task's learning loop as a Dagster component, configured in a `defs.yaml`.

    type: continuum_pipeline.FlywheelComponent
    attributes:
      name: support_answer
      judges: [...]
      golden_sets: [...]
      gate: {...}

`dg scaffold defs continuum_pipeline.FlywheelComponent my_task` writes a commented template. The YAML schema
is the task configuration (continuum_pipeline.task.config.TaskConfig); build_defs turns it into the task's
assets, gate check, jobs, sensors and schedule, bound to the shared resources (lake, MLflow, Pipes).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster.components.component.component_scaffolder import DefaultComponentScaffolder
from dagster.components.scaffold.scaffold import ScaffoldRequest, scaffold_with

from continuum_pipeline.task.config import TaskConfig


class FlywheelScaffolder(DefaultComponentScaffolder):
    """Writes a commented defs.yaml: every key with its default, the required ones to fill in."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        from continuum_pipeline.task.scaffold import render_template

        request.target_path.mkdir(parents=True, exist_ok=True)
        name = request.target_path.name.replace("-", "_").lower()
        (request.target_path / "defs.yaml").write_text(render_template(name, request.type_name))


@scaffold_with(FlywheelScaffolder)
class FlywheelComponent(TaskConfig, dg.Component, dg.Resolvable):
    """One task of the continuous-learning flywheel: reward labels from its judges, rewards, curated dataset,
    LoRA training from its base model, a blocking eval gate on its golden sets, MLflow registration and the
    sensors and schedule that retrain it. Asset keys are prefixed with the task's name."""

    # The YAML schema is the task configuration itself, constraints and all: Dagster's derived models cannot
    # carry pydantic's field constraints (gt=0, …), and a second copy of the schema would drift.
    @classmethod
    def model(cls) -> type[TaskConfig]:
        return TaskConfig

    @classmethod
    def resolve_from_model(cls, context, model: TaskConfig) -> FlywheelComponent:
        return cls.model_validate(model.model_dump())

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from continuum_pipeline.defs.flywheel import build_task_definitions
        from continuum_pipeline.defs.resources import resources_from_settings
        from continuum_pipeline.settings import get_settings

        task = self.task_config(None if self.source_dir else context.path)
        return dg.Definitions.merge(build_task_definitions(task),
                                    dg.Definitions(resources=resources_from_settings(get_settings())))

    def task_config(self, source_dir: Path | None = None) -> TaskConfig:
        data = self.model_dump()
        if source_dir is not None:
            data["source_dir"] = str(source_dir if source_dir.is_dir() else source_dir.parent)
        return TaskConfig.model_validate(data)
