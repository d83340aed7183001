"""Resources built from the one Settings object."""

from pathlib import Path

import dagster as dg

from continuum_pipeline.settings import Settings


class LakeResource(dg.ConfigurableResource):
    """The Iceberg lake (pyiceberg catalog + warehouse)."""

    catalog_uri: str
    warehouse: str
    namespace: str = "continuum"

    def lake(self):
        from continuum_pipeline.lake.catalog import Lake

        return Lake(self.catalog_uri, self.warehouse, self.namespace)


class LandingResource(dg.ConfigurableResource):
    """Where capture writes segments, and how much one ingest run takes."""

    landing_dir: str
    max_segments: int = 2000
    max_record_bytes: int = 1 << 20

    @property
    def path(self) -> Path:
        return Path(self.landing_dir)


class SqlProjectResource(dg.ConfigurableResource):
    """The folder of SQL models (dbt_like_sql/)."""

    root: str


def default_sql_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "dbt_like_sql"


def resources_from_settings(settings: Settings, sql_dir: Path | None = None) -> dict[str, dg.ConfigurableResource]:
    return {
        "lake": LakeResource(catalog_uri=settings.catalog_uri, warehouse=settings.warehouse, namespace=settings.namespace),
        "landing": LandingResource(landing_dir=str(settings.landing_dir), max_segments=settings.ingest_max_segments,
                                   max_record_bytes=settings.max_record_bytes),
        "sql_project": SqlProjectResource(root=str(sql_dir or default_sql_dir())),
    }
