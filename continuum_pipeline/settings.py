"""One settings object, read from the environment.

Stdlib only: the capture SDK imports this inside users' production apps.
Every path is absolute so that Dagster's run workers, the UI and the CLI agree on one home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PROFILES = ("local", "production")
# The example app's task instance, by path (not import): the default code location shows the support desk.
EXAMPLE_TASKS = Path(__file__).resolve().parent / "scenario" / "defs"


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


def task_yaml_files(paths) -> list[Path]:
    """Task instances among CONTINUUM_TASKS-style paths: a file as given, every `defs.yaml` under a folder.
    Stdlib, so the receiver, ingest and Dagster code all find the same files the same way."""
    found: list[Path] = []
    for path in paths:
        found += sorted(path.rglob("defs.yaml")) if path.is_dir() else [path]
    return found


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
      (CONTINUUM_JUDGE_BASE_URL / _MODEL / _API_KEY, the judges' default endpoint, are read by judge.specs)
      CONTINUUM_CAPTURE_QUEUE_SIZE, CONTINUUM_CAPTURE_SEGMENT_RECORDS, CONTINUUM_CAPTURE_FLUSH_SECONDS,
      CONTINUUM_CAPTURE_MAX_BYTES  SDK buffer bound in estimated bytes (default 64 MiB), besides the record count
      CONTINUUM_INGEST_MAX_SEGMENTS, CONTINUUM_MAX_RECORD_BYTES
      CONTINUUM_POOL_WAIT_SECONDS  how long a CLI run waits for a pool slot before giving up (default 300)
      CONTINUUM_TASKS          task YAML files or folders of them (os.pathsep-separated) the code location loads
                               (default: the packaged support-desk example); everything per task is in its YAML
      CONTINUUM_REDACT_KINDS   PII kinds redacted everywhere: all (default) | none | EMAIL_ADDRESS,SECRET,… |
                               -IP_ADDRESS,-PHONE_NUMBER,… (removals); a task's privacy.redaction.disable adds to it
      CONTINUUM_REDACT_PATTERNS  JSON object NAME → regex of extra entities, redacted as <NAME>
      CONTINUUM_REDACT_DENY_FILE  UTF-8 file of exact strings, one per line, redacted as <DENIED>
      CONTINUUM_REDACT_PHONE_REGION  region(s) for phone numbers written without +country: US (default) or a
                               comma list such as US,GB
      (the CONTINUUM_REDACT_* variables are read by continuum_pipeline.privacy.redact, stdlib + validators only)
      CONTINUUM_PRIVACY_RULES  a YAML list of exclusion rules shared by every task (read by privacy.rules)
    """

    profile: str
    home: Path
    landing_dir: Path
    catalog_uri: str
    warehouse: str
    namespace: str
    mlflow_uri: str
    capture_queue_size: int
    capture_segment_records: int
    capture_flush_seconds: float
    capture_max_bytes: int
    ingest_max_segments: int
    max_record_bytes: int
    pool_wait_seconds: float
    tasks: tuple[Path, ...]
    serve_api_keys: tuple[str, ...] = field(default=(), repr=False)  # bearer keys for the gateway and OTLP
    langfuse_public_key: str | None = None  # Basic auth of the Langfuse-compatible paths (public:secret)
    langfuse_secret_key: str | None = field(default=None, repr=False)
    serve_allow_no_auth: bool = False  # only honoured when serving on 127.0.0.1
    serve_max_body_bytes: int = 16 << 20
    # OTLP receiver: span/resource attributes naming the task (first found wins) and the consent attribute
    otlp_task_attributes: tuple[str, ...] = ("continuum.task", "langfuse.trace.name", "service.name")
    otlp_consent_attribute: str = "continuum.consent"
    gateway_arms: Path | None = None  # the gateway's arms file (weights per task), re-read when it changes

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
            capture_queue_size=_int_env("CONTINUUM_CAPTURE_QUEUE_SIZE", 100_000),
            capture_segment_records=_int_env("CONTINUUM_CAPTURE_SEGMENT_RECORDS", 5_000),
            capture_flush_seconds=_float_env("CONTINUUM_CAPTURE_FLUSH_SECONDS", 1.0),
            capture_max_bytes=_int_env("CONTINUUM_CAPTURE_MAX_BYTES", 64 << 20),
            ingest_max_segments=_int_env("CONTINUUM_INGEST_MAX_SEGMENTS", 2_000),
            max_record_bytes=_int_env("CONTINUUM_MAX_RECORD_BYTES", 1 << 20),
            pool_wait_seconds=_float_env("CONTINUUM_POOL_WAIT_SECONDS", 300.0),
            serve_api_keys=tuple(k.strip() for k in (_env("CONTINUUM_SERVE_API_KEYS") or "").split(",") if k.strip()),
            langfuse_public_key=_env("CONTINUUM_LANGFUSE_PUBLIC_KEY"),
            langfuse_secret_key=_env("CONTINUUM_LANGFUSE_SECRET_KEY"),
            serve_allow_no_auth=(_env("CONTINUUM_SERVE_ALLOW_NO_AUTH") or "").lower() in ("1", "true", "yes"),
            serve_max_body_bytes=_int_env("CONTINUUM_SERVE_MAX_BODY_BYTES", 16 << 20),
            otlp_task_attributes=tuple(a.strip() for a in (_env("CONTINUUM_OTLP_TASK_ATTRIBUTES") or
                                   "continuum.task,langfuse.trace.name,service.name").split(",") if a.strip()),
            otlp_consent_attribute=_env("CONTINUUM_OTLP_CONSENT_ATTRIBUTE", "continuum.consent"),
            gateway_arms=Path(_env("CONTINUUM_GATEWAY_ARMS", str(home / "gateway" / "arms.json"))).expanduser().resolve(),
            tasks=tuple(Path(p).expanduser().resolve() for p in
                        (_env("CONTINUUM_TASKS") or str(EXAMPLE_TASKS)).split(os.pathsep) if p),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise SettingsError(f"{f.name} must be positive, got {value}; fix its CONTINUUM_* variable")
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
            "CONTINUUM_TASKS": os.pathsep.join(map(str, self.tasks)),
        }
        return env


def get_settings() -> Settings:
    """Settings as the environment says now (not cached: tests and the CLI change the environment)."""
    return Settings.from_env()
