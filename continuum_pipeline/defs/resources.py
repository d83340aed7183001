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


def default_sql_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "dbt_like_sql"


class MLflowResource(dg.ConfigurableResource):
    tracking_uri: str
    experiment: str = "continuum-training"
    artifact_root: str | None = None


class FlywheelResource(dg.ConfigurableResource):
    """Where each task's models, training runs and judge cache live (`<home>/tasks/<task>/…`)."""

    home: str

    def task_dir(self, task: str) -> Path:
        return Path(self.home) / "tasks" / task

    @property
    def judge_cache(self) -> Path:
        return Path(self.home) / "cache" / "judges.sqlite"


def resources_from_settings(settings: Settings) -> dict[str, object]:
    """The shared resources, one set of objects per settings: every task (FlywheelComponent instance) and the
    data plane hand Dagster the *same* objects, which is what Definitions.merge requires."""
    if settings not in _RESOURCES:  # Settings is a frozen dataclass: equal settings, same objects
        _RESOURCES[settings] = _build(settings)
    return _RESOURCES[settings]


_RESOURCES: dict[Settings, dict[str, object]] = {}


def _build(settings: Settings) -> dict[str, object]:
    return {
        "lake": LakeResource(catalog_uri=settings.catalog_uri, warehouse=settings.warehouse, namespace=settings.namespace),
        "landing": LandingResource(landing_dir=str(settings.landing_dir), max_segments=settings.ingest_max_segments,
                                   max_record_bytes=settings.max_record_bytes),
        "mlflow": MLflowResource(tracking_uri=settings.mlflow_uri, artifact_root=str(settings.mlflow_artifacts)),
        "flywheel": FlywheelResource(home=str(settings.home)),
        "pipes_subprocess_client": dg.PipesSubprocessClient(env=settings.as_env()),
    }
