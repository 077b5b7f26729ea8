"""--ship-env: this Python environment's packages (torch, imgvec, ...) zipped once, for the executors of a cluster
that lack them.

The archive goes to the executors as Spark's own mechanism does for any archive (spark.archives): each unpacks it
into its working folder as NAME, and its Python workers run the Python this environment was made from, with the
archive's site-packages first on their path (spark.executorEnv.PYTHONPATH, after Spark's own PySpark). So nothing in
the archive needs its file mode or a link kept, which Spark's unpacking does not keep alike on 3.5 and 4.x (4.x
refuses a tar's link out of the archive; 3.5's unzip drops the executable bit): the workers must have that Python at
the same path, as venv-pack's archives also need (docs/clusters.md). A .zip of stored files: the CUDA libraries
of torch's default wheel (most of the size) shrink by only a quarter at ~45 MB/s a core, slower to make than a
cluster's network is to send.

What is packed: the virtual environment's site-packages, with what venv-pack refuses: an editable install
(`pip install -e .`, the README's) is shipped as its packages' files. Left out: PySpark (every executor puts its
own Spark's first on the path), Triton (torch.compile's GPU compiler, which imgvec never calls: 0.9 GB of the
README's 6.1 GB environment), byte code, and the .pth files (an editable install's are replaced by its files). A
conda environment carries its own interpreter: the user packs it with conda-pack (the error says how).
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator

from imgvec.base import defaults
from imgvec.base.partial import partial_name, remove_abandoned

NAME = "imgvec_env"  # the folder each executor unpacks the archive into, in its working folder
PATH = f"{NAME}/site-packages"  # first on the executors' Python path (after PySpark)
LEFT_OUT = ("pyspark", "triton")  # the top folders (and their dist-info) of site-packages never packed


def executor_python() -> str:
    """The Python the environment was made from: what the executors run, at the same path."""
    return os.path.realpath(sys.executable)


def archive(say: Callable[[str], None] = lambda line: None, prefix: str = sys.prefix) -> str:
    """The archive of the environment at `prefix`: made the first time, then reused while nothing in it changes.

    say: told in a line where the archive is made, and how big and long it was.
    """
    if os.path.isdir(os.path.join(prefix, "conda-meta")):
        raise ValueError(f"--ship-env packs virtual environments; {prefix} is a conda environment: pack it with "
                         f"`conda pack -o env.zip` and pass --conf spark.archives=env.zip#env "
                         f"--conf spark.pyspark.python=./env/bin/python")
    if prefix == getattr(sys, "base_prefix", prefix):
        raise ValueError(f"--ship-env packs a virtual environment, and this Python ({sys.executable}) runs in none: "
                         f"make one (python -m venv), install imgvec there, and run imgvec from it")
    members = list(_members(prefix))
    key = hashlib.sha256(repr((sys.version, prefix)).encode())
    for source, _ in members:
        stat = os.lstat(source)
        key.update(f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    folder = os.path.join(defaults.cache_dir(), "environments")
    tag = hashlib.sha256(prefix.encode()).hexdigest()[:12]
    path = os.path.join(folder, f"{tag}-{key.hexdigest()[:20]}.zip")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    remove_abandoned(os.path.join(folder, f"{tag}-*.zip"))  # left by a command that ended while it packed
    size = sum(os.lstat(source).st_size for source, _ in members)
    say(f"packing this Python environment for the workers, once ({size / 2**30:.1f} GB): {path}")
    start = time.monotonic()
    partial = partial_name(path)
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as packed:
        for source, name in members:
            packed.write(source, name)
    os.replace(partial, path)
    for older in glob.glob(os.path.join(folder, f"{tag}-*.zip")):  # the same environment's earlier packs
        if older != path:
            os.remove(older)
    say(f"packed in {time.monotonic() - start:.0f} s")
    return path


def drop_driver_copies(spark) -> None:
    """Remove the driver's own copies of the shipped archive. Spark's driver fetches and unpacks every spark.archives
    entry as the executors do (SparkContext.addArchive), and keeps both for the whole run; the driver's Python never
    reads them (12 GB of the README's environment), and the executors fetch the archive itself. The copy lies in a
    temporary folder of Spark's: only this JVM's (Spark's list of folders it removes at exit) are touched, never a
    concurrent run's. Nothing for local Spark, whose executors read the unpacked folder, nor without an archive."""
    context = spark.sparkContext
    shipped = [entry.partition("#")[0] for entry in context.getConf().get("spark.archives", "").split(",")
               if entry.partition("#")[2] == NAME]
    if not shipped or context.master.startswith("local"):
        return
    jvm = context._jvm
    unpacked = os.path.join(jvm.org.apache.spark.SparkFiles.getRootDirectory(), NAME)
    shutil.rmtree(unpacked, ignore_errors=True)
    name = os.path.basename(shipped[0])
    for folder in glob.glob(os.path.join(jvm.System.getProperty("java.io.tmpdir"), "spark-*")):
        copy = os.path.join(folder, name)
        try:
            ours = jvm.org.apache.spark.util.ShutdownHookManager.hasShutdownDeleteDir(jvm.java.io.File(folder))
        except Exception:  # noqa: BLE001 - Spark's internal list, not an API: without it the copy stays until exit
            return
        if ours and os.path.isfile(copy):
            os.remove(copy)


def _members(prefix: str) -> Iterator[tuple[str, str]]:
    """(file, name in the archive) for every file the executors need: site-packages, less what they never use,
    then each editable install's packages; a link is stored as the file it leads to."""
    site = _site_packages(prefix)
    editable = []
    for root, folders, files in os.walk(site):
        relative = os.path.relpath(root, site)
        folders[:] = [f for f in folders if f != "__pycache__" and not (root == site and f.startswith(LEFT_OUT))]
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".pyc"):
                continue
            if root == site and name.endswith((".pth", ".egg-link")):
                editable += _editable_packages(path, prefix)
                continue
            yield os.path.realpath(path), os.path.normpath(os.path.join("site-packages", relative, name))
    for package in dict.fromkeys(editable):
        name = os.path.basename(package)
        if os.path.isfile(package):
            yield package, os.path.join("site-packages", name)
            continue
        for root, folders, files in os.walk(package):
            folders[:] = [f for f in folders if f != "__pycache__"]
            inside = os.path.join("site-packages", name, os.path.relpath(root, package))
            yield from ((os.path.join(root, f), os.path.normpath(os.path.join(inside, f)))
                        for f in files if not f.endswith(".pyc"))


def _site_packages(prefix: str) -> str:
    found = glob.glob(os.path.join(prefix, "lib", "python*", "site-packages"))
    if len(found) != 1:
        raise ValueError(f"--ship-env: {prefix} has no single lib/python*/site-packages to pack")
    return found[0]


def _pth_paths(pth: str) -> list[str]:
    """The folders a .pth file adds to the path (its lines that are not `import ...`)."""
    with open(pth, encoding="utf-8", errors="replace") as lines:
        return [os.path.join(os.path.dirname(pth), line.strip()) for line in lines
                if line.strip() and not line.startswith(("#", "import ", "import\t"))]


def _editable_packages(pth: str, prefix: str) -> list[str]:
    """The packages a .pth file puts on the path from outside the environment (an editable install): those in its
    folders, or those its setuptools finder maps."""
    if not pth.endswith(".pth"):
        return []
    packages = [p for folder in _pth_paths(pth) if not os.path.abspath(folder).startswith(prefix)
                for p in _packages_in(folder)]
    if os.path.basename(pth).startswith("__editable__"):
        for finder in glob.glob(os.path.join(os.path.dirname(pth), "__editable___*_finder.py")):
            with open(finder, encoding="utf-8") as source:
                for node in ast.parse(source.read()).body:
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MAPPING":
                        packages.extend(ast.literal_eval(node.value).values())
    return packages


def _packages_in(folder: str) -> list[str]:
    """The importable packages and modules directly in `folder` (not the rest of a project's tree)."""
    if not os.path.isdir(folder):
        return []
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    return [path for path in paths if path.endswith(".py") and os.path.basename(path)[:-3].isidentifier()
            or os.path.isfile(os.path.join(path, "__init__.py"))]
