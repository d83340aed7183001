"""Dagster Pipes entry point: run one SFT training out of process and report the result to Dagster.

`python -m continuum_pipeline.training.pipes_job CONFIG.json`, launched by the candidate_model asset
(a subprocess here; a Kubernetes job on GPU nodes at scale — the script is the same).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from continuum_pipeline.progress import Milestones


def progress_reporter(say: Callable[[str], None], every: float = 0.1) -> Callable[[str, dict], None]:
    """Turns SFT progress events into short lines: start, about every 10% of the steps, end."""
    steps = Milestones(every, at_end=False)  # the "end" line closes the run

    def report(event: str, info: dict) -> None:
        if event == "start":
            say(f"training on {info['train_rows']} rows ({info['eval_rows']} validation) from {info['base_model']}")
        elif event == "log" and "loss" in info and info.get("max_steps"):
            if steps.due(info["step"], info["max_steps"]):
                say(f"step {info['step']}/{info['max_steps']} loss {info['loss']:.4f}")
        elif event == "end":
            metrics = info["metrics"]
            say(f"done in {info['seconds']:.0f}s: final loss {metrics.get('train_loss_final', float('nan')):.4f}"
                + (f", validation loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""))

    return report


def main(argv: list[str] | None = None) -> int:
    from dagster_pipes import open_dagster_pipes

    from continuum_pipeline.training.sft import SFTRunConfig, train

    argv = sys.argv[1:] if argv is None else argv
    with open_dagster_pipes() as pipes:
        config = SFTRunConfig(**json.loads(Path(argv[0]).read_text()))
        result = train(config, progress=progress_reporter(pipes.log.info))
        pipes.report_asset_materialization(metadata={
            "merged_dir": result.merged_dir,
            "adapter_dir": result.adapter_dir,
            "mlflow_run_id": result.mlflow_run_id or "",
            "train_rows": result.train_rows,
            "train_seconds": round(result.seconds, 1),
            **{f"metric_{k}": float(v) for k, v in result.metrics.items()},
            **{k: v for k, v in (pipes.extras or {}).items() if isinstance(v, str | int | float)},
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
