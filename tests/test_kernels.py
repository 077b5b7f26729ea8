"""imgvec.kernels: exact linking of every pair above a threshold, done block by block, against brute force; kept files
and their witnesses; groups formed around kept files.
"""

import numpy as np

from helpers import (
    clustered_vectors,
)
from imgvec.kernels.similarity import duplicate_groups, groups, linked, normalise


def brute_force_groups(x: np.ndarray, threshold: float) -> list[list[int]]:
    similarities = normalise(x) @ normalise(x).T
    np.fill_diagonal(similarities, -1)
    label = list(range(len(x)))
    for i, j in zip(*np.nonzero(similarities >= threshold), strict=True):
        old, new = max(label[i], label[j]), min(label[i], label[j])
        label = [new if v == old else v for v in label]
    members = {}
    for i in np.flatnonzero(similarities.max(axis=1) >= threshold):
        members.setdefault(label[i], []).append(int(i))
    return sorted(members.values(), key=lambda g: (-len(g), g[0]))


def test_blockwise_linking_finds_exactly_the_groups_of_all_pairs():
    x = clustered_vectors(1_500, 16, per_cluster=30, seed=3)
    x[700:720] = x[5]  # a block of identical vectors: many pairs, held as links only
    expected = brute_force_groups(x, 0.9)
    found = duplicate_groups(x, 0.9)
    assert [[i for i, _ in g] for g in found] == expected and len(expected) > 10
    similarities = normalise(x) @ normalise(x).T
    np.fill_diagonal(similarities, -1)
    for group in found:  # each member's similarity is its best real pair
        for i, s in group:
            assert abs(s - similarities[i].max()) < 1e-5 and s >= 0.9
    # the same from two blocks compared apart, as Spark's groups are
    n = normalise(x)
    ids = np.arange(len(x), dtype=np.int64)
    halves = [linked(n[:800], ids[:800], n[:800], ids[:800], 0.9, same=True),
              linked(n[800:], ids[800:], n[800:], ids[800:], 0.9, same=True),
              linked(n[:800], ids[:800], n[800:], ids[800:], 0.9, same=False)]
    joined = groups(*[np.concatenate(parts) for parts in zip(*halves, strict=True)])
    assert [[i for i, _ in g] for g in joined] == expected


def chain(dim: int = 16) -> np.ndarray:
    """Vectors A, B, C, D, each at cosine ~0.8 to the next: A~B~C~D is one group, but A and D are far apart."""
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:4].astype(np.float32)
    angle = np.arccos(0.8)
    return np.stack([np.cos(k * angle) * basis[0] + np.sin(k * angle) * basis[1] for k in range(4)])


def test_groups_form_around_kept_files_and_a_lone_kept_file_joins_its_nearest_group():
    from imgvec.kernels.witness import around_kept, witnesses

    x = normalise(chain()[:3])  # A~B~C: A kept, B joins A, C (not near A) kept with nobody to witness
    leader, _ = witnesses(x, 0.75)
    assert leader.tolist() == [0, 0, 2]
    assert around_kept(x, leader) == [[0, 1, 2]]  # C is shown, kept, with the group of B, its nearest
    assert around_kept(x, np.arange(3)) == [[0, 1, 2]]  # nobody witnesses anybody: one group to look at
    leader, _ = witnesses(x, 0.75, refused={(0, 1)})  # B's pixels do not verify against A: B is kept
    assert leader.tolist() == [0, 1, 1]  # and C joins B


def test_witnesses_keep_order_and_forced_files():
    from imgvec.kernels.witness import keep_order, weakest_pair, witnesses

    x = normalise(chain())
    leader, similarity = witnesses(x, 0.75)
    assert leader.tolist() == [0, 0, 2, 2] and np.allclose(similarity, [1, 0.8, 1, 0.8], atol=1e-5)
    leader, _ = witnesses(x, 0.75, forced=[False, True, False, False])  # B must be kept (another output's)
    assert leader.tolist() == [0, 1, 1, 3]  # C joins B, the most similar kept file; D, near C only, is kept
    assert weakest_pair(x)[:2] == (0, 3)
    rows = [{"path": "b", "bytes": 10, "source": 0}, {"path": "a", "bytes": 5, "source": 0},
            {"path": "c", "bytes": 99, "source": 1}]
    assert keep_order(rows, "first") == [2, 1, 0] and keep_order(rows, "largest") == [2, 0, 1]
