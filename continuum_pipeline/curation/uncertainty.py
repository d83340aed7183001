"""The model's own uncertainty on a training example: mean token NLL of the reward-passing target.

High NLL = the champion would not have said this: it is where training moves the model most. Scored in
batches by a subprocess (`python -m continuum_pipeline.curation.uncertainty`), so torch never loads into a
Dagster process and the thread count is explicit; results are cached per (model version, content hash),
so a dataset rebuild scores only what is new. One scoring process at a time (the caller waits for it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNCERTAINTY = pa.schema([
    pa.field("content_hash", pa.string()),
    pa.field("model_version", pa.string()),  # "base" or the registered version
    pa.field("nll", pa.float64()),  # mean NLL per target token, nats
])


def target_nll(model_dir: str | Path, conversations: Sequence[list[dict]], threads: int = 1,
               batch_size: int = 16, max_length: int = 256) -> list[float]:
    """Mean NLL of each conversation's last (assistant) turn given the turns before it, under the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for conversation in conversations:
        prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(conversation, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        if f_ids[:len(p_ids)] != p_ids:  # a template that renders the prompt differently inside the whole
            f_ids = p_ids + tokenizer(conversation[-1]["content"], add_special_tokens=False)["input_ids"]
        f_ids = f_ids[:max_length]
        labels = [-100] * min(len(p_ids), len(f_ids)) + f_ids[len(p_ids):]
        rows.append((f_ids, labels))
    out: list[float] = [float("nan")] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths pad little
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            chunk = order[lo:lo + batch_size]
            width = max(len(rows[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                n = len(rows[i][0])
                ids[r, :n] = torch.tensor(rows[i][0])
                labels[r, :n] = torch.tensor(rows[i][1])
                mask[r, :n] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
            valid = (target != -100).float()
            per_row = (nll * valid).sum(1) / valid.sum(1).clamp(min=1)
            for r, i in enumerate(chunk):
                out[i] = float(per_row[r]) if valid[r].sum() > 0 else float("nan")
    return out


def score_out_of_process(model_dir: str | Path, conversations: Sequence[list[dict]], threads: int = 1,
                         batch_size: int = 16, timeout_s: float = 3600) -> list[float]:
    """target_nll in a subprocess with `threads` torch/OMP threads (never two at once: the caller blocks)."""
    with tempfile.TemporaryDirectory(prefix="continuum-uncertainty-") as tmp:
        src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.json"
        src.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        done = subprocess.run([sys.executable, "-m", "continuum_pipeline.curation.uncertainty", str(model_dir),
                               str(src), str(dst), "--threads", str(threads), "--batch-size", str(batch_size)],
                              env=env, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"uncertainty scoring with {model_dir} failed (exit {done.returncode}): "
                               f"{done.stderr[-2000:]}")
        return json.loads(dst.read_text())


def scored_cached(content_hashes: Sequence[str], conversations: Sequence[list[dict]], model_version: str,
                  model_dir: str | Path, cached: pa.Table | None, threads: int = 1) -> tuple[np.ndarray, pa.Table]:
    """NLL per row (aligned with the inputs) from the cache where present, else scored out of process; and the
    new cache rows to append."""
    known: dict[str, float] = {}
    if cached is not None and cached.num_rows:
        mine = cached.filter(pc.equal(cached["model_version"], model_version))
        known = dict(zip(mine["content_hash"].to_pylist(), mine["nll"].to_pylist(), strict=True))
    missing: dict[str, list[dict]] = {}
    for h, c in zip(content_hashes, conversations, strict=True):
        if h not in known:
            missing.setdefault(h, c)
    if missing:
        known.update(zip(missing, score_out_of_process(model_dir, list(missing.values()), threads), strict=True))
    new_rows = pa.Table.from_pylist([{"content_hash": h, "model_version": model_version, "nll": known[h]}
                                     for h in missing], schema=UNCERTAINTY)
    return np.array([known[h] for h in content_hashes], dtype=np.float64), new_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mean target-token NLL of conversations under a causal LM.")
    parser.add_argument("model_dir")
    parser.add_argument("conversations", help="JSONL, one {\"messages\": [...]} per line")
    parser.add_argument("out", help="JSON list of floats, one per line of the input")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    conversations = [json.loads(line)["messages"] for line in Path(args.conversations).read_text().splitlines()
                     if line.strip()]
    scores = target_nll(args.model_dir, conversations, args.threads, args.batch_size)
    Path(args.out).write_text(json.dumps(scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
