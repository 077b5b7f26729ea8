"""Connected components of a graph whose edges are stored (spark.stored), on Spark: no node or edge reaches the
driver.

Up to IN_ONE_TASK edges, one task joins them by a union-find (kernels.similarity): one job. Beyond, Kiveris et
al., "Connected Components in Map Reduce and Beyond" (SoCC 2014): rounds of large-star (every node links its
larger neighbours to the smallest node it sees) and small-star (every node links itself and its smaller
neighbours to the smallest of them), until every component is a star around its smallest node: O(log^2 n)
rounds at worst, a few in practice. Every round's edges are stored by its tasks, so the plan does not grow with
the rounds and a large component is never one task's: only a node's own edges are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.base.storage import Location, open_location
from imgvec.kernels.similarity import union
from imgvec.spark.stored import read_file, store, stored
from imgvec.spark.tasks import RowTask, task_frame

EDGES = pa.schema([("u", pa.int64()), ("v", pa.int64())])  # undirected (stored with u > v between rounds)
COMPONENTS = pa.schema([("id", pa.int64()), ("component", pa.int64())])  # component: its smallest node
IN_ONE_TASK = 4_000_000  # edges (64 MB of pairs) one task joins: a job, where rounds are two jobs each
MAX_ROUNDS = 100  # far past what any graph takes: a guard against a loop, not a limit met
FILES_PLAN = pa.schema([("id", pa.int64()), ("files", pa.list_(pa.string()))])


def components(spark, folder: Location, written: pa.Table, work: Location, in_one_task: int = IN_ONE_TASK):
    """(id, component) for every node of the edges (u, v) stored in `folder` (`written`: spark.stored.store's
    result), stored in `work`. Self loops link nothing."""
    files = written.column("file").to_pylist()
    if sum(written.column("rows").to_pylist()) <= in_one_task:
        plan = pa.table({"id": [0], "files": [files]}, schema=FILES_PLAN)
        found = store(spark, task_frame(spark, plan, UnionTask(folder.uri)), work.child("components"), COMPONENTS)
        return stored(spark, work.child("components"), found, COMPONENTS)
    return _in_rounds(spark, stored(spark, folder, written, EDGES), work)


@dataclass(frozen=True)
class UnionTask(RowTask):
    """Every edge of the stored files -> each node's component, by a union-find in this task."""

    RESULT: ClassVar[pa.Schema] = COMPONENTS
    folder: str

    def run(self, rows):
        folder = open_location(self.folder)
        for row in rows:
            edges = [read_file(folder, name, EDGES) for name in row["files"]]
            u, v = (np.concatenate([np.empty(0, np.int64), *(t.column(c).to_numpy() for t in edges)])
                    for c in ("u", "v"))
            u, v = u[u != v], v[u != v]
            nodes = np.unique(np.concatenate([u, v]))
            labels = np.arange(len(nodes))
            union(labels, np.searchsorted(nodes, u), np.searchsorted(nodes, v))  # a root: its smallest node
            yield pa.RecordBatch.from_arrays([pa.array(nodes), pa.array(nodes[labels])], schema=COMPONENTS)


def _in_rounds(spark, edges, work: Location):
    """Large-star and small-star rounds, each stored in `work`."""
    from pyspark.sql import functions as F

    current, count = _oriented(edges), None
    for round_ in range(MAX_ROUNDS):
        folder = work.child(f"round-{round_:03d}")
        written = store(spark, _small_star(_large_star(current)), folder, EDGES)
        current, before, count = stored(spark, folder, written, EDGES), count, sum(written.column("rows").to_pylist())
        if count == before and _stars(current):  # a round that changed the edge count is not the last
            break
    else:
        raise RuntimeError(f"connected components did not settle in {MAX_ROUNDS} rounds")
    roots = current.select(F.col("v").alias("id"), F.col("v").alias("component"))
    return current.select(F.col("u").alias("id"), F.col("v").alias("component")).union(roots).distinct()


def _stars(edges) -> bool:
    """Is every component a star around its smallest node: each node links to at most one smaller node, and a
    node that does links to no larger one? One job."""
    from pyspark.sql import functions as F

    ends = edges.select("u", F.lit(1).alias("up")).union(edges.select(F.col("v").alias("u"), F.lit(0).alias("up")))
    nodes = ends.groupBy("u").agg(F.sum("up").alias("up"), F.count("*").alias("ends"))
    return nodes.filter((F.col("up") > 1) | ((F.col("up") == 1) & (F.col("ends") > 1))).limit(1).count() == 0


def _oriented(edges):
    """Each edge once, its larger node first; no self loops."""
    from pyspark.sql import functions as F

    return (edges.select(F.greatest("u", "v").alias("u"), F.least("u", "v").alias("v"))
            .filter(F.col("u") != F.col("v")).distinct())


def _both(edges):
    from pyspark.sql import functions as F

    return edges.union(edges.select(F.col("v").alias("u"), F.col("u").alias("v")))


def _large_star(edges):
    """Every node's larger neighbours linked to the smallest node of its neighbourhood (itself included)."""
    from pyspark.sql import functions as F

    both = _both(edges)
    smallest = both.groupBy("u").agg(F.least(F.min("v"), F.col("u")).alias("m"))
    return _oriented(both.filter(F.col("v") > F.col("u")).join(smallest, "u")
                     .select(F.col("v").alias("u"), F.col("m").alias("v")))


def _small_star(edges):
    """Every node and its smaller neighbours linked to the smallest of them."""
    from pyspark.sql import functions as F

    smaller = edges  # oriented: u > v, so a node's smaller neighbours are its rows
    smallest = smaller.groupBy("u").agg(F.min("v").alias("m"))
    joined = smaller.join(smallest, "u")
    return _oriented(joined.select(F.col("v").alias("u"), F.col("m").alias("v"))
                     .union(smallest.select("u", F.col("m").alias("v"))))
