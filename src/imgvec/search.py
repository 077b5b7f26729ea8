"""Exact cosine search over written vectors, in blocks: nearest neighbours and near-duplicate groups.

Exact and in memory: the vectors must fit in RAM (1M x 2048 float32 = 8 GB), and duplicate
finding compares every pair, O(N^2): about a second for 10^4 images, minutes for 10^5 and
hours past 10^6 on a laptop CPU. Past that, use an approximate index (faiss, ...).
"""

from __future__ import annotations

import numpy as np

BLOCK = 4096


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def nearest(query: np.ndarray, vectors: np.ndarray, k: int, exclude: int | None = None) -> list[tuple[int, float]]:
    """The k rows of `vectors` most cosine-similar to `query`: (row, similarity), best first."""
    similarities = normalise(vectors) @ normalise(query[None, :])[0]
    if exclude is not None:
        similarities[exclude] = -np.inf
    k = min(k, len(similarities) - (exclude is not None))
    if k <= 0:
        return []
    top = np.argpartition(-similarities, k - 1)[:k]
    top = top[np.argsort(-similarities[top], kind="stable")]
    return [(int(i), float(similarities[i])) for i in top]


def duplicate_groups(vectors: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
    """Groups of rows linked by cosine similarity >= threshold, largest first.

    Each member comes with its best similarity to another member of its group.
    """
    x = normalise(vectors)
    n = len(x)
    parent = list(range(n))
    best = np.full(n, -1.0, np.float32)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, BLOCK):
        similarities = x[start : start + BLOCK] @ x[start:].T  # only pairs (i, j) with j > i
        rows, cols = np.nonzero(np.triu(similarities >= threshold, k=1))
        for i, j in zip(rows, cols, strict=True):
            a, b = start + int(i), start + int(j)
            value = similarities[i, j]
            best[a], best[b] = max(best[a], value), max(best[b], value)
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[rb] = ra
    groups: dict[int, list[int]] = {}
    for i in range(n):
        if best[i] >= threshold:
            groups.setdefault(root(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    return [[(i, float(best[i])) for i in group] for group in ordered]
