"""An embedded image read again (thumbnails, calibrate's originals, the pixel verifier), wherever it came from.

A row is read back from its `input` when it has one (a table's row: file, row number and column), else from its
`path`: a file's URI, or `<tar>#<member>` (the tar streamed once for all its members asked for at once).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from imgvec.base.storage import read_file
from imgvec.base.text import one_line
from imgvec.inputs.tables import read_table_row
from imgvec.inputs.tars import read_members, split_member_path


def where(path: str, input: str | None) -> str:
    """What to read a row's bytes from."""
    return input or path


def read_back(places: Iterable[str]) -> dict[str, bytes | str]:
    """{place: bytes, or the error as `kind: detail`} for each place (see where())."""
    out: dict[str, bytes | str] = {}
    members = defaultdict(set)
    for place in dict.fromkeys(places):
        in_tar = split_member_path(place)
        if in_tar:
            members[in_tar[0]].add(in_tar[1])
            continue
        out[place] = _read_one(place)
    for tar, names in members.items():
        try:
            found = read_members(tar, names)
        except Exception as exc:  # noqa: BLE001 (a tar that cannot be read: each of its images says so)
            found, problem = {}, _problem(exc)
        else:
            problem = "missing: no such member in the tar"
        for name in names:
            out[f"{tar}#{name}"] = found.get(name, problem)
    return out


def read_back_one(place: str) -> bytes | str:
    return read_back([place])[place]


def _read_one(place: str) -> bytes | str:
    try:
        data = read_table_row(place) if "#row=" in place else read_file(place)
    except Exception as exc:  # noqa: BLE001 (any failure is this image's error, as in embed)
        return _problem(exc)
    return data if data is not None else "missing: no image bytes (null)"


def _problem(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "missing: the file is gone"
    return f"unreadable: {one_line(exc)}"
