"""What a curated dataset covers: reward distribution, coverage of the input space, and a 2-D map.

Coverage (the seeds' intent_coverage, without needing intent labels): the eligible rows' user-turn
embeddings are grouped around `regions` k-center centres (each row joins its nearest centre); coverage is
the share of regions with at least one selected row. A selection that drops a whole region of the inputs
shows as coverage < 1 however many rows it keeps.
"""

from __future__ import annotations

import io

import numpy as np

from continuum_pipeline.curation.selection import k_center


def reward_summary(rewards: np.ndarray) -> dict[str, float]:
    if not len(rewards):
        return {}
    return {"mean": float(np.mean(rewards)), "min": float(np.min(rewards)), "p10": float(np.quantile(rewards, 0.1)),
            "median": float(np.median(rewards)), "max": float(np.max(rewards))}


def reward_histogram(rewards: np.ndarray, bins: int = 5) -> list[tuple[str, int]]:
    if not len(rewards):
        return []
    lo = min(float(np.min(rewards)), 0.8)
    counts, edges = np.histogram(rewards, bins=bins, range=(lo, 1.0))
    return [(f"{edges[i]:.2f}–{edges[i + 1]:.2f}", int(c)) for i, c in enumerate(counts)]


def regions(embeddings: np.ndarray, count: int = 20) -> np.ndarray:
    """Region (index of the nearest of `count` k-center centres) per row."""
    centres = embeddings[k_center(embeddings, count)]
    return np.argmax(embeddings @ centres.T, axis=1)


def coverage(embeddings: np.ndarray, chosen: np.ndarray, count: int = 20) -> dict[str, float | int]:
    if not len(embeddings):
        return {"regions": 0, "covered": 0, "coverage": 0.0}
    region = regions(embeddings, count)
    present = np.unique(region)
    covered = np.unique(region[chosen])
    return {"regions": int(len(present)), "covered": int(len(covered)), "coverage": len(covered) / len(present)}


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    centred = embeddings - embeddings.mean(axis=0)
    # SVD of the centred matrix: the top two right singular vectors are the principal axes
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def pca_png(embeddings: np.ndarray, chosen: np.ndarray, title: str) -> bytes:
    """PNG of the rows' 2-D PCA map, selected vs not (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    points = pca_2d(embeddings) if len(embeddings) >= 2 else np.zeros((len(embeddings), 2))
    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.subplots()
    ax.scatter(points[~chosen, 0], points[~chosen, 1], s=8, c="#bbbbbb", label=f"not selected ({(~chosen).sum()})")
    ax.scatter(points[chosen, 0], points[chosen, 1], s=10, c="#d62728", label=f"selected ({chosen.sum()})")
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
