"""Inputs for the batch job, planned by input file: image files, tables, manifests and WebDataset tars.

The driver plans *pieces* (a folder, a Parquet row group, a tar, a slice of a manifest, or a few files it
listed itself), so what it holds grows with the input files, not the images. A worker enumerates and
reads the images of its piece. No Spark here: both sides go through pyarrow's filesystems (base.storage).

Every source answers the same four questions:
  pieces(spread, listing) the driver's plan (spread(n): images per piece of the n files the driver listed;
                          listing(key): where in the output a plan too long to hold is streamed as a listing file)
  samples(piece, only)    on a worker: the piece's images as Samples (only: just these paths)
  names(piece)            on a worker: the paths samples() would give, without reading the images (Arrow strings)
  columns                 the extra output columns its samples carry (captions, kept table columns)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice

import pyarrow as pa
import pyarrow.fs as pafs

from imgvec.base.storage import (
    check_reachable,
    is_hidden,
    is_local,
    list_files,
    list_local_files,
    local_path,
    name_matches,
    open_location,
)
from imgvec.inputs.pieces import (
    LISTED_MAX,
    Piece,
    Sample,
    expand_braces,
    is_pattern,
    listed,
    read_files,
    write_listing,
)
from imgvec.inputs.tables import Inventory, Manifest, ParquetTable, footers
from imgvec.inputs.tars import TarShards, looks_like_tars


@dataclass(frozen=True)
class ImageFiles:
    """Files, folders (recursively) and globs of image files.

    The driver lists each folder one level down, as a stream: files there (and files and globs given) are planned
    by name, `spread` to a piece; past LISTED_MAX names they stream into a listing file instead (`listing`), a
    piece per row group, so that a flat folder of 10^7 files is never one list. Each folder below is one piece,
    listed recursively by its worker.
    """

    inputs: tuple[str, ...]
    glob: str | None = None
    columns = pa.schema([])

    def pieces(self, spread, listing=None) -> list[Piece]:
        folders = []
        files = self._files(folders)
        named = list(islice(files, LISTED_MAX))
        if len(named) < LISTED_MAX or listing is None:
            named = sorted(set(named).union(files))
            size = spread(len(named)) if named else 1
            pieces = [Piece(names=tuple(named[i:i + size])) for i in range(0, len(named), size)]
        else:
            where = listing("files")
            pieces = [Piece(where.uri, g) for g in range(write_listing(where, chain(named, files)))]
        return pieces + [Piece(uri) for uri in sorted(set(folders))]

    def _files(self, folders: list[str]) -> Iterator[str]:
        """The files the driver names, as they are listed (each input once); the folders below go to `folders`."""
        for text in dict.fromkeys(expand_braces(self.inputs)):
            location = None if is_pattern(text) else open_location(text)
            if location is None or not location.is_folder():
                yield from (name for name, _ in list_files([text], self.glob))
                continue
            for name, is_folder in location.stream():
                if is_hidden(name):
                    continue
                child = location.child(name)
                if is_folder:
                    folders.append(child.uri)
                elif self.glob is None or name_matches(name, self.glob):
                    yield "file:" + child.path if child.is_local else child.uri  # as list_files names it

    def names(self, piece: Piece) -> pa.Array:
        if piece.names:
            return pa.array(piece.names, pa.string())
        if piece.part >= 0:  # a row group of the driver's listing
            return listed(piece.source, piece.part)
        if is_local(piece.source):  # a folder of an input folder: a link back up to that input is not followed
            parent = os.path.realpath(os.path.dirname(local_path(piece.source)))
            return pa.array(list_local_files([piece.source], self.glob, frozenset([parent])), pa.string())
        return pa.array([name for name, _ in list_files([piece.source], self.glob)], pa.string())

    def samples(self, piece: Piece, only: set[str] | None = None) -> Iterator[Sample]:
        return read_files(n for n in self.names(piece).to_pylist() if only is None or n in only)

    def planned_images(self, pieces: list[Piece]) -> int | None:
        if any(p.part < 0 and not p.names for p in pieces):
            return None  # a folder its worker lists
        listings = sorted({p.source for p in pieces if p.part >= 0})
        return sum(len(p.names) for p in pieces) + sum(footer.num_rows for footer in footers(listings))


def open_source(inputs: list[str], *, glob: str | None = None, binary_col: str | None = None,
                path_col: str | None = None, table: bool | None = None, manifest: str | None = None,
                prefix: str = "", keep_columns: tuple[str, ...] = ()):
    """The source the inputs name: a manifest (`manifest`), a Parquet table (one .parquet file or a folder of
    them), WebDataset tars (.tar files, folders of them, globs, brace ranges), or image files."""
    if manifest:
        if inputs:
            raise ValueError("give either INPUTs or --manifest, not both")
        if manifest.rsplit("/", 1)[-1] == "manifest.json":  # an S3 Inventory report
            if path_col:
                raise ValueError("--path-col names a column of a CSV or Parquet manifest; an S3 Inventory's "
                                 "manifest.json says its own columns")
            return Inventory(manifest, prefix)
        return Manifest(manifest, path_col, prefix)
    if not inputs:
        raise ValueError("no inputs given; pass files, folders or globs, or --manifest FILE")
    if prefix:
        raise ValueError("--prefix goes with --manifest (it is put before each of the manifest's paths)")
    if table is None:
        table = len(inputs) == 1 and _looks_like_parquet(inputs[0])
    if table:
        if len(inputs) != 1:
            raise ValueError("give one Parquet table at a time")
        return ParquetTable(inputs[0], binary_col, path_col, tuple(keep_columns))
    tars = looks_like_tars(inputs)
    if keep_columns:
        raise ValueError("--keep-columns copies columns of an input table; " + (
            "a tar's captions (KEY.txt) and JSON (KEY.json) are always kept, as the columns caption and json"
            if tars else "image files have none"))
    if tars:
        return TarShards(tuple(inputs))
    return ImageFiles(tuple(inputs), glob)


def check_inputs_exist(inputs: list[str]) -> None:
    """Inputs that are not globs must exist, and stores must be reachable: said on the driver, before any job."""
    for text in inputs:
        if is_pattern(text):
            continue
        location = open_location(text)
        check_reachable(location, "input")
        if location.info().type == pafs.FileType.NotFound:
            raise ValueError(f"input path {text} does not exist; check the path or quote the glob")


def _looks_like_parquet(text: str) -> bool:
    if text.endswith(".parquet"):
        return True
    if is_pattern(text):
        return False
    location = open_location(text)
    if not location.is_folder():
        return False
    names = (name for name, _ in location.stream() if not is_hidden(name))  # a stream: it may hold 10^7 files
    first = next(names, None)
    return first is not None and all(n.endswith(".parquet") or "=" in n for n in chain([first], names))
