"""Files of the local cache made under a temporary name and renamed when whole: a reader never sees half of one,
and what a process that ended left half made is removed by the next."""

from __future__ import annotations

import glob
import os

SUFFIX = ".partial"


def partial_name(path: str) -> str:
    """The name this process makes `path` under, until it is whole."""
    return f"{path}.{os.getpid()}{SUFFIX}"


def remove_abandoned(pattern: str) -> None:
    """Removes the partial files matching `pattern` (a glob of final names) whose process has ended."""
    for partial in glob.glob(f"{pattern}.*{SUFFIX}"):
        pid = partial[: -len(SUFFIX)].rsplit(".", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            os.remove(partial)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
