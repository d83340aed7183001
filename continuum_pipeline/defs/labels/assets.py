"""Reward labels: every judge's scores for interactions it has not labelled yet."""

import dagster as dg

from continuum_pipeline.defs.metadata import markdown_table, table_rows
from continuum_pipeline.defs.resources import JudgeEndpointResource, LakeResource, ScenarioResource
from continuum_pipeline.progress import Milestones


@dg.asset(group_name="labels", deps=["interactions"], kinds={"iceberg", "python"}, pool="continuum_labels",
          automation_condition=dg.AutomationCondition.eager(),
          description="Judge scores per interaction × criterion in [0, 1] (KB verifier; LLM judge when configured). "
                      "Incremental: only interactions a judge version has not labelled yet.")
def reward_labels(context: dg.AssetExecutionContext, lake: LakeResource, scenario: ScenarioResource,
                  judge_endpoint: JudgeEndpointResource) -> dg.MaterializeResult:
    from continuum_pipeline.judge.labeling import label_interactions

    judges = [j for j in (scenario.verifier(), judge_endpoint.judge()) if j is not None]
    the_lake = lake.lake()
    quarters: dict[str, Milestones] = {}  # a line per quarter of each judge's work, not per batch

    def progress(event: str, info: dict) -> None:
        if event == "judged" and not quarters.setdefault(info["judge"], Milestones(0.25)).due(info["done"],
                                                                                               info["total"]):
            return
        context.log.info(f"labels {event}: {info}")

    report = label_interactions(the_lake, judges, progress=progress)
    rows = [(j.name, j.version, report.labelled.get(j.name, 0), report.already_labelled.get(j.name, 0),
             report.failed.get(j.name, 0), report.mean_score.get(j.name)) for j in judges]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": table_rows(the_lake.table("reward_labels")),
        "labelled": sum(report.labelled.values()),
        "failed": sum(report.failed.values()),
        "interactions_snapshot_id": str(report.interactions_snapshot_id or ""),
        "summary": dg.MetadataValue.md(markdown_table(
            ["judge", "version", "labelled now", "already labelled", "failed (retried next run)", "mean score"], rows)),
    })
