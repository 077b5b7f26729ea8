"""Exact cosine search in numpy, tile by tile: nearest neighbours, and pairs above a threshold joined into groups.

`linked` compares two sets of vectors and keeps only what grouping needs (a link per row, each
row's best partner), so a set of thousands of near-identical images never holds its n^2 pairs.
`imgvec dupes` runs it on the whole output when it is small and on each cluster's blocks on Spark
when it is not (answers.dedup); `groups` joins the results.
"""

from __future__ import annotations

import numpy as np

TILE = 4096


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def nearest(query: np.ndarray, vectors: np.ndarray, k: int, exclude: int | None = None) -> list[tuple[int, float]]:
    """The k rows of `vectors` most cosine-similar to `query`: (row, similarity), best first."""
    similarities = normalise(query[None, :]) @ normalise(vectors).T
    if exclude is not None:
        similarities[0, exclude] = -np.inf
    k = min(k, similarities.shape[1] - (exclude is not None))
    if k <= 0:
        return []
    values, rows = top_k(similarities, np.arange(similarities.shape[1])[None, :], k)
    return [(int(i), float(s)) for i, s in zip(rows[0], values[0], strict=True)]


def top_k(similarities: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest similarities and their ids, best first."""
    k = min(k, similarities.shape[1])
    top = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    similarities, ids = np.take_along_axis(similarities, top, 1), np.take_along_axis(ids, top, 1)
    order = np.argsort(-similarities, axis=1, kind="stable")
    return np.take_along_axis(similarities, order, 1), np.take_along_axis(ids, order, 1)


class Best:
    """The k best (similarity, id) per query, merged tile by tile."""

    def __init__(self, queries: int, k: int):
        self.similarities = np.full((queries, k), -np.inf, np.float32)
        self.ids = np.full((queries, k), -1, np.int64)

    def update(self, similarities: np.ndarray, ids: np.ndarray) -> None:
        """Merge in a tile: similarities [queries, n] of ids [n] (or [queries, n])."""
        both = np.concatenate([self.similarities, similarities], axis=1)
        both_ids = np.concatenate([self.ids, np.broadcast_to(ids, similarities.shape)], axis=1)
        self.similarities, self.ids = top_k(both, both_ids, self.ids.shape[1])


def duplicate_groups(vectors: np.ndarray, threshold: float) -> list[list[tuple[int, float]]]:
    """Groups of rows linked by cosine similarity >= threshold, largest first, every pair compared.

    Each member comes with its best similarity to another member of its group.
    """
    x = normalise(vectors)
    rows = np.arange(len(x), dtype=np.int64)
    return groups(*linked(x, rows, x, rows, threshold, same=True))


def linked(a: np.ndarray, a_ids: np.ndarray, b: np.ndarray, b_ids: np.ndarray, threshold: float, same: bool):
    """Every pair of normalised vectors `a` x `b` at or above `threshold`, reduced to what grouping needs.

    `same`: a and b are one set (each pair once, no row with itself). Returns (link_from, link_to):
    at most one link per row that ties it to its group (not necessarily a pair above the threshold),
    and (best_id, best_partner, best_similarity): each row's most similar partner among the pairs, a
    real pair. The pairs themselves (up to n^2) are never all held at once.
    """
    ids = a_ids if same else np.concatenate([a_ids, b_ids])
    offset = 0 if same else len(a)
    labels = np.arange(len(ids), dtype=np.int64)
    best = np.full(len(ids), -np.inf, np.float32)
    partner = np.full(len(ids), -1, np.int64)
    for start in range(0, len(a), TILE // 2):
        similarities = a[start : start + TILE // 2] @ b.T
        above = similarities >= threshold
        if same:
            above &= np.arange(len(b))[None, :] > np.arange(start, start + len(similarities))[:, None]
        rows, cols = np.nonzero(above)
        values = similarities[rows, cols]
        left, right = rows + start, cols + offset
        _keep_best(best, partner, np.concatenate([left, right]), np.concatenate([right, left]),
                   np.concatenate([values, values]))
        union(labels, left, right)
    tied = labels != np.arange(len(ids))
    found = best > -np.inf
    return ids[tied], ids[labels[tied]], ids[found], ids[partner[found]], best[found]


def _keep_best(best: np.ndarray, partner: np.ndarray, nodes, others, values) -> None:
    if not len(nodes):
        return
    order = np.lexsort((values, nodes))
    last = np.r_[nodes[order][1:] != nodes[order][:-1], True]  # each node's highest value
    nodes, others, values = nodes[order][last], others[order][last], values[order][last]
    better = values > best[nodes]
    best[nodes[better]], partner[nodes[better]] = values[better], others[better]


def union(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Union-find, vectorised: labels[i] is i's group (its smallest row); the groups of a[k] and b[k] become one."""
    while len(a):
        a, b = _roots(labels, a), _roots(labels, b)
        apart = a != b
        low, high = np.minimum(a[apart], b[apart]), np.maximum(a[apart], b[apart])
        np.minimum.at(labels, high, low)  # each root joins the smallest root it meets; the rest go round again
        a, b = low, high
    labels[:] = _roots(labels, np.arange(len(labels)))


def _roots(labels: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    roots = labels[nodes]
    while True:
        up = labels[roots]
        if np.array_equal(up, roots):
            return roots
        roots = up


def groups(link_from, link_to, best_id, best_partner, best_similarity) -> list[list[tuple[int, float]]]:
    """Groups from the links and best pairs of one or many `linked` calls (ids may repeat), largest first.

    Each member: (id, its best similarity to another member).
    """
    nodes, inverse = np.unique(np.concatenate([link_from, link_to, best_id, best_partner]), return_inverse=True)
    n_links, n_best = len(link_from), len(best_id)
    labels = np.arange(len(nodes), dtype=np.int64)
    # a link ties link_from to link_to, a best pair best_id to best_partner: one union over both
    union(labels, np.concatenate([inverse[:n_links], inverse[2 * n_links : 2 * n_links + n_best]]),
         np.concatenate([inverse[n_links : 2 * n_links], inverse[2 * n_links + n_best :]]))
    best = np.full(len(nodes), -np.inf, np.float32)
    np.maximum.at(best, inverse[2 * n_links : 2 * n_links + n_best], np.asarray(best_similarity, np.float32))
    members: dict[int, list[tuple[int, float]]] = {}
    for node, label in enumerate(labels):
        members.setdefault(int(label), []).append((int(nodes[node]), float(best[node])))
    found = [sorted(group) for group in members.values() if len(group) > 1]
    return sorted(found, key=lambda g: (-len(g), g[0][0]))
