"""The driver JVM's start-up: a class-data-sharing (CDS) archive of the classes Spark loads, made once.

Before its first job, Spark's driver JVM loads ~15,000 classes from ~280 jars: about 5 s of a small
`imgvec embed` on a 2-core machine. From a static CDS archive of those classes it starts in about
half that (docs/performance.md, Start-up). JDK 17 makes one in two steps: a run that lists the
classes it loads (-XX:DumpLoadedClassList), then `java -Xshare:dump`. Every session of a Java + Spark
installation lists until the archive exists; the first to end hands its list to a detached,
low-priority process that makes it (~30 s of one core; ~180 MB in the cache). Until the archive
exists, and wherever the JVM finds it does not match (another classpath, heap layout or JDK), the
JVM starts as before: it ignores an archive it cannot use. IMGVEC_JVM_ARCHIVE=0 turns it off.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time

from imgvec.base import defaults

OFF_ENV = "IMGVEC_JVM_ARCHIVE"
BUILD_STALE_S = 900  # a build marker older than this was left by a build that died

# The `imgvec` command's driver JVM is not stopped: it exits when its pipe to the ending process closes,
# through Spark's own shutdown hook (SparkContext.stop, temporary folders removed). Waiting for a stop cost ~1.3 s.
ends_with_process = False
_listing: dict = {}  # this process's JVM that lists its classes: the list, then its java and classpath


def java_options() -> list[str]:
    """Options for a driver JVM about to start: use the archive, or list the classes that will make it."""
    if os.environ.get(OFF_ENV) == "0" or _listing:
        return []
    base = _base()
    if base is None:
        return []
    if os.path.isfile(base + ".jsa"):
        return [f"-XX:SharedArchiveFile={base}.jsa"]
    if os.path.exists(base + ".failed"):
        return []
    try:
        os.makedirs(os.path.dirname(base), exist_ok=True)
    except OSError:
        return []
    classes = f"{base}.{os.getpid()}.classes"
    _listing.update(base=base, classes=classes)
    atexit.register(build)
    return [f"-XX:DumpLoadedClassList={classes}"]


def started(spark) -> None:
    """Note the java and classpath of the JVM that lists its classes: the archive must be made with them."""
    if not _listing or "java" in _listing:
        return
    system = spark.sparkContext._jvm.java.lang.System
    _listing.update(java=os.path.join(system.getProperty("java.home"), "bin", "java"),
                    classpath=system.getProperty("java.class.path"))


def forget() -> None:
    """This process's listing JVM ran no job (its command failed first): no archive from its list."""
    if _listing:
        _listing["handed"] = True
        _remove(_listing["classes"])


def build() -> None:
    """Once this process's session has run: a detached process makes the archive, unless another one is."""
    if "java" not in _listing or _listing.get("handed"):
        return
    _listing["handed"] = True
    base, classes = _listing["base"], _listing["classes"]
    if os.path.isfile(base + ".jsa") or not os.path.isfile(classes) or not _claim(base + ".building"):
        _remove(classes)
        return
    subprocess.Popen([sys.executable, "-m", "imgvec.spark.jvm", base, classes, _listing["java"], _listing["classpath"]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


def dump(base: str, classes: str, java: str, classpath: str) -> None:
    """`base`.jsa from the class list, or `base`.failed saying why (then no later run tries again)."""
    listed, archive = f"{base}.{os.getpid()}.list", f"{base}.{os.getpid()}.tmp"
    try:
        with open(classes, "rb") as f:  # the JVM may still be listing: its complete lines so far
            text = f.read()
        with open(listed, "wb") as f:
            f.write(text[:text.rfind(b"\n") + 1])
        _remove(classes)
        os.nice(10)  # a command that runs meanwhile comes first
        done = subprocess.run([java, "-Xshare:dump", f"-XX:SharedClassListFile={listed}",
                               f"-XX:SharedArchiveFile={archive}", "-cp", classpath],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=1800)
        if done.returncode == 0 and os.path.isfile(archive):
            os.replace(archive, base + ".jsa")
        else:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            _write(base + ".failed", f"java -Xshare:dump exited {done.returncode}: {last}\n")
    except (OSError, subprocess.SubprocessError) as error:
        _write(base + ".failed", f"{type(error).__name__}: {error}\n")
    finally:
        _remove(listed, archive, base + ".building")


def _base() -> str | None:
    """The archive's path without its suffix, named by what it must match: this JDK and these Spark jars."""
    java = _java()
    spark_home = _spark_home()
    if java is None or spark_home is None:
        return None
    jars = os.path.join(spark_home, "jars")
    try:
        java_home = os.path.dirname(os.path.dirname(java))
        modules = os.stat(os.path.join(java_home, "lib", "modules"))  # the JDK's own classes: one per build
        made_of = [java, modules.st_size, modules.st_mtime_ns]
        with os.scandir(jars) as entries:
            made_of += sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    except OSError:
        return None
    key = hashlib.sha256(repr(made_of).encode()).hexdigest()[:20]
    return os.path.join(defaults.cache_dir(), "jvm", f"spark-driver-{key}")


def _java() -> str | None:
    """The java that spark-submit runs: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(java) if java and os.path.isfile(java) else None


def _spark_home() -> str | None:
    try:
        from pyspark.find_spark_home import _find_spark_home
        return _find_spark_home()
    except Exception:  # pyspark's own error comes when the session starts
        return None


def _claim(marker: str) -> bool:
    """Whether this process may build the archive: one build at a time, a dead build's marker taken over."""
    try:
        if os.path.exists(marker) and time.time() - os.path.getmtime(marker) > BUILD_STALE_S:
            os.remove(marker)
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except OSError:
        return False


def _write(path: str, text: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(text)


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


if __name__ == "__main__":
    dump(*sys.argv[1:5])
