"""One thin handle on the Iceberg catalog: create the lake tables, read them to Arrow or DuckDB.

pyiceberg directly rather than dagster-iceberg: ingest needs one transaction that appends rows and
records the ingested segments together, which an IO manager's load/store contract cannot express.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pyarrow as pa

from continuum_pipeline.lake.schemas import LAYOUTS, TableLayout

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from continuum_pipeline.settings import Settings

log = logging.getLogger(__name__)

# Our own ingest decides how to retry a conflicting commit (it must re-read its ledger first); pyiceberg's
# automatic retry would re-apply a stale ledger, so it is turned off on the tables we create.
TABLE_PROPERTIES = {
    "commit.retry.num-retries": "0",
    "write.parquet.compression-codec": "zstd",
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "format-version": "2",
}


def catalog_properties(catalog_uri: str, warehouse: str) -> dict[str, str]:
    """pyiceberg catalog properties for a URI: SQL (SQLite/Postgres), REST (http[s]) or Glue."""
    scheme = urlparse(catalog_uri).scheme
    if scheme.startswith(("sqlite", "postgresql", "mysql")):
        return {"type": "sql", "uri": catalog_uri, "warehouse": warehouse, "init_catalog_tables": "true"}
    if scheme in ("http", "https"):
        return {"type": "rest", "uri": catalog_uri, "warehouse": warehouse}
    if catalog_uri == "glue":
        return {"type": "glue", "warehouse": warehouse}
    raise ValueError(f"CONTINUUM_CATALOG_URI={catalog_uri!r} is not a catalog Continuum knows: use sqlite:///PATH, "
                     "postgresql+psycopg2://USER@HOST:5432/DB, an http(s):// REST catalog, or glue")


class Lake:
    def __init__(self, catalog_uri: str, warehouse: str, namespace: str = "continuum", catalog_name: str = "continuum"):
        self.catalog_uri, self.warehouse, self.namespace, self.catalog_name = catalog_uri, warehouse, namespace, catalog_name

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        return cls(settings.catalog_uri, settings.warehouse, settings.namespace, settings.catalog_name)

    def __repr__(self) -> str:
        return f"Lake(catalog={self.catalog_uri!r}, warehouse={self.warehouse!r}, namespace={self.namespace!r})"

    @cached_property
    def catalog(self) -> Catalog:
        from pyiceberg.catalog import load_catalog

        props = catalog_properties(self.catalog_uri, self.warehouse)
        for uri in (self.catalog_uri if props["type"] == "sql" and self.catalog_uri.startswith("sqlite") else None,
                    self.warehouse):
            if uri and urlparse(uri).scheme in ("sqlite", "file"):
                path = Path(urlparse(uri).path)
                (path.parent if uri.startswith("sqlite") else path).mkdir(parents=True, exist_ok=True)
        # load_catalog also merges PYICEBERG_CATALOG__CONTINUUM__* variables (S3 keys, REST credentials).
        return load_catalog(self.catalog_name, **props)

    def identifier(self, name: str) -> tuple[str, str]:
        return (self.namespace, name)

    def ensure_tables(self, layouts: list[TableLayout] | None = None) -> None:
        """Create the namespace and the lake tables if missing (idempotent, safe under races)."""
        self.catalog.create_namespace_if_not_exists(self.namespace)
        for layout in layouts or list(LAYOUTS.values()):  # learning tables: per task, created by their assets
            self.ensure_table(layout)

    def ensure_table(self, layout: TableLayout) -> Table:
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
        from pyiceberg.transforms import DayTransform, IdentityTransform

        ident = self.identifier(layout.name)
        try:
            return self._evolve(self.catalog.load_table(ident), layout)
        except NoSuchTableError:
            pass
        self.catalog.create_namespace_if_not_exists(self.namespace)
        transforms = {"day": DayTransform(), "identity": IdentityTransform()}
        try:
            with self.catalog.create_table_transaction(ident, schema=layout.schema,
                                                       properties={**TABLE_PROPERTIES, "comment": layout.doc}) as txn:
                if layout.partition:
                    with txn.update_spec() as spec:
                        for column, transform in layout.partition:
                            spec.add_field(column, transforms[transform],
                                           f"{column}_{transform}" if transform != "identity" else column)
        except TableAlreadyExistsError:
            pass  # another process created it first
        return self._evolve(self.catalog.load_table(ident), layout)

    def _evolve(self, table: Table, layout: TableLayout, attempts: int = 5) -> Table:
        """Add the layout's columns an older table lacks (e.g. `redactions`), so ingest can write them. Additive
        only: an existing column is never changed or dropped. Safe under races: a conflicting commit re-reads."""
        from pyiceberg.exceptions import CommitFailedException

        for attempt in range(attempts):
            have = {f.name for f in table.schema().fields}
            missing = [f for f in layout.schema if f.name not in have]
            if not missing:
                return table
            try:
                with table.update_schema() as update:
                    update.union_by_name(pa.schema(missing))  # only the new columns: no type is ever touched
            except CommitFailedException:  # another process evolved or appended first: look again
                if attempt == attempts - 1:
                    raise
            table = self.catalog.load_table(self.identifier(layout.name))
        return table

    def table(self, name: str) -> Table:
        return self.catalog.load_table(self.identifier(name))

    def table_exists(self, name: str) -> bool:
        return self.catalog.table_exists(self.identifier(name))

    def read_arrow(self, name: str, snapshot_id: int | None = None) -> pa.Table:
        return self.table(name).scan(snapshot_id=snapshot_id).to_arrow()

    def register_duckdb(self, con: duckdb.DuckDBPyConnection, name: str, view: str, snapshot_id: int | None = None) -> None:
        """Expose a lake table to DuckDB as `view`.

        DuckDB's iceberg extension cannot be installed offline, so pyiceberg plans the scan: local data
        files without delete files go to DuckDB's read_parquet (no copy); otherwise the scan is read to Arrow.
        """
        table = self.table(name)
        scan = table.scan(snapshot_id=snapshot_id)
        tasks = list(scan.plan_files())
        paths = [t.file.file_path for t in tasks]
        local = all(urlparse(p).scheme in ("", "file") for p in paths)
        if tasks and local and not any(t.delete_files for t in tasks):
            files = ", ".join("'" + urlparse(p).path.replace("'", "''") + "'" for p in paths)
            con.execute(f'CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet([{files}], union_by_name=true)')
            return
        arrow = scan.to_arrow() if tasks else table.schema().as_arrow().empty_table()
        relation = "__arrow_" + "".join(c if c.isalnum() else "_" for c in view)
        con.register(relation, arrow)
        con.execute(f'CREATE OR REPLACE VIEW {view} AS SELECT * FROM "{relation}"')

    def replace_table(self, name: str, data: pa.Table, summary: dict[str, str] | None = None) -> int | None:
        """Make `data` the table's whole content in one commit (derived tables: SQL models, datasets, golden sets).

        The table is created on first use; when the columns change it is evolved, or rebuilt if a type changed
        incompatibly (derived data can always be recomputed). Returns the new snapshot id: the data's version.
        """
        from pyiceberg.exceptions import NoSuchTableError

        self.catalog.create_namespace_if_not_exists(self.namespace)
        ident = self.identifier(name)
        try:
            table = self.catalog.load_table(ident)
        except NoSuchTableError:
            table = self.catalog.create_table(ident, schema=data.schema, properties=TABLE_PROPERTIES)
        if not _same_columns(table.schema().as_arrow(), data.schema):
            try:
                with table.update_schema() as update:
                    update.union_by_name(data.schema)
                table = table.refresh()
                data = _align(data, table.schema().as_arrow())
            except Exception:
                self.catalog.drop_table(ident)
                table = self.catalog.create_table(ident, schema=data.schema, properties=TABLE_PROPERTIES)
        if table.current_snapshot() is None:
            table.append(data, snapshot_properties=summary or {})
        else:
            table.overwrite(data, snapshot_properties=summary or {})
        snapshot = table.refresh().current_snapshot()
        return snapshot.snapshot_id if snapshot else None

    def append_rows(self, name: str, data: pa.Table, summary: dict[str, str] | None = None) -> int | None:
        """Append to an existing table in one commit; returns the new snapshot id."""
        table = self.table(name)
        table.append(data, snapshot_properties=summary or {})
        snapshot = table.refresh().current_snapshot()
        return snapshot.snapshot_id if snapshot else None

    def current_snapshot_id(self, name: str) -> int | None:
        if not self.table_exists(name):
            return None
        snapshot = self.table(name).current_snapshot()
        return snapshot.snapshot_id if snapshot else None


def _same_columns(a: pa.Schema, b: pa.Schema) -> bool:
    return [(f.name, _base(f.type)) for f in a] == [(f.name, _base(f.type)) for f in b]


def _base(t: pa.DataType) -> str:
    return "string" if pa.types.is_large_string(t) or pa.types.is_string(t) else str(t)


def _align(data: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [data[f.name] if f.name in data.column_names else pa.nulls(data.num_rows, f.type) for f in schema]
    return pa.table(cols, names=schema.names)
