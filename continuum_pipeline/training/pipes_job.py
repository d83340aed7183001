"""Dagster Pipes entry point: run one SFT training out of process and report the result to Dagster.

`python -m continuum_pipeline.training.pipes_job CONFIG.json`, launched by the candidate_model asset
(a subprocess here; a Kubernetes job on GPU nodes at scale — the script is the same).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from dagster_pipes import open_dagster_pipes

    from continuum_pipeline.training.sft import SFTRunConfig, train

    argv = sys.argv[1:] if argv is None else argv
    with open_dagster_pipes() as pipes:
        config = SFTRunConfig(**json.loads(Path(argv[0]).read_text()))
        pipes.log.info(f"training from {config.base_model} on {config.train_file}")
        result = train(config, progress=lambda event, info: pipes.log.info(f"{event}: {info}"))
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
