"""Files sent with a session's jobs: executors read them by name, needing neither the driver's disk nor the internet.

Classic Spark: SparkContext.addFile. Spark Connect: addArtifacts(file=True). Executors read a file with
SparkFiles.get(name); the name carries the file's sha256, so two files never collide.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from imgvec.spark.session import is_connect

_shipped: set[tuple[str, str]] = set()
_shipped_lock = threading.Lock()
_staging = None


def ship_file(spark, path: str, sha256: str) -> str:
    """Send the file at `path` (whose sha256 is given) with `spark`'s jobs, once per session; its name there."""
    name = f"imgvec-{sha256[:16]}-{os.path.basename(path)}"
    key = (_session_key(spark), name)
    with _shipped_lock:
        if key not in _shipped:
            staged = os.path.join(_staging_dir(), name)
            if not os.path.exists(staged):
                _link_or_copy(path, staged)
            if is_connect(spark):
                spark.addArtifacts(staged, file=True)
            else:
                spark.sparkContext.addFile(staged)
            _shipped.add(key)
    return name


def _session_key(spark) -> str:
    return spark.session_id if is_connect(spark) else spark.sparkContext.applicationId


def _staging_dir() -> str:
    global _staging
    if _staging is None:
        _staging = tempfile.mkdtemp(prefix="imgvec-weights-")
    return _staging


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
