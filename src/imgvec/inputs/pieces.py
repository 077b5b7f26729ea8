"""What every input source is made of: pieces (what one task enumerates) and samples (one image each, or why not).

A *piece* is a file or folder, a row group or slice of a file, or names the driver listed; a *sample* is what a
worker reads for one output row. The sources (inputs.sources, tables, tars) plan pieces and read samples.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa

from imgvec.base.storage import Location, open_input, open_location, read_file
from imgvec.base.text import one_line

LISTED_MAX = 100_000  # names the driver's plan holds itself; past it they stream into a listing file (write_listing)
LISTING_GROUP = 10_000  # names per row group of a listing file: a piece (task) each
LISTING = pa.schema([("path", pa.string())])


class Sample(NamedTuple):
    path: str  # what the output row is keyed by
    data: bytes | None  # None: the error says why
    error: str | None = None
    extra: dict | None = None  # the source's extra columns
    input: str | None = None  # where to read the bytes again when `path` does not say it (a table's row)


@dataclass(frozen=True)
class Piece:
    """What one task enumerates: a file or folder (`part` -1: all of it), a row group or slice of a file, or
    `names` the driver listed."""

    source: str = ""
    part: int = -1
    names: tuple[str, ...] = ()


def write_listing(where: Location, names: Iterator[str]) -> int:
    """Stream `names` into a Parquet file at `where` (one column, `path`), LISTING_GROUP names per row group,
    holding one group at a time: what a flat folder of 10^7 files, a compressed manifest or an inventory's CSV.gz
    files become, to be planned by row group. Returns the number of row groups."""
    import pyarrow.parquet as pq

    groups = 0

    def write(path, fs):
        nonlocal groups
        with fs.open_output_stream(path) as out, pq.ParquetWriter(out, LISTING) as writer:
            batch = []
            for name in names:
                batch.append(name)
                if len(batch) == LISTING_GROUP:
                    writer.write_table(pa.table({"path": batch}, LISTING))
                    groups, batch = groups + 1, []
            if batch or not groups:
                writer.write_table(pa.table({"path": batch}, LISTING))
                groups += 1

    where.write_with(write)
    return groups


def converted_once(listing, kind: str, source: str, options: str, names: Callable[[], Iterator[str]]) -> list[Piece]:
    """A piece per row group of the listing file that `names()` (a stream of the input's names) is written into
    once: `listing(KIND-KEY)`, KEY naming the input file (`source`, as it is now) and the `options` that read it,
    so that a resumed run reuses the file and a changed input makes another."""
    import pyarrow.parquet as pq

    info = open_location(source).info()
    key = hashlib.sha256(f"{source}|{options}|{info.size}|{info.mtime_ns}".encode()).hexdigest()
    where = listing(f"{kind}-{key[:16]}")
    if where.is_file():
        with open_input(where.uri) as f, pq.ParquetFile(f) as parquet:
            groups = parquet.metadata.num_row_groups
    else:
        groups = write_listing(where, names())
    return [Piece(where.uri, g) for g in range(groups)]


def listed(uri: str, group: int) -> pa.Array:
    """Row group `group` of a listing file's names."""
    import pyarrow.parquet as pq

    with open_input(uri) as f, pq.ParquetFile(f) as parquet:
        return parquet.read_row_group(group, columns=["path"]).column(0).combine_chunks()


def piece_of(row: dict) -> Piece:
    """The piece a row of the plan (batch.shard.PLAN) describes."""
    return Piece(row["source"], row["part"], tuple(row["names"] or ()))


def missing_or_unreadable(exc: OSError) -> str:
    """The error kind and detail of a file that could not be read."""
    if isinstance(exc, FileNotFoundError):
        return "missing: the input was listed but is gone"
    return f"unreadable: {one_line(exc)}"


def read_files(paths) -> Iterator[Sample]:
    """Image files by their URIs: a file that cannot be read now is an error row."""
    for path in paths:
        try:
            yield Sample(path, read_file(path))
        except OSError as exc:
            yield Sample(path, None, missing_or_unreadable(exc))


_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(inputs) -> list[str]:
    """Brace ranges and lists as WebDataset writes shard names: `{00000..00999}` (zero-padded as written) and
    `{a,b}`. A name glob's own braces (`--glob '*.{jpg,png}'`) are not inputs and are left to the glob."""
    out = []
    for text in inputs:
        found = min((m for m in (_RANGE.search(text), _LIST.search(text)) if m), key=lambda m: m.start(), default=None)
        if found is None:
            out.append(text)
            continue
        if found.re is _RANGE:
            first, last = found.group(1), found.group(2)
            if int(last) < int(first):
                raise ValueError(f"{text}: the range {found.group(0)} is empty")
            options = [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
        else:
            options = found.group(1).split(",")
        out += expand_braces([text[: found.start()] + o + text[found.end():] for o in options])
    return out


def is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[{")
