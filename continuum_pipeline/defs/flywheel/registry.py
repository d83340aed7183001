"""The task's registered model: the gated candidate as an MLflow model version, alias `challenger`."""

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import group, key
from continuum_pipeline.defs.metadata import latest_metadata, markdown_table
from continuum_pipeline.defs.resources import LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig

LINEAGE_TAGS = ("task", "dataset_snapshot_id", "interactions_snapshot_id", "golden_set_versions", "judge_versions",
                "parent_version", "eligible_rows")


def registered_model(task: TaskConfig) -> dg.AssetsDefinition:
    @dg.asset(key=key(task, "registered_model"), group_name=group(task, "registry"),
              deps=[key(task, "candidate_model")], kinds={"mlflow"},
              description=f"The candidate that passed the eval gate, registered in MLflow as "
                          f"`{task.registered_model_name}` (alias challenger; the first version is also champion) "
                          "with lineage tags back to the lake snapshots, golden sets and judges it came from, and "
                          "one `model_lineage` row per interaction it trained, validated or was evaluated on.")
    def _registered_model(context: dg.AssetExecutionContext, mlflow: MLflowResource,
                          lake: LakeResource) -> dg.MaterializeResult:
        from continuum_pipeline.registry import lineage, models

        candidate = latest_metadata(context.instance, key(task, "candidate_model"))
        tags = {k: candidate[k] for k in LINEAGE_TAGS if k in candidate}
        tags["dagster_run_id"] = context.run_id
        tags["training_dagster_run_id"] = str(candidate.get("dagster_run_id", ""))
        ref = models.register(mlflow.tracking_uri, task.registered_model_name, candidate["merged_dir"],
                              candidate["mlflow_run_id"], tags)
        # The lineage rows now, while the snapshots the tags name exist: upkeep and forget expire them later.
        rows = lineage.record_version_lineage(lake.lake(), mlflow.tracking_uri, ref)
        ref = models.get_version(mlflow.tracking_uri, ref.name, ref.version)
        context.log.info(f"registered {ref.name} v{ref.version} with aliases {', '.join(ref.aliases)}; "
                         f"{rows} {lineage.LINEAGE_TABLE} rows")
        return dg.MaterializeResult(metadata={
            "model": ref.name, "version": ref.version, "aliases": ", ".join(ref.aliases), "uri": ref.uri,
            "mlflow_run_id": ref.run_id or "", "lineage_rows": rows,
            "summary": dg.MetadataValue.md(markdown_table(["tag", "value"], sorted(ref.tags.items()))),
        })

    return _registered_model
