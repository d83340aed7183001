"""One Dagster asset per SQL model in dbt_like_sql/, with dependencies from ref() and source()."""

from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.metadata import column_schema, markdown_table, table_rows
from continuum_pipeline.defs.resources import LakeResource
from continuum_pipeline.sql_models.project import SqlModel, SqlProject


def follows_upstream() -> dg.AutomationCondition:
    """Eager, and also on the automation sensor's first look: `eager()` alone only reacts to parents updated after
    it started (its `since_last_handled` resets on the first evaluation), so interactions ingested before automation
    was on would never be labelled. A target that is missing while its parents are there is requested once when
    that becomes true (`newly_true`: a failed run is not retried every tick)."""
    A = dg.AutomationCondition
    present_parents = (A.missing() & ~A.any_deps_missing()).newly_true()
    return (A.eager() | (present_parents & ~A.any_deps_in_progress() & ~A.in_progress())).with_label(
        "eager, or missing with its parents present")


def run_sql_model(context: dg.AssetExecutionContext, the_lake, project: SqlProject, name: str,
                  binding=None) -> dg.MaterializeResult:
    """Run one SQL model (a task's copy when `binding` is given) and describe what it wrote."""
    from continuum_pipeline.sql_models.runner import output_table, run_model

    result = run_model(the_lake, project, name, binding)
    table = output_table(project, name, binding)
    context.log.info(f"{table}: {result.rows} rows in {result.seconds:.2f}s")
    preview = result.preview.to_pylist()
    md = f"**{result.rows} rows** written to `{the_lake.namespace}.{table}` in {result.seconds:.2f}s."
    if preview:
        md += "\n\n" + markdown_table(list(preview[0]), [list(r.values()) for r in preview])
    return dg.MaterializeResult(metadata={
        "dagster/row_count": table_rows(the_lake.table(table)),
        "dagster/column_schema": column_schema(result.schema),
        "snapshot_id": str(result.snapshot_id or ""),
        "table": f"{the_lake.namespace}.{table}",
        "summary": dg.MetadataValue.md(md),
    })


def sql_model_asset(model: SqlModel, project: SqlProject) -> dg.AssetsDefinition:
    deps = [dg.AssetKey(ref) for ref in model.refs] + [dg.AssetKey(table) for _, table in model.sources]

    @dg.asset(
        name=model.name,
        group_name="sql",
        deps=deps,
        kinds={"duckdb", "sql", "iceberg"},
        description=model.description or f"SQL model {model.path.name}",
        automation_condition=follows_upstream(),
        metadata={"sql_file": str(model.path), "sql": dg.MetadataValue.md(f"```sql\n{model.template.strip()}\n```")},
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        return run_sql_model(context, lake.lake(), project, model.name)

    return _model


def sql_assets(root: Path) -> list[dg.AssetsDefinition]:
    project = SqlProject.load(root)
    return [sql_model_asset(project.models[name], project) for name in project.order()]


sql_models_job = dg.define_asset_job("sql_models_job", selection=dg.AssetSelection.groups("sql"),
                                     description="Rebuild every SQL model over the lake.")
