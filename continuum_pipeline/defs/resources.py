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


class ScenarioResource(dg.ConfigurableResource):
    """The scenario whose knowledge base the verifier judges by (the demo's support desk by default)."""

    path: str | None = None
    phase: str = "before"  # which side of the policy change the knowledge base is on

    def desk(self):
        from continuum_pipeline.scenario import SupportDesk, load_scenario

        return SupportDesk(load_scenario(self.path))

    def verifier(self):
        """A programmatic judge: the KB's answer for the interaction's intent and slots, at the current phase.
        Its version names the phase, so a policy change relabels every interaction under the new KB."""
        from continuum_pipeline.judge.verifier import ProgrammaticVerifier

        desk = self.desk()
        phase = self.phase
        return ProgrammaticVerifier(lambda item: desk.check(item.response, {**item.metadata, "phase": phase}),
                                    name="kb_verifier", version=f"{desk.scenario.name}-{phase}")


class JudgeEndpointResource(dg.ConfigurableResource):
    """An OpenAI-compatible endpoint for the LLM judge (vLLM, OpenAI, Ollama); unset → no LLM judge."""

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None

    def judge(self):
        if not (self.base_url and self.model):
            return None
        from continuum_pipeline.judge.llm import LLMJudge, RubricCriterion

        return LLMJudge(base_url=self.base_url, model=self.model, api_key=self.api_key, criteria=[
            RubricCriterion("correct", "The answer states the right facts for the customer's request.", 2.0),
            RubricCriterion("helpful", "The answer tells the customer what to do next, briefly and politely.", 1.0),
        ])


class MLflowResource(dg.ConfigurableResource):
    tracking_uri: str
    model_name: str = "continuum-support"
    experiment: str = "continuum-training"
    artifact_root: str | None = None


class FlywheelResource(dg.ConfigurableResource):
    """Where models and runs live, and the thresholds that decide when to train."""

    home: str
    min_reward: float = 0.8
    min_new_samples: int = 200
    quality_drop: float = 0.15
    window_days: int = 3
    max_negative_rate: float = 0.3
    cooldown_hours: float = 6.0

    @property
    def models_dir(self) -> Path:
        return Path(self.home) / "models"

    @property
    def runs_dir(self) -> Path:
        return Path(self.home) / "runs"


def resources_from_settings(settings: Settings) -> dict[str, object]:
    return {
        "lake": LakeResource(catalog_uri=settings.catalog_uri, warehouse=settings.warehouse, namespace=settings.namespace),
        "landing": LandingResource(landing_dir=str(settings.landing_dir), max_segments=settings.ingest_max_segments,
                                   max_record_bytes=settings.max_record_bytes),
        "scenario": ScenarioResource(path=settings.scenario, phase=settings.scenario_phase),
        "judge_endpoint": JudgeEndpointResource(base_url=settings.judge_base_url, model=settings.judge_model,
                                                api_key=settings.judge_api_key),
        "mlflow": MLflowResource(tracking_uri=settings.mlflow_uri, model_name=settings.model_name,
                                 artifact_root=str(settings.mlflow_artifacts)),
        "flywheel": FlywheelResource(home=str(settings.home), min_reward=settings.min_reward,
                                     min_new_samples=settings.trigger_min_samples,
                                     quality_drop=settings.trigger_quality_drop, window_days=settings.trigger_window_days,
                                     max_negative_rate=settings.trigger_max_negative_rate,
                                     cooldown_hours=settings.trigger_cooldown_hours),
        "pipes_subprocess_client": dg.PipesSubprocessClient(env=settings.as_env()),
    }
