"""Progress on stderr: a redrawn bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, total: int, *, already: int = 0, stream=None, quiet: bool = False,
                 interval: float | None = None, unit: str = "images"):
        self.total = total
        self.unit = unit
        self.already = already  # done by an earlier run: counted in the total, not in the rate
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.started = time.monotonic()
        self.done = float(already)
        self._last_draw = 0.0
        self._last_line = ""
        self._lock = threading.Lock()

    def update(self, done: float, force: bool = False) -> None:
        with self._lock:
            self.done = max(self.done, min(done, self.total))  # never goes backwards
            now = time.monotonic()
            if self.quiet or (not force and now - self._last_draw < self.interval):
                return
            self._last_draw = now
            line = self.line(now)
            if line == self._last_line:
                return
            self._last_line = line
            if self.tty:
                self.stream.write("\r" + line.ljust(79))
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.started
        rate = (self.done - self.already) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(share * 24)
        return (f"[{bar:<24}] {int(self.done)}/{self.total} {self.unit} {share:4.0%}  "
                f"{rate:5.1f} {'img' if self.unit == 'images' else self.unit}/s  left {_clock(left)}")

    def close(self) -> None:
        self.update(self.done, force=True)
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
