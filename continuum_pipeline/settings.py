"""One settings object, read from the environment.

Stdlib only: the capture SDK imports this inside users' production apps.
Every path is absolute so that Dagster's run workers, the UI and the CLI agree on one home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PROFILES = ("local", "production")


class SettingsError(ValueError):
    """A setting has a value Continuum cannot use; the message names the variable and the fix."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int_env(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer; set it to a whole number such as {default}") from None


def _float_env(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number; set it to a number such as {default}") from None


@dataclass(frozen=True)
class Settings:
    """Where everything lives and how the capture SDK behaves.

    Environment variables (all optional on the local profile):
      CONTINUUM_PROFILE        local (default) | production
      CONTINUUM_HOME           root of all local state (default ./.continuum)
      CONTINUUM_LANDING_DIR    landing segments (default $CONTINUUM_HOME/landing)
      CONTINUUM_CATALOG_URI    Iceberg catalog: sqlite:///…, postgresql+psycopg2://…, http(s)://… (REST) or glue
      CONTINUUM_WAREHOUSE      Iceberg warehouse: file:///… or s3://…
      CONTINUUM_NAMESPACE      Iceberg namespace (default continuum)
      CONTINUUM_MLFLOW_URI     MLflow tracking URI (default sqlite:///$CONTINUUM_HOME/mlflow/mlflow.db)
      CONTINUUM_JUDGE_BASE_URL, CONTINUUM_JUDGE_MODEL, CONTINUUM_JUDGE_API_KEY   OpenAI-compatible judge
      CONTINUUM_CAPTURE_QUEUE_SIZE, CONTINUUM_CAPTURE_SEGMENT_RECORDS, CONTINUUM_CAPTURE_FLUSH_SECONDS
      CONTINUUM_INGEST_MAX_SEGMENTS, CONTINUUM_MAX_RECORD_BYTES
      CONTINUUM_SCENARIO, CONTINUUM_SCENARIO_PHASE   scenario file (default: the packaged support desk) and the
                               phase of its knowledge base the verifier judges by (before | after the policy change)
      CONTINUUM_MODEL_NAME     registered model name (default continuum-support)
      CONTINUUM_MIN_REWARD     curation threshold on the combined reward (default 0.8)
      CONTINUUM_TRIGGER_MIN_SAMPLES, _QUALITY_DROP, _WINDOW_DAYS, _MAX_NEGATIVE_RATE, _COOLDOWN_HOURS   sensors
    """

    profile: str
    home: Path
    landing_dir: Path
    catalog_uri: str
    warehouse: str
    namespace: str
    mlflow_uri: str
    judge_base_url: str | None
    judge_model: str | None
    judge_api_key: str | None = field(repr=False)
    capture_queue_size: int
    capture_segment_records: int
    capture_flush_seconds: float
    ingest_max_segments: int
    max_record_bytes: int
    scenario: str | None
    scenario_phase: str
    model_name: str
    min_reward: float
    trigger_min_samples: int
    trigger_quality_drop: float
    trigger_window_days: int
    trigger_max_negative_rate: float
    trigger_cooldown_hours: float

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def catalog_name(self) -> str:
        return "continuum"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @classmethod
    def from_env(cls) -> Settings:
        profile = (_env("CONTINUUM_PROFILE", "local") or "local").lower()
        if profile not in PROFILES:
            raise SettingsError(f"CONTINUUM_PROFILE={profile!r} is unknown; use one of {', '.join(PROFILES)}")
        home = Path(_env("CONTINUUM_HOME", ".continuum")).expanduser().resolve()
        lake = home / "lake"
        settings = cls(
            profile=profile,
            home=home,
            landing_dir=Path(_env("CONTINUUM_LANDING_DIR", str(home / "landing"))).expanduser().resolve(),
            catalog_uri=_env("CONTINUUM_CATALOG_URI", f"sqlite:///{lake / 'catalog.db'}"),
            warehouse=_env("CONTINUUM_WAREHOUSE", (lake / "warehouse").as_uri()),
            namespace=_env("CONTINUUM_NAMESPACE", "continuum"),
            mlflow_uri=_env("CONTINUUM_MLFLOW_URI", _env("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")),
            judge_base_url=_env("CONTINUUM_JUDGE_BASE_URL"),
            judge_model=_env("CONTINUUM_JUDGE_MODEL"),
            judge_api_key=_env("CONTINUUM_JUDGE_API_KEY", _env("OPENAI_API_KEY")),
            capture_queue_size=_int_env("CONTINUUM_CAPTURE_QUEUE_SIZE", 100_000),
            capture_segment_records=_int_env("CONTINUUM_CAPTURE_SEGMENT_RECORDS", 5_000),
            capture_flush_seconds=_float_env("CONTINUUM_CAPTURE_FLUSH_SECONDS", 1.0),
            ingest_max_segments=_int_env("CONTINUUM_INGEST_MAX_SEGMENTS", 2_000),
            max_record_bytes=_int_env("CONTINUUM_MAX_RECORD_BYTES", 1 << 20),
            scenario=_env("CONTINUUM_SCENARIO"),
            scenario_phase=_env("CONTINUUM_SCENARIO_PHASE", "before"),
            model_name=_env("CONTINUUM_MODEL_NAME", "continuum-support"),
            min_reward=_float_env("CONTINUUM_MIN_REWARD", 0.8),
            trigger_min_samples=_int_env("CONTINUUM_TRIGGER_MIN_SAMPLES", 200),
            trigger_quality_drop=_float_env("CONTINUUM_TRIGGER_QUALITY_DROP", 0.15),
            trigger_window_days=_int_env("CONTINUUM_TRIGGER_WINDOW_DAYS", 3),
            trigger_max_negative_rate=_float_env("CONTINUUM_TRIGGER_MAX_NEGATIVE_RATE", 0.3),
            trigger_cooldown_hours=_float_env("CONTINUUM_TRIGGER_COOLDOWN_HOURS", 6.0),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "trigger_cooldown_hours":
                continue  # 0 turns the cooldown off
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise SettingsError(f"{f.name} must be positive, got {value}; fix its CONTINUUM_* variable")
        if self.trigger_cooldown_hours < 0:
            raise SettingsError("CONTINUUM_TRIGGER_COOLDOWN_HOURS must be 0 (off) or positive")
        if self.scenario_phase not in ("before", "after"):
            raise SettingsError(f"CONTINUUM_SCENARIO_PHASE={self.scenario_phase!r}: use before or after")
        if self.profile == "production":
            if self.catalog_uri.startswith("sqlite"):
                raise SettingsError(
                    "CONTINUUM_PROFILE=production needs a shared Iceberg catalog: set CONTINUUM_CATALOG_URI to "
                    "postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB, an http(s):// REST catalog URI, or glue"
                )
            if self.mlflow_uri.startswith("sqlite"):
                raise SettingsError(
                    "CONTINUUM_PROFILE=production needs a shared MLflow: set CONTINUUM_MLFLOW_URI to an MLflow "
                    "server (http://…) or a postgresql:// backend store"
                )

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (Dagster, training jobs)."""
        env = {
            "CONTINUUM_PROFILE": self.profile,
            "CONTINUUM_HOME": str(self.home),
            "CONTINUUM_LANDING_DIR": str(self.landing_dir),
            "CONTINUUM_CATALOG_URI": self.catalog_uri,
            "CONTINUUM_WAREHOUSE": self.warehouse,
            "CONTINUUM_NAMESPACE": self.namespace,
            "CONTINUUM_MLFLOW_URI": self.mlflow_uri,
            "DAGSTER_HOME": str(self.dagster_home),
            "CONTINUUM_SCENARIO_PHASE": self.scenario_phase,
            "CONTINUUM_MODEL_NAME": self.model_name,
        }
        if self.scenario:
            env["CONTINUUM_SCENARIO"] = self.scenario
        return env


def get_settings() -> Settings:
    """Settings as the environment says now (not cached: tests and the CLI change the environment)."""
    return Settings.from_env()
