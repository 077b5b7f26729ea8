"""One run writes an output at a time: a lock file naming the run, refreshed by a thread while the run lives."""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager, suppress

from imgvec.base.storage import Location


class LockError(ValueError):
    """Another live run holds the output."""


class Lock:
    """One run writes an output at a time: a lock file naming the run, refreshed while it lives.

    A run killed with SIGKILL cannot remove it: a lock whose process is gone (same host) or that
    has not been refreshed for STALE seconds (another host) is taken over.
    """

    REFRESH = 10.0
    STALE = 60.0

    def __init__(self, where: Location):
        self.where = where
        self.mine = {"run": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}

    def read(self) -> dict | None:
        try:
            held = json.loads(self.where.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return held if isinstance(held, dict) else None

    def check_free(self) -> None:
        held = self.read()
        if held and held.get("run") != self.mine["run"] and _alive(held):
            raise LockError(
                f"output {self.where.uri.rsplit('/', 1)[0]} is being written by another imgvec run "
                f"(pid {held.get('pid')} on {held.get('host')}, since {held.get('started')}); wait for it to "
                "finish or use another output")

    @contextmanager
    def held(self):
        self.mine["started"] = now()
        self._write()
        if (self.read() or {}).get("run") != self.mine["run"]:  # another run wrote its lock at the same moment
            self.check_free()
        stop = threading.Event()
        refresher = threading.Thread(target=self._refresh, args=(stop,), daemon=True, name="imgvec-lock")
        refresher.start()
        try:
            yield
        finally:
            stop.set()
            refresher.join()
            if (self.read() or {}).get("run") == self.mine["run"]:
                self.where.delete()

    def _write(self) -> None:
        self.where.write_bytes(json.dumps({**self.mine, "refreshed": time.time()}).encode())

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.wait(self.REFRESH):
            with suppress(OSError):  # a passing storage hiccup; the next refresh tries again
                self._write()


def _alive(held: dict) -> bool:
    """Whether the run that wrote a lock may still be running."""
    refreshed = held.get("refreshed")
    if not isinstance(refreshed, (int, float)) or time.time() - refreshed > Lock.STALE:
        return False
    if held.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(held.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        pass
    return True


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
