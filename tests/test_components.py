"""Connected components on Spark (answers.components), in one task and in large-star/small-star rounds, against a
union-find in this process, on the graphs that break simple algorithms: a long chain (label propagation takes its
length in rounds), stars, a dense clique, many small random components, repeated edges and self loops."""

import numpy as np
import pyarrow as pa
import pytest

from imgvec.answers.components import EDGES, IN_ONE_TASK, components
from imgvec.base.storage import open_location
from imgvec.kernels.similarity import union
from imgvec.spark.stored import store

pytestmark = pytest.mark.spark


def reference(u: np.ndarray, v: np.ndarray) -> dict[int, int]:
    """{node: smallest node of its component}, by a union-find in this process."""
    nodes = np.unique(np.concatenate([u, v]))
    labels = np.arange(len(nodes))
    union(labels, np.searchsorted(nodes, u), np.searchsorted(nodes, v))
    while not np.array_equal(labels, labels[labels]):
        labels = labels[labels]
    smallest = {}
    for node, label in zip(nodes.tolist(), labels.tolist(), strict=True):
        smallest.setdefault(label, node)  # nodes are sorted: the first of a label is its smallest
    return {node: smallest[label] for node, label in zip(nodes.tolist(), labels.tolist(), strict=True)}


def graph() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.choice(1 << 40, 10_000, replace=False)  # sparse int64 ids, in random order
    chain = ids[:2_000]  # one path through 2,000 nodes in random id order
    star = ids[2_000:2_500]
    clique = ids[2_500:2_540]
    first, second = np.triu_indices(len(clique), 1)
    pairs = [(chain[:-1], chain[1:]), (np.full(len(star) - 1, star[0]), star[1:]), (clique[first], clique[second])]
    small = ids[2_540:]  # 7,460 nodes, 5,000 random edges: thousands of small components
    a, b = rng.integers(0, len(small), 5_000), rng.integers(0, len(small), 5_000)
    pairs.append((small[a], small[b]))  # self loops and repeats among them
    pairs.append((chain[:50], chain[:50]))  # self loops on the chain
    u = np.concatenate([p[0] for p in pairs]).astype(np.int64)
    v = np.concatenate([p[1] for p in pairs]).astype(np.int64)
    return np.concatenate([u, v[:100]]), np.concatenate([v, u[:100]])  # some edges twice, both ways


@pytest.mark.parametrize("in_one_task", [IN_ONE_TASK, 0], ids=["one task", "rounds"])
def test_components_on_spark_equal_a_union_find(spark, tmp_path, in_one_task):
    u, v = graph()
    edges = open_location(str(tmp_path / "edges"))
    written = store(spark, spark.createDataFrame(pa.table({"u": u, "v": v}).to_pandas()), edges, EDGES)
    work = tmp_path / "work"
    found = components(spark, edges, written, open_location(str(work)), in_one_task).toPandas()
    linked = u != v  # a node with only a self loop links to nothing: it is in no component
    expected = reference(u[linked], v[linked])
    assert dict(zip(found["id"].tolist(), found["component"].tolist(), strict=True)) == expected
    assert len(found) == len(set(found["id"]))  # each node once
    if not in_one_task:
        rounds = sorted(p.name for p in work.iterdir())
        assert 2 <= len(rounds) <= 12, rounds  # the 2,000-node chain settles in a few rounds, not thousands
