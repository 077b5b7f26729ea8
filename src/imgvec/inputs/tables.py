"""Tables of images and lists of them: Parquet tables (plain, Hugging Face `datasets`, img2dataset) and manifests.

A table is planned by row group (the driver reads the footers, many at once); a worker reads its row
group's names, image bytes and kept columns. A manifest (text, CSV or Parquet) lists image URIs; it is
planned like a table (Parquet by row group, text and CSV by 64 MB slices; a compressed one is converted once,
streaming, into a Parquet listing in the output) and its images read like files; a path it names twice is
embedded once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgvec.base.storage import list_files, open_input, open_location
from imgvec.inputs.pieces import Piece, Sample, converted_once, listed, read_files

# The output's own columns: a kept column may not take one of these names.
OWN_COLUMNS = ("path", "features", "error", "bytes", "sha256", "input")
IMAGE_SUFFIXES = ("jpg", "png", "webp")  # img2dataset's image columns, by its --encode_format
_FOOTERS_AT_ONCE = 16  # footers read in parallel: an object store answers each in tens of milliseconds


def table_files(location: str) -> list[str]:
    files = [uri for _, uri in list_files([location], "*.parquet")]
    if not files:
        raise ValueError(f"{location} holds no Parquet files")
    return files


def footers(files: list[str]) -> list[pq.FileMetaData]:
    def read(uri):
        with open_input(uri) as f:
            return pq.ParquetFile(f).metadata

    with ThreadPoolExecutor(_FOOTERS_AT_ONCE) as pool:
        return list(pool.map(read, files))


def row_in_file(uri: str, row: int) -> str:
    """Where a table's row is, when the table names it by its place: file and row number."""
    return f"{uri}#{row}"


def table_input(uri: str, row: int, column: str) -> str:
    """The `input` of a row read from a table: enough to read its bytes again (inputs.readback)."""
    return f"{uri}#row={row}&column={column}"


@dataclass(frozen=True)
class ParquetTable:
    """A Parquet table (a file, or a folder of them) whose image bytes are a binary column, or a struct<bytes, path>
    column as Hugging Face `datasets` writes it; rows named by a column, the struct's path, or file and row.

    `checked()` (on the driver) reads one footer and settles the columns; workers get the settled copy.
    """

    location: str
    binary_col: str | None = None  # None: found (Hugging Face's Image feature, img2dataset's jpg), else "content"
    path_col: str | None = None  # None: "path", img2dataset's "key", or Hugging Face's struct path
    keep_columns: tuple[str, ...] = ()
    naming: str = "column"  # how rows are named: "column" (path_col), "struct" (the struct's path), "row"
    status_col: str | None = None  # img2dataset: why a row has no bytes
    kept: pa.Schema | None = None

    @property
    def columns(self) -> pa.Schema:
        return self.kept or pa.schema([])

    def checked(self) -> ParquetTable:
        """The table with its columns found and checked against the first file's schema: ValueError if wrong."""
        first = table_files(self.location)[0]
        with open_input(first) as f:
            schema = pq.ParquetFile(f).schema_arrow
        names = schema.names
        binary, path, naming, status, keep = self.binary_col, self.path_col, "column", None, self.keep_columns
        image_feature = _huggingface_image(schema)
        img2dataset = _img2dataset_image(schema)
        if binary is None:
            binary = image_feature or img2dataset or "content"
        if binary not in names:
            raise ValueError(f"input column {binary!r} is not in the table (columns: {', '.join(names)}); "
                             "name the column holding the image bytes with --binary-col")
        kind = schema.field(binary).type
        if pa.types.is_struct(kind):
            if kind.get_field_index("bytes") < 0 or not _is_binary(kind.field("bytes").type):
                raise ValueError(f"input column {binary!r} of {first} is {kind}; an image struct has a binary "
                                 "'bytes' field (Hugging Face's Image feature)")
            if path is None:
                naming = "struct" if kind.get_field_index("path") >= 0 else "row"
        elif not _is_binary(kind):
            raise ValueError(f"input column {binary!r} of {first} is {kind}, not binary; "
                             "image bytes must be a binary column or a struct<bytes, path>")
        if binary == img2dataset and self.binary_col is None:
            status = "status"
            path = path or "key"
            keep = keep or tuple(c for c in ("caption",) if c in names)
        if naming == "column":
            path = path or "path"
            if path not in names:
                raise ValueError(f"the table has no column {path!r} (columns: {', '.join(names)}); "
                                 "name the column that identifies each image with --path-col")
        for name in keep:
            if name in OWN_COLUMNS:
                raise ValueError(f"--keep-columns: {name!r} is a column imgvec writes itself; it cannot be kept")
            if name not in names:
                raise ValueError(f"--keep-columns: the table has no column {name!r} (columns: {', '.join(names)})")
        kept = pa.schema([schema.field(name) for name in keep])
        return replace(self, binary_col=binary, path_col=path, naming=naming, status_col=status,
                       keep_columns=tuple(keep), kept=kept)

    def pieces(self, spread=None, listing=None) -> list[Piece]:
        files = table_files(self.location)
        return [Piece(uri, group) for uri, metadata in zip(files, footers(files), strict=True)
                for group in range(metadata.num_row_groups)]

    def names(self, piece: Piece) -> pa.Array:
        with open_input(piece.source) as f, pq.ParquetFile(f) as parquet:
            if self.naming == "row":
                first = _first_row(parquet.metadata, piece.part)
                return pa.array([row_in_file(piece.source, first + i)
                                 for i in range(parquet.metadata.row_group(piece.part).num_rows)], pa.string())
            column = f"{self.binary_col}.path" if self.naming == "struct" else self.path_col
            values = parquet.read_row_group(piece.part, columns=[column]).column(0).combine_chunks()
        if self.naming == "struct":
            values = values.field("path")
        return values.cast(pa.string())

    def samples(self, piece: Piece, only: set[str] | None = None) -> Iterator[Sample]:
        names = self.names(piece).to_pylist()
        columns = [self.binary_col, *self.keep_columns, *([self.status_col] if self.status_col else [])]
        with open_input(piece.source) as f, pq.ParquetFile(f) as parquet:
            first = _first_row(parquet.metadata, piece.part)
            table = parquet.read_row_group(piece.part, columns=list(dict.fromkeys(columns)))
        images = table.column(self.binary_col)
        if pa.types.is_struct(images.type):
            images = images.combine_chunks().field("bytes")
        images = images.to_pylist()
        kept = {name: table.column(name).to_pylist() for name in self.keep_columns}
        status = table.column(self.status_col).to_pylist() if self.status_col else None
        for row, (name, data) in enumerate(zip(names, images, strict=True)):
            if only is not None and name not in only:
                continue
            error = None
            if data is None:
                error = (f"missing: not downloaded ({status[row]})" if status and status[row] != "success"
                         else "missing: no image bytes (null)")
            yield Sample(name, data, error, {k: v[row] for k, v in kept.items()},
                         table_input(piece.source, first + row, self.binary_col))

    def planned_images(self, pieces: list[Piece]) -> int:
        files = sorted({p.source for p in pieces})
        return sum(metadata.num_rows for metadata in footers(files))


def read_table_row(where: str) -> bytes | None:
    """The bytes of a table's row from its `input` (table_input): its file, row number and column."""
    uri, _, fragment = where.rpartition("#")
    fields = dict(field.split("=", 1) for field in fragment.split("&"))
    row, column = int(fields["row"]), fields["column"]
    with open_input(uri) as f, pq.ParquetFile(f) as parquet:
        metadata = parquet.metadata
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if row < rows:
                values = parquet.read_row_group(group, columns=[column]).column(0).combine_chunks()
                if pa.types.is_struct(values.type):
                    values = values.field("bytes")
                return values[row].as_py()
            row -= rows
    raise FileNotFoundError(f"{uri} has no row {fields['row']}")


def _first_row(metadata: pq.FileMetaData, group: int) -> int:
    return sum(metadata.row_group(g).num_rows for g in range(group))


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _huggingface_image(schema: pa.Schema) -> str | None:
    """The column Hugging Face `datasets` marks as its Image feature in the schema metadata, if any."""
    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        return None
    return next((name for name, feature in features.items()
                 if isinstance(feature, dict) and feature.get("_type") == "Image" and name in schema.names), None)


def _img2dataset_image(schema: pa.Schema) -> str | None:
    """img2dataset's Parquet output: key, status and the image bytes in a column named by their format."""
    if not {"key", "status"} <= set(schema.names):
        return None
    return next((name for name in IMAGE_SUFFIXES if name in schema.names and _is_binary(schema.field(name).type)),
                None)


# --- manifests ---------------------------------------------------------------------------------------

TEXT_SLICE = 64 << 20  # bytes of a text manifest one task reads: about a million URIs
TEXT_BLOCK = 16 << 20  # bytes of a compressed manifest decompressed at a time while it is converted
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")  # what pyarrow's compression="detect" reads, by the file's suffix


@dataclass(frozen=True)
class Manifest:
    """A list of image URIs: text (one per line), or a column of a CSV (with a header) or Parquet file, each put
    after `prefix` (an inventory report's keys under s3://bucket/)."""

    file: str
    path_col: str | None = None
    prefix: str = ""
    columns = pa.schema([])

    may_repeat = True  # a list written by hand or by a script can name a path twice: embedded once (batch.resume)

    @property
    def kind(self) -> str:
        name = self.file.lower().removesuffix(self.compression)
        return "parquet" if name.endswith(".parquet") else "csv" if name.endswith(".csv") else "text"

    @property
    def compression(self) -> str:
        """The suffix of a compressed text or CSV file (read through its decompressor: no byte slices)."""
        return next((s for s in COMPRESSED if self.file.lower().endswith(s)), "")

    def checked(self) -> Manifest:
        location = open_location(self.file)
        if not location.is_file():
            raise ValueError(f"--manifest {self.file} is not a file; give a text, CSV or Parquet list of URIs")
        if self.kind == "parquet" and self.compression:
            raise ValueError(f"--manifest {self.file}: a Parquet file is compressed inside already; give it "
                             f"uncompressed (without {self.compression})")
        if self.kind == "text":
            if self.path_col:
                raise ValueError("--path-col names a column of a CSV or Parquet manifest; a text manifest has "
                                 "one URI per line")
            return self
        if not self.path_col:
            raise ValueError(f"--manifest {self.file} is a {self.kind} file: name its column of paths with --path-col")
        columns = self._csv_header() if self.kind == "csv" else footers([self.file])[0].schema.to_arrow_schema().names
        if self.path_col not in columns:
            raise ValueError(f"--path-col {self.path_col!r} is not a column of {self.file} "
                             f"(columns: {', '.join(columns)})")
        return self

    def pieces(self, spread=None, listing=None) -> list[Piece]:
        """Parquet: a row group each; uncompressed text and CSV: a slice of TEXT_SLICE bytes each, whole lines (a
        CSV's values hold no line breaks, as pyarrow reads them by default); compressed (no byte slices): streamed
        once into a listing file in the output (`listing`), a row group each."""
        if self.kind == "parquet":
            return [Piece(self.file, g) for g in range(footers([self.file])[0].num_row_groups)]
        if self.compression:
            return converted_once(listing, "manifest", self.file, str(self.path_col), self._streamed)
        size = open_location(self.file).info().size
        return [Piece(self.file, n) for n in range(max(1, -(-size // TEXT_SLICE)))]

    def names(self, piece: Piece) -> pa.Array:
        if piece.source != self.file:  # a row group of the listing it was converted into
            values = listed(piece.source, piece.part)
        elif self.kind == "parquet":
            with open_input(self.file) as f, pq.ParquetFile(f) as parquet:
                values = parquet.read_row_group(piece.part, columns=[self.path_col]).column(0)
        elif self.kind == "csv":  # the slice's lines, under the header (the first slice starts with it)
            data = _text_slice(self.file, piece.part)
            values = self._read_csv(pa.BufferReader(data if piece.part == 0 else _first_line(self.file) + data))
            values = values.column(self.path_col)
        else:
            values = pa.array(_lines(_text_slice(self.file, piece.part)), pa.string())
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        values = values.cast(pa.string()).drop_null()
        values = values.filter(pc.not_equal(values, ""))
        return pc.binary_join_element_wise(self.prefix, values, "") if self.prefix else values

    def samples(self, piece: Piece, only: set[str] | None = None) -> Iterator[Sample]:
        names = dict.fromkeys(self.names(piece).to_pylist())  # each once, in the list's order
        return read_files(n for n in names if only is None or n in only)

    def planned_images(self, pieces: list[Piece]) -> int | None:
        converted = pieces and pieces[0].source != self.file
        return footers([pieces[0].source])[0].num_rows if self.kind == "parquet" or converted else None

    def _streamed(self) -> Iterator[str]:
        """The compressed file's values (URIs before the prefix), read through its decompressor a block at a
        time."""
        import pyarrow.csv as pacsv

        with _stream(self.file) as stream:
            if self.kind == "csv":
                reader = pacsv.open_csv(stream, convert_options=pacsv.ConvertOptions(include_columns=[self.path_col]))
                for batch in reader:
                    yield from (v for v in batch.column(0).cast(pa.string()).to_pylist() if v)
                return
            rest = b""
            while block := stream.read(TEXT_BLOCK):
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                yield from _lines(b"\n".join(lines))
            yield from _lines(rest)

    def _read_csv(self, source) -> pa.Table:
        import pyarrow.csv as pacsv

        return pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(include_columns=[self.path_col]))

    def _csv_header(self) -> list[str]:
        import pyarrow.csv as pacsv

        with _stream(self.file) as stream:
            return pacsv.open_csv(stream).schema.names


@dataclass(frozen=True)
class Inventory:
    """An S3 Inventory report, taken as S3 writes it: its manifest.json names the data files (CSV.gz without a
    header, columns as its fileSchema says, keys URL-encoded; or Parquet, keys plain) under the destination bucket.
    Each object is s3://BUCKET/KEY, or `prefix` + KEY where the images were copied elsewhere. A Parquet file is a
    piece per row group; the CSV.gz files (a compressed stream has no byte slices) are streamed once into a listing
    file in the output, a piece per row group, as a compressed manifest is (without a listing: a piece each)."""

    file: str
    prefix: str = ""
    columns = pa.schema([])
    may_repeat = False  # an inventory lists each object once

    def report(self) -> dict:
        report = json.loads(open_location(self.file).read_bytes())
        if report.get("fileFormat", "").upper() not in ("CSV", "PARQUET"):
            raise ValueError(f"--manifest {self.file}: an S3 Inventory in {report.get('fileFormat')!r}; imgvec reads "
                             f"CSV and Parquet inventories (choose one in the inventory's configuration)")
        return report

    def checked(self) -> Inventory:
        location = open_location(self.file)
        if not location.is_file():
            raise ValueError(f"--manifest {self.file} is not a file; give an S3 Inventory's manifest.json")
        self.report()
        return self

    def data_files(self, report: dict) -> list[str]:
        """The report's files, where they are: beside this manifest.json as S3 lays them out (DESTINATION-PREFIX/
        SOURCE-BUCKET/CONFIG/{DATE/manifest.json, data/FILE}), which holds wherever the report was copied."""
        here = self.file.rsplit("/", 2)[0]  # .../CONFIG
        files = []
        for entry in report["files"]:
            config, _, rest = entry["key"].rpartition("/data/")
            if config and here.endswith(config.rsplit("/", 1)[-1]):
                files.append(f"{here}/data/{rest}")
            else:
                files.append(f"s3://{report['destinationBucket'].rsplit(':', 1)[-1]}/{entry['key']}")
        return files

    def pieces(self, spread=None, listing=None) -> list[Piece]:
        report = self.report()  # read once for the plan
        files = self.data_files(report)
        if report["fileFormat"].upper() == "PARQUET":
            return [Piece(f, g) for f, meta in zip(files, footers(files), strict=True)
                    for g in range(meta.num_row_groups)]
        if listing is None:
            return [Piece(f) for f in files]
        return converted_once(listing, "inventory", self.file, self.prefix,
                              lambda: (name for f in files for name in self._csv_names(f, report)))

    def names(self, piece: Piece) -> pa.Array:
        report = self.report()
        if report["fileFormat"].upper() == "PARQUET":
            with open_input(piece.source) as f, pq.ParquetFile(f) as parquet:
                table = parquet.read_row_group(piece.part, columns=["bucket", "key"])
            return self._objects(table.column("bucket").to_pylist(), table.column("key").to_pylist())
        if piece.part >= 0:  # a row group of the listing the CSV.gz files were converted into
            return listed(piece.source, piece.part)
        return pa.array(list(self._csv_names(piece.source, report)), pa.string())

    def _csv_names(self, uri: str, report: dict) -> Iterator[str]:
        """A CSV.gz data file's objects, read through its decompressor a block at a time."""
        import urllib.parse

        import pyarrow.csv as pacsv

        columns = [c.strip() for c in report["fileSchema"].split(",")]
        with _stream(uri) as stream:
            reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(column_names=columns),
                                    convert_options=pacsv.ConvertOptions(include_columns=["Bucket", "Key"],
                                                                         strings_can_be_null=False))
            for batch in reader:
                keys = [urllib.parse.unquote_plus(k) for k in batch.column("Key").to_pylist()]
                yield from self._objects(batch.column("Bucket").to_pylist(), keys).to_pylist()

    def _objects(self, buckets: list[str], keys: list[str]) -> pa.Array:
        return pa.array([self.prefix + k if self.prefix else f"s3://{b}/{k}" for b, k in zip(buckets, keys, strict=True)
                         if k and not k.endswith("/")], pa.string())  # a "folder" object names no image

    def samples(self, piece: Piece, only: set[str] | None = None) -> Iterator[Sample]:
        return read_files(n for n in self.names(piece).to_pylist() if only is None or n in only)

    def planned_images(self, pieces: list[Piece]) -> int | None:
        """The listing's rows where the CSV.gz files were converted into one; else not known before the job."""
        if not pieces or pieces[0].part < 0 or self.report()["fileFormat"].upper() == "PARQUET":
            return None
        return footers([pieces[0].source])[0].num_rows


def _stream(uri: str) -> pa.NativeFile:
    """A manifest read from its start, through its decompressor when its suffix names one (COMPRESSED)."""
    location = open_location(uri)
    return location.fs.open_input_stream(location.path, compression="detect")


def _lines(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


def _first_line(uri: str) -> bytes:
    """A text file's first line, with its line break (a CSV's header)."""
    with open_input(uri) as f:
        data = b""
        while b"\n" not in data:
            more = f.read(1 << 16)
            if not more:
                return data + b"\n"
            data += more
    return data[: data.index(b"\n") + 1]


def _text_slice(uri: str, part: int) -> bytes:
    """The lines that start in slice `part` of a text file (a line crossing the slice's end is this slice's)."""
    start = part * TEXT_SLICE
    with open_input(uri) as f:
        f.seek(max(start - 1, 0))
        data = f.read(TEXT_SLICE + (1 if start else 0))
        while data and not data.endswith(b"\n"):  # finish the last line
            more = f.read(1 << 12)
            if not more:
                break
            end = more.find(b"\n")
            data += more if end < 0 else more[: end + 1]
    if start:  # the line that started before the slice is the previous slice's
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    return data
