"""The base model and the candidate model (LoRA SFT, out of process through Dagster Pipes)."""

import json
import sys
import warnings

import dagster as dg

from continuum_pipeline.defs.metadata import latest_metadata
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, MLflowResource, ScenarioResource


class BaseModelRunConfig(dg.Config):
    pretraining_conversations: int = 600
    hidden_size: int | None = None  # None: the domain defaults (BaseModelConfig)
    layers: int | None = None
    pretrain_epochs: int | None = None
    pretrain_max_steps: int | None = None


@dg.asset(group_name="training", kinds={"pytorch"}, pool="continuum_training",
          description="A tiny Llama-style model and tokenizer built and pre-trained locally on part of the "
                      "scenario's intents (cached: rebuilt only when its inputs change).")
def base_model(context: dg.AssetExecutionContext, config: BaseModelRunConfig, scenario: ScenarioResource,
               flywheel: FlywheelResource) -> dg.MaterializeResult:
    from continuum_pipeline.training.base_model import BaseModelConfig, build_base_model

    overrides = {k: v for k, v in config.model_dump().items() if v is not None and k != "pretraining_conversations"}
    desk = scenario.desk()
    path = build_base_model(desk.pretraining_conversations(config.pretraining_conversations), desk.corpus_texts(),
                            flywheel.models_dir / "base", BaseModelConfig(**overrides), say=context.log.info)
    info = json.loads((path / "continuum_base.json").read_text())
    return dg.MaterializeResult(metadata={"path": str(path), **{k: v for k, v in info.items()
                                                                 if isinstance(v, str | int | float)}})


class TrainingConfig(dg.Config):
    """Overrides of the SFT defaults (continuum_pipeline.training.sft.SFTRunConfig); None keeps the default."""

    epochs: float | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    lora_r: int | None = None
    batch_size: int | None = None
    seed: int = 0


@dg.asset(group_name="training", deps=["sft_dataset", "base_model"], kinds={"pytorch", "mlflow"},
          pool="continuum_training",
          description="LoRA SFT (TRL + PEFT) continuing from the champion (or the base model) on the curated "
                      "dataset, run out of process through Dagster Pipes and tracked in MLflow.")
def candidate_model(context: dg.AssetExecutionContext, config: TrainingConfig, lake: LakeResource,
                    mlflow: MLflowResource, flywheel: FlywheelResource,
                    pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    from continuum_pipeline.registry import models
    from continuum_pipeline.training.sft import SFTRunConfig

    the_lake = lake.lake()
    dataset_snapshot = the_lake.current_snapshot_id("sft_dataset")
    run_dir = flywheel.runs_dir / context.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = the_lake.read_arrow("sft_dataset")
    for split in ("train", "validation"):
        rows = [r for r in dataset.select(["split", "messages"]).to_pylist() if r["split"] == split]
        (run_dir / f"{split}.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    if not any(r == "train" for r in dataset["split"].to_pylist()):
        raise dg.Failure("sft_dataset has no training rows: lower CONTINUUM_MIN_REWARD or capture more traffic")

    champion = models.champion(mlflow.tracking_uri, mlflow.model_name)
    start = (models.model_dir(mlflow.tracking_uri, champion, flywheel.models_dir / "registry") if champion
             else flywheel.models_dir / "base")
    models.ensure_experiment(mlflow.tracking_uri, mlflow.experiment, mlflow.artifact_root)
    lineage = {
        "dataset_snapshot_id": str(dataset_snapshot),
        "interactions_snapshot_id": str(the_lake.current_snapshot_id("interactions")),
        "golden_set_version": str(latest_metadata(context.instance, "golden_set").get("golden_set_version", "")),
        "parent_version": champion.version if champion else "base",
        "dagster_run_id": context.run_id,
        "eligible_rows": str(dataset.num_rows),
    }
    overrides = {k: v for k, v in config.model_dump().items() if v is not None}
    if "lora_r" in overrides:
        overrides["lora_alpha"] = 2 * overrides["lora_r"]
    sft = SFTRunConfig(base_model=str(start), train_file=str(run_dir / "train.jsonl"),
                       eval_file=str(run_dir / "validation.jsonl"), output_dir=str(run_dir / "candidate"),
                       mlflow_tracking_uri=mlflow.tracking_uri, mlflow_experiment=mlflow.experiment,
                       run_name=f"candidate-{context.run_id[:8]}",
                       tags={f"continuum.{k}": v for k, v in lineage.items()}, **overrides)
    config_path = run_dir / "sft_config.json"
    config_path.write_text(json.dumps(sft.__dict__, indent=2))
    context.log.info(f"training from {start} on {dataset.num_rows} curated rows (snapshot {dataset_snapshot})")
    with warnings.catch_warnings():  # Dagster's own use of a preview API inside the Pipes client
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return pipes_subprocess_client.run(
            command=[sys.executable, "-m", "continuum_pipeline.training.pipes_job", str(config_path)],
            context=context, extras=lineage,
        ).get_materialize_result()
