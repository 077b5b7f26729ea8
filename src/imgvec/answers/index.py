"""A FAISS nearest-neighbour index of an output's features: built on Spark, stored with the output, kept current.

`OUTPUT/_imgvec_index/` (dataset.names) holds `index.json` (type, search setting, the parts it covers, the
model that made the features, recall@10 measured at build), the trained empty index, the held-out
queries, their exact neighbours, and one segment per Spark task. The driver trains on a sample of
the vectors whose size does not grow with them (TRAINING_BYTES); each task reads its own parts, adds their
vectors to a copy of the trained index, writes it as one segment and computes the exact top 10 of the held-out
queries among its vectors. A second job searches the queries in each segment at every search setting to try; their
top 10 are merged on Spark, and the driver picks the cheapest setting that reaches RECALL_TARGET: it never holds
a segment.

A search (similar, dupes --against) opens one segment at a time memory-mapped (a segment on an object store is
first copied to the local cache) and merges the top k: the process holds one segment's coarse quantizer and the
pages its probes touch, not the index. All segments share the trained coarse quantizer, so probing the same lists
in each finds what one merged index would.

After `embed --resume` has added parts, `imgvec index` adds only those, as new segments of the same
trained index (no retraining), merges their exact neighbours into the held-out queries' and
measures recall@10 again; `--rebuild` trains anew. Vectors are normalised: inner product = cosine
similarity. Row ids are (part number << 32 | row), dataset.rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from imgvec.base import defaults
from imgvec.base.partial import partial_name, remove_abandoned
from imgvec.base.progress import Progress
from imgvec.base.settings import RunOptions
from imgvec.base.storage import Location, read_npz, write_npz
from imgvec.base.text import one_line
from imgvec.dataset import names
from imgvec.dataset.lock import now
from imgvec.dataset.output import FeatureDataset, path_range
from imgvec.dataset.rows import part_vectors
from imgvec.dataset.searchable import Searchable, open_searchable, parts_plan
from imgvec.kernels.similarity import Best, normalise, top_k
from imgvec.spark.tasks import RowTask

FORMAT = "imgvec-index/2"  # /2: segments (were "shards" in /1), held-out neighbours kept for updates
READABLE = ("imgvec-index/1", FORMAT)
RECALL_AT = 10
QUERIES = 1_000  # held-out queries for recall@10 at build
PER_LIST = 50  # training vectors per inverted list (FAISS asks for at least 39)
FOUND = pa.schema([("setting", pa.int64()), ("query", pa.int64()), ("ids", pa.list_(pa.int64())),
                   ("similarities", pa.list_(pa.float32()))])  # the held-out queries' top RECALL_AT + 1
TASK_RESULT = pa.schema([("segment", pa.int64()), ("count", pa.int64()), ("truth_ids", pa.list_(pa.int64())),
                         ("truth_similarities", pa.list_(pa.float32())), ("parts", pa.list_(pa.string())),
                         ("first_paths", pa.list_(pa.string())), ("last_paths", pa.list_(pa.string()))])


class IndexProblem(ValueError):
    """The index cannot be used (missing, damaged, stale, made from other features)."""


def index_for(kind: str, count: int, dim: int, memory: int = defaults.INDEX_MEMORY) -> tuple[str, str]:
    """(index type, FAISS factory string) for `count` vectors of `dim`: exact when small, IVF beyond."""
    if kind == "auto":
        kind = ("flat" if count <= defaults.EXACT_MAX else "ivf-flat" if count * dim * 4 <= memory else "ivf-pq")
    lists = inverted_lists(count, dim)
    bits = 8 if count >= 256 * 40 else max(1, int(math.log2(max(2, count // 40))))  # codes PQ can train on a few
    pq = f"PQ{_pq_bytes(dim)}" + ("" if bits == 8 else f"x{bits}")
    return kind, {"flat": "IDMap,Flat", "ivf-flat": f"IVF{lists},Flat", "ivf-pq": f"IVF{lists},{pq}",
                  "hnsw": "IDMap,HNSW32"}[kind]


def inverted_lists(count: int, dim: int) -> int:
    """IVF lists: a power of two near sqrt(count), so a query scans ~sqrt(count) vectors per list probed.

    Fewer for a small set (an IVF index chosen by hand): FAISS trains each list on at least 39 vectors; and no
    more than a bounded training sample trains (TRAINING_BYTES: 8,192 lists of 128-d, 2,048 of 512-d).
    """
    near_root = 2 ** round(math.log2(max(count, 1) ** 0.5))
    trainable = 2 ** int(math.log2(max(1, defaults.TRAINING_BYTES // (4 * dim * PER_LIST))))
    return int(min(65536, trainable, max(16, near_root), max(1, count // 40)))


def _pq_bytes(dim: int) -> int:
    """PQ sub-quantizers (one byte each): the largest divisor of dim up to dim / 8 (2048 floats -> 256 bytes)."""
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def bytes_per_vector(kind: str, dim: int) -> int:
    return {"ivf-pq": _pq_bytes(dim) + 8, "hnsw": dim * 4 + 8 + 32 * 2 * 4}.get(kind, dim * 4 + 8)


def segments_needed(kind: str, count: int, dim: int, memory: int) -> int:
    """Segments for `count` vectors so that each fits in `memory`."""
    return max(1, math.ceil(count * bytes_per_vector(kind, dim) / memory))


@dataclass(frozen=True)
class AddTask(RowTask):
    """Index segments, on a worker: a copy of the trained index gets the vectors of some parts."""

    RESULT: ClassVar[pa.Schema] = TASK_RESULT
    output: str
    build: str
    first: int  # the number of this job's first segment: an update adds segments after the build's

    def run(self, rows):
        import faiss

        faiss.omp_set_num_threads(_task_cpus())
        folder = FeatureDataset(self.output).where.child(names.INDEX)
        trained = _read_faiss(folder.child(names.trained(self.build)))
        queries = read_npz(folder.child(names.queries(self.build)))
        for row in rows:
            yield self.add(self.first + row["id"], row["parts"], row["numbers"], faiss.clone_index(trained),
                           folder, queries)

    def add(self, segment: int, parts: list[str], numbers: list[int], index, folder: Location, queries):
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
        _write_faiss(index, folder.child(names.segment(self.build, segment)))
        return pa.RecordBatch.from_pylist([{"segment": segment, "count": count,
                                            "truth_ids": truth.ids.ravel().tolist(),
                                            "truth_similarities": truth.similarities.ravel().tolist(),
                                            "parts": parts, "first_paths": [r[0] for r in ranges],
                                            "last_paths": [r[1] for r in ranges]}], schema=TASK_RESULT)


def build_index(output: str, *, kind: str = defaults.INDEX_TYPE, memory: int = defaults.INDEX_MEMORY,
                rebuild: bool = False, run: RunOptions = RunOptions()) -> dict:
    """Build OUTPUT's index, or add the parts embedded since to the one it has; returns its description
    (index.json) with "added" (vectors indexed now) and "advice" (a reason to --rebuild, or None).
    ValueError before any job for bad arguments."""
    if kind not in defaults.INDEX_TYPES:
        raise ValueError(f"--index-type must be one of {', '.join(defaults.INDEX_TYPES)}, not {kind!r}")
    started = time.monotonic()
    features = open_searchable(output)
    with features.dataset.locked():
        current = None if rebuild else _updatable(features, kind)
        if current is None:
            description = _build(features, kind, memory, run)
        else:
            description = _update(features, current, memory, run)
        description["seconds"] = round(time.monotonic() - started, 1)
        folder = features.dataset.where.child(names.INDEX)
        folder.child(names.INDEX_DESCRIPTION).write_bytes(json.dumps(description, indent=2).encode())
        for entry in folder.entries():  # what this description no longer names: the build it replaced, old truth
            name = entry.base_name
            if names.is_index_file(name) and name not in _files(description) and not names.is_temporary(name):
                folder.child(name).delete()
    return description


def _files(description: dict) -> set[str]:
    build = description["build"]
    return {names.INDEX_DESCRIPTION, names.trained(build), names.queries(build),
            names.truth(build, description["updates"]), *description["segments"]}


def _build(features: Searchable, kind, memory, run: RunOptions) -> dict:
    import faiss

    count, dim = features.count, features.dim
    kind, factory = index_for(kind, count, dim, memory)
    folder = features.dataset.where.child(names.INDEX)
    build = uuid.uuid4().hex[:8]
    training = _training_size(kind, count, dim)
    sample_ids, sample = features.sample(training + QUERIES)
    queries = QUERIES if len(sample_ids) >= training + QUERIES else max(1, len(sample_ids) // 10)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(sample[queries:])
    folder.make_folder()
    _write_faiss(index, folder.child(names.trained(build)))
    write_npz(folder.child(names.queries(build)), ids=sample_ids[:queries], vectors=sample[:queries])
    description = {"format": FORMAT, "build": build, "type": kind, "factory": factory, "metric": "cosine",
                   "dim": dim, "count": 0, "trained_on": count, "model": features.metadata.get("model"),
                   "weights_sha256": features.metadata.get("weights_sha256"), "parts": [], "segments": [],
                   "path_ranges": {}, "updates": -1, "queries": queries, "created": now()}
    return _add(features, description, Best(queries, RECALL_AT), memory, run)


def _update(features: Searchable, description: dict, memory, run: RunOptions) -> dict:
    folder = features.dataset.where.child(names.INDEX)
    truth = Best(description["queries"], RECALL_AT)
    held = read_npz(folder.child(names.truth(description["build"], description["updates"])))
    truth.update(held["similarities"], held["ids"])
    return _add(features, description, truth, memory, run)


def _add(features: Searchable, description: dict, truth: Best, memory, run: RunOptions) -> dict:
    """Adds the parts the index lacks as new segments, merges their queries' neighbours, re-measures recall."""
    known = len(description["parts"])
    new = features.parts[known:]
    numbers = list(range(known, len(features.parts)))
    build, kind = description["build"], description["type"]
    folder = features.dataset.where.child(names.INDEX)
    # a flat index, or an update of few vectors (their parts' footers are read only then)
    in_process = run.spark is None and (kind == "flat" or known > 0
                                        and _new_vectors(features, new) <= defaults.EXACT_MAX)
    added = 0
    with _tasks(run, in_process) as tasks:
        if new:
            expected = max(1, features.count - description["count"])
            needed = segments_needed(kind, expected, features.dim, memory)
            progress = Progress(expected, quiet=run.quiet, unit="vectors")
            try:
                results = tasks(lambda slots: parts_plan(new, max(needed, slots), numbers),
                                AddTask(features.location, build, len(description["segments"])),
                                lambda share: progress.update(share * expected))
            finally:
                progress.close()
            queries = description["queries"]
            for row in results.to_pylist():
                truth.update(np.array(row["truth_similarities"], np.float32).reshape(queries, RECALL_AT),
                             np.array(row["truth_ids"], np.int64).reshape(queries, RECALL_AT))
                description["path_ranges"].update({name: [first, last] for name, first, last in zip(
                    row["parts"], row["first_paths"], row["last_paths"], strict=True) if first is not None})
            added = int(sum(results.column("count").to_pylist()))
            description["segments"] += [names.segment(build, s) for s in sorted(results.column("segment").to_pylist())]
        name, values = _settings(description)
        segments = description["segments"]
        found = tasks(lambda slots: pa.table({"id": range(len(segments)), "segment": segments}),
                      MeasureTask(features.location, build, name, tuple(values)),
                      then=_merged_on_spark)
    description.update(parts=features.parts, count=description["count"] + added, updated=now())
    description["updates"] += 1
    write_npz(folder.child(names.truth(build, description["updates"])), ids=truth.ids, similarities=truth.similarities)
    query_ids = read_npz(folder.child(names.queries(build)))["ids"]
    recalls = _recalls(found, query_ids, truth)
    value = next((v for v in values if recalls[v] >= defaults.RECALL_TARGET), values[-1])
    description.update(recall_at_10=round(recalls[value], 4), **({name: value} if name else {}))
    description["added"] = added
    description["advice"] = _advice(description)
    return description


@contextmanager
def _tasks(run: RunOptions, in_process: bool):
    """tasks(plan_of(task slots) -> plan, task, report, then) -> the task's rows: on Spark, or in this process
    without starting Spark (a flat index, or an update of few vectors: its cost follows the new vectors, not a
    session's start), where `then` is left out."""
    if in_process:
        yield lambda plan_of, task, report=None, then=None: task.here(plan_of(1))
        return
    from imgvec.spark.session import session, task_slots
    from imgvec.spark.tasks import run_tasks

    with session(run) as spark:
        slots = task_slots(spark) or 2
        yield lambda plan_of, task, report=None, then=None: run_tasks(spark, plan_of(slots), task, report, then)


def _settings(description: dict) -> tuple[str | None, list]:
    """The search setting to tune and the values to try, cheapest first: an updated index starts from the setting it
    had (more vectors in the same lists need no fewer probes)."""
    kind = description["type"]
    if kind.startswith("ivf"):
        name, values = "nprobe", _powers(description["factory"])
    elif kind == "hnsw":
        name, values = "ef_search", [16, 32, 64, 128, 256, 512, 1024]
    else:
        return None, [0]
    return name, [v for v in values if v >= description.get(name, 0)] or values[-1:]


@dataclass(frozen=True)
class MeasureTask(RowTask):
    """The held-out queries searched in one segment at each search setting: their top RECALL_AT + 1 (the query
    itself is among them, and left out when recall is counted)."""

    RESULT: ClassVar[pa.Schema] = FOUND
    output: str
    build: str
    name: str | None  # nprobe, ef_search, or None (a flat index)
    values: tuple[int, ...]

    def run(self, rows):
        import faiss

        faiss.omp_set_num_threads(_task_cpus())
        folder = FeatureDataset(self.output).where.child(names.INDEX)
        queries = np.ascontiguousarray(read_npz(folder.child(names.queries(self.build)))["vectors"])
        for row in rows:
            segment = _open_segment(folder.child(row["segment"]), len(queries[0]))
            for value in self.values:
                if self.name:
                    _set_search_setting(segment, self.name, value, faiss)
                similarities, ids = segment.search(queries, RECALL_AT + 1)
                similarities[ids < 0] = -np.inf
                yield pa.RecordBatch.from_arrays([
                    pa.array(np.full(len(ids), value, np.int64)), pa.array(np.arange(len(ids))),
                    _lists(ids), _lists(similarities.astype(np.float32))], schema=FOUND)


def _lists(matrix: np.ndarray) -> pa.ListArray:
    """[n, k] -> n lists of k."""
    return pa.ListArray.from_arrays(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32), matrix.ravel())


def _merged_on_spark(found):
    """Each query's top RECALL_AT + 1 over every segment, per setting: the driver gets one row per (setting, query)
    whatever the number of segments."""
    from imgvec.spark import compat
    from imgvec.spark.tasks import ddl

    return compat.apply_in_arrow(found.groupBy("setting", "query"), _top, ddl(FOUND))


def _top(table: pa.Table) -> pa.Table:
    """The rows of one (setting, query) -> one row: the best RECALL_AT + 1 of their lists."""
    ids = pc.list_flatten(table.column("ids")).to_numpy()
    similarities = pc.list_flatten(table.column("similarities")).to_numpy()
    similarities, ids = top_k(similarities[None], ids[None], RECALL_AT + 1)
    first = table.slice(0, 1)
    return pa.Table.from_arrays([first.column("setting").combine_chunks(), first.column("query").combine_chunks(),
                                 _lists(ids), _lists(similarities)], schema=FOUND)


def _recalls(found: pa.Table, query_ids: np.ndarray, truth: Best) -> dict[int, float]:
    """recall@10 per setting: of the queries' true 10 nearest (not themselves), the share found. `found` has a row
    per (setting, query) and segment, or per (setting, query) once merged."""
    width = RECALL_AT + 1
    settings = found.column("setting").to_numpy()
    queries = found.column("query").to_numpy()
    ids = pc.list_flatten(found.column("ids")).to_numpy().reshape(-1, width)
    similarities = pc.list_flatten(found.column("similarities")).to_numpy().reshape(-1, width)
    true = int((truth.ids >= 0).sum())
    recalls = {}
    for value in np.unique(settings).tolist():
        rows = np.flatnonzero(settings == value)
        rows = rows[np.argsort(queries[rows], kind="stable")]  # each query's rows together, queries in order
        per_query = len(rows) // len(query_ids)
        best = Best(len(query_ids), width)
        best.update(similarities[rows].reshape(len(query_ids), per_query * width),
                    ids[rows].reshape(len(query_ids), per_query * width))
        hits = 0
        for own, found_ids, true_ids in zip(query_ids, best.ids, truth.ids, strict=True):
            hits += len(set(found_ids[found_ids != own][:RECALL_AT].tolist()) & set(true_ids[true_ids >= 0].tolist()))
        recalls[value] = hits / max(1, true)
    return recalls


def _advice(description: dict) -> str | None:
    """Why the index should be trained anew, if it should."""
    since = description["count"] - description["trained_on"]
    if since > description["trained_on"]:
        return (f"{since} vectors were added since the index was trained on {description['trained_on']}: "
                "run imgvec index --rebuild to train it on them all")
    if description["recall_at_10"] < defaults.RECALL_TARGET:
        return (f"recall@10 is {description['recall_at_10']:.3f}, below {defaults.RECALL_TARGET}: "
                "run imgvec index --rebuild")
    return None


def _updatable(features: Searchable, kind: str) -> dict | None:
    """The current index's description when new parts can be added to it: same features, same type asked for,
    its parts the first of the output's (embed --resume adds parts after them). None: build anew."""
    try:
        index = NeighbourIndex.open(features.dataset, metadata=features.metadata, parts=features.parts,
                                    stale_ok=True)
    except IndexProblem:
        return None
    if index is None:
        return None
    d = index.description
    if d["format"] != FORMAT or kind not in ("auto", d["type"]) or features.parts[: len(d["parts"])] != d["parts"]:
        return None
    if not index.folder.child(names.truth(d["build"], d["updates"])).is_file():
        return None
    return d


def _training_size(kind: str, count: int, dim: int) -> int:
    if not kind.startswith("ivf"):
        return 0
    size = PER_LIST * inverted_lists(count, dim)
    return max(size, 256 * 40) if kind == "ivf-pq" else size  # and 39 per code of each PQ sub-quantizer


def _new_vectors(features: Searchable, parts: list[str]) -> int:
    from imgvec.dataset.output import footer

    return sum(footer(features.dataset.where.child(name)).num_rows for name in parts)


class NeighbourIndex:
    """A built index, searched one memory-mapped segment at a time with its tuned setting."""

    def __init__(self, dataset: FeatureDataset, description: dict):
        self.dataset = dataset
        self.description = description
        self.folder = dataset.where.child(names.INDEX)

    @classmethod
    def open(cls, dataset: FeatureDataset, *, metadata: dict | None = None, parts: list[str] | None = None,
             stale_ok: bool = False) -> NeighbourIndex | None:
        """The output's index (None when it has none); an IndexProblem when it cannot be used as it is.

        `metadata` and `parts`, when the caller has them already, spare reading them again (on a store,
        a request each). `stale_ok`: an index of fewer parts than the output is returned (to update it)."""
        where = dataset.where.child(names.INDEX).child(names.INDEX_DESCRIPTION)
        if not where.is_file():
            return None
        try:
            description = json.loads(where.read_bytes())
            assert isinstance(description, dict) and description.get("format") in READABLE
        except (ValueError, UnicodeDecodeError, AssertionError):
            raise IndexProblem(f"the index {where.uri} is damaged or of another version; run imgvec index "
                              f"{dataset.location} --rebuild, or pass --exact") from None
        if "segments" not in description:  # imgvec-index/1 called them shards
            description["segments"] = description.pop("shards", [])
        metadata = metadata or dataset.metadata()
        made_by = (description.get("model"), description.get("weights_sha256"), description.get("dim"))
        held = (metadata.get("model"), metadata.get("weights_sha256"), dataset.dim(metadata, parts))
        if made_by != held:
            raise IndexProblem(f"the index in {dataset.location} was built from other features "
                              f"({description.get('model')}, {description.get('dim')}-d) than the output holds "
                              f"({held[0]}, {held[2]}-d); run imgvec index --rebuild")
        if description.get("parts") != (dataset.part_names() if parts is None else parts) and not stale_ok:
            raise IndexProblem(f"the index in {dataset.location} is older than its features (embed wrote parts "
                              "since); run imgvec index again to add them, or pass --exact")
        return cls(dataset, description)

    @property
    def summary(self) -> str:
        d = self.description
        setting = "".join(f", {name} {d[name]}" for name in ("nprobe", "ef_search") if name in d)
        return (f"{d['type']} index of {d['count']} vectors ({d['factory']}{setting}; "
                f"recall@10 {d['recall_at_10']:.3f} measured at build)")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each [len(queries), k], best first; id -1 where fewer than k exist."""
        import faiss

        queries = np.ascontiguousarray(normalise(queries))
        best = Best(len(queries), k)
        copies = _copies_folder(self.folder, self.description["segments"])
        for name in self.description["segments"]:
            segment = _open_segment(self.folder.child(name), self.description["dim"], copy=copies)
            for setting in ("nprobe", "ef_search"):
                if setting in self.description:
                    _set_search_setting(segment, setting, self.description[setting], faiss)
            similarities, ids = segment.search(queries, k)
            similarities[ids < 0] = -np.inf
            best.update(similarities, ids)
            del segment  # its mapping goes: the next segment's pages replace this one's
        return best.similarities, best.ids


def _set_search_setting(index, name: str, value: int, faiss) -> None:
    """Set how widely `index` searches: nprobe (IVF lists probed) or ef_search (HNSW candidates kept)."""
    if name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    else:
        faiss.downcast_index(index.index if hasattr(index, "id_map") else index).hnsw.efSearch = value


def _powers(factory: str) -> list[int]:
    """nprobe to try: 1, 2, 4, ... up to every list."""
    lists = int(factory.split(",")[0].removeprefix("IVF"))
    return [2**i for i in range(int(math.log2(lists))) if 2**i < lists] + [lists]


def _write_faiss(index, where: Location) -> None:
    """Streamed to the file (a segment can be as large as memory: no second copy of it as bytes)."""
    import faiss

    def write(path, fs):
        with fs.open_output_stream(path) as stream:
            faiss.write_index(index, faiss.PyCallbackIOWriter(stream.write))

    where.write_with(write)


def _read_faiss(where: Location, dim: int | None = None, mapped: str | None = None):
    """The index file at `where`, read into memory, or memory-mapped from the local file `mapped` (its copy)."""
    import faiss

    try:
        if mapped:  # IFC maps every kind imgvec builds (IVF lists, flat, HNSW); with IO_FLAG_MMAP, IVF refuses
            index = faiss.read_index(mapped, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        else:
            with where.fs.open_input_stream(where.path) as stream:
                index = faiss.read_index(faiss.PyCallbackIOReader(stream.read))
    except (RuntimeError, OSError) as exc:
        raise IndexProblem(f"the index file {where.uri} is damaged or missing ({one_line(exc)}); "
                          "run imgvec index again, or pass --exact") from None
    if dim is not None and index.d != dim:
        raise IndexProblem(f"the index file {where.uri} holds {index.d}-d vectors, not {dim}-d; run imgvec index again")
    return index


def _open_segment(where: Location, dim: int, copy: str | bool = False):
    """A segment, memory-mapped from its file; one on an object store is first copied into the folder `copy` (a
    search on the driver: the copy stays for the next), or read into memory (`copy` False: a task's one segment)."""
    if not where.is_local and not copy:
        return _read_faiss(where, dim)
    path = where.path
    if not where.is_local:
        path = os.path.join(copy, where.path.rsplit("/", 1)[-1])
        if not os.path.exists(path):
            remove_abandoned(path)
            try:
                pafs.copy_files(where.path, partial_name(path), source_filesystem=where.fs)
            except OSError as exc:
                raise IndexProblem(f"the index file {where.uri} could not be copied to {copy} ({one_line(exc)})") \
                    from None
            os.replace(partial_name(path), path)
    return _read_faiss(where, dim, mapped=path)


def _copies_folder(folder: Location, segments: list[str]) -> str | bool:
    """Where a search on this machine keeps its copies of an index on an object store (False: the index is local):
    a folder of the cache for each index, holding the current build's segments only."""
    if folder.is_local:
        return False
    copies = os.path.join(defaults.cache_dir(), "indexes", hashlib.sha256(folder.uri.encode()).hexdigest()[:16])
    os.makedirs(copies, exist_ok=True)
    for name in os.listdir(copies):
        if name.endswith(".faiss") and name not in segments:  # an earlier build's
            os.remove(os.path.join(copies, name))
    return copies


def _task_cpus() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, context.cpus()) if context else os.cpu_count() or 1


