"""Where files live: one helper that understands local paths and URIs, over pyarrow's filesystems.

A `Location` is a file or folder named the way the user wrote it (`photos/`, `file:///data`,
`s3://bucket/key`, `s3a://…`, `gs://…`, `hdfs://…`, `abfss://container@account.dfs.core.windows.net/…`);
`.fs` and `.path` are what pyarrow needs. imgvec reads images and writes its output through these
on the driver and on the workers alike, so it needs no Hadoop connector and behaves the same
everywhere. Credentials come from the standard places on each machine (for S3: the AWS_* variables,
~/.aws files, instance profiles); `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) points S3 at
MinIO, Ceph, R2 or SeaweedFS, which pyarrow alone does not read.
"""

from __future__ import annotations

import fnmatch
import glob as pyglob
import io
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from imgvec.base.text import one_line

S3_SCHEMES = ("s3", "s3a", "s3n")
SCHEMES = (*S3_SCHEMES, "gs", "gcs", "hdfs", "abfs", "abfss", "file")


@dataclass(frozen=True)
class Location:
    """A place on some filesystem. Pickles to its URI alone: each process connects with its own credentials."""

    uri: str  # what the user sees: an absolute local path, or scheme://bucket/key
    fs: pafs.FileSystem
    path: str  # the same place, as `fs` names it

    def __reduce__(self):
        return open_location, (self.uri,)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, name: str) -> Location:
        return Location(_join(self.uri, name), self.fs, _join(self.path, name))

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def is_folder(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def entries(self) -> list[pafs.FileInfo]:
        """What the folder holds, one level down (nothing when it does not exist)."""
        if not self.is_folder():
            return []
        return self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))

    def stream(self) -> Iterator[tuple[str, bool]]:
        """(name, is a folder) of what the folder holds, one level down, as a stream: a flat folder of 10^7 files
        is never one list. Local disks by os.scandir; S3 by ListObjectsV2 pages of 1,000 keys (boto3: pyarrow
        lists a prefix whole); other stores by pyarrow's listing, whole."""
        if self.is_local:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    yield entry.name, entry.is_dir()
        elif isinstance(self.fs, pafs.S3FileSystem):
            bucket, _, key = self.path.partition("/")
            prefix = f"{key}/" if key else ""
            pages = _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for common in page.get("CommonPrefixes", ()):
                    yield common["Prefix"][len(prefix):].rstrip("/"), True
                for item in page.get("Contents", ()):
                    if item["Key"] != prefix:  # a "folder" object names no file
                        yield item["Key"][len(prefix):], False
        else:
            for entry in self.entries():
                yield entry.base_name, entry.type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        self.write_with(lambda path, fs: _write_stream(fs, path, data))

    def write_with(self, write) -> None:
        """Replace the file whole with what `write(path, fs)` writes: readers see the old file or the new one.

        A local disk gets a hidden temporary name renamed into place; an object store shows an
        upload only once it is complete, so there the file is written where it belongs.
        """
        if not self.is_local:
            write(self.path, self.fs)
            return
        folder, name = os.path.split(self.path)
        temporary = os.path.join(folder, f".tmp-{uuid.uuid4().hex[:8]}-{name}")
        try:
            write(temporary, self.fs)
            os.replace(temporary, self.path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def delete(self) -> None:
        self.fs.delete_file(self.path)

    def delete_folder(self) -> None:
        """Remove an empty folder (an object store has none left once its objects are gone)."""
        if self.is_local:
            os.rmdir(self.path)

    def make_folder(self) -> None:
        if self.is_local:
            self.fs.create_dir(self.path, recursive=True)
        # an object store has no folders: the first object written makes one appear


def _write_stream(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def open_location(text: str) -> Location:
    """A local path or a URI -> a Location; an unknown scheme is a ValueError that says what works."""
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("", "file"):
        path = os.path.abspath(os.path.expanduser(local_path(text)))
        return Location(path, pafs.LocalFileSystem(), path)
    if scheme not in SCHEMES:
        raise ValueError(f"{text}: imgvec does not know the {scheme}:// scheme; use a local path or one of "
                         + ", ".join(f"{s}://" for s in SCHEMES if s != "file"))
    parts = urlsplit(text)
    if scheme in S3_SCHEMES:
        return Location(text.rstrip("/"), s3_filesystem(), f"{parts.netloc}{parts.path}".rstrip("/"))
    if scheme in ("gs", "gcs"):
        return Location(text.rstrip("/"), pafs.GcsFileSystem(), f"{parts.netloc}{parts.path}".rstrip("/"))
    if scheme in ("abfs", "abfss"):  # abfss://container@account.dfs.core.windows.net/path
        container, _, host = parts.netloc.partition("@")
        fs = pafs.AzureFileSystem(account_name=host.split(".", 1)[0])
        return Location(text.rstrip("/"), fs, f"{container}{parts.path}".rstrip("/"))
    fs, path = pafs.FileSystem.from_uri(text)  # hdfs:// (needs libhdfs, as every HDFS client does)
    return Location(text.rstrip("/"), fs, path.rstrip("/"))


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 with the standard AWS settings of this process, the endpoint URL included."""
    options = {}
    endpoint = _s3_endpoint()
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=url.netloc, scheme=url.scheme)
    region = _s3_region()
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def _s3_client():
    """boto3's S3 client with the same settings as s3_filesystem (it reads the credentials and the endpoint URL from
    the same places); paths, not virtual hosts, as pyarrow addresses buckets."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=_s3_endpoint(), region_name=_s3_region(),
                        config=Config(s3={"addressing_style": "path"}))


def write_npz(where: Location, **arrays) -> None:
    """NumPy arrays in one .npz file (a small table of centroids, held-out queries) at `where`, whole."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    where.write_bytes(buffer.getvalue())


def read_npz(where: Location) -> dict:
    import numpy as np

    with np.load(io.BytesIO(where.read_bytes())) as held:
        return {name: held[name] for name in held.files}


def check_reachable(location: Location, what: str) -> None:
    """One clear error, on the driver, for a store that cannot be reached or a bucket that does not exist."""
    if location.is_local:
        return
    try:
        location.info()  # the store answers, or this raises
        bucket = location.fs.get_file_info(location.path.split("/", 1)[0])
    except OSError as exc:
        raise ValueError(f"{what} {location.uri} cannot be reached ({one_line(exc)}); check the endpoint and "
                         "credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)") from None
    if bucket.type == pafs.FileType.NotFound:
        raise ValueError(f"{what} {location.uri}: bucket {location.path.split('/', 1)[0]!r} does not exist; "
                         "create it first")


def read_file(uri: str) -> bytes:
    """The bytes of one file named by list_files."""
    with open_input(uri) as f:
        return f.read()


def open_input(uri: str) -> pa.NativeFile:
    """A file named by list_files, open for random access; filesystems are made once per process and reused."""
    if is_local(uri):
        return _LOCAL.open_input_file(local_path(uri))
    parts = urlsplit(uri)
    location = _root(parts.scheme.lower(), parts.netloc)
    return location.fs.open_input_file(location.path + parts.path if location.path else parts.path)


_LOCAL = pafs.LocalFileSystem()


@lru_cache(maxsize=16)
def _root(scheme: str, netloc: str) -> Location:
    return open_location(f"{scheme}://{netloc}")


def local_path(text: str) -> str:
    """'file:///a', 'file:/a' and '/a' all name the local file /a."""
    if text.startswith("file://"):
        return text[len("file://"):]
    return text.removeprefix("file:")


def is_local(text: str) -> bool:
    return "://" not in text or text.startswith("file://")


# --- listing ---------------------------------------------------------------------------------------


def list_files(inputs: list[str], name_glob: str | None = None) -> list[tuple[str, str]]:
    """Files under inputs (files, folders, globs), sorted: (name for the output, URI to read it from).

    Folders are walked recursively; names starting with '.' or '_' are hidden and skipped, as Spark
    does. Local links to files and folders are followed, except a link back to a folder being walked.
    Local files are named as Spark names them ('file:/abs/path'), others by their URI.
    """
    found: set[tuple[str, str]] = set()
    for text in inputs:
        if is_local(text):
            found.update((name, name) for name in list_local_files([text], name_glob))
            continue
        location = open_location(text)  # reachable: sources.check_inputs_exist said so, before any listing
        prefix = text.split("://", 1)[0] + "://"
        if location.is_file():
            found.add((location.uri, location.uri))
            continue
        for info in location.fs.get_file_info(pafs.FileSelector(location.path, recursive=True)):
            relative = info.path[len(location.path):].strip("/")
            if info.type != pafs.FileType.File or any(map(is_hidden, relative.split("/"))):
                continue
            if name_glob is None or name_matches(info.base_name, name_glob):
                found.add((prefix + info.path, prefix + info.path))
    return sorted(found)


def list_local_files(inputs: list[str], name_glob: str | None = None, inside: frozenset = frozenset()) -> list[str]:
    """Local files under inputs, sorted, as 'file:/abs/path' (see list_files). `inside`: real paths of folders the
    inputs lie in (a worker listing one folder of a larger input): links back to them are not followed."""
    found = []
    for pattern in inputs:
        pattern = local_path(pattern)
        for top in sorted(pyglob.glob(pattern)) if pyglob.has_magic(pattern) else [pattern]:
            if os.path.isdir(top):
                found += _walk(top, name_glob, inside)
            else:
                found.append(top)
    return sorted({"file:" + os.path.abspath(p) for p in found})


def _walk(top: str, name_glob: str | None, inside: frozenset = frozenset()) -> list[str]:
    found = []
    stack = [(top, inside)]
    while stack:
        folder, ancestors = stack.pop()
        real = os.path.realpath(folder)
        if real in ancestors:
            continue  # a link to a folder this walk is inside of
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable: as os.walk, skip it
            continue
        for entry in entries:
            if is_hidden(entry.name):
                continue
            if entry.is_dir():
                stack.append((entry.path, ancestors | {real}))
            elif name_glob is None or name_matches(entry.name, name_glob):
                found.append(entry.path)  # a broken link too: its row will say it is missing
    return found


def is_hidden(name: str) -> bool:
    """Spark's rule, which imgvec keeps: names starting with '.' or '_' are not data."""
    return name.startswith((".", "_"))


def name_matches(name: str, pattern: str) -> bool:
    """Hadoop-style name globs (Spark's pathGlobFilter), including one level of {a,b} alternatives."""
    braces = re.search(r"\{([^{}]*)\}", pattern)
    if braces:
        return any(name_matches(name, pattern[: braces.start()] + option + pattern[braces.end():])
                   for option in braces.group(1).split(","))
    return fnmatch.fnmatchcase(name, pattern)


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name

