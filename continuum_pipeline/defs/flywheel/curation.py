"""The task's curated SFT dataset, versioned as an Iceberg snapshot."""

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import golden_key, group, key
from continuum_pipeline.defs.metadata import column_schema, markdown_table
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig


def held_out_ids(the_lake, task: TaskConfig) -> frozenset[str]:
    """Interaction ids in the task's production golden sets: evaluation data never trains."""
    ids: set[str] = set()
    for spec in task.golden_sets:
        table = task.table(f"golden__{spec.name}")
        if spec.from_production and the_lake.table_exists(table):
            ids.update(i for i in the_lake.read_arrow(table)["interaction_id"].to_pylist() if i)
    return frozenset(ids)


def curation_policy(the_lake, task: TaskConfig):
    from continuum_pipeline.curation.dataset import CurationPolicy
    from continuum_pipeline.privacy.rules import privacy_policy

    privacy = privacy_policy(the_lake, task)  # a bad rule fails here, naming the rule and the fix
    return CurationPolicy(min_reward=task.curation.min_reward, validation_fraction=task.curation.validation_fraction,
                          consent=privacy.consent, held_out=held_out_ids(the_lake, task), excluded=privacy.excluded,
                          sampling_rate=privacy.sampling_rate)


def privacy_metadata(the_lake, task: TaskConfig, removed: dict[str, int]) -> dict:
    """What consent, each exclusion rule and sampling removed (in filter order), and the task's privacy report
    for the last 30 days (PII kinds carried, consent mix, rule matches, deletions) for the UI."""
    from continuum_pipeline.privacy.report import privacy_report
    from continuum_pipeline.privacy.rules import privacy_removals

    rows = privacy_removals(removed)
    return {
        "sampling_rate": task.privacy.sampling_rate,
        "excluded_by_privacy": sum(n for _, n in rows),
        "privacy": dg.MetadataValue.md(markdown_table(["privacy filter", "rows removed"], rows)),
        "privacy_report": dg.MetadataValue.md(privacy_report(the_lake, [task], days=30).markdown()),
    }


def sft_dataset(task: TaskConfig) -> dg.AssetsDefinition:
    from continuum_pipeline.defs.flywheel.embeddings import NEEDS_MODEL, select_rows

    holdouts = [golden_key(task, g.name) for g in task.golden_sets if g.from_production]
    # near-dup removal and selection read the embeddings; uncertainty scores with the champion (or the base)
    scores = task.curation.strategy in NEEDS_MODEL
    selection_deps = [key(task, "embeddings"), *([key(task, "base_model")] if scores else [])]

    asset = dg.asset(key=key(task, "sft_dataset"), group_name=group(task, "curation"),
                     deps=[key(task, "sft_candidates"), *holdouts, *selection_deps], kinds={"iceberg", "python"},
                     description="Interactions whose reward passes the threshold, consent-checked (unknown consent only "
                                 "if the task allows it), not excluded by a privacy rule, sampled at the task's "
                                 "rate, not held out for evaluation, deduplicated (exact, then near-duplicates), "
                                 f"selected ({task.curation.strategy}), split train/validation, in TRL's conversational "
                                 "`messages` format.")

    def build(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource | None = None,
              flywheel: FlywheelResource | None = None) -> dg.MaterializeResult:
        from continuum_pipeline.curation.dataset import curate_sft

        the_lake = lake.lake()
        candidates_table = task.table("sft_candidates")
        candidates_snapshot = the_lake.current_snapshot_id(candidates_table)
        policy = curation_policy(the_lake, task)
        dataset = curate_sft(the_lake.read_arrow(candidates_table), policy)
        selection = select_rows(context, the_lake, task, dataset, mlflow, flywheel)
        snapshot_id = the_lake.replace_table(task.table("sft_dataset"), dataset.table, {
            "continuum.candidates-snapshot-id": str(candidates_snapshot),
            **{f"continuum.removed.{k}": str(v) for k, v in dataset.removed.items()},
        })
        removed = [("candidates", dataset.candidates, "")] + [(k, -v, "") for k, v in dataset.removed.items()]
        removed.append(("**dataset**", dataset.table.num_rows, f"train {dataset.count('train')}, "
                                                               f"validation {dataset.count('validation')}"))
        by_source = dataset.table.group_by("target_source").aggregate([("interaction_id", "count")]).to_pylist()
        context.log.info(f"{task.name}/sft_dataset: {dataset.table.num_rows} rows from {dataset.candidates} candidates")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dataset.table.num_rows,
            "dagster/column_schema": column_schema(dataset.table.schema),
            "snapshot_id": str(snapshot_id),
            "train_rows": dataset.count("train"),
            "validation_rows": dataset.count("validation"),
            "eligible_rows": dataset.table.num_rows,
            **{f"removed: {k}": v for k, v in dataset.removed.items()},
            **privacy_metadata(the_lake, task, dataset.removed),
            **selection,
            "summary": dg.MetadataValue.md(
                markdown_table(["step", "rows", "note"], removed) + "\n\n"
                + markdown_table(["target", "rows"], [(r["target_source"], r["interaction_id_count"]) for r in by_source])),
        })

    if scores:  # the champion's scoring needs the registry and the task's model folders
        @asset
        def _sft_dataset(context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource,
                         flywheel: FlywheelResource) -> dg.MaterializeResult:
            return build(context, lake, mlflow, flywheel)
    else:
        @asset
        def _sft_dataset(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
            return build(context, lake)

    return _sft_dataset
