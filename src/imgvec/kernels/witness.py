"""Which files of a group a person may delete: each must have a kept file of its own at the threshold.

Candidates are joined transitively (A~B~C), but a chain must never make a file deletable, nor join two
pictures into one group: members in keep order each join the most similar file kept so far at cosine
>= threshold, or are kept themselves (greedy leader assignment). Every file not kept then has a
witness, a kept file at or above the threshold, and groups form around kept files (`around_kept`).
"""

from __future__ import annotations

import numpy as np

TILE = 2_048  # rows compared at once when looking for a group's weakest pair
WEAKEST_MAX = 20_000  # beyond, the weakest pair is sought among a seeded sample of this many members


def keep_order(rows: list[dict], keep: str) -> list[int]:
    """Positions of `rows` ({path, bytes, source}) in keep order: files of other outputs (source > 0) first, then
    the first path (keep='first') or the largest file, ties by path."""
    def key(position: int):
        row = rows[position]
        size = -(row.get("bytes") or -1) if keep == "largest" else 0
        return row.get("source", 0) == 0, size, row["path"]

    return sorted(range(len(rows)), key=key)


def witnesses(vectors: np.ndarray, threshold: float, forced=None, refused=frozenset()) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """For normalised `vectors` in keep order: each one's kept file (a position; itself when kept) and the cosine
    to it (1 when kept). `forced`: positions that are kept whatever they resemble (other outputs' files).
    `refused`: (kept position, position) pairs that may not witness (their pixels did not verify): the next most
    similar kept file is tried."""
    n = len(vectors)
    forced = np.zeros(n, bool) if forced is None else np.asarray(forced, bool)
    leader = np.arange(n)
    similarity = np.ones(n, np.float32)
    kept: list[int] = []
    for i in range(n):
        if kept and not forced[i]:
            cosines = vectors[kept] @ vectors[i]
            if refused:
                cosines[[(k, i) in refused for k in kept]] = -np.inf
            best = int(np.argmax(cosines))
            if cosines[best] >= threshold:
                leader[i], similarity[i] = kept[best], cosines[best]
                continue
        kept.append(i)
    return leader, similarity


def best_partners(vectors: np.ndarray) -> np.ndarray:
    """Each normalised vector's highest cosine to another one, tile by tile: the n^2 similarities of a large
    group are never held at once."""
    best = np.full(len(vectors), -np.inf, np.float32)
    for start in range(0, len(vectors), TILE):
        similarities = vectors[start : start + TILE] @ vectors.T
        rows = np.arange(len(similarities))
        similarities[rows, start + rows] = -np.inf  # a member with itself is no pair
        best[start : start + TILE] = similarities.max(axis=1)
    return best


def weakest_pair(vectors: np.ndarray) -> tuple[int, int, float]:
    """The least similar pair of normalised `vectors` (positions a < b and their cosine); among a seeded
    sample of WEAKEST_MAX of them in a larger group."""
    positions = np.arange(len(vectors))
    if len(vectors) > WEAKEST_MAX:
        positions = np.sort(np.random.default_rng(0).choice(len(vectors), WEAKEST_MAX, replace=False))
    chosen = vectors[positions]
    worst = (0, 1, np.inf)
    for start in range(0, len(chosen), TILE):
        similarities = chosen[start : start + TILE] @ chosen.T
        rows = np.arange(len(similarities))
        similarities[rows, start + rows] = np.inf  # a member with itself is no pair
        row, col = np.unravel_index(np.argmin(similarities), similarities.shape)
        if similarities[row, col] < worst[2]:
            worst = (start + int(row), int(col), float(similarities[row, col]))
    a, b = sorted((int(positions[worst[0]]), int(positions[worst[1]])))
    return a, b, worst[2]


def around_kept(vectors: np.ndarray, leader: np.ndarray) -> list[list[int]]:
    """Groups of positions formed around kept files: each kept file with the files it witnesses. A kept file that
    witnesses none (forced, or refused by --verify) joins its most similar member: still shown, never alone, and
    never the link that joins two kept files' groups."""
    n = len(leader)
    root = np.arange(n)

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    edges = [(i, int(k)) for i, k in enumerate(leader.tolist()) if k != i]
    followed = {k for _, k in edges}
    for kept in (i for i in range(n) if leader[i] == i and i not in followed):
        cosines = vectors @ vectors[kept]
        cosines[kept] = -np.inf
        edges.append((kept, int(np.argmax(cosines))))
    for a, b in edges:
        root[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())
