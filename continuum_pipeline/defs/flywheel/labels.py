"""Reward labels: the task's judges score its interactions they have not labelled yet."""

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import group, key
from continuum_pipeline.defs.metadata import markdown_table, table_rows
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource
from continuum_pipeline.defs.sql.assets import follows_upstream
from continuum_pipeline.task.config import TaskConfig


def build_judges(task: TaskConfig, flywheel: FlywheelResource, names: set[str] | None = None) -> list:
    """The task's judges (only `names`, when given: building a ragas judge imports ragas), sharing one verdict
    cache (a re-run or a repeated golden answer costs nothing)."""
    from continuum_pipeline.judge.cache import JudgeCache
    from continuum_pipeline.judge.specs import JudgeEnvironment

    env = JudgeEnvironment(cache=JudgeCache(flywheel.judge_cache))
    return [spec.build(env) for spec in task.judges if names is None or spec.name in names]


def reward_labels(task: TaskConfig) -> dg.AssetsDefinition:
    @dg.asset(key=key(task, "reward_labels"), group_name=group(task, "labels"), deps=["interactions"],
              kinds={"iceberg", "python"}, pool="continuum_labels", automation_condition=follows_upstream(),
              description=f"Scores per interaction × criterion in [0, 1] from the task's judges "
                          f"({', '.join(j.name for j in task.judges)}). Incremental: only interactions a judge "
                          "version has not labelled yet; a changed judge configuration relabels.")
    def _reward_labels(context: dg.AssetExecutionContext, lake: LakeResource,
                       flywheel: FlywheelResource) -> dg.MaterializeResult:
        from continuum_pipeline.judge.labeling import label_interactions
        from continuum_pipeline.progress import Milestones

        judges = build_judges(task, flywheel)
        the_lake = lake.lake()
        quarters: dict[str, Milestones] = {}  # a line per quarter of each judge's work, not per batch

        def progress(event: str, info: dict) -> None:
            if event == "judged" and not quarters.setdefault(info["judge"], Milestones(0.25)).due(info["done"],
                                                                                                   info["total"]):
                return
            context.log.info(f"labels {event}: {info}")

        report = label_interactions(the_lake, judges, labels_table=task.table("reward_labels"),
                                    where=task.selection_sql(), progress=progress)
        rows = [(j.name, j.version, report.labelled.get(j.name, 0), report.cache_hits.get(j.name, 0),
                 report.already_labelled.get(j.name, 0), report.failed.get(j.name, 0) + report.over_budget.get(j.name, 0),
                 report.mean_score.get(j.name), f"${report.spent_usd.get(j.name, 0.0):.4f}") for j in judges]
        failures = "".join(f"\n- {j}: {reason}" for j, reason in report.budget_stop.items())
        return dg.MaterializeResult(metadata={
            "dagster/row_count": table_rows(the_lake.table(task.table("reward_labels"))),
            "labelled": sum(report.labelled.values()),
            "failed": sum(report.failed.values()),
            "spent_usd": float(sum(report.spent_usd.values())),
            "interactions_snapshot_id": str(report.interactions_snapshot_id or ""),
            "summary": dg.MetadataValue.md(markdown_table(
                ["judge", "version", "labelled now", "from cache", "already labelled", "failed (retried next run)",
                 "mean score", "spent"], rows) + (f"\n\nStopped early:{failures}" if failures else "")),
        })

    return _reward_labels
