"""Run one SQL model in DuckDB over the lake and store the result as an Iceberg table.

Results live in the lake, next to their sources (namespace `continuum`): every process — the UI, a
run worker on Kubernetes, the training job — reads the same table, each materialization is a snapshot
a model version can name in its lineage, and DuckDB stays in-process with no database file to share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class TaskBinding:
    """Where one task's copy of the task models reads and writes (see sql_models.project)."""

    table: Callable[[str], str]  # a task model or `source('task', …)` name → the task's lake table
    config_tables: dict[str, pa.Table] = field(default_factory=dict)  # `source('config', name)` → rows
    variables: dict[str, Any] = field(default_factory=dict)  # Jinja globals: task_filter, var


def output_table(project: SqlProject, name: str, binding: TaskBinding | None = None) -> str:
    return binding.table(name) if binding and name in project.models and project.shared is not None else name


def connect(lake: Lake, model: SqlModel, project: SqlProject | None = None,
            binding: TaskBinding | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the model's sources and refs registered as views."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for schema, table in model.sources:
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        if schema == "config":
            if binding is None or table not in binding.config_tables:
                raise LookupError(f"{model.path}: source('config', '{table}') is not a task config table")
            relation = f"__config_{table}"
            con.register(relation, binding.config_tables[table])
            con.execute(f'CREATE OR REPLACE VIEW "config"."{table}" AS SELECT * FROM "{relation}"')
            continue
        lake_table = binding.table(table) if schema == "task" and binding else table
        if not lake.table_exists(lake_table):
            raise LookupError(f"{model.path}: source('{schema}', '{table}') is not in the lake yet "
                              f"(table {lake_table}); materialize the asset that writes it first")
        lake.register_duckdb(con, lake_table, f'"{schema}"."{table}"')
    for ref in model.refs:
        lake_table = output_table(project, ref, binding) if project else ref
        if not lake.table_exists(lake_table):
            raise LookupError(f"{model.path}: ref('{ref}') has not been materialized yet; materialize it first")
        lake.register_duckdb(con, lake_table, f'"{ref}"')
    return con


def run_model(lake: Lake, project: SqlProject, name: str, binding: TaskBinding | None = None) -> ModelResult:
    started = time.perf_counter()
    model = project.models[name]
    sql = model.render(**(binding.variables if binding else {}))
    con = connect(lake, model, project, binding)
    try:
        relation = con.sql(sql)
        # DuckDB 2 names it to_arrow_table; 1.x calls it arrow().
        result = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    except duckdb.Error as exc:
        raise RuntimeError(f"SQL model {name} ({model.path}) failed in DuckDB: {exc}") from exc
    finally:
        con.close()
    result = _lake_compatible(result)
    snapshot_id = lake.replace_table(output_table(project, name, binding), result, {"continuum.sql-model": name})
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
