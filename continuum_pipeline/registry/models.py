"""Register candidates, move aliases, find the champion, and trace lineage back to interactions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
TAG = "continuum."  # prefix of every lineage tag


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str | None
    aliases: tuple[str, ...]
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(tracking_uri: str):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path | str | None = None) -> str:
    """Create the experiment with an explicit artifact location: a SQLite store would default to ./mlruns in
    whatever directory the process runs from. Without a root, artifacts go next to the SQLite database."""
    c = client(tracking_uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_root is None and tracking_uri.startswith("sqlite:///"):
        artifact_root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    location = Path(artifact_root).resolve().as_uri() if artifact_root and "://" not in str(artifact_root) else artifact_root
    return c.create_experiment(name, artifact_location=location)


def register(tracking_uri: str, model_name: str, merged_dir: str | Path, run_id: str, tags: dict[str, str]) -> ModelVersionRef:
    """Log the merged model into its training run, register it, alias it `challenger` (and `champion` if first)."""
    import mlflow

    from continuum_pipeline.registry import pyfunc

    c = client(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=pyfunc.__file__,
                                       artifacts={"hf_model": str(merged_dir)},
                                       pip_requirements=["continuum-pipeline[training]"])
    full_tags = {f"{TAG}{k}": str(v) for k, v in tags.items()} | {f"{TAG}mlflow_run_id": run_id}
    mv = mlflow.register_model(info.model_uri, model_name, tags=full_tags)
    first = champion(tracking_uri, model_name) is None
    c.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    if first:
        c.set_registered_model_alias(model_name, CHAMPION, mv.version)
    return get_version(tracking_uri, model_name, mv.version)


class PromotionError(ValueError):
    """A promotion or rollback that cannot be done; the message says why and what to do."""


def promote(tracking_uri: str, model_name: str, version: str | int) -> ModelVersionRef:
    """Make `version` the champion (the rollout stage decides when; this is the registry's half). The champion it
    replaces keeps alias `previous`, so switching back is one alias move (`rollback`)."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        c.get_model_version(model_name, str(version))
    except MlflowException:
        raise PromotionError(f"{model_name} has no version {version}: `continuum lineage {model_name}` lists the "
                             "registered versions") from None
    old = champion(tracking_uri, model_name)
    if old is not None and old.version != str(version):
        c.set_registered_model_alias(model_name, PREVIOUS, old.version)
    c.set_registered_model_alias(model_name, CHAMPION, str(version))
    return get_version(tracking_uri, model_name, version)


def rollback(tracking_uri: str, model_name: str) -> ModelVersionRef:
    """Switch back: the `previous` version becomes champion again and the champion it replaces becomes `previous`
    (a second rollback undoes the first). Returns the new champion."""
    current, previous = champion(tracking_uri, model_name), by_alias(tracking_uri, model_name, PREVIOUS)
    if current is None or previous is None:
        raise PromotionError(f"{model_name} has no `previous` version to roll back to (it gets one when a promotion "
                             "replaces a champion); promote a version by number instead")
    return promote(tracking_uri, model_name, previous.version)


def by_alias(tracking_uri: str, model_name: str, alias: str) -> ModelVersionRef | None:
    """The version holding `alias`, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(tracking_uri).get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return ModelVersionRef(model_name, str(mv.version), mv.run_id, tuple(mv.aliases), dict(mv.tags))


def aliases(tracking_uri: str, model_name: str) -> dict[str, str]:
    """Alias → version, as the registry holds them now."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in client(tracking_uri).get_registered_model(model_name).aliases.items()}
    except MlflowException:
        return {}


def is_http(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def run_url(tracking_uri: str, run_id: str) -> str | None:
    """The MLflow UI page of a run, when the tracking URI is an MLflow server (a file or SQLite store has none)."""
    if not is_http(tracking_uri) or not run_id:
        return None
    experiment_id = client(tracking_uri).get_run(run_id).info.experiment_id
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(tracking_uri: str, model_name: str, version: str | int) -> str | None:
    """The MLflow UI page of a registered model version (an MLflow server only)."""
    if not is_http(tracking_uri):
        return None
    from urllib.parse import quote

    return f"{tracking_uri.rstrip('/')}/#/models/{quote(model_name)}/versions/{version}"


def get_version(tracking_uri: str, model_name: str, version: str | int) -> ModelVersionRef:
    c = client(tracking_uri)
    mv = c.get_model_version(model_name, str(version))
    return ModelVersionRef(model_name, str(mv.version), mv.run_id, tuple(mv.aliases), dict(mv.tags))


def champion(tracking_uri: str, model_name: str) -> ModelVersionRef | None:
    return by_alias(tracking_uri, model_name, CHAMPION)  # None: no such model or no champion yet


def versions(tracking_uri: str, model_name: str) -> list[ModelVersionRef]:
    c = client(tracking_uri)
    found = c.search_model_versions(f"name = '{model_name}'")
    return sorted((get_version(tracking_uri, model_name, mv.version) for mv in found), key=lambda v: int(v.version))


def model_dir(tracking_uri: str, ref: ModelVersionRef, cache: Path) -> Path:
    """The version's Hugging Face folder on local disk (downloaded once into `cache`)."""
    import mlflow

    client(tracking_uri)
    target = cache / ref.name / ref.version
    folder = target / "artifacts" / "hf_model"
    if not folder.exists():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(target))
    if not folder.exists():  # layouts differ across MLflow versions: find the folder holding config.json
        folder = next(p.parent for p in target.rglob("config.json"))
    return folder


def tag_version(tracking_uri: str, model_name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a registered version (e.g. `continuum.trained_on_deleted_data`); idempotent."""
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_model_version_tag(model_name, str(version), k, str(v))
