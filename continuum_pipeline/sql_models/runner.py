"""Run one SQL model in DuckDB over the lake and store the result as an Iceberg table.

Results live in the lake, next to their sources (namespace `continuum`): every process — the UI, a
run worker on Kubernetes, the training job — reads the same table, each materialization is a snapshot
a model version can name in its lineage, and DuckDB stays in-process with no database file to share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.sql_models.project import SqlModel, SqlProject


@dataclass
class ModelResult:
    name: str
    rows: int
    snapshot_id: int | None
    schema: pa.Schema
    seconds: float
    sql: str
    preview: pa.Table


def connect(lake: Lake, model: SqlModel) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the model's sources and refs registered as views."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for schema, table in model.sources:
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        if not lake.table_exists(table):
            raise LookupError(f"{model.path}: source('{schema}', '{table}') is not in the lake yet; "
                              f"materialize the ingest assets first")
        lake.register_duckdb(con, table, f'"{schema}"."{table}"')
    for ref in model.refs:
        if not lake.table_exists(ref):
            raise LookupError(f"{model.path}: ref('{ref}') has not been materialized yet; materialize it first")
        lake.register_duckdb(con, ref, f'"{ref}"')
    return con


def run_model(lake: Lake, project: SqlProject, name: str) -> ModelResult:
    started = time.perf_counter()
    model = project.models[name]
    sql = model.render()
    con = connect(lake, model)
    try:
        relation = con.sql(sql)
        # DuckDB 2 names it to_arrow_table; 1.x calls it arrow().
        result = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    except duckdb.Error as exc:
        raise RuntimeError(f"SQL model {name} ({model.path}) failed in DuckDB: {exc}") from exc
    finally:
        con.close()
    result = _lake_compatible(result)
    snapshot_id = lake.replace_table(name, result, {"continuum.sql-model": name})
    return ModelResult(name, result.num_rows, snapshot_id, result.schema, time.perf_counter() - started, sql,
                       result.slice(0, 10))


def run_all(lake: Lake, project: SqlProject) -> list[ModelResult]:
    return [run_model(lake, project, name) for name in project.order()]


def _lake_compatible(table: pa.Table) -> pa.Table:
    """DuckDB may hand back Arrow types Iceberg has no mapping for; cast them to the nearest one."""
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_string_view(t) or pa.types.is_large_string(t):
            t = pa.string()
        elif pa.types.is_unsigned_integer(t):
            t = pa.int64()
        elif pa.types.is_integer(t) and t.bit_width < 32:
            t = pa.int32()
        elif pa.types.is_decimal(t) and t.scale == 0:
            t = pa.int64()  # SUM/COUNT over ints come back as HUGEINT→decimal(38,0)
        elif pa.types.is_timestamp(t) and t.unit == "ns":
            t = pa.timestamp("us", tz=t.tz)
        fields.append(pa.field(f.name, t))
    target = pa.schema(fields)
    return table if target == table.schema else table.cast(target)
