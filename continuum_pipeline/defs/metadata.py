"""Materialization metadata people look at: row counts, column schemas, markdown tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg


def column_schema(schema: Any, docs: dict[str, str] | None = None) -> dg.TableSchema:
    """A Dagster TableSchema from a pyarrow schema, each column described from the lake's column docs
    (lake/schemas.py COLUMN_DOCS; `docs` adds or overrides)."""
    from continuum_pipeline.lake.schemas import COLUMN_DOCS

    docs = COLUMN_DOCS | (docs or {})
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type), description=docs.get(f.name)) for f in schema])


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ") if v is not None else ""

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def table_rows(table: Any) -> int:
    """Total rows in an Iceberg table's current snapshot (from its summary: no scan)."""
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-records", 0))


def latest_metadata(instance: dg.DagsterInstance, key: str | dg.AssetKey) -> dict[str, Any]:
    """Raw values of the latest materialization's metadata of `key` ({} if never materialized)."""
    event = instance.get_latest_materialization_event(key if isinstance(key, dg.AssetKey) else dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def url_metadata(name: str, url: str | None) -> dict[str, dg.UrlMetadataValue]:
    """`{name: url}` when there is a page to link to (an MLflow server), else nothing: no dead links."""
    return {name: dg.MetadataValue.url(url)} if url else {}


def png_markdown(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    """A PNG inline in markdown metadata (a data URI): the UI shows it without access to the file."""
    import base64

    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
