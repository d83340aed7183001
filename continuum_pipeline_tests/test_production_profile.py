"""The production profile on the real PostgreSQL server: Iceberg SQL catalog and Dagster storage."""

from __future__ import annotations

import os
import uuid

import dagster as dg
import pytest

from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.settings import Settings, SettingsError
from continuum_pipeline.sql_models.project import SqlProject
from continuum_pipeline.sql_models.runner import run_all

from .conftest import REPO_ROOT, feedback, interaction, label_task, run_task_sql, task_config, write_segment

PG = os.environ.get("CONTINUUM_TEST_POSTGRES_URI", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _postgres_or_skip():
    import psycopg2
    import sqlalchemy

    url = sqlalchemy.make_url(PG)
    try:
        conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                dbname=url.database, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers at {url.host}:{url.port} ({exc}); set CONTINUUM_TEST_POSTGRES_URI")
    conn.autocommit = True
    return conn, url


@pytest.fixture
def pg_settings(settings, monkeypatch):
    conn, _ = _postgres_or_skip()
    conn.close()
    namespace = f"ct_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CONTINUUM_PROFILE", "production")
    monkeypatch.setenv("CONTINUUM_CATALOG_URI", PG)
    monkeypatch.setenv("CONTINUUM_NAMESPACE", namespace)
    monkeypatch.setenv("CONTINUUM_MLFLOW_URI", "http://127.0.0.1:5000")
    s = Settings.from_env()
    yield s
    lake = Lake.from_settings(s)
    if lake.catalog.namespace_exists(namespace):
        for ident in lake.catalog.list_tables(namespace):
            lake.catalog.drop_table(ident)
        lake.catalog.drop_namespace(namespace)


def test_production_profile_refuses_embedded_stores(settings, monkeypatch):
    monkeypatch.setenv("CONTINUUM_PROFILE", "production")
    with pytest.raises(SettingsError, match="CONTINUUM_CATALOG_URI to postgresql"):
        Settings.from_env()
    monkeypatch.setenv("CONTINUUM_CATALOG_URI", PG)
    with pytest.raises(SettingsError, match="CONTINUUM_MLFLOW_URI"):
        Settings.from_env()


def test_iceberg_catalog_on_postgres_ingests_exactly_once_and_runs_sql(pg_settings):
    lake = Lake.from_settings(pg_settings)
    assert lake.catalog.__class__.__name__ == "SqlCatalog" and lake.catalog.engine.dialect.name == "postgresql"
    write_segment(pg_settings.landing_dir, "20261121T000000Z-p1",
                  [interaction(i) for i in range(40)] + [feedback(i, f"i{i:06d}") for i in range(8)] + [b"nope"])
    report = ingest_landing(lake, pg_settings.landing_dir)
    assert (report.rows("interactions"), report.rows("feedback_events"), report.rows("quarantine")) == (40, 8, 1)

    # a second process (another Lake on the same catalog) sees the same tables; rerun doubles nothing
    other = Lake.from_settings(pg_settings)
    write_segment(pg_settings.landing_dir, "20261121T000001Z-p2", [interaction(100)])
    ingest_landing(other, pg_settings.landing_dir)
    ingest_landing(lake, pg_settings.landing_dir)
    assert lake.read_arrow("interactions").num_rows == 41

    results = {r.name: r.rows for r in run_all(lake, SqlProject.load(REPO_ROOT / "dbt_like_sql"))}
    assert results["stg_interactions"] == 41 and results["quality_daily"] == 1

    # a task's labels and SQL models live in the same catalog, under the task's own table names
    task = task_config()
    assert label_task(lake, task, [spec.build() for spec in task.judges]).labelled == {"kb": 41}
    task_results = {name: r.rows for name, r in run_task_sql(lake, task).items()}
    assert task_results == {"interaction_rewards": 41, "sft_candidates": 41, "quality_daily": 1}
    tables = {name for _, name in other.catalog.list_tables(pg_settings.namespace)}
    assert {"support_answer__reward_labels", "support_answer__interaction_rewards", "support_answer__sft_candidates",
            "support_answer__quality_daily", "quality_daily"} <= tables
    (day,) = other.read_arrow("support_answer__quality_daily").to_pylist()
    assert day["mean_reward"] == 1.0 and day["interactions"] == 41  # the judge says 1.0; 8 ratings of 1.0


def test_dagster_storage_on_postgres_runs_the_ingest_job(pg_settings):
    conn, url = _postgres_or_skip()
    db = f"continuum_dagster_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    try:
        from continuum_pipeline.definitions import build_definitions

        write_segment(pg_settings.landing_dir, "20261121T000000Z-d", [interaction(i) for i in range(5)])
        # the same form as deploy/dagster.yaml
        overrides = {"storage": {"postgres": {"postgres_db": {
            "username": url.username, "password": url.password or "", "hostname": url.host, "db_name": db,
            "port": url.port or 5432, "scheme": "postgresql+psycopg2"}}}}
        with dg.instance_for_test(overrides=overrides) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            result = build_definitions(pg_settings).resolve_job_def("ingest_job").execute_in_process(instance=instance)
            assert result.success
            event = instance.get_latest_materialization_event(dg.AssetKey("interactions"))
            assert event.asset_materialization.metadata["dagster/row_count"].value == 5
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.close()
