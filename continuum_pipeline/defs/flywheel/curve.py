"""The task's learning curve as an asset: success per golden slice per model version, production reward and
cost per query, as a table and plots; refreshed after every registration (it is in the training job)."""

import json
from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import golden_key, group, key
from continuum_pipeline.defs.metadata import column_schema, png_markdown
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig


def models_to_evaluate(task: TaskConfig, mlflow: MLflowResource, flywheel: FlywheelResource) -> list:
    """The base model (when it is there) and every registered version, oldest first."""
    from continuum_pipeline.defs.flywheel.training import base_dir
    from continuum_pipeline.evaluation.curve import ModelToEvaluate
    from continuum_pipeline.registry import models
    from continuum_pipeline.training.base_model import MARKER_FILE

    out = []
    base = base_dir(task, flywheel)
    if task.base_model.builtin:
        marker = Path(base) / MARKER_FILE
        if marker.exists():  # its build hash: a rebuilt base is evaluated again
            out.append(ModelToEvaluate("base", None, f"base:{json.loads(marker.read_text())['hash'][:16]}", base))
    else:
        out.append(ModelToEvaluate("base", None, f"base:{base}@{task.base_model.revision or 'main'}", base))
    cache = flywheel.task_dir(task.name) / "registry"
    for ref in models.versions(mlflow.tracking_uri, task.registered_model_name):
        out.append(ModelToEvaluate(f"v{ref.version}", ref.version, f"{ref.name}/{ref.version}",
                                   models.model_dir(mlflow.tracking_uri, ref, cache)))
    return out


def curve_rows(say, task: TaskConfig, lake: LakeResource, mlflow: MLflowResource,
               flywheel: FlywheelResource) -> tuple[list[dict], list[str], int]:
    """(table rows, models evaluated now, models from the cache): evaluates only what the cache lacks; `say`
    gets a line per model it evaluates."""
    from datetime import UTC, datetime

    from continuum_pipeline.defs.flywheel.labels import build_judges
    from continuum_pipeline.evaluation import curve, golden

    the_lake = lake.lake()
    examples, versions = [], {}
    for spec in task.golden_sets:
        if not the_lake.table_exists(task.table(f"golden__{spec.name}")):
            raise dg.Failure(f"{task.name}/learning_curve: golden set `{spec.name}` is not in the lake yet: "
                             f"materialize `{task.name}/golden/{spec.name}` first (the training job does)")
        table = the_lake.read_arrow(task.table(f"golden__{spec.name}"))
        versions[spec.name] = golden.version(table)
        examples += golden.items(table, f"{spec.name}/" if len(task.golden_sets) > 1 else "")
    golden_versions = json.dumps(versions, sort_keys=True)
    specs = {j.name: j for j in task.judges}
    judge_versions = {m: str(specs[p.judge].version()) for m, p in task.gate.metrics.items()}
    cache_table = task.table("learning_curve")
    cached_rows = the_lake.read_arrow(cache_table).to_pylist() if the_lake.table_exists(cache_table) else []
    order = models_to_evaluate(task, mlflow, flywheel)
    rows, evaluated, judges = [], [], None
    for model in order:
        hit = curve.cached(cached_rows, model, golden_versions, judge_versions)
        if hit is None:
            if judges is None:
                built = {j.name: j for j in build_judges(task, flywheel, {p.judge for p in task.gate.metrics.values()})}
                judges = {m: built[p.judge] for m, p in task.gate.metrics.items()}
            say(f"learning curve: {model.model} answers {len(examples)} golden examples")
            hit = curve.evaluate(model, examples, judges, judge_versions, golden_versions, datetime.now(UTC))
            evaluated.append(model.model)
        rows += hit
    if evaluated:
        import pyarrow as pa

        new = pa.Table.from_pylist([r for r in rows if r["model"] in evaluated], schema=curve.LEARNING_CURVE)
        if the_lake.table_exists(cache_table):
            the_lake.append_rows(cache_table, new)
        else:
            the_lake.replace_table(cache_table, new)
    quality = task.table("quality_daily")
    served = curve.production(the_lake.read_arrow(quality).to_pylist() if the_lake.table_exists(quality) else [])
    return curve.table_rows(rows, served, order), evaluated, len(order) - len(evaluated)


def learning_curve(task: TaskConfig) -> dg.AssetsDefinition:
    @dg.asset(key=key(task, "learning_curve"), group_name=group(task, "registry"), kinds={"iceberg", "pytorch"},
              deps=[key(task, "registered_model"), key(task, "base_model"), key(task, "quality_daily"),
                    *(golden_key(task, g.name) for g in task.golden_sets)],
              description="Golden-set success per slice (the gate's judges and golden sets) of the base model and "
                          "every registered version, with each version's production mean reward and cost per query "
                          "(from quality_daily). Cached per model, golden set version and judge version in "
                          f"`{task.table('learning_curve')}`: a new registration evaluates only itself.")
    def _learning_curve(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource,
                        flywheel: FlywheelResource) -> dg.MaterializeResult:
        from continuum_pipeline.defs.metadata import table_rows
        from continuum_pipeline.evaluation import curve

        rows, evaluated, from_cache = curve_rows(context.log.info, task, lake, mlflow, flywheel)
        if not any(curve.overall(r) is not None for r in rows):
            raise dg.Failure(f"{task.name}/learning_curve: no model to evaluate yet: materialize "
                             f"`{task.name}/base_model` or register a version (the task's training job does both)")
        folder = flywheel.task_dir(task.name) / "learning_curve"
        folder.mkdir(parents=True, exist_ok=True)
        success = curve.success_png(rows, f"{task.name}: golden-set success per slice")
        (folder / "success.png").write_bytes(success)
        meta = {
            "curve": dg.MetadataValue.md(curve.markdown(rows)),
            "success_plot": png_markdown(success, "golden-set success per slice per model version"),
            "success_plot_png": dg.MetadataValue.path(str(folder / "success.png")),
        }
        cost = curve.cost_quality_png(rows, f"{task.name}: cost per query vs success")
        if cost is not None:
            (folder / "cost_quality.png").write_bytes(cost)
            meta["cost_quality_plot"] = png_markdown(cost, "cost per query vs overall success, Pareto frontier")
            meta["cost_quality_plot_png"] = dg.MetadataValue.path(str(folder / "cost_quality.png"))
        the_lake = lake.lake()
        table = the_lake.table(task.table("learning_curve"))
        context.log.info(f"learning curve: {', '.join(evaluated) or 'nothing'} evaluated now, {from_cache} cached")
        return dg.MaterializeResult(metadata={
            **meta,
            "models_evaluated_now": ", ".join(evaluated),
            "models_from_cache": from_cache,
            "dagster/row_count": table_rows(table),
            "dagster/column_schema": column_schema(curve.LEARNING_CURVE),
            "table": f"{the_lake.namespace}.{task.table('learning_curve')}",
        })

    return _learning_curve


def learning_curve_table(settings, task: TaskConfig, say=print) -> list[dict]:
    """The rows the asset shows, outside a run (the demo prints them): from the cache where it can, evaluating
    what it lacks. `continuum_pipeline.evaluation.curve.markdown(rows)` renders them."""
    from continuum_pipeline.defs.resources import resources_from_settings

    resources = resources_from_settings(settings)
    return curve_rows(say, task, resources["lake"], resources["mlflow"], resources["flywheel"])[0]
