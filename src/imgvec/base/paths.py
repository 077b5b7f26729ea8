"""Comparing places: two spellings of one place compare equal; a glob starts from a fixed folder; overlap."""

from __future__ import annotations

import glob
import os

from imgvec.base.storage import S3_SCHEMES, is_local, local_path


def overlaps(a: str, b: str) -> bool:
    """Whether one place (a path, glob or URI) is the other, lies inside it or holds it."""
    a, b = comparable(fixed_prefix(a)), comparable(fixed_prefix(b))
    return a[0] == b[0] and os.path.commonpath([a[1], b[1]]) in (a[1], b[1])


def comparable(text: str) -> tuple[str, str]:
    """(filesystem, absolute path) of a local path or URI, so that two spellings of one place compare equal."""
    if is_local(text):
        return "local", os.path.realpath(local_path(text))
    scheme, rest = text.split("://", 1)
    return ("s3" if scheme.lower() in S3_SCHEMES else scheme.lower()), "/" + rest.strip("/")


def fixed_prefix(path: str) -> str:
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
