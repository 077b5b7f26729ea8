"""Inputs for the batch job: image files or a Parquet table, on any filesystem.

The driver lists names only (`list`); each worker reads the bytes of its own shard (`read`).
No Spark here: both sides go through pyarrow's filesystems (base.storage).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from imgvec.base.storage import check_reachable, is_hidden, list_files, open_input, open_location, read_file
from imgvec.base.text import one_line


@dataclass(frozen=True)
class Item:
    path: str  # what the output row is keyed by
    source: str  # the file to read it from: the image itself, or the Parquet file holding it
    row_group: int = -1  # the Parquet row group holding it, in a table source


@dataclass(frozen=True)
class ImageFiles:
    """Files, folders (recursively) and globs of image files."""

    inputs: tuple[str, ...]
    glob: str | None = None

    def list(self) -> list[Item]:
        return [Item(name, uri) for name, uri in list_files(list(self.inputs), self.glob)]

    def read(self, items: list[Item]) -> Iterator[tuple[str, bytes | None, str | None]]:
        """(path, bytes, None), or (path, None, error) for a file that cannot be read now."""
        for item in items:
            try:
                yield item.path, read_file(item.source), None
            except FileNotFoundError:
                yield item.path, None, "missing: the input was listed but is gone"
            except OSError as exc:
                yield item.path, None, f"unreadable: {one_line(exc)}"


@dataclass(frozen=True)
class ParquetTable:
    """A Parquet table (a file, or a folder of them) with a binary column of image bytes and a column naming each."""

    location: str
    binary_col: str = "content"
    path_col: str = "path"

    def list(self) -> list[Item]:
        """Reads the footers and the path column only; each row group's bytes are read by one worker."""
        files = [uri for _, uri in list_files([self.location], "*.parquet")]
        if not files:
            raise ValueError(f"{self.location} holds no Parquet files")
        items = []
        for uri in files:
            with open_input(uri) as f, pq.ParquetFile(f) as parquet:
                self._check_columns(parquet.schema_arrow, uri)
                for row_group in range(parquet.num_row_groups):
                    names = parquet.read_row_group(row_group, columns=[self.path_col]).column(0).cast(pa.string())
                    items += [Item(name, uri, row_group) for name in names.to_pylist()]
        return items

    def read(self, items: list[Item]) -> Iterator[tuple[str, bytes | None, str | None]]:
        """Each row group once, then its rows in the order asked for."""
        cache: dict[tuple[str, int], dict] = {}
        for item in items:
            key = (item.source, item.row_group)
            if key not in cache:
                cache.clear()  # a shard never splits a row group: the previous one is done
                with open_input(item.source) as f, pq.ParquetFile(f) as parquet:
                    table = parquet.read_row_group(item.row_group, columns=[self.path_col, self.binary_col])
                names = table.column(0).cast(pa.string()).to_pylist()
                cache[key] = dict(zip(names, table.column(1).to_pylist(), strict=True))
            data = cache[key].get(item.path)
            yield item.path, data, None if data is not None else "missing: no image bytes (null)"

    def _check_columns(self, schema: pa.Schema, uri: str) -> None:
        names = schema.names
        if self.path_col not in names:
            raise ValueError(f"the table has no column {self.path_col!r} (columns: {', '.join(names)}); "
                             "name the column that identifies each image with --path-col")
        if self.binary_col not in names:
            raise ValueError(f"input column {self.binary_col!r} is not in the table (columns: {', '.join(names)}); "
                             "name the column holding the image bytes with --binary-col")
        kind = schema.field(self.binary_col).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise ValueError(f"input column {self.binary_col!r} of {uri} is {kind}, not binary; "
                             "image bytes must be a binary column")


def open_source(inputs: list[str], *, glob: str | None = None, binary_col: str = "content",
                path_col: str = "path", table: bool | None = None):
    """Image files, or a Parquet table when the single input is one (a .parquet file or a folder of them)."""
    if not inputs:
        raise ValueError("no inputs given; pass files, folders or globs")
    if table is None:
        table = len(inputs) == 1 and _looks_like_parquet(inputs[0])
    if table:
        if len(inputs) != 1:
            raise ValueError("give one Parquet table at a time")
        return ParquetTable(inputs[0], binary_col, path_col)
    return ImageFiles(tuple(inputs), glob)


def check_inputs_exist(inputs: list[str]) -> None:
    """Inputs that are not globs must exist, and stores must be reachable: said on the driver, before any job."""
    for text in inputs:
        if any(c in text for c in "*?[{"):
            continue
        location = open_location(text)
        check_reachable(location, "input")
        if location.info().type == pafs.FileType.NotFound:
            raise ValueError(f"input path {text} does not exist; check the path or quote the glob")


def shards(items: list[Item], size: int) -> list[list[Item]]:
    """Consecutive runs of about `size` items that never split a Parquet row group between shards."""
    out: list[list[Item]] = []
    current: list[Item] = []
    for item in items:
        if len(current) >= size and (item.source, item.row_group) != (current[-1].source, current[-1].row_group):
            out.append(current)
            current = []
        current.append(item)
    if current:
        out.append(current)
    return out


def _looks_like_parquet(text: str) -> bool:
    if text.endswith(".parquet"):
        return True
    location = open_location(text)
    if not location.is_folder():
        return False
    names = [e.base_name for e in location.entries() if not is_hidden(e.base_name)]
    return bool(names) and all(n.endswith(".parquet") or "=" in n for n in names)
