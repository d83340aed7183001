"""The task models of dbt_like_sql/task/ (rewards, SFT candidates, daily quality), one copy per task."""

from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import group, key
from continuum_pipeline.defs.resources import LakeResource
from continuum_pipeline.defs.sql.assets import follows_upstream, run_sql_model
from continuum_pipeline.sql_models.project import SqlModel, SqlProject
from continuum_pipeline.task.config import TaskConfig


def _deps(task: TaskConfig, model: SqlModel, project: SqlProject) -> list[dg.AssetKey]:
    deps = [key(task, ref) if ref in project.models else dg.AssetKey(ref) for ref in model.refs]
    for schema, table in model.sources:
        if schema == "lake":
            deps.append(dg.AssetKey(table))
        elif schema == "task":
            deps.append(key(task, table))
    return deps


def _asset(task: TaskConfig, model: SqlModel, project: SqlProject) -> dg.AssetsDefinition:
    @dg.asset(key=key(task, model.name), group_name=group(task, "sql"), deps=_deps(task, model, project),
              kinds={"duckdb", "sql", "iceberg"}, automation_condition=follows_upstream(),
              description=model.description or f"SQL model {model.path.name}",
              metadata={"sql_file": str(model.path), "table": task.table(model.name),
                        "sql": dg.MetadataValue.md(f"```sql\n{model.template.strip()}\n```")})
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from continuum_pipeline.task.sql import task_binding

        the_lake = lake.lake()
        return run_sql_model(context, the_lake, project, model.name, task_binding(task, the_lake))

    return _model


def task_models(task: TaskConfig, sql_dir: Path) -> list[dg.AssetsDefinition]:
    project = SqlProject.load_task_models(sql_dir)
    return [_asset(task, project.models[name], project) for name in project.order()]
