"""The feature dataset: Parquet parts [path, features, error, bytes, sha256], `_imgvec.json`, a lock while a run writes.

Every part appears whole (a rename on a local disk), so a reader (Spark, pyarrow, pandas: all
skip names starting with '_' or '.') sees whole parts or nothing, and a run killed at any moment
leaves a readable dataset that `--resume` can complete. imgvec deletes only what it wrote: its
metadata, its lock and its parts; a folder holding anything else is never replaced.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager, suppress

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgvec.storage import S3_SCHEMES, Location, check_reachable, is_local, local_path, open_location

METADATA = "_imgvec.json"
LOCK = "_imgvec.lock"
FORMAT = "imgvec-features/2"
# /2 added each input's byte length and sha256 (null where the input could not be read): byte-identical
# files are found from them. Outputs and parts of /1 are read, their new columns null.
READABLE = ("imgvec-features/1", FORMAT)
SCHEMA = pa.schema([("path", pa.string()), ("features", pa.list_(pa.float32())), ("error", pa.string()),
                    ("bytes", pa.int64()), ("sha256", pa.string())])
SCHEMA_1 = pa.schema(list(SCHEMA)[:3])
_PART = re.compile(r"part-(?:([0-9]+)-)?[0-9]+\.parquet")  # part-<run>-<shard>.parquet
_TEMPORARY = re.compile(r"\.tmp-.*")  # storage.Location.write_with's names: what a killed writer left
INDEX = "_imgvec_index"  # the nearest-neighbour index (index.py), a folder of these files:
INDEX_FILE = re.compile(r"index\.json|(trained|queries|shard)-[0-9a-f]+(-[0-9]+)?\.(faiss|npz)|\.tmp-.*")


class OutputError(ValueError):
    """The output cannot be used as asked (exists, belongs to another model, is damaged, is busy...)."""


class FeatureDataset:
    def __init__(self, location: str):
        self.where = open_location(location)
        self.location = self.where.uri

    # --- what is there -----------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(os.path.basename(e.path) for e in self.where.entries())

    def parts(self) -> list[Location]:
        return [self.where.child(n) for n in self.names() if _PART.fullmatch(n)]

    def metadata(self) -> dict:
        """The metadata, or an OutputError that says what is wrong with it."""
        where = self.where.child(METADATA)
        if not where.is_file():
            raise OutputError(f"{self.location} is not an imgvec output (no {METADATA})")
        try:
            metadata = json.loads(where.read_bytes())
        except (ValueError, UnicodeDecodeError):
            raise OutputError(f"{where.uri} is damaged (not JSON); embed again into a new output") from None
        if not isinstance(metadata, dict):
            raise OutputError(f"{where.uri} is damaged (not a JSON object); embed again into a new output")
        made = metadata.get("format")
        if made not in READABLE:
            newer = isinstance(made, str) and made.startswith("imgvec-features/")
            raise OutputError(f"{self.location} has format {made!r}, which this imgvec ({_version()}) cannot read"
                              + ("; upgrade imgvec" if newer else ""))
        return metadata

    # --- starting a run ----------------------------------------------------------------

    @contextmanager
    def writing(self, identity: dict, *, resume: bool, overwrite: bool):
        """Hold the output for one run that writes features made by `identity` (model, weights)."""
        if self.where.is_file():
            raise OutputError(f"output {self.location} is a file; give a folder")
        Lock(self.where.child(LOCK)).check_free()  # before any other check: a busy output is the first thing to say
        present = [n for n in self.names() if n != LOCK]
        held = None
        if present:
            if METADATA not in present:
                raise OutputError(f"output {self.location} holds files but is not an imgvec output "
                                  f"(no {METADATA}); give a new or empty folder")
            if overwrite:
                self._check_only_ours(present)
            elif not resume:
                raise OutputError(f"output {self.location} already exists; pass --resume to complete it "
                                  "or --overwrite to replace it")
            else:
                held = self.metadata()
                self._check_same_maker(held, identity)
        self.where.make_folder()
        with self.locked():
            for name in present:
                if name == INDEX and overwrite:
                    self._delete_index()
                elif overwrite or _TEMPORARY.fullmatch(name):  # a temporary: what a killed run was writing
                    self.where.child(name).delete()
            if held is None:
                self.write_metadata({**identity, "created": _now()})
            elif held["format"] != FORMAT:  # an older output: the parts added now are of this format
                self.write_metadata({**held, "format": FORMAT})
            yield self

    @contextmanager
    def locked(self):
        """This process is the one run writing the output (its features, or its index) while the block runs."""
        lock = Lock(self.where.child(LOCK))
        lock.check_free()
        with lock.held():
            yield

    def _check_only_ours(self, present: list[str]) -> None:
        foreign = [n for n in present if n not in (METADATA, INDEX) and not _PART.fullmatch(n)
                   and not _TEMPORARY.fullmatch(n)]
        if INDEX in present:
            foreign += [f"{INDEX}/{n}" for n in self._index_names() if not INDEX_FILE.fullmatch(n)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"output {self.location} also holds files imgvec did not write ({shown}); "
                              "--overwrite replaces only an imgvec output: give a new folder")

    def _check_same_maker(self, held: dict, identity: dict) -> None:
        for key in ("model", "weights_sha256", "dim"):
            if identity.get(key) is not None and held.get(key) != identity[key]:
                raise OutputError(
                    f"output {self.location} holds features from {held.get('model')} ({held.get('weights')}); "
                    f"resuming with {identity['model']} ({identity['weights']}) would mix two models: "
                    "use another output or --overwrite")

    def _index_names(self) -> list[str]:
        return sorted(os.path.basename(e.path) for e in self.where.child(INDEX).entries())

    def _delete_index(self) -> None:
        for name in self._index_names():  # all imgvec's: checked by _check_only_ours
            self.where.child(INDEX).child(name).delete()
        self.where.child(INDEX).delete_folder()

    def check_apart_from(self, inputs: list[str]) -> None:
        """OUTPUT must not be an input, lie inside one, or hold one: its own parts would be read as images."""
        output = _comparable(self.location)
        for text in inputs:
            root = _comparable(_fixed_prefix(text))
            if root[0] == output[0] and os.path.commonpath([output[1], root[1]]) in (output[1], root[1]):
                raise OutputError(f"output {self.location} overlaps input {text}; write the output to a folder "
                                  "outside the inputs")

    def done_paths(self) -> set[str]:
        return set(self.read(["path"]).column("path").to_pylist())

    # --- writing -----------------------------------------------------------------------

    def next_run(self) -> int:
        """A number for this run's parts that no earlier run used."""
        runs = [int(m.group(1)) for m in map(_PART.fullmatch, self.names()) if m and m.group(1)]
        return max(runs, default=-1) + 1

    def write_part(self, table: pa.Table, name: str) -> str:
        """Write (or replace) one part whole; returns its URI. Absent `bytes`/`sha256` columns are written null."""
        table = _with_columns(table, SCHEMA.names).cast(SCHEMA)
        part = self.where.child(name)
        # no dictionary for features: it never pays for floats and made writing a 2048-d part ~10x slower
        part.write_with(lambda path, fs: pq.write_table(table, path, filesystem=fs, use_dictionary=["error"]))
        return part.uri

    def write_metadata(self, metadata: dict) -> None:
        self.where.child(METADATA).write_bytes(json.dumps(metadata, indent=2, sort_keys=True).encode())

    def update_counts(self, counts: dict) -> None:
        self.write_metadata({**self.metadata(), **counts, "updated": _now()})

    # --- reading -----------------------------------------------------------------------

    def read(self, columns=("path", "features", "error")) -> pa.Table:
        """The parts' rows; a damaged part is an OutputError that names it and what to do."""
        return pa.concat_tables([SCHEMA.empty_table().select(list(columns))]
                                + [read_part(part, columns) for part in self.parts()])

    def size(self, metadata: dict) -> int:
        """Images with features as the last run counted them; the parts' row counts when that run was cut short."""
        if isinstance(metadata.get("succeeded"), int):
            return metadata["succeeded"]
        return sum(footer(part).num_rows for part in self.parts())

    def counts(self) -> dict:
        table = self.read(["error"])
        errors = [e for e in table.column("error").to_pylist() if e is not None]
        kinds = Counter(e.split(":", 1)[0] for e in errors)
        return {"total": table.num_rows, "succeeded": table.num_rows - len(errors), "failed": len(errors),
                "error_kinds": dict(kinds.most_common())}

    def part_names(self) -> list[str]:
        return [n for n in self.names() if _PART.fullmatch(n)]

    def rows_of(self, ids, parts: list[str], columns=("path",)) -> pa.Table:
        """The `columns` of row ids (part_ids), in their order; `parts` are the part names the ids were made from."""
        ids = np.asarray(ids, np.int64)
        tables, order = [SCHEMA.empty_table().select(list(columns))], [np.empty(0, np.int64)]
        for number in np.unique(ids >> 32):
            mine = np.flatnonzero((ids >> 32) == number)
            tables.append(read_part(self.where.child(parts[number]), columns).take(ids[mine] & 0xFFFFFFFF))
            order.append(mine)
        return pa.concat_tables(tables).take(np.argsort(np.concatenate(order), kind="stable"))

    def lookup(self, paths, parts: list[str], ranges: dict | None = None) -> dict[str, tuple[int, np.ndarray | None]]:
        """Where `paths` are in the output's `parts`: {path: (row id, features or None)}.

        Only parts whose path range may hold one are read: the range from `ranges` ({part: [first, last]},
        as an index records them) or else from the part's footer.
        """
        wanted, found = set(paths), {}
        for number, name in enumerate(parts):
            part = self.where.child(name)
            known = (ranges or {}).get(name) or path_range(part)
            if known and not any(known[0] <= p <= known[1] for p in wanted):
                continue
            table = read_part(part, ["path", "features"])
            for row, path in enumerate(table.column("path").to_pylist()):
                if path in wanted:
                    features = table.column("features")[row].values
                    found[path] = (int(part_ids(number, [row])[0]),
                                   None if features is None else features.to_numpy().astype(np.float32))
        return found



# A job over an output's parts (index, dupes): each task's part names and their numbers (for row ids).
PARTS_PLAN = pa.schema([("id", pa.int64()), ("parts", pa.list_(pa.string())), ("numbers", pa.list_(pa.int64()))])


def parts_plan(parts: list[str], tasks: int) -> pa.Table:
    """The parts cut into `tasks` runs of consecutive parts (fewer when there are fewer parts), a row each."""
    runs = np.array_split(np.arange(len(parts)), max(1, min(len(parts), tasks)))
    return pa.table({"id": list(range(len(runs))), "parts": [[parts[i] for i in run] for run in runs],
                     "numbers": [run.tolist() for run in runs]}, schema=PARTS_PLAN)


def open_output(location: str) -> tuple[FeatureDataset, dict]:
    """An existing output to read (local or in a store) and its metadata; a clear error when it cannot be
    reached or is not an imgvec output."""
    dataset = FeatureDataset(location)
    check_reachable(dataset.where, "output")
    return dataset, dataset.metadata()


def read_part(part: Location, columns=SCHEMA.names) -> pa.Table:
    """One part's columns (null for those its format lacks); a damaged part is an OutputError."""
    try:
        with pq.ParquetFile(part.path, filesystem=part.fs) as parquet:
            schema = parquet.schema_arrow
            if schema.equals(SCHEMA) or schema.equals(SCHEMA_1):
                return _with_columns(parquet.read(columns=[c for c in columns if c in schema.names]), columns)
            problem = f"schema {_schema_text(schema)}"
    except (pa.ArrowException, OSError) as exc:
        problem = " ".join(str(exc).split())[:100]
    raise _damaged(part, problem)


def _damaged(part: Location, problem: str) -> OutputError:
    return OutputError(f"part {part.uri} is damaged ({problem}); delete it and run imgvec embed "
                       "with --resume to embed its images again")


def footer(part: Location) -> pq.FileMetaData:
    """A part's Parquet footer (row counts, statistics); a damaged part is an OutputError."""
    try:
        with pq.ParquetFile(part.path, filesystem=part.fs) as parquet:
            return parquet.metadata
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(part, " ".join(str(exc).split())[:100]) from None


def part_ids(number: int, rows) -> np.ndarray:
    """Row ids that name a row of a dataset's parts in an index or a duplicate search: part number, row in it."""
    return (np.int64(number) << 32) | np.asarray(rows, np.int64)


def part_vectors(part: Location, number: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids and [n, dim] float32 features of one part's rows that have features."""
    table = read_part(part, ["features"])
    valid = table.column("features").is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(valid)
    features = table.column("features").filter(pa.array(valid)).combine_chunks()
    flat = features.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return part_ids(number, rows), flat.reshape(len(rows), -1) if len(rows) else flat.reshape(0, 0)


def path_range(part: Location) -> tuple[str, str] | None:
    """The first and last path of a part, from its footer's statistics (parts hold runs of sorted names)."""
    metadata = footer(part)
    if "path" not in metadata.schema.names:
        return None  # not a part imgvec wrote: reading it says so
    column = metadata.schema.names.index("path")
    ranges = [metadata.row_group(g).column(column).statistics for g in range(metadata.num_row_groups)]
    if not ranges or any(r is None or not r.has_min_max for r in ranges):
        return None
    return min(r.min for r in ranges), max(r.max for r in ranges)


def _with_columns(table: pa.Table, columns) -> pa.Table:
    """The table's `columns` in that order, those it lacks null."""
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    return table.select(list(columns))


class Lock:
    """One run writes an output at a time: a lock file naming the run, refreshed while it lives.

    A run killed with SIGKILL cannot remove it: a lock whose process is gone (same host) or that
    has not been refreshed for STALE seconds (another host) is taken over.
    """

    REFRESH = 10.0
    STALE = 60.0

    def __init__(self, where: Location):
        self.where = where
        self.mine = {"run": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}

    def read(self) -> dict | None:
        try:
            held = json.loads(self.where.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return held if isinstance(held, dict) else None

    def check_free(self) -> None:
        held = self.read()
        if held and held.get("run") != self.mine["run"] and _alive(held):
            raise OutputError(
                f"output {self.where.uri.rsplit('/', 1)[0]} is being written by another imgvec run "
                f"(pid {held.get('pid')} on {held.get('host')}, since {held.get('started')}); wait for it to "
                "finish or use another output")

    @contextmanager
    def held(self):
        self.mine["started"] = _now()
        self._write()
        if (self.read() or {}).get("run") != self.mine["run"]:  # another run wrote its lock at the same moment
            self.check_free()
        stop = threading.Event()
        refresher = threading.Thread(target=self._refresh, args=(stop,), daemon=True, name="imgvec-lock")
        refresher.start()
        try:
            yield
        finally:
            stop.set()
            refresher.join()
            if (self.read() or {}).get("run") == self.mine["run"]:
                self.where.delete()

    def _write(self) -> None:
        self.where.write_bytes(json.dumps({**self.mine, "refreshed": time.time()}).encode())

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.wait(self.REFRESH):
            with suppress(OSError):  # a passing storage hiccup; the next refresh tries again
                self._write()


def _alive(held: dict) -> bool:
    """Whether the run that wrote a lock may still be running."""
    refreshed = held.get("refreshed")
    if not isinstance(refreshed, (int, float)) or time.time() - refreshed > Lock.STALE:
        return False
    if held.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(held.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        pass
    return True


def _comparable(text: str) -> tuple[str, str]:
    """(filesystem, absolute path) of a local path or URI, so that two spellings of one place compare equal."""
    if is_local(text):
        return "local", os.path.realpath(local_path(text))
    scheme, rest = text.split("://", 1)
    return ("s3" if scheme.lower() in S3_SCHEMES else scheme.lower()), "/" + rest.strip("/")


def _fixed_prefix(path: str) -> str:
    """The folder a glob starts from ('photos/*/x?.jpg' -> 'photos'), or the path itself."""
    if not glob.has_magic(path):
        return path
    parts = path.split(os.sep)
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or "."


def _schema_text(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)


def _version() -> str:
    import imgvec

    return imgvec.__version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
