"""One shard of the batch job, on a worker: read its images, compute their features, write its part.

A shard task returns counts only. It writes `part-<run>-<shard>.parquet` straight to OUTPUT, whole
or not at all (storage.Location.write_with), so a retried or speculative copy of the task writes
the same name with the same rows, and nothing is doubled.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.dataset import names
from imgvec.dataset.output import FeatureDataset
from imgvec.features.featurize import FeatureConfig, get_featurizer
from imgvec.inputs.sources import ImageFiles, Item, ParquetTable
from imgvec.models.hardware import use_task_cpus
from imgvec.models.weights import WeightsRef
from imgvec.spark.tasks import RowTask

# What each task sends back to the driver: a few numbers per shard, whatever its images, and where its time went:
# reading (in a thread, overlapping the computing), decoding and running the network, writing the part.
COUNTS = pa.schema([("shard", pa.int64()), ("rows", pa.int64()), ("failed", pa.int64()),
                    ("error_kinds", pa.string()), ("read_seconds", pa.float32()), ("compute_seconds", pa.float32()),
                    ("write_seconds", pa.float32())])
# What the driver sends each task: its shard number and the items in it.
PLAN = pa.schema([("id", pa.int64()), ("paths", pa.list_(pa.string())), ("sources", pa.list_(pa.string())),
                  ("row_groups", pa.list_(pa.int64()))])


def plan_shards(shards: list[list[Item]]) -> pa.Table:
    """One row per shard (a list of sources.Item): what each task is sent."""
    return pa.table({"id": list(range(len(shards))), "paths": [[i.path for i in s] for s in shards],
                     "sources": [[i.source for i in s] for s in shards],
                     "row_groups": [[i.row_group for i in s] for s in shards]}, schema=PLAN)


@dataclass(frozen=True)
class ShardTask(RowTask):
    """All a worker needs, small and picklable: no session, no network, no list of inputs."""

    RESULT: ClassVar[pa.Schema] = COUNTS
    source: ImageFiles | ParquetTable
    config: FeatureConfig
    weights: WeightsRef  # already shipped with the session
    output: str  # the dataset's URI
    run_number: int  # part names of this run: part-<run>-<shard>.parquet

    def run(self, rows):
        use_task_cpus()
        for shard in rows:
            items = [Item(*fields) for fields in zip(shard["paths"], shard["sources"], shard["row_groups"],
                                                    strict=True)]
            yield self.write(shard["id"], items)

    def write(self, number: int, items: list[Item]) -> pa.RecordBatch:
        featurizer = get_featurizer(self.config, self.weights)
        paths, features, errors, sizes, hashes = [], [], [], [], []
        reading = _Timed(self.source.read(items))
        computing = 0.0
        for batch in _prefetched(reading, self.config.batch_size):
            started = time.perf_counter()
            vectors, decode_errors = featurizer.vectors([data for _, data, _ in batch])
            computing += time.perf_counter() - started
            for (path, data, read_error), row, decode_error in zip(batch, vectors, decode_errors, strict=True):
                error = read_error or decode_error
                paths.append(path)
                errors.append(error)
                features.append(None if error else row)
                sizes.append(None if data is None else len(data))
                hashes.append(None if data is None else hashlib.sha256(data).hexdigest())
        started = time.perf_counter()
        table = pa.table({"path": paths, "features": _features_column(features), "error": errors,
                          "bytes": pa.array(sizes, pa.int64()), "sha256": pa.array(hashes, pa.string())})
        FeatureDataset(self.output).write_part(table, names.part(self.run_number, number))
        writing = time.perf_counter() - started
        kinds = Counter(e.split(":", 1)[0] for e in errors if e)
        return pa.RecordBatch.from_pylist([{"shard": number, "rows": len(paths), "failed": sum(kinds.values()),
                                            "error_kinds": json.dumps(kinds), "read_seconds": reading.seconds,
                                            "compute_seconds": computing, "write_seconds": writing}], schema=COUNTS)


class _Timed:
    """An iterator that adds up the time spent producing its items (the reads, in the reader's thread)."""

    def __init__(self, items: Iterator):
        self.items, self.seconds = items, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        started = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.seconds += time.perf_counter() - started


def _features_column(features: list) -> pa.Array:
    dim = next((len(f) for f in features if f is not None), 0)
    flat = np.concatenate([f for f in features if f is not None]) if dim else np.empty(0, np.float32)
    valid = np.array([f is not None for f in features], dtype=bool)
    offsets = np.zeros(len(features) + 1, np.int32)
    offsets[1:] = np.cumsum(valid * dim)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()),
                                    mask=pa.array(~valid))


def _prefetched(rows: Iterator, size: int) -> Iterator[list]:
    """Batches of `size` rows; the next batch is read while this one is computed (object stores are slow to answer)."""
    with ThreadPoolExecutor(1, thread_name_prefix="imgvec-read") as reader:
        pending = reader.submit(lambda: list(islice(rows, size)))
        while True:
            batch = pending.result()
            if not batch:
                return
            pending = reader.submit(lambda: list(islice(rows, size)))
            yield batch
