"""One shard of the batch job, on a worker: read its images, compute their features, write its part.

A shard task returns counts only. It writes `part-<run>-<shard>.parquet` straight to OUTPUT, whole
or not at all (storage.Location.write_with), so a retried or speculative copy of the task writes
the same name with the same rows, and nothing is doubled.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pyarrow as pa

from imgvec import names
from imgvec.featurize import FeatureConfig, get_featurizer, use_task_cpus
from imgvec.output import FeatureDataset
from imgvec.sources import ImageFiles, Item, ParquetTable
from imgvec.weights import WeightsRef

# What each task sends back to the driver: a few numbers per shard, whatever its images.
COUNTS = pa.schema([("shard", pa.int64()), ("rows", pa.int64()), ("failed", pa.int64()),
                    ("error_kinds", pa.string())])
# What the driver sends each task: its shard number and the items in it.
PLAN = pa.schema([("id", pa.int64()), ("paths", pa.list_(pa.string())), ("sources", pa.list_(pa.string())),
                  ("row_groups", pa.list_(pa.int64()))])


@dataclass(frozen=True)
class ShardTask:
    """All a worker needs, small and picklable: no session, no network, no list of inputs."""

    source: ImageFiles | ParquetTable
    config: FeatureConfig
    weights: WeightsRef  # already shipped with the session
    output: str  # the dataset's URI
    run: int  # part names of this run: part-<run>-<shard>.parquet

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        use_task_cpus()
        for batch in batches:
            for shard in batch.to_pylist():
                items = [Item(*fields) for fields in zip(shard["paths"], shard["sources"], shard["row_groups"],
                                                        strict=True)]
                yield self.write(shard["id"], items)

    def write(self, number: int, items: list[Item]) -> pa.RecordBatch:
        featurizer = get_featurizer(self.config, self.weights)
        paths, features, errors, sizes, hashes = [], [], [], [], []
        for batch in _prefetched(self.source.read(items), self.config.batch_size):
            vectors, decode_errors = featurizer.embed([data for _, data, _ in batch])
            for (path, data, read_error), row, decode_error in zip(batch, vectors, decode_errors, strict=True):
                error = read_error or decode_error
                paths.append(path)
                errors.append(error)
                features.append(None if error else row)
                sizes.append(None if data is None else len(data))
                hashes.append(None if data is None else hashlib.sha256(data).hexdigest())
        table = pa.table({"path": paths, "features": _features_column(features), "error": errors,
                          "bytes": pa.array(sizes, pa.int64()), "sha256": pa.array(hashes, pa.string())})
        FeatureDataset(self.output).write_part(table, names.part(self.run, number))
        kinds = Counter(e.split(":", 1)[0] for e in errors if e)
        return pa.RecordBatch.from_pylist([{"shard": number, "rows": len(paths), "failed": sum(kinds.values()),
                                            "error_kinds": json.dumps(kinds)}], schema=COUNTS)


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
