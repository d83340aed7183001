"""The registered model: the gated candidate as an MLflow model version, alias `challenger`."""

import dagster as dg

from continuum_pipeline.defs.metadata import latest_metadata, markdown_table
from continuum_pipeline.defs.resources import MLflowResource


@dg.asset(group_name="registry", deps=["candidate_model"], kinds={"mlflow"},
          description="The candidate that passed the eval gate, registered in MLflow (alias challenger; the first "
                      "version is also champion) with lineage tags back to the lake snapshots it came from.")
def registered_model(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
    from continuum_pipeline.registry import models

    candidate = latest_metadata(context.instance, "candidate_model")
    tags = {k: candidate[k] for k in ("dataset_snapshot_id", "interactions_snapshot_id", "golden_set_version",
                                      "parent_version", "eligible_rows") if k in candidate}
    tags["dagster_run_id"] = context.run_id
    tags["training_dagster_run_id"] = str(candidate.get("dagster_run_id", ""))
    ref = models.register(mlflow.tracking_uri, mlflow.model_name, candidate["merged_dir"], candidate["mlflow_run_id"], tags)
    context.log.info(f"registered {ref.name} v{ref.version} with aliases {', '.join(ref.aliases)}")
    return dg.MaterializeResult(metadata={
        "model": ref.name, "version": ref.version, "aliases": ", ".join(ref.aliases), "uri": ref.uri,
        "mlflow_run_id": ref.run_id or "",
        "summary": dg.MetadataValue.md(markdown_table(["tag", "value"], sorted(ref.tags.items()))),
    })
