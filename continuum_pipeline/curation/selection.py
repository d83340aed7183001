"""Which eligible rows train: near-duplicate removal, then a selection strategy down to `target_size`.

Strategies (CurationSpec.strategy), over the train split (validation rows never train and stay as they are):
- all: every row.
- uncertainty: the rows with the highest mean target-token NLL under the champion (the base before v1):
  what the model would not have said.
- diversity: greedy k-center on the user turns' embeddings (each pick is the row farthest from every pick
  so far): the underserved parts of the input distribution get a row as soon as the head has one.
- core_set: the same k-center, but starting from what the previous dataset version trained on, so a
  retraining adds what the earlier one lacked (Sener & Savarese's core-set for active learning).
- active_learning: greedy picks by score = (1 − λ)·quality + λ·novelty, λ = diversity_coefficient;
  quality = mean of the reward's and the uncertainty's ranks in [0, 1] (uncertainty dropped when not
  scored), novelty = distance to the nearest row already trained on or picked, scaled to [0, 1] each step.
  λ = 0 is "best reward, most uncertain first"; λ = 1 is core-set. Picks update novelty (a matvec per pick),
  so the selection spreads out as it fills.

Embeddings are L2-normalised, so squared distance = 2 − 2·cosine: one matrix-vector product per pick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.curation.embeddings import user_turn
from continuum_pipeline.curation.near_dup import near_duplicates

STRATEGIES = ("all", "uncertainty", "diversity", "core_set", "active_learning")


def target_count(target_size: int | float | None, eligible: int) -> int:
    if target_size is None:
        return eligible
    if isinstance(target_size, float) and target_size < 1:
        return min(eligible, max(1, round(target_size * eligible)))
    return min(eligible, int(target_size))


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 2.0 - 2.0 * (x @ c))


def _nearest_anchor(x: np.ndarray, anchors: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """`nearest` lowered to each row's squared distance to its closest anchor (anchors in blocks of 1024)."""
    for lo in range(0, len(anchors), 1024):
        nearest = np.minimum(nearest, _sq_dist(x, anchors[lo:lo + 1024].T).min(axis=1))
    return nearest


def k_center(x: np.ndarray, k: int, anchors: np.ndarray | None = None) -> np.ndarray:
    """Greedy k-center over rows of L2-normalised `x`: indices of k picks. Without anchors the first pick is the
    row farthest from the mean (deterministic); with anchors, distances start from them (core-set)."""
    n = len(x)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if anchors is not None and len(anchors):
        nearest = _nearest_anchor(x, anchors, np.full(n, np.inf))
        first = int(np.argmax(nearest))
    else:
        first = int(np.argmax(_sq_dist(x, x.mean(axis=0))))
        nearest = np.full(n, np.inf)
    picks = [first]
    nearest = np.minimum(nearest, _sq_dist(x, x[first]))
    for _ in range(k - 1):
        nxt = int(np.argmax(nearest))
        picks.append(nxt)
        nearest = np.minimum(nearest, _sq_dist(x, x[nxt]))
    return np.asarray(picks, dtype=np.int64)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank); NaN ranks lowest."""
    v = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    for value in np.unique(v):  # ties: mean rank, so equal rewards score equally
        same = v == value
        if same.sum() > 1:
            ranks[same] = ranks[same].mean()
    return ranks / max(len(v) - 1, 1)


def active_learning(x: np.ndarray | None, reward: np.ndarray, uncertainty: np.ndarray | None, k: int,
                    diversity_coefficient: float, anchors: np.ndarray | None = None) -> np.ndarray:
    """Greedy blend of quality and novelty (see the module docstring)."""
    n = len(reward)
    k = min(k, n)
    quality = _ranks(reward) if uncertainty is None else 0.5 * _ranks(reward) + 0.5 * _ranks(uncertainty)
    lam = diversity_coefficient if x is not None else 0.0
    nearest = np.full(n, 4.0)  # the largest squared distance between unit vectors
    if x is not None and anchors is not None and len(anchors):
        nearest = _nearest_anchor(x, anchors, nearest)
    chosen = np.zeros(n, dtype=bool)
    picks = []
    for _ in range(k):
        novelty = nearest / nearest.max() if nearest.max() > 0 else np.zeros(n)
        score = np.where(chosen, -np.inf, (1 - lam) * quality + lam * novelty)
        pick = int(np.argmax(score))
        picks.append(pick)
        chosen[pick] = True
        if x is not None:
            nearest = np.minimum(nearest, _sq_dist(x, x[pick]))
    return np.asarray(picks, dtype=np.int64)


def select(strategy: str, k: int, reward: np.ndarray, embeddings: np.ndarray | None = None,
           uncertainty: np.ndarray | None = None, anchors: np.ndarray | None = None,
           diversity_coefficient: float = 0.5) -> np.ndarray:
    """Indices of the k rows the strategy picks, in pick order."""
    n = len(reward)
    k = min(k, n)
    if strategy == "all" or k >= n:
        return np.arange(n)
    if strategy == "uncertainty":
        if uncertainty is None:
            raise ValueError("strategy uncertainty needs the champion's NLL per row")
        return np.lexsort((-_ranks(reward), -np.nan_to_num(uncertainty, nan=-np.inf)))[:k]
    if strategy in ("diversity", "core_set"):
        if embeddings is None:
            raise ValueError(f"strategy {strategy} needs user-turn embeddings: materialize the task's embeddings asset")
        return k_center(embeddings, k, anchors if strategy == "core_set" else None)
    if strategy == "active_learning":
        return active_learning(embeddings, reward, uncertainty, k, diversity_coefficient, anchors)
    raise ValueError(f"curation.strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


@dataclass
class Providers:
    """What selection needs from outside the table (the asset backs these with lake caches)."""

    embed: Callable[[list[str]], np.ndarray] | None = None  # user turns → unit vectors
    uncertainty: Callable[[list[str], list[list[dict]]], np.ndarray] | None = None  # hashes, conversations → NLL
    anchors: Callable[[], np.ndarray | None] | None = None  # embeddings of what earlier versions trained on


@dataclass
class Selection:
    strategy: str
    eligible: int  # train rows after near-dup removal
    selected: int
    clusters: list[dict] = field(default_factory=list)  # near-dup clusters: kept id, size, reward, removed ids
    embeddings: np.ndarray | None = None  # of the eligible train rows (for the report's map and coverage)
    chosen: np.ndarray | None = None  # mask over the eligible train rows
    rewards: np.ndarray | None = None  # of the eligible train rows


def near_dup_texts(table: pa.Table, include_response: bool) -> list[str]:
    texts = []
    for messages in table["messages"].to_pylist():
        prompt = user_turn(messages[:-1] if messages else messages)
        texts.append(prompt + ("\n" + (messages[-1]["content"] or "") if include_response and messages else ""))
    return texts


def refine(dataset, spec, providers: Providers) -> Selection:
    """Near-duplicate removal and selection on a CuratedDataset (curation.dataset), in place: its table loses
    the rows and gains `near_dup_cluster` (the kept row's interaction id) and `near_dup_size`; `removed`
    gains a count per step. `spec` is the task's CurationSpec."""
    table = dataset.table
    clusters: list[dict] = []
    cluster_id = table["interaction_id"].to_pylist()
    size = [1] * table.num_rows
    if spec.near_dup.enabled and table.num_rows:
        result = near_duplicates(near_dup_texts(table, spec.near_dup.include_response),
                                 table["reward"].to_numpy(zero_copy_only=False),
                                 table["ts"].cast(pa.int64()).to_numpy(zero_copy_only=False),
                                 threshold=spec.near_dup.threshold, shingle_size=spec.near_dup.shingle_size)
        ids = np.asarray(cluster_id, dtype=object)
        members: dict[int, list[int]] = {}
        for i, c in enumerate(result.cluster):
            members.setdefault(int(c), []).append(i)
        rewards = table["reward"].to_pylist()
        for kept, rows in members.items():
            if len(rows) > 1:
                clusters.append({"kept": ids[kept], "size": len(rows), "reward": rewards[kept],
                                 "removed": [ids[r] for r in rows if r != kept]})
        cluster_id = [ids[c] for c in result.cluster]
        size = [len(members[int(c)]) for c in result.cluster]
        table = table.append_column("near_dup_cluster", pa.array(cluster_id, pa.string()))
        table = table.append_column("near_dup_size", pa.array(size, pa.int32()))
        before = table.num_rows
        table = table.filter(pa.array(result.keep))
        dataset.removed[f"near-duplicate (J ≥ {spec.near_dup.threshold:g})"] = before - table.num_rows
    else:
        table = table.append_column("near_dup_cluster", pa.array(cluster_id, pa.string()))
        table = table.append_column("near_dup_size", pa.array(size, pa.int32()))

    train = np.flatnonzero(pc.equal(table["split"], "train").to_numpy(zero_copy_only=False))
    train_rows = table.take(pa.array(train, pa.int64()))
    k = target_count(spec.target_size, len(train))
    texts = [user_turn(m[:-1]) for m in train_rows["messages"].to_pylist()]
    needs_embeddings = spec.strategy in ("diversity", "core_set", "active_learning")
    embeddings = None
    if providers.embed is not None and len(train):
        embeddings = providers.embed(texts)
    elif needs_embeddings and k < len(train):
        raise ValueError(f"curation.strategy {spec.strategy} needs user-turn embeddings, and none were given")
    uncertainty = None
    if spec.strategy in ("uncertainty", "active_learning") and providers.uncertainty is not None and k < len(train):
        uncertainty = providers.uncertainty(train_rows["content_hash"].to_pylist(),
                                            train_rows["messages"].to_pylist())
    anchors = providers.anchors() if providers.anchors and spec.strategy in ("core_set", "active_learning") else None
    reward = train_rows["reward"].to_numpy(zero_copy_only=False).astype(np.float64)
    picks = select(spec.strategy, k, reward, embeddings, uncertainty, anchors, spec.diversity_coefficient)
    chosen = np.zeros(len(train), dtype=bool)
    chosen[picks] = True
    drop = np.zeros(table.num_rows, dtype=bool)
    drop[train[~chosen]] = True
    if spec.strategy != "all":
        dataset.removed[f"not selected ({spec.strategy}, target {k})"] = int(drop.sum())
    dataset.table = table.filter(pa.array(~drop))
    return Selection(spec.strategy, len(train), int(chosen.sum()), sorted(clusters, key=lambda c: -c["size"]),
                     embeddings, chosen, reward)
