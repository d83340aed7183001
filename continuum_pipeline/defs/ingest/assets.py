"""Ingest: landing segments → the interactions, feedback_events and quarantine Iceberg tables."""

import dagster as dg

from continuum_pipeline.defs.metadata import column_schema, markdown_table, table_rows
from continuum_pipeline.defs.resources import LakeResource, LandingResource

INGEST_KEYS = ("interactions", "feedback_events", "quarantine")
_DOCS = {
    "interactions": "One row per captured model call, PII-free ids and content hash; partitioned by day(ts), model, consent.",
    "feedback_events": "Ratings, labels, implicit signals, edits and outcomes, keyed by interaction_id.",
    "quarantine": "Landing lines that could not be normalized: raw bytes, segment and line, and the reason.",
}


@dg.multi_asset(
    specs=[dg.AssetSpec(key, group_name="ingest", description=_DOCS[key], kinds={"iceberg", "python"}) for key in INGEST_KEYS],
    can_subset=False,
    pool="continuum_ingest",
)
def ingest_landing_segments(context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource):
    """Normalize complete landing segments into the lake in one commit per table, exactly once."""
    from continuum_pipeline.lake.ingest import ingest_landing
    from continuum_pipeline.lake.schemas import LAYOUTS

    def progress(event: str, info: dict) -> None:
        context.log.info(f"ingest {event}: {info}")

    the_lake = lake.lake()
    report = ingest_landing(the_lake, landing.path, max_segments=landing.max_segments,
                            max_record_bytes=landing.max_record_bytes, progress=progress, run_id=context.run_id)
    for key in INGEST_KEYS:
        table = the_lake.table(key)
        commit = report.commits.get(key)
        metadata = {
            "dagster/row_count": table_rows(table),
            "dagster/column_schema": column_schema(LAYOUTS[key].schema),  # described from the lake contracts
            "rows_appended": commit.rows if commit else 0,
            "rows_already_present": commit.skipped_rows if commit else 0,
            "rows_forgotten": commit.forgotten_rows if commit else 0,  # of forgotten subjects: dropped, not quarantined
            **({"pii_redacted": dg.MetadataValue.json(dict(sorted(report.redactions[key].items())))}
               if key in report.redactions else {}),
            "snapshot_id": str(commit.snapshot_id) if commit and commit.snapshot_id else "",
            "segments": len(report.segments),
            "segments_waiting": report.remaining_segments,
            "segments_failed": len(report.failed_segments),
            "ignored_files": dg.MetadataValue.json(report.ignored_files),
            "table": f"{the_lake.namespace}.{key}",
            "summary": dg.MetadataValue.md(_summary(key, report)),
        }
        yield dg.MaterializeResult(asset_key=key, metadata=metadata)


def _summary(key: str, report) -> str:
    commit = report.commits.get(key)
    lines = [f"**{commit.rows if commit else 0} rows appended** from {len(report.segments)} landing segments "
             f"({report.bytes_read / 1e6:.1f} MB in {report.seconds:.2f}s; "
             f"{report.fast_path_segments} clean segments on the fast path)."]
    if commit and commit.skipped_rows:
        lines.append(f"{commit.skipped_rows} rows were already in the table (an interrupted run, or a concurrent one, committed them): skipped.")
    if commit and commit.forgotten_rows:
        lines.append(f"{commit.forgotten_rows} rows belong to subjects forgotten since they were captured "
                     "(deletion tombstones): dropped, not quarantined.")
    if report.redactions.get(key):
        lines.append("PII replaced by placeholders in these rows (by the SDK, the server or this ingest; counts, "
                     "never values): " + ", ".join(f"{k} {n}" for k, n in sorted(report.redactions[key].items())) + ".")
    if report.remaining_segments:
        lines.append(f"{report.remaining_segments} more segments wait for the next run.")
    if report.failed_segments:
        lines.append(f"{len(report.failed_segments)} segments could not be read or normalized and were moved to "
                     f"landing/failed/ (reason in the quarantine table): {_names(report.failed_segments)}.")
    if report.ignored_files:
        lines.append(f"**{len(report.ignored_files)} files in the landing folder are not segments** (`*.jsonl`, "
                     f"`*.jsonl.gz`) and were ignored: {_names(report.ignored_files)}.")
    if key == "quarantine" and report.quarantine_reasons:
        lines.append("")
        lines.append(markdown_table(["error", "lines"], sorted(report.quarantine_reasons.items())))
    return "\n\n".join(lines)


def _names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


ingest_job = dg.define_asset_job("ingest_job", selection=dg.AssetSelection.assets(*INGEST_KEYS),
                                 description="Ingest complete landing segments into the lake.")
