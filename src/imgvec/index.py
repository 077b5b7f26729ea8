"""A FAISS nearest-neighbour index of an output's features: built on Spark, stored with the output.

`OUTPUT/_imgvec_index/` holds `index.json` (type, search setting, the parts it covers, the model
that made the features, recall@10 measured at build), the trained empty index, the held-out
queries, and one `shard-<build>-<n>.faiss` per Spark task. The driver trains on a sample of the
vectors; each task reads its own parts, adds their vectors to a copy of the trained index, writes
it as one shard and computes the exact top 10 of the held-out queries among its vectors, so the
build measures its own recall against exact search without a second pass. Vectors are
normalised: inner product = cosine similarity. Row ids are (part number << 32 | row).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from imgvec import defaults
from imgvec.output import INDEX, INDEX_FILE, FeatureDataset, open_output, part_vectors, parts_plan, path_range
from imgvec.progress import Progress
from imgvec.search import Best, normalise, sample_vectors
from imgvec.storage import Location

FORMAT = "imgvec-index/1"
RECALL_AT = 10
QUERIES = 1_000  # held-out queries for recall@10 at build
TASK_RESULT = pa.schema([("shard", pa.int64()), ("count", pa.int64()), ("truth_ids", pa.list_(pa.int64())),
                         ("truth_similarities", pa.list_(pa.float32())), ("parts", pa.list_(pa.string())),
                         ("first_paths", pa.list_(pa.string())), ("last_paths", pa.list_(pa.string()))])


class IndexProblem(ValueError):
    """The index cannot be used (missing, damaged, stale, made from other features)."""


def choose(kind: str, count: int, dim: int, memory: int = defaults.INDEX_MEMORY) -> tuple[str, str]:
    """(index type, FAISS factory string) for `count` vectors of `dim`: exact when small, IVF beyond."""
    if kind == "auto":
        kind = ("flat" if count <= defaults.EXACT_MAX else "ivf-flat" if count * dim * 4 <= memory else "ivf-pq")
    lists = inverted_lists(count)
    bits = 8 if count >= 256 * 40 else max(1, int(math.log2(max(2, count // 40))))  # codes PQ can train on a few
    pq = f"PQ{_pq_bytes(dim)}" + ("" if bits == 8 else f"x{bits}")
    return kind, {"flat": "IDMap,Flat", "ivf-flat": f"IVF{lists},Flat", "ivf-pq": f"IVF{lists},{pq}",
                  "hnsw": "IDMap,HNSW32"}[kind]


def inverted_lists(count: int) -> int:
    """IVF lists: a power of two near sqrt(count), so a query scans ~sqrt(count) vectors per list probed.

    Fewer for a small set (an IVF index chosen by hand): FAISS trains each list on at least 39 vectors.
    """
    near_root = 2 ** round(math.log2(max(count, 1) ** 0.5))
    return int(min(65536, max(16, near_root), max(1, count // 40)))


def _pq_bytes(dim: int) -> int:
    """PQ sub-quantizers (one byte each): the largest divisor of dim up to dim / 8 (2048 floats -> 256 bytes)."""
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def _bytes_per_vector(kind: str, dim: int) -> int:
    return {"ivf-pq": _pq_bytes(dim) + 8, "hnsw": dim * 4 + 8 + 32 * 2 * 4}.get(kind, dim * 4 + 8)


@dataclass(frozen=True)
class AddTask:
    """One index shard, on a worker: a copy of the trained index gets the vectors of its parts."""

    output: str
    build: str

    def __call__(self, batches):
        import faiss

        faiss.omp_set_num_threads(_task_cpus())
        folder = FeatureDataset(self.output).where.child(INDEX)
        trained = _read_faiss(folder.child(f"trained-{self.build}.faiss"))
        queries = np.load(io.BytesIO(folder.child(f"queries-{self.build}.npz").read_bytes()))
        for batch in batches:
            for row in batch.to_pylist():
                yield self.add(row["id"], row["parts"], row["numbers"], faiss.clone_index(trained), folder, queries)

    def add(self, shard: int, parts: list[str], numbers: list[int], index, folder: Location, queries):
        dataset = FeatureDataset(self.output)
        truth = Best(len(queries["ids"]), RECALL_AT)
        count, ranges = 0, []
        for name, number in zip(parts, numbers, strict=True):
            ranges.append(path_range(dataset.where.child(name)) or (None, None))  # queries by path look here
            ids, vectors = part_vectors(dataset.where.child(name), number)
            if not len(ids):
                continue
            vectors = normalise(vectors)
            index.add_with_ids(vectors, ids)
            similarities = queries["vectors"] @ vectors.T
            similarities[queries["ids"][:, None] == ids[None, :]] = -np.inf  # a query is not its own neighbour
            truth.update(similarities, ids)
            count += len(ids)
        _write_faiss(index, folder.child(f"shard-{self.build}-{shard}.faiss"))
        return pa.RecordBatch.from_pylist([{"shard": shard, "count": count, "truth_ids": truth.ids.ravel().tolist(),
                                            "truth_similarities": truth.similarities.ravel().tolist(),
                                            "parts": parts, "first_paths": [r[0] for r in ranges],
                                            "last_paths": [r[1] for r in ranges]}], schema=TASK_RESULT)


def build_index(output: str, *, kind: str = defaults.INDEX_TYPE, memory: int = defaults.INDEX_MEMORY,
                master: str = "local[*]", conf: dict | None = None, spark=None, quiet: bool = False) -> dict:
    """Build (or rebuild) OUTPUT's index; returns its description (index.json). ValueError before any job."""
    import faiss

    if kind not in defaults.INDEX_TYPES:
        raise ValueError(f"--index-type must be one of {', '.join(defaults.INDEX_TYPES)}, not {kind!r}")
    started = time.monotonic()
    dataset, metadata = open_output(output)
    parts = dataset.part_names()
    count = dataset.size(metadata)
    if not count:
        raise IndexProblem(f"{dataset.location} holds no features to index")
    dim = int(metadata["dim"])
    kind, factory = choose(kind, count, dim, memory)
    folder = dataset.where.child(INDEX)
    build = uuid.uuid4().hex[:8]
    with dataset.locked():
        training = _training_size(kind, count)
        sample_ids, sample = sample_vectors(dataset, parts, training + QUERIES)
        queries = QUERIES if len(sample_ids) >= training + QUERIES else max(1, len(sample_ids) // 10)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(sample[queries:])
        folder.make_folder()
        _write_faiss(index, folder.child(f"trained-{build}.faiss"))
        buffer = io.BytesIO()
        np.savez(buffer, ids=sample_ids[:queries], vectors=sample[:queries])
        folder.child(f"queries-{build}.npz").write_bytes(buffer.getvalue())
        progress = Progress(count, quiet=quiet, unit="vectors")
        try:
            needed = math.ceil(count * _bytes_per_vector(kind, dim) / memory)
            results = _add(spark, master, conf, dataset, build, parts, kind, needed,
                           lambda share: progress.update(share * count))
        finally:
            progress.close()
        truth = Best(queries, RECALL_AT)
        for row in results.to_pylist():
            truth.update(np.array(row["truth_similarities"], np.float32).reshape(queries, RECALL_AT),
                         np.array(row["truth_ids"], np.int64).reshape(queries, RECALL_AT))
        description = {
            "format": FORMAT, "build": build, "type": kind, "factory": factory, "metric": "cosine", "dim": dim,
            "count": int(sum(results.column("count").to_pylist())), "model": metadata.get("model"),
            "weights_sha256": metadata.get("weights_sha256"), "parts": parts,
            "shards": [f"shard-{build}-{s}.faiss" for s in sorted(results.column("shard").to_pylist())],
            "queries": queries, "created": _now(),
            "path_ranges": {name: [first, last] for row in results.to_pylist()
                            for name, first, last in zip(row["parts"], row["first_paths"], row["last_paths"],
                                                         strict=True) if first is not None}}
        searcher = NeighbourIndex(dataset, description)
        description.update(searcher.tune(sample[:queries], sample_ids[:queries], truth))
        description["seconds"] = round(time.monotonic() - started, 1)
        folder.child("index.json").write_bytes(json.dumps(description, indent=2).encode())
        for entry in folder.entries():  # the build this one replaces
            name = os.path.basename(entry.path)
            if INDEX_FILE.fullmatch(name) and name != "index.json" and build not in name:
                folder.child(name).delete()
    return description


def _training_size(kind: str, count: int) -> int:
    if not kind.startswith("ivf"):
        return 0
    size = 50 * inverted_lists(count)  # FAISS asks for at least 39 per list
    return max(size, 256 * 40) if kind == "ivf-pq" else size  # and 39 per code of each PQ sub-quantizer


def _add(spark, master, conf, dataset, build, parts, kind: str, needed: int, report) -> pa.Table:
    """One task per index shard: as many as `needed` for each to fit in memory, and at least one per task slot.

    A flat index (a small set) is built in this process, by the same task, without starting Spark.
    """
    from imgvec.jobs import collect, ddl, one_row_per_partition, session, task_slots

    task = AddTask(dataset.location, build)
    if kind == "flat" and spark is None:
        plan = parts_plan(parts, needed)
        return pa.Table.from_batches(list(task(plan.to_batches())), TASK_RESULT)
    spark = spark or session(master, conf or {})
    plan = parts_plan(parts, max(needed, task_slots(spark) or 2))
    return collect(spark, one_row_per_partition(spark, plan).mapInArrow(task, ddl(TASK_RESULT)), report)


class NeighbourIndex:
    """A built index, searched with the setting tuned at build; shards loaded once when they fit in memory."""

    def __init__(self, dataset: FeatureDataset, description: dict):
        self.dataset = dataset
        self.description = description
        self.folder = dataset.where.child(INDEX)
        self._loaded = None

    @classmethod
    def open(cls, dataset: FeatureDataset, *, metadata: dict | None = None,
             parts: list[str] | None = None) -> NeighbourIndex | None:
        """The output's index (None when it has none); an IndexProblem when it cannot be used as it is.

        `metadata` and `parts`, when the caller has them already, spare reading them again (on a store,
        a request each)."""
        where = dataset.where.child(INDEX).child("index.json")
        if not where.is_file():
            return None
        try:
            description = json.loads(where.read_bytes())
            assert isinstance(description, dict) and description.get("format") == FORMAT
        except (ValueError, UnicodeDecodeError, AssertionError):
            raise IndexProblem(f"the index {where.uri} is damaged or of another version; run imgvec index "
                              f"{dataset.location} again, or pass --exact") from None
        metadata = metadata or dataset.metadata()
        made_by = (description.get("model"), description.get("weights_sha256"), description.get("dim"))
        if made_by != (metadata.get("model"), metadata.get("weights_sha256"), metadata.get("dim")):
            raise IndexProblem(f"the index in {dataset.location} was built from other features "
                              f"({description.get('model')}, {description.get('dim')}-d) than the output holds "
                              f"({metadata.get('model')}, {metadata.get('dim')}-d); run imgvec index again")
        if description.get("parts") != (dataset.part_names() if parts is None else parts):
            raise IndexProblem(f"the index in {dataset.location} is older than its features (embed wrote parts "
                              "since); run imgvec index again, or pass --exact")
        return cls(dataset, description)

    @property
    def summary(self) -> str:
        d = self.description
        setting = "".join(f", {name} {d[name]}" for name in ("nprobe", "ef_search") if name in d)
        return (f"{d['type']} index of {d['count']} vectors ({d['factory']}{setting}; "
                f"recall@10 {d['recall_at_10']:.3f} measured at build)")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each [len(queries), k], best first; id -1 where fewer than k exist."""
        best = Best(len(queries), k)
        for shard in self._shards():
            similarities, ids = shard.search(np.ascontiguousarray(normalise(queries)), k)
            similarities[ids < 0] = -np.inf
            best.update(similarities, ids)
        return best.similarities, best.ids

    def tune(self, queries: np.ndarray, query_ids: np.ndarray, truth: Best) -> dict:
        """The cheapest search setting that reaches RECALL_TARGET on the held-out queries, and its recall@10."""
        import faiss

        kind = self.description["type"]
        if kind.startswith("ivf"):
            name, values = "nprobe", _powers(self.description["factory"])
        elif kind == "hnsw":
            name, values = "ef_search", [16, 32, 64, 128, 256, 512, 1024]
        else:
            name, values = None, [None]
        for value in values:
            if value is not None:
                self._set(name, value, faiss)
            recall = self._recall(queries, query_ids, truth)
            if recall >= defaults.RECALL_TARGET:
                break
        return {"recall_at_10": round(recall, 4), **({name: value} if name else {})}

    def _recall(self, queries, query_ids, truth: Best) -> float:
        _, ids = self.search(queries, RECALL_AT + 1)
        hits = 0
        for own, found, true in zip(query_ids, ids, truth.ids, strict=True):
            found = [i for i in found if i != own][:RECALL_AT]
            hits += len(set(found) & set(true[true >= 0].tolist()))
        return hits / max(1, int((truth.ids >= 0).sum()))

    def _set(self, name: str, value: int, faiss) -> None:
        self.description[name] = value
        for shard in self._shards():
            _apply(shard, name, value, faiss)

    def _shards(self):
        """The shards, merged where they are IVF: held in memory when together they fit in half the memory
        free now; else read again for each search, in runs that fit."""
        if self._loaded is None:
            files = [(where, where.info().size or 0) for where in map(self.folder.child, self.description["shards"])]
            budget = _free_memory() // 2
            if sum(size for _, size in files) > budget:
                return self._merged(files, budget)
            self._loaded = list(self._merged(files, budget))
        return iter(self._loaded)

    def _merged(self, files, budget: int):
        held, size_held = None, 0
        for where, size in files:
            shard = self._load(where)
            if held is not None and self.description["type"].startswith("ivf") and size_held + size <= budget:
                held.merge_from(shard, 0)  # one IVF index: a query scans its lists once
                size_held += size
                continue
            if held is not None:
                yield held
            held, size_held = shard, size
        if held is not None:
            yield held

    def _load(self, where: Location):
        import faiss

        shard = _read_faiss(where, self.description["dim"])
        for name in ("nprobe", "ef_search"):
            if name in self.description:
                _apply(shard, name, self.description[name], faiss)
        return shard


def _apply(index, name: str, value: int, faiss) -> None:
    if name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    else:
        faiss.downcast_index(index.index if hasattr(index, "id_map") else index).hnsw.efSearch = value


def _powers(factory: str) -> list[int]:
    """nprobe to try: 1, 2, 4, ... up to every list."""
    lists = int(factory.split(",")[0].removeprefix("IVF"))
    return [2**i for i in range(int(math.log2(lists))) if 2**i < lists] + [lists]


def _write_faiss(index, where: Location) -> None:
    """Streamed to the file (a shard can be as large as memory: no second copy of it as bytes)."""
    import faiss

    def write(path, fs):
        with fs.open_output_stream(path) as stream:
            faiss.write_index(index, faiss.PyCallbackIOWriter(stream.write))

    where.write_with(write)


def _read_faiss(where: Location, dim: int | None = None):
    import faiss

    try:
        with where.fs.open_input_stream(where.path) as stream:
            index = faiss.read_index(faiss.PyCallbackIOReader(stream.read))
    except (RuntimeError, OSError) as exc:
        raise IndexProblem(f"the index file {where.uri} is damaged or missing ({' '.join(str(exc).split())[:80]}); "
                          "run imgvec index again, or pass --exact") from None
    if dim is not None and index.d != dim:
        raise IndexProblem(f"the index file {where.uri} holds {index.d}-d vectors, not {dim}-d; run imgvec index again")
    return index


def _task_cpus() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, context.cpus()) if context else os.cpu_count() or 1


def _free_memory() -> int:
    """Bytes this machine can give without swapping (MemAvailable counts the page cache it can drop)."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
