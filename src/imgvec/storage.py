"""Where files live: one helper that understands local paths and URIs, over pyarrow's filesystems.

A `Location` is a folder or file named the way the user wrote it (`photos/`, `file:///data`,
`s3://bucket/key`); `.fs` and `.path` are what pyarrow needs to read and write it.
"""

from __future__ import annotations

import fnmatch
import glob as pyglob
import os
import re
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Location:
    uri: str  # what the user sees: an absolute local path, or scheme://bucket/key
    fs: pafs.FileSystem
    path: str  # the same place, as `fs` names it

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

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Replace the file whole: readers see the old bytes or the new, never a mix."""
        if self.is_local:  # a rename is atomic on a local disk
            temporary = f"{self.path}.tmp-{os.getpid()}"
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, self.path)
        else:  # an object store shows an upload only once it is complete
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)

    def delete(self) -> None:
        self.fs.delete_file(self.path)

    def make_folder(self) -> None:
        self.fs.create_dir(self.path, recursive=True)


def open_location(text: str) -> Location:
    """A local path or a file:// URI -> a Location. Other schemes are refused with what to do."""
    if "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise ValueError(f"{text}: the {scheme}:// scheme is not supported; give a local path")
    path = os.path.abspath(os.path.expanduser(local_path(text)))
    return Location(path, pafs.LocalFileSystem(), path)


def local_path(text: str) -> str:
    """'file:///a', 'file:/a' and '/a' all name the local file /a."""
    if text.startswith("file://"):
        return text[len("file://"):]
    return text.removeprefix("file:")


def list_local_files(inputs: list[str], name_glob: str | None = None) -> list[str]:
    """Files under local inputs (files, folders, globs), sorted, as Spark names them: 'file:/abs/path'.

    Folders are walked recursively; names starting with '.' or '_' are hidden and skipped, as Spark
    does. Links to files and folders are followed, except a link back to a folder being walked (a loop).
    """
    found = []
    for pattern in inputs:
        pattern = local_path(pattern)
        for top in sorted(pyglob.glob(pattern)) if pyglob.has_magic(pattern) else [pattern]:
            if os.path.isdir(top):
                found += _walk(top, name_glob)
            else:
                found.append(top)
    return sorted({"file:" + os.path.abspath(p) for p in found})


def _walk(top: str, name_glob: str | None) -> list[str]:
    found = []
    stack = [(top, frozenset())]
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
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_dir():
                stack.append((entry.path, ancestors | {real}))
            elif name_glob is None or name_matches(entry.name, name_glob):
                found.append(entry.path)  # a broken link too: its row will say it is missing
    return found


def name_matches(name: str, pattern: str) -> bool:
    """Hadoop-style name globs (Spark's pathGlobFilter), including one level of {a,b} alternatives."""
    braces = re.search(r"\{([^{}]*)\}", pattern)
    if braces:
        return any(name_matches(name, pattern[: braces.start()] + option + pattern[braces.end():])
                   for option in braces.group(1).split(","))
    return fnmatch.fnmatchcase(name, pattern)


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name
