"""One LoRA SFT run: continue from a model dir (the champion or the base), save the adapter and a merged model.

Run as a script: `python -m continuum_pipeline.training.sft CONFIG.json` prints the `SFTResult` as JSON on the
last line of stdout. Training jobs run it in a subprocess, so torch never loads in the orchestrator.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

Progress = Callable[[str, dict], None]


@dataclass
class SFTRunConfig:
    base_model: str  # path (or hub id) to start from: the champion's merged model dir or the base model
    train_file: str  # JSON lines, one {"messages": [...]} per line (TRL conversational format)
    eval_file: str | None
    output_dir: str
    revision: str | None = None  # hub revision of base_model
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # PEFT's "all-linear": every linear layer of whatever architecture, except the output head.
    target_modules: list[str] | str = "all-linear"
    threads: int = 1  # torch threads: two training processes on 2 cores must not oversubscribe them
    epochs: float = 10.0  # many passes: a tiny student needs ~300 steps to learn new intents and slot copying
    max_steps: int = -1
    learning_rate: float = 5e-3
    batch_size: int = 16
    max_length: int = 256
    seed: int = 0
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "continuum-training"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class SFTResult:
    adapter_dir: str
    merged_dir: str
    metrics: dict[str, float]
    mlflow_run_id: str | None
    train_rows: int
    seconds: float


def read_conversations(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [{"messages": json.loads(line)["messages"]} for line in handle if line.strip()]


def as_examples(rows: list[dict], markers: bool) -> list[dict]:
    """TRL conversational rows: whole conversations (loss via generation markers) or prompt/completion pairs."""
    if markers:
        return rows
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def train(config: SFTRunConfig, progress: Progress | None = None) -> SFTResult:
    import datasets
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    # Progress goes through `progress` (Dagster Pipes, MLflow); library progress bars would only clutter the log.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    started = time.monotonic()
    notify = progress or (lambda event, info: None)
    out = Path(config.output_dir)
    adapter_dir, merged_dir = out / "adapter", out / "merged"
    train_rows = read_conversations(config.train_file)
    eval_rows = read_conversations(config.eval_file) if config.eval_file else []
    notify("start", {"base_model": config.base_model, "train_rows": len(train_rows), "eval_rows": len(eval_rows)})

    # Seed before the LoRA weights are initialised: SFTTrainer wraps the model before Trainer seeds anything.
    set_seed(config.seed)
    torch.set_num_threads(config.threads)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, revision=config.revision)
    model = AutoModelForCausalLM.from_pretrained(config.base_model, revision=config.revision, dtype=torch.float32)
    markers = "{% generation %}" in (tokenizer.chat_template or "")
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(out / "trainer"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_length,
        # Loss on the answers only: through the chat template's generation markers when it has them (builtin:tiny),
        # else as TRL's prompt/completion pairs (most hub templates have no {% generation %} block).
        assistant_only_loss=markers,
        packing=False,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # transformers 5 name of gradient_checkpointing (TRL defaults it on)
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )

    class _Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            notify("log", {"step": state.global_step, "max_steps": state.max_steps, **(logs or {})})

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(as_examples(train_rows, markers)),
        eval_dataset=Dataset.from_list(as_examples(eval_rows, markers)) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_Forward()],
    )
    trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every log dict to stdout
    output = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = {
        "train_loss": float(output.training_loss),
        "train_loss_final": float(losses[-1]) if losses else float(output.training_loss),
        "steps": float(output.global_step),
        "train_seconds": float(output.metrics.get("train_runtime", 0.0)),
    }
    if eval_rows:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])

    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    # A plain merged model lets the next cycle continue from it and lets serving skip PEFT entirely.
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    metrics["seconds"] = round(time.monotonic() - started, 3)

    run_id = _log_to_mlflow(config, metrics, adapter_dir) if config.mlflow_tracking_uri else None
    result = SFTResult(str(adapter_dir), str(merged_dir), metrics, run_id, len(train_rows), metrics["seconds"])
    notify("end", asdict(result))
    return result


def _log_to_mlflow(config: SFTRunConfig, metrics: dict[str, float], adapter_dir: Path) -> str:
    import mlflow

    from continuum_pipeline.registry.models import ensure_experiment

    ensure_experiment(config.mlflow_tracking_uri, config.mlflow_experiment)
    mlflow.set_experiment(config.mlflow_experiment)
    params = {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in asdict(config).items()
              if k not in ("mlflow_tracking_uri", "tags")}
    with mlflow.start_run(run_name=config.run_name, tags=config.tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(adapter_dir), "adapter")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m continuum_pipeline.training.sft CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    config = SFTRunConfig(**json.loads(Path(argv[0]).read_text()))
    # Progress goes to stderr so stdout's last line stays the machine-readable result.
    result = train(config, progress=lambda event, info: log.info("%s %s", event, json.dumps(info, default=str)))
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
