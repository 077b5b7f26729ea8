"""One piece of the inputs, on a worker: read its images, compute their features, write them as parts.

A piece (a folder, a row group, a tar, a manifest slice, or files the driver listed) is one task. It writes a
part of at most --shard-size images at a time, `part-<run>-<piece>-<n>.parquet` straight to OUTPUT, whole or
not at all (storage.Location.write_with), so a retried or speculative copy of the task writes the same names
with the same rows, nothing is doubled, and an interruption loses at most the shards in flight. A task returns
counts only.
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
from imgvec.inputs.pieces import Piece, Sample, piece_of
from imgvec.models.hardware import use_task_cpus
from imgvec.models.weights import WeightsRef
from imgvec.spark.tasks import RowTask

# What each task sends back to the driver: a few numbers per piece, whatever its images, and where its time went:
# reading (in a thread, overlapping the computing), decoding and running the network, writing the parts.
COUNTS = pa.schema([("piece", pa.int64()), ("rows", pa.int64()), ("skipped", pa.int64()), ("repeated", pa.int64()),
                    ("failed", pa.int64()),
                    ("error_kinds", pa.string()), ("parts", pa.int64()), ("read_seconds", pa.float32()),
                    ("compute_seconds", pa.float32()), ("write_seconds", pa.float32())])
# What the driver sends each task: its piece's number and the piece.
PLAN = pa.schema([("id", pa.int64()), ("source", pa.string()), ("part", pa.int64()),
                  ("names", pa.list_(pa.string()))])


def plan_pieces(pieces: list[Piece]) -> pa.Table:
    """One row per piece: what each task is sent."""
    return pa.table({"id": list(range(len(pieces))), "source": [p.source for p in pieces],
                     "part": [p.part for p in pieces], "names": [list(p.names) or None for p in pieces]}, schema=PLAN)


@dataclass(frozen=True)
class ShardTask(RowTask):
    """All a worker needs, small and picklable: no session, no network, no list of inputs."""

    RESULT: ClassVar[pa.Schema] = COUNTS
    source: object  # an inputs source (sources, tables, tars)
    config: FeatureConfig
    weights: WeightsRef  # already shipped with the session
    output: str  # the dataset's URI
    run_number: int  # part names of this run: part-<run>-<piece>-<n>.parquet
    shard_size: int  # images per part

    def run(self, rows):
        use_task_cpus()
        for row in rows:  # a joined job's rows say what the piece still needs (todo), holds (total) and repeats
            todo = row.get("todo")
            yield self.piece(row["id"], piece_of(row), None if todo is None else set(todo), row.get("total"),
                             row.get("repeated") or 0)

    def piece(self, number: int, piece: Piece, only: set[str] | None, total: int | None,
              repeated: int = 0) -> pa.RecordBatch:
        reading = _Timed(self.source.samples(piece, only) if only is None or only else iter(()))
        kinds, rows, done, parts, computing, writing = Counter(), [], 0, 0, 0.0, 0.0
        for batch in _prefetched(reading, min(self.config.batch_size, self.shard_size)):
            started = time.perf_counter()
            featurizer = get_featurizer(self.config, self.weights)  # built once per process, when there is work
            vectors, decode_errors = featurizer.vectors([sample.data for sample in batch])
            computing += time.perf_counter() - started
            for sample, vector, decode_error in zip(batch, vectors, decode_errors, strict=True):
                error = sample.error or decode_error
                rows.append((sample, None if error else vector, error))
                kinds.update([error.split(":", 1)[0]] if error else [])
            while len(rows) >= self.shard_size:
                writing += self.write(number, parts, rows[: self.shard_size])
                done, rows, parts = done + self.shard_size, rows[self.shard_size:], parts + 1
        if rows:
            writing += self.write(number, parts, rows)
            done, parts = done + len(rows), parts + 1
        skipped = 0 if total is None else total - done
        return pa.RecordBatch.from_pylist([{"piece": number, "rows": done, "skipped": skipped, "repeated": repeated,
                                            "failed": sum(kinds.values()), "error_kinds": json.dumps(kinds),
                                            "parts": parts, "read_seconds": reading.seconds,
                                            "compute_seconds": computing, "write_seconds": writing}], schema=COUNTS)

    def write(self, number: int, shard: int, rows: list) -> float:
        """One part of these rows; the seconds it took."""
        started = time.perf_counter()
        samples = [sample for sample, _, _ in rows]
        kept = self.source.columns
        table = pa.table({"path": [s.path for s in samples], "features": _features_column([v for _, v, _ in rows]),
                          "error": [e for _, _, e in rows],
                          "bytes": pa.array([None if s.data is None else len(s.data) for s in samples], pa.int64()),
                          "sha256": pa.array([None if s.data is None else hashlib.sha256(s.data).hexdigest()
                                              for s in samples], pa.string()),
                          "input": pa.array([s.input for s in samples], pa.string()),
                          **{f.name: pa.array([(s.extra or {}).get(f.name) for s in samples], f.type) for f in kept}})
        FeatureDataset(self.output).write_part(table, names.part(self.run_number, number, shard), kept)
        return time.perf_counter() - started


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


def _prefetched(rows: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    """Batches of `size` rows; the next batch is read while this one is computed (object stores are slow to answer)."""
    with ThreadPoolExecutor(1, thread_name_prefix="imgvec-read") as reader:
        pending = reader.submit(lambda: list(islice(rows, size)))
        while True:
            batch = pending.result()
            if not batch:
                return
            pending = reader.submit(lambda: list(islice(rows, size)))
            yield batch
