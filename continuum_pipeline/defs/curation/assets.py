"""The curated SFT dataset, versioned as an Iceberg snapshot."""

import dagster as dg

from continuum_pipeline.defs.metadata import column_schema, markdown_table
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource


@dg.asset(group_name="curation", deps=["sft_candidates"], kinds={"iceberg", "python"},
          description="Interactions whose combined reward passes the threshold, deduplicated, consent-checked, "
                      "split train/validation, in TRL's conversational `messages` format.")
def sft_dataset(context: dg.AssetExecutionContext, lake: LakeResource, flywheel: FlywheelResource) -> dg.MaterializeResult:
    from continuum_pipeline.curation.dataset import CurationPolicy, curate_sft

    the_lake = lake.lake()
    candidates_snapshot = the_lake.current_snapshot_id("sft_candidates")
    dataset = curate_sft(the_lake.read_arrow("sft_candidates"), CurationPolicy(min_reward=flywheel.min_reward))
    snapshot_id = the_lake.replace_table("sft_dataset", dataset.table, {
        "continuum.candidates-snapshot-id": str(candidates_snapshot),
        **{f"continuum.removed.{k}": str(v) for k, v in dataset.removed.items()},
    })
    removed = [("candidates", dataset.candidates, "")] + [(k, -v, "") for k, v in dataset.removed.items()]
    removed.append(("**dataset**", dataset.table.num_rows, f"train {dataset.count('train')}, "
                                                           f"validation {dataset.count('validation')}"))
    by_source = dataset.table.group_by("target_source").aggregate([("interaction_id", "count")]).to_pylist()
    context.log.info(f"sft_dataset: {dataset.table.num_rows} rows from {dataset.candidates} candidates")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dataset.table.num_rows,
        "dagster/column_schema": column_schema(dataset.table.schema),
        "snapshot_id": str(snapshot_id),
        "train_rows": dataset.count("train"),
        "validation_rows": dataset.count("validation"),
        "eligible_rows": dataset.table.num_rows,
        "summary": dg.MetadataValue.md(
            markdown_table(["step", "rows", "note"], removed) + "\n\n"
            + markdown_table(["target", "rows"], [(r["target_source"], r["interaction_id_count"]) for r in by_source])),
    })
