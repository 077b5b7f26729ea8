"""The feature dataset: Parquet parts [path, features, error, bytes, sha256, input, kept columns...] and
`_imgvec.json`.

Every part appears whole (a rename on a local disk), so a reader (Spark, pyarrow, pandas: all
skip names starting with '_' or '.') sees whole parts or nothing. This module reads and writes
the parts and the metadata; dataset.names names the files, dataset.writing starts a run, dataset.lock holds it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgvec.base.storage import Location, check_reachable, open_location
from imgvec.base.text import one_line
from imgvec.base.version import VERSION
from imgvec.dataset import names
from imgvec.dataset.lock import Lock

FORMAT = "imgvec-features/3"
# /2 added each input's byte length and sha256 (null where the input could not be read): byte-identical
# files are found from them. /3 added `input` (where a table's row is read again; null when `path` says it)
# and the input's own columns after it (captions, --keep-columns). Older outputs and parts are read, the
# columns they lack null.
READABLE = ("imgvec-features/1", "imgvec-features/2", FORMAT)
SCHEMA = pa.schema([("path", pa.string()), ("features", pa.list_(pa.float32())), ("error", pa.string()),
                    ("bytes", pa.int64()), ("sha256", pa.string()), ("input", pa.string())])
OLDER = (pa.schema(list(SCHEMA)[:5]), pa.schema(list(SCHEMA)[:3]))  # parts of /2 and /1


class OutputError(ValueError):
    """The output cannot be used as asked (exists, belongs to another model, is damaged, is busy...)."""


class FeatureDataset:
    def __init__(self, location: str):
        self.where = open_location(location)
        self.location = self.where.uri

    # --- what is there -----------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(os.path.basename(e.path) for e in self.where.entries())

    def part_names(self) -> list[str]:
        return [n for n in self.names() if names.is_part(n)]

    def parts(self) -> list[Location]:
        return [self.where.child(n) for n in self.part_names()]

    def metadata(self) -> dict:
        """The metadata, or an OutputError that says what is wrong with it."""
        where = self.where.child(names.METADATA)
        if not where.is_file():
            raise OutputError(f"{self.location} is not an imgvec output (no {names.METADATA})")
        try:
            metadata = json.loads(where.read_bytes())
        except (ValueError, UnicodeDecodeError):
            raise OutputError(f"{where.uri} is damaged (not JSON); embed again into a new output") from None
        if not isinstance(metadata, dict):
            raise OutputError(f"{where.uri} is damaged (not a JSON object); embed again into a new output")
        made = metadata.get("format")
        if made not in READABLE:
            newer = isinstance(made, str) and made.startswith("imgvec-features/")
            raise OutputError(f"{self.location} has format {made!r}, which this imgvec ({VERSION}) cannot read"
                              + ("; upgrade imgvec" if newer else ""))
        return metadata

    def dim(self, metadata: dict, parts: list[str] | None = None) -> int | None:
        """The features' length: recorded, or (outputs of a TorchScript model before 0.2) read from a part."""
        if isinstance(metadata.get("dim"), int):
            return metadata["dim"]
        for name in self.part_names() if parts is None else parts:
            features = read_part(self.where.child(name), ["features"]).column("features").drop_null()
            if len(features):
                return len(features[0])
        return None

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

    # --- writing -----------------------------------------------------------------------

    @contextmanager
    def locked(self):
        """This process is the one run writing the output (its features, or its index) while the block runs."""
        lock = Lock(self.where.child(names.LOCK))
        lock.check_free()
        with lock.held():
            yield

    def next_run(self) -> int:
        """A number for this run's parts that no earlier run used."""
        runs = [names.part_run(n) for n in self.part_names()]
        return max((r for r in runs if r is not None), default=-1) + 1

    def write_part(self, table: pa.Table, name: str, kept: pa.Schema | None = None) -> str:
        """Write (or replace) one part whole: SCHEMA's columns (absent ones null), then the `kept` input columns.
        Returns its URI."""
        own, kept = _with_columns(table, SCHEMA.names).cast(SCHEMA), kept or pa.schema([])
        table = pa.Table.from_arrays([*own.columns, *(table.column(f.name).cast(f.type) for f in kept)],
                                     schema=pa.schema([*SCHEMA, *kept]))
        part = self.where.child(name)
        # no dictionary for features: it never pays for floats and made writing a 2048-d part ~10x slower
        part.write_with(lambda path, fs: pq.write_table(table, path, filesystem=fs, use_dictionary=["error"]))
        return part.uri

    def write_metadata(self, metadata: dict) -> None:
        self.where.child(names.METADATA).write_bytes(json.dumps(metadata, indent=2, sort_keys=True).encode())

    def update_metadata(self, changes: dict) -> None:
        self.write_metadata({**self.metadata(), **changes})

    # --- reading -----------------------------------------------------------------------

    def read(self, columns=("path", "features", "error")) -> pa.Table:
        """The parts' rows; a damaged part is an OutputError that names it and what to do."""
        return pa.concat_tables([empty(columns)]
                                + [read_part(part, columns) for part in self.parts()])


def empty(columns) -> pa.Table:
    """No rows, these columns. Not SCHEMA.empty_table(): pyarrow's table constructors import pandas (0.3 s)."""
    return pa.Table.from_batches([], schema=SCHEMA).select(list(columns))


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
            if any(list(schema)[: len(known)] == list(known) for known in (SCHEMA, *OLDER)):
                return _with_columns(parquet.read(columns=[c for c in columns if c in schema.names]), columns)
            problem = f"schema {_schema_text(schema)}"
    except (pa.ArrowException, OSError) as exc:
        problem = one_line(exc)
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
        raise _damaged(part, one_line(exc)) from None


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


def features_matrix(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A features column -> (the rows that have features, their [n, dim] float32 matrix)."""
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(valid)
    features = column.filter(pa.array(valid))
    if isinstance(features, pa.ChunkedArray):
        features = features.combine_chunks()
    flat = features.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return rows, flat.reshape(len(rows), -1) if len(rows) else flat.reshape(0, 0)


def _with_columns(table: pa.Table, columns) -> pa.Table:
    """The table's `columns` in that order, those of SCHEMA it lacks null."""
    for name in columns:
        if name not in table.column_names and name in SCHEMA.names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    return table.select(list(columns))


def _schema_text(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)
