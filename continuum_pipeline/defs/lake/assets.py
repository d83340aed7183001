"""Lake upkeep: compaction, snapshot expiry and orphan cleanup, a nightly op job.

An op job, not an asset: upkeep makes no data of its own (the tables keep their rows), so as an asset it would
sit in the graph as a derived table that is never fresh and, in the demo, never materialized. Its report (files
deleted, snapshots expired per table) is on each run of `lake_maintenance_job`.
"""

import dagster as dg

from continuum_pipeline.defs.ingest.assets import INGEST_KEYS
from continuum_pipeline.defs.metadata import markdown_table
from continuum_pipeline.defs.resources import LakeResource


class MaintenanceConfig(dg.Config):
    snapshot_retention_hours: float = 24.0
    retain_last_snapshots: int = 10
    compact_min_files: int = 4


@dg.op(pool="continuum_ingest", tags={"kind": "iceberg"}, out=dg.Out(dg.Nothing),
       description="Compacts small files, expires old snapshots and deletes unreferenced files in the lake tables.")
def lake_maintenance(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: LakeResource):
    from datetime import timedelta

    from continuum_pipeline.lake.maintenance import MaintenancePolicy, maintain

    policy = MaintenancePolicy(snapshot_retention=timedelta(hours=config.snapshot_retention_hours),
                               retain_last=config.retain_last_snapshots, compact_min_files=config.compact_min_files)
    reports = maintain(lake.lake(), list(INGEST_KEYS), policy)
    for r in reports:
        for reason in r.skipped:
            context.log.warning(f"{r.table}: {reason}")
    table = markdown_table(
        ["table", "files before", "files after", "partitions compacted", "snapshots expired", "files deleted",
         "orphans deleted", "manifests", "snapshots left"],
        [(r.table, r.files_before, r.files_after, r.partitions_compacted, r.snapshots_expired, r.files_deleted,
          r.orphans_deleted, r.manifests, r.snapshots_left) for r in reports],
    )
    # the report on the step's output: the run page shows it (no value to store)
    return dg.Output(None, metadata={
        "summary": dg.MetadataValue.md(table),
        "files_deleted": sum(r.files_deleted + r.orphans_deleted for r in reports),
        "snapshots_expired": sum(r.snapshots_expired for r in reports),
    })


@dg.job(description="Nightly lake upkeep: compaction, snapshot expiry, orphan files (`continuum maintain`).")
def lake_maintenance_job():
    lake_maintenance()


lake_maintenance_schedule = dg.ScheduleDefinition(name="lake_maintenance_schedule", job=lake_maintenance_job,
                                                  cron_schedule="17 3 * * *",
                                                  default_status=dg.DefaultScheduleStatus.RUNNING,
                                                  description="Nightly lake upkeep.")
