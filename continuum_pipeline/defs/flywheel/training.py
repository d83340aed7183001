"""The task's base model and its candidate model (LoRA SFT, out of process through Dagster Pipes)."""

import json
import sys
import warnings
from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import golden_key, group, key
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig


def base_dir(task: TaskConfig, flywheel: FlywheelResource) -> str:
    """Where training starts when no version is registered: the locally built model, or the configured id."""
    return str(flywheel.task_dir(task.name) / "base") if task.base_model.builtin else task.base_model.id


def start_model(task: TaskConfig, mlflow: MLflowResource, flywheel: FlywheelResource) -> tuple[str, str]:
    """(model dir or hub id, name) of the champion, or of the base model before the first version."""
    from continuum_pipeline.registry import models

    champion = models.champion(mlflow.tracking_uri, task.registered_model_name)
    if champion is None:
        return base_dir(task, flywheel), "base"
    return str(models.model_dir(mlflow.tracking_uri, champion, flywheel.task_dir(task.name) / "registry")), \
        f"v{champion.version}"


def check_base_model_exists(task: TaskConfig, start: str) -> None:
    """Say what to do when training would start from a base model folder that is not there (from_pretrained
    would read the path as a hub id: `OSError: Repo id must be in the form 'repo_name' …`)."""
    path_like = task.base_model.builtin or start.startswith((".", "/", "~")) or start.count("/") > 1
    if path_like and not (Path(start).expanduser() / "config.json").exists():
        raise dg.Failure(
            f"{task.name}/candidate_model: no base model at {start}: materialize `{task.name}/base_model` first "
            f"(`dg launch --assets {task.name}/base_model`, or the task's training job, which builds it), or set "
            "base_model.id in the task YAML to a Hugging Face model id or a local model folder")


class BaseModelRunConfig(dg.Config):
    """Launchpad overrides for builtin:tiny (None keeps the task's YAML / the builder's defaults)."""

    pretraining_conversations: int | None = None
    hidden_size: int | None = None
    layers: int | None = None
    pretrain_epochs: int | None = None
    pretrain_max_steps: int | None = None


class TrainingRunConfig(dg.Config):
    """Launchpad overrides of the task's `training` settings for one run (None keeps the YAML's)."""

    epochs: float | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    seed: int | None = None
    threads: int | None = None


def base_model(task: TaskConfig) -> dg.AssetsDefinition:
    spec = task.base_model
    description = (f"`{spec.id}`" + (f" at revision {spec.revision}" if spec.revision else "") +
                   " loaded with from_pretrained: its config and tokenizer (with a chat template) are checked here."
                   if not spec.builtin else
                   "A small Llama-style model and tokenizer built and pre-trained locally on "
                   + (f"`{spec.pretraining_corpus}`" if spec.pretraining_corpus else "the task's captured interactions")
                   + " (cached: rebuilt only when its inputs change).")

    @dg.asset(key=key(task, "base_model"), group_name=group(task, "training"), kinds={"pytorch"},
              pool="continuum_training", description=description,
              deps=[] if spec.builtin and spec.pretraining_corpus else [key(task, "sft_candidates")] if spec.builtin else [])
    def _base_model(context: dg.AssetExecutionContext, config: BaseModelRunConfig, lake: LakeResource,
                    flywheel: FlywheelResource) -> dg.MaterializeResult:
        from continuum_pipeline.training import base_model as builder

        if not spec.builtin:
            info = builder.check_pretrained(spec.id, spec.revision)
            context.log.info(f"base model {spec.id}: {info}")
            local = Path(spec.id).expanduser().exists()  # a local folder is a path; a hub id is text
            return dg.MaterializeResult(metadata={
                "path": dg.MetadataValue.path(spec.id) if local else spec.id, "revision": spec.revision or "", **info})
        conversations, texts = builder.pretraining_corpus(
            spec.pretraining_corpus, config.pretraining_conversations or spec.pretraining_conversations,
            lambda: _captured_conversations(lake, task))
        overrides = {k: v for k, v in config.model_dump().items() if v is not None and k != "pretraining_conversations"}
        path = builder.build_base_model(conversations, texts, Path(base_dir(task, flywheel)),
                                        builder.BaseModelConfig(**overrides), say=context.log.info)
        info = json.loads((path / builder.MARKER_FILE).read_text())
        # `seconds` of the marker is how long the (possibly cached) build took: named for its meaning
        return dg.MaterializeResult(metadata={
            **{k: v for k, v in info.items() if isinstance(v, str | int | float) and k != "seconds"},
            "path": dg.MetadataValue.path(str(path)),
            **({"build_seconds": float(info["seconds"])} if "seconds" in info else {})})

    return _base_model


def _captured_conversations(lake: LakeResource, task: TaskConfig) -> list[list[dict]]:
    """The task's own traffic (successful calls that consent, the exclusion rules and sampling allow: pre-training
    is training) as pre-training conversations."""
    from continuum_pipeline.privacy.rules import privacy_policy

    the_lake = lake.lake()
    table = task.table("sft_candidates")
    if not the_lake.table_exists(table):
        return []
    candidates = the_lake.read_arrow(table).select(["interaction_id", "messages", "target_response", "status",
                                                    "consent"])
    rows = privacy_policy(the_lake, task).apply(candidates, {}).to_pylist()
    return [[*r["messages"], {"role": "assistant", "content": r["target_response"]}] for r in rows
            if r["status"] == "ok" and r["messages"] and r["target_response"]]


def candidate_model(task: TaskConfig) -> dg.AssetsDefinition:
    @dg.asset(key=key(task, "candidate_model"), group_name=group(task, "training"),
              # what it really reads: the dataset, the start model (champion, or the base before v1) and the
              # golden set versions it records in its lineage tags
              deps=[key(task, "sft_dataset"), key(task, "base_model"), key(task, "champion"),
                    *(golden_key(task, g.name) for g in task.golden_sets)], kinds={"pytorch", "mlflow"},
              pool="continuum_training",
              description=f"LoRA {task.training.recipe.upper()} (TRL + PEFT) continuing from the champion (or the "
                          "base model) on the curated dataset, out of process through Dagster Pipes, tracked in MLflow.")
    def _candidate_model(context: dg.AssetExecutionContext, config: TrainingRunConfig, lake: LakeResource,
                         mlflow: MLflowResource,
                         flywheel: FlywheelResource,
                         pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        from continuum_pipeline.defs.flywheel.evaluation import golden_versions
        from continuum_pipeline.registry import models
        from continuum_pipeline.training.sft import SFTRunConfig

        start, start_name = start_model(task, mlflow, flywheel)
        if start_name == "base":
            check_base_model_exists(task, start)
        the_lake = lake.lake()
        dataset_snapshot = the_lake.current_snapshot_id(task.table("sft_dataset"))
        run_dir = flywheel.task_dir(task.name) / "runs" / context.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        dataset = the_lake.read_arrow(task.table("sft_dataset"))
        rows = dataset.select(["split", "messages"]).to_pylist()
        for split in ("train", "validation"):
            (run_dir / f"{split}.jsonl").write_text(
                "".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows if r["split"] == split))
        if not any(r["split"] == "train" for r in rows):
            raise dg.Failure(f"{task.name}/sft_dataset has no training rows: lower `curation.min_reward`, allow more "
                             "consent values in `curation.consent`, or capture more traffic")
        models.ensure_experiment(mlflow.tracking_uri, mlflow.experiment, mlflow.artifact_root)
        lineage = {
            "task": task.name,
            "dataset_snapshot_id": str(dataset_snapshot),
            "interactions_snapshot_id": str(the_lake.current_snapshot_id("interactions")),
            "golden_set_versions": json.dumps(golden_versions(context.instance, task), sort_keys=True),
            "judge_versions": json.dumps({j.name: j.version() for j in task.judges}, sort_keys=True),
            "parent_version": start_name.removeprefix("v"),
            "dagster_run_id": context.run_id,
            "eligible_rows": dataset.num_rows,  # an int in Dagster; MLflow stores tags as strings
        }
        t = task.training.model_copy(update={k: v for k, v in config.model_dump().items() if v is not None})
        sft = SFTRunConfig(base_model=start, revision=task.base_model.revision if start_name == "base" else None,
                           train_file=str(run_dir / "train.jsonl"), eval_file=str(run_dir / "validation.jsonl"),
                           output_dir=str(run_dir / "candidate"), lora_r=t.lora.r,
                           lora_alpha=t.lora.alpha or 2 * t.lora.r, lora_dropout=t.lora.dropout,
                           target_modules="all-linear" if t.lora.target_modules == "auto" else list(t.lora.target_modules),
                           epochs=t.epochs, max_steps=t.max_steps, learning_rate=t.learning_rate,
                           batch_size=t.batch_size, max_length=t.max_length, seed=t.seed, threads=t.threads,
                           mlflow_tracking_uri=mlflow.tracking_uri, mlflow_experiment=mlflow.experiment,
                           run_name=f"{task.name}-candidate-{context.run_id[:8]}",
                           tags={f"continuum.{k}": str(v) for k, v in lineage.items()})  # MLflow: strings
        config_path = run_dir / "sft_config.json"
        config_path.write_text(json.dumps(sft.__dict__, indent=2))
        context.log.info(f"training from {start_name} ({start}) on {dataset.num_rows} curated rows "
                         f"(snapshot {dataset_snapshot})")
        with warnings.catch_warnings():  # Dagster's own use of a preview API inside the Pipes client
            warnings.simplefilter("ignore", dg.PreviewWarning)
            reported = pipes_subprocess_client.run(
                command=[sys.executable, "-m", "continuum_pipeline.training.pipes_job", str(config_path)],
                context=context, extras=lineage,
                env={"OMP_NUM_THREADS": str(t.threads), "MKL_NUM_THREADS": str(t.threads)},
            ).get_materialize_result()
        return candidate_result(reported, run_dir, start, mlflow.tracking_uri)

    return _candidate_model



def candidate_result(reported: dg.MaterializeResult, run_dir: Path, start: str,
                     tracking_uri: str) -> dg.MaterializeResult:
    """What the training job reported, made usable: folders as paths, a link to the MLflow run (on an MLflow
    server), counts as ints, and one timing field per meaning (`train_seconds`: the trainer's optimisation loop;
    `job_seconds`: the whole out-of-process job, loading, merging and saving included)."""
    from continuum_pipeline.defs.metadata import url_metadata
    from continuum_pipeline.registry import models

    raw = {k: getattr(v, "value", v) for k, v in (reported.metadata or {}).items()}
    job_seconds = raw.pop("train_seconds", None)  # the job's wall time (also reported as metric_seconds)
    raw.pop("metric_seconds", None)
    loop_seconds = raw.pop("metric_train_seconds", None)
    meta: dict = {k: v for k, v in raw.items() if k not in ("merged_dir", "adapter_dir")}
    meta.update({
        "merged_dir": dg.MetadataValue.path(str(raw["merged_dir"])),
        "adapter_dir": dg.MetadataValue.path(str(raw["adapter_dir"])),
        "run_dir": dg.MetadataValue.path(str(run_dir)),
        "start_model": dg.MetadataValue.path(start) if Path(start).exists() else start,
        **({"train_seconds": float(loop_seconds)} if loop_seconds is not None else {}),
        **({"job_seconds": float(job_seconds)} if job_seconds is not None else {}),
        **url_metadata("mlflow_run_url", models.run_url(tracking_uri, str(raw.get("mlflow_run_id") or ""))),
    })
    for name in ("eligible_rows", "train_rows", "metric_steps"):
        if name in meta:
            meta[name] = int(meta[name])
    return dg.MaterializeResult(asset_key=reported.asset_key, metadata=meta, check_results=reported.check_results,
                                data_version=reported.data_version, tags=reported.tags)
