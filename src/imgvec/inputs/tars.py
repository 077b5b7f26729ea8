"""WebDataset shards: tar files of samples, as img2dataset (LAION, DataComp, COYO) and `webdataset` write them.

A sample is the consecutive members sharing a key, grouped as the webdataset library groups them: the key is a
member's name up to the first dot of its base name, the rest its extension (lower-cased). The image is the member
with an image extension; `KEY.txt` is the caption, `KEY.json` kept as text. A tar is one piece, streamed on its
worker (never extracted, never seeked: an object store answers one sequential read fastest).
Each row's path is `<tar>#<image member>`, which names the tar, the member and so the key.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from imgvec.base.storage import is_hidden, is_local, list_files, local_path, open_location
from imgvec.base.text import one_line
from imgvec.inputs.pieces import Piece, Sample, expand_braces, missing_or_unreadable

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
COLUMNS = pa.schema([("caption", pa.string()), ("json", pa.string())])
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def looks_like_tars(inputs) -> bool:
    """Tar files (after brace ranges), or folders whose files are tars."""
    expanded = expand_braces(inputs)
    if all(text.lower().endswith(TAR_SUFFIXES) for text in expanded):
        return True
    if len(expanded) != 1 or any(c in expanded[0] for c in "*?["):
        return False
    location = open_location(expanded[0])
    if not location.is_folder():
        return False
    found = False
    for name, _ in location.stream():  # a stream: a flat folder may hold 10^7 images, the first says no
        name = name.lower()
        if is_hidden(name):
            continue
        if not name.endswith((*TAR_SUFFIXES, ".parquet", ".json")):
            return False
        found = found or name.endswith(TAR_SUFFIXES)
    return found


def member_path(tar: str, member: str) -> str:
    return f"{tar}#{member}"


def split_member_path(path: str) -> tuple[str, str] | None:
    """(tar, member) of a path that names a tar's member, else None."""
    for suffix in TAR_SUFFIXES:
        tar, found, member = path.partition(suffix + "#")
        if found:
            return tar + suffix, member
    return None


@dataclass(frozen=True)
class TarShards:
    """WebDataset tars: files, folders of them, globs and brace ranges (`s3://b/{00000..00999}.tar`)."""

    inputs: tuple[str, ...]
    columns = COLUMNS

    def pieces(self, spread=None, listing=None) -> list[Piece]:
        tars = set()
        for text in expand_braces(self.inputs):
            if any(c in text for c in "*?[") or open_location(text).is_folder():
                tars.update(uri for _, uri in list_files([text]) if uri.lower().endswith(TAR_SUFFIXES))
            else:
                tars.add(text if not is_local(text) else "file:" + open_location(text).path)  # may be missing
        return [Piece(uri) for uri in sorted(tars)]

    def names(self, piece: Piece) -> pa.Array:
        return pa.array([sample.path for sample in self.samples(piece)], pa.string())

    def samples(self, piece: Piece, only: set[str] | None = None) -> Iterator[Sample]:
        for sample in tar_samples(piece.source):
            if only is None or sample.path in only:
                yield sample

    def planned_images(self, pieces: list[Piece]) -> None:
        return None  # known only by reading the tars


def tar_samples(tar: str) -> Iterator[Sample]:
    """The tar's samples in order; one error row naming the tar if it cannot be read at all, and one for the
    sample being read when it breaks."""
    key, members = None, {}
    try:
        with _open_stream(tar) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                found = _KEY.match(member.name)
                if not found or any(part.startswith("__") for part in member.name.split("/")):
                    continue
                if found.group(1) != key:
                    if members:
                        yield _sample(tar, key, members)
                    key, members = found.group(1), {}
                members[found.group(2).lower()] = (member.name, archive.extractfile(member).read())
    except (OSError, tarfile.TarError, EOFError) as exc:
        # the sample being read when the tar broke, else the tar itself (what follows cannot be listed)
        yield _broken(tar, key, members, exc) if members else Sample(tar, None, _tar_error(exc))
        return
    if members:
        yield _sample(tar, key, members)


def read_members(tar: str, members: set[str]) -> dict[str, bytes]:
    """The bytes of some members of one tar, streaming it once (commands that read an image again)."""
    found = {}
    with _open_stream(tar) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if member.name in members and member.isfile():
                found[member.name] = archive.extractfile(member).read()
                if len(found) == len(members):
                    break
    return found


def _sample(tar: str, key: str, members: dict) -> Sample:
    extra = {"caption": _text(members.get("txt")), "json": _text(members.get("json"))}
    image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image is None:
        kinds = ", ".join("." + ext for ext in sorted(members))
        return Sample(member_path(tar, key), None, f"missing: sample {key} has no image ({kinds})", extra)
    return Sample(member_path(tar, image[0]), image[1], None, extra)


def _broken(tar: str, key: str, members: dict, exc: Exception) -> Sample:
    name = next((members[ext][0] for ext in IMAGE_EXTENSIONS if ext in members), key)
    return Sample(member_path(tar, name), None, f"unreadable: the tar breaks in sample {key} ({one_line(exc)})")


def _tar_error(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return missing_or_unreadable(exc)
    return f"unreadable: not a tar ({one_line(exc)})"


def _text(member) -> str | None:
    return None if member is None else member[1].decode("utf-8", errors="replace")


def _open_stream(uri: str):
    if is_local(uri):
        return open(local_path(uri), "rb")  # noqa: SIM115 (closed by the caller's with)
    location = open_location(uri)
    return location.fs.open_input_stream(location.path)
