"""The task's registry in Dagster: the registered model (alias challenger), the champion, and promotions.

Promotion moves MLflow aliases; it is recorded in Dagster (a materialization of `<task>/champion` and an
observation of `<task>/registered_model` with every version's aliases) so the UI's latest events state the
aliases MLflow holds. `record_promotion` is what the rollout stage calls when it decides.
"""

from typing import Literal

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import group, job_name, key
from continuum_pipeline.defs.metadata import latest_metadata, markdown_table, url_metadata
from continuum_pipeline.defs.resources import LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig

LINEAGE_TAGS = ("task", "dataset_snapshot_id", "interactions_snapshot_id", "golden_set_versions", "judge_versions",
                "parent_version", "eligible_rows")


def champion_spec(task: TaskConfig) -> dg.AssetSpec:
    # No deps: registered_model → champion → candidate_model would be a cycle; the registry holds the truth and
    # promotions (this job, the first registration, the rollout) record each change as a materialization.
    return dg.AssetSpec(key(task, "champion"), group_name=group(task, "registry"), kinds={"mlflow"},
                        description=f"The version of `{task.registered_model_name}` holding MLflow alias `champion` "
                                    "(what serves and what the next training starts from). Each promotion or "
                                    f"rollback (`{job_name(task, 'promotion')}`, the first registration, the "
                                    "rollout) materializes it with the version, the one it replaced and why.")


def aliases_table(tracking_uri: str, model_name: str) -> dg.TableMetadataValue:
    """Every registered version with its aliases, as the registry holds them now."""
    from continuum_pipeline.registry import models

    return dg.MetadataValue.table(
        records=[dg.TableRecord({"version": v.version, "aliases": ", ".join(sorted(v.aliases)),
                                 "parent_version": v.tags.get(f"{models.TAG}parent_version", "")})
                 for v in models.versions(tracking_uri, model_name)],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("version", "string", description="MLflow model version"),
            dg.TableColumn("aliases", "string", description="champion / challenger / previous"),
            dg.TableColumn("parent_version", "string", description="the version (or base) it was trained from"),
        ]))


def record_promotion(context, task: TaskConfig, tracking_uri: str, ref, previous, reason: str) -> None:
    """Log, in the current run, that `ref` became the champion (replacing `previous`, a ref or None) because of
    `reason`: a materialization of `<task>/champion` and an observation of `<task>/registered_model` stating
    every version's aliases as MLflow holds them after the change."""
    from continuum_pipeline.registry import models

    aliases = models.aliases(tracking_uri, ref.name)
    context.log_event(dg.AssetMaterialization(key(task, "champion"), description=reason, metadata={
        "model": ref.name, "version": str(ref.version), "previous": str(previous.version) if previous else "",
        "reason": reason, "aliases": ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())), "uri": ref.uri,
        **url_metadata("mlflow_version_url", models.version_url(tracking_uri, ref.name, ref.version)),
    }))
    context.log_event(dg.AssetObservation(key(task, "registered_model"), description=f"aliases after: {reason}",
                                          metadata={"champion": str(ref.version),
                                                    "aliases": ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())),
                                                    "versions": aliases_table(tracking_uri, ref.name)}))
    context.log.info(f"{ref.name}: v{ref.version} is champion"
                     + (f" (was v{previous.version}, now `previous`)" if previous else "") + f": {reason}")


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
        if models.CHAMPION in ref.aliases and len(models.versions(mlflow.tracking_uri, ref.name)) == 1:
            record_promotion(context, task, mlflow.tracking_uri, ref, None, "first registered version")
        return dg.MaterializeResult(metadata={
            # at registration: a later promotion is recorded on `<task>/champion` and as this asset's observation
            "model": ref.name, "version": ref.version, "aliases_at_registration": ", ".join(ref.aliases),
            "uri": ref.uri,
            "mlflow_run_id": ref.run_id or candidate["mlflow_run_id"], "lineage_rows": rows,
            # the training run (MLflow 3 may register from a logged model without a run id on the version)
            **url_metadata("mlflow_run_url", models.run_url(mlflow.tracking_uri, candidate["mlflow_run_id"])),
            **url_metadata("mlflow_version_url", models.version_url(mlflow.tracking_uri, ref.name, ref.version)),
            "versions": aliases_table(mlflow.tracking_uri, ref.name),
            "summary": dg.MetadataValue.md(markdown_table(["tag", "value"], sorted(ref.tags.items()))),
        })

    return _registered_model


class PromotionConfig(dg.Config):
    """What the promotion job does: `promote` a version (default: the current challenger) or `rollback` to the
    version holding alias `previous`; `reason` is recorded with the change."""

    action: Literal["promote", "rollback"] = "promote"
    version: str | None = None
    reason: str = ""


def promotion_job(task: TaskConfig) -> dg.JobDefinition:
    @dg.op(name=f"{task.name}__promote", tags={"kind": "mlflow"},
           description=f"Move alias `champion` of `{task.registered_model_name}` (promote a version, or roll back "
                       "to `previous`) and record it on the task's champion and registered_model assets.")
    def _promote(context: dg.OpExecutionContext, config: PromotionConfig, mlflow: MLflowResource) -> None:
        from continuum_pipeline.registry import models

        uri, name = mlflow.tracking_uri, task.registered_model_name
        before = models.champion(uri, name)
        try:
            if config.action == "rollback":
                ref = models.rollback(uri, name)
            else:
                version = config.version or getattr(models.by_alias(uri, name, models.CHALLENGER), "version", None)
                if version is None:
                    raise models.PromotionError(f"{name} has no challenger to promote: register a version first "
                                                f"(`{job_name(task, 'training')}`) or set `version`")
                ref = models.promote(uri, name, version.removeprefix("v"))
        except models.PromotionError as exc:
            raise dg.Failure(str(exc)) from None
        previous = before if before is not None and before.version != ref.version else None
        reason = config.reason or ("rolled back by hand" if config.action == "rollback" else "promoted by hand")
        record_promotion(context, task, uri, ref, previous, reason)

    @dg.job(name=job_name(task, "promotion"), tags={"continuum/task": task.name},
            description=f"{task.name}: make a registered version the champion (default: the challenger), or roll "
                        "back to the previous champion; recorded on the champion and registered_model assets.")
    def _promotion_job():
        _promote()

    return _promotion_job
