"""Near-duplicate removal: MinHash with LSH banding on normalised word shingles.

Vectorised numpy MinHash rather than `datasketch`: on short texts datasketch is several times slower end to
end at the same recall (bench/curation.py measures both in one run), so it stays a bench peer.

Pipeline: normalise (lowercase, punctuation → space, whitespace collapsed) → word k-shingles hashed to
uint64 → `num_perm` multiply-add-shift hashes take the minimum per document → `bands` bands of `rows` values
each are hashed; documents sharing a band bucket are candidate pairs → candidates are verified by their
estimated Jaccard (share of equal MinHash values) ≥ threshold → connected components give clusters. Within
a cluster the best-rewarded member is kept (ties: the newest), and every row carries its cluster id.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise(text: str) -> list[str]:
    return _WORD.sub(" ", text.lower()).split()


def shingle_hashes(texts: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hashes of every text's word `size`-grams (a text shorter than `size` words is one shingle), all
    texts concatenated, and the owning text's index per shingle. Words are hashed once each (crc32: stable
    across processes, so clusters are reproducible); n-grams combine word hashes in numpy."""
    word_hash: dict[str, int] = {}
    ids: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        words = normalise(text) or [""]
        for w in words:
            h = word_hash.get(w)
            if h is None:
                h = word_hash[w] = zlib.crc32(w.encode())
            ids.append(h)
        lengths[i] = len(words)
    words = np.asarray(ids, dtype=np.uint64)
    doc = np.repeat(np.arange(len(texts)), lengths)
    grams = words.copy()
    valid = np.ones(len(words), dtype=bool)
    for k in range(1, size):
        # the gram starting at p mixes words p … p+k; it exists when p+k is still in the same text
        same = np.r_[doc[k:] == doc[:-k], np.zeros(k, dtype=bool)]
        nxt = np.where(same, np.r_[words[k:], np.zeros(k, dtype=np.uint64)], np.uint64(0))
        grams = grams * np.uint64(0x9E3779B97F4A7C15) + nxt  # wraps mod 2^64: a fixed mix
        valid &= same
    short = lengths < size  # a text shorter than the shingle: its first position's partial gram stands for it
    if short.any():
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        valid[starts[short]] = True
    return grams[valid], doc[valid]


def bands_for(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows), bands × rows ≤ num_perm: the most rows per band (fewest false candidates) for which a
    pair at the threshold still becomes a candidate with probability ≥ 0.97. Recall over precision: a false
    candidate costs one verification (its estimated Jaccard is checked afterwards)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= 0.97:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class MinHasher:
    """`num_perm` multiply-add-shift hashes (Dietzfelbinger: (a·x + b) mod 2^64 >> 32, a odd), vectorised over
    all shingles at once; no modulo, which is what makes uint64 numpy hashing slow."""

    num_perm: int = 128
    shingle_size: int = 2
    seed: int = 1

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        top = np.iinfo(np.uint64).max
        object.__setattr__(self, "_a", rng.integers(0, top, self.num_perm, dtype=np.uint64, endpoint=True)
                           | np.uint64(1))
        object.__setattr__(self, "_b", rng.integers(0, top, self.num_perm, dtype=np.uint64, endpoint=True))

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint64 signatures (values < 2^32)."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint64)
        if not len(texts):
            return out
        grams, doc = shingle_hashes(texts, self.shingle_size)
        # A text's shingles are contiguous, so its minimum is one reduceat over segment starts, taken along the
        # contiguous axis of a (num_perm × shingles) block (6× faster than along axis 0); chunks of whole texts
        # keep the block at a few tens of MB.
        seg = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
        seg_end = np.r_[seg[1:], len(doc)]
        per_chunk = max(1, 2_000_000 // self.num_perm)
        a, b = self._a[:, None], self._b[:, None]
        lo = 0
        while lo < len(seg):
            hi = max(int(np.searchsorted(seg, seg[lo] + per_chunk, side="left")), lo + 1)
            h = grams[None, seg[lo]:seg_end[hi - 1]] * a  # in place from here on: each pass is a memory pass
            h += b
            h >>= np.uint64(32)
            out[doc[seg[lo:hi]]] = np.minimum.reduceat(h, seg[lo:hi] - seg[lo], axis=1).T
            lo = hi
        return out


@dataclass
class NearDupResult:
    cluster: np.ndarray  # per row: cluster id (the index of the cluster's kept row)
    keep: np.ndarray  # per row: True for each cluster's kept member
    candidate_pairs: int
    bands: int
    rows: int

    @property
    def clusters(self) -> int:
        """Clusters with more than one member."""
        _, counts = np.unique(self.cluster, return_counts=True)
        return int((counts > 1).sum())

    @property
    def removed(self) -> int:
        return int((~self.keep).sum())


def near_duplicate_pairs(sigs: np.ndarray, threshold: float, bands: int, rows: int) -> tuple[np.ndarray, int]:
    """Pairs (i, j) whose band buckets collide and whose estimated Jaccard ≥ threshold; and the candidate count.

    In each band's bucket every member is paired with the bucket's first and with its neighbour: linear in the
    bucket size where all pairs would be quadratic on a heavy head of one question; components close the rest."""
    n = len(sigs)
    mix = np.random.default_rng(0).integers(1, 2**63, rows, dtype=np.uint64) | np.uint64(1)
    found = []
    for band in range(bands):
        key = (sigs[:, band * rows:(band + 1) * rows] * mix).sum(axis=1)  # wraps mod 2^64: the band's hash
        order = np.lexsort((np.arange(n), key))
        k = key[order]
        same = k[1:] == k[:-1]
        if not same.any():
            continue
        starts = np.r_[True, ~same]
        first = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]  # per sorted position: its bucket's first
        members = np.flatnonzero(np.r_[False, same])
        found.append(np.stack([order[members - 1], order[members]], axis=1))
        found.append(np.stack([first[members], order[members]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64), 0
    candidates = np.unique(np.sort(np.concatenate(found), axis=1), axis=0)
    candidates = candidates[candidates[:, 0] != candidates[:, 1]]
    similarity = (sigs[candidates[:, 0]] == sigs[candidates[:, 1]]).mean(axis=1)
    return candidates[similarity >= threshold], len(candidates)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest member index) per node: min-label propagation with pointer
    jumping, a few numpy passes (scipy's csgraph would do it too, but is no dependency of the pipeline)."""
    label = np.arange(n)
    if not len(pairs):
        return label
    i, j = pairs[:, 0], pairs[:, 1]
    while True:
        m = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]  # pointer jumping: follow labels to their labels
        if np.array_equal(new, label):
            return label
        label = new


def near_duplicates(texts: Sequence[str], rewards: Sequence[float] | np.ndarray, order_key: Sequence | np.ndarray,
                    threshold: float = 0.7, shingle_size: int = 2, num_perm: int = 128,
                    hasher: MinHasher | None = None) -> NearDupResult:
    """Cluster near-duplicate texts; keep per cluster the best reward, ties broken by the largest `order_key`
    (a timestamp: the newest)."""
    hasher = hasher or MinHasher(num_perm=num_perm, shingle_size=shingle_size)
    bands, rows = bands_for(threshold, hasher.num_perm)
    n = len(texts)
    if n == 0:
        return NearDupResult(np.empty(0, np.int64), np.empty(0, bool), 0, bands, rows)
    pairs, candidates = near_duplicate_pairs(hasher.signatures(texts), threshold, bands, rows)
    roots = components(n, pairs)
    reward = np.nan_to_num(np.asarray(rewards, dtype=np.float64), nan=-np.inf)
    newest = np.argsort(np.argsort(np.asarray(order_key), kind="stable"), kind="stable")  # rank of order_key
    ranking = np.lexsort((-newest, -reward))  # best reward first, then newest
    _, first = np.unique(roots[ranking], return_index=True)
    winner = np.empty(n, dtype=np.int64)
    winner[roots[ranking[first]]] = ranking[first]
    cluster = winner[roots]
    return NearDupResult(cluster=cluster, keep=cluster == np.arange(n), candidate_pairs=candidates,
                         bands=bands, rows=rows)
