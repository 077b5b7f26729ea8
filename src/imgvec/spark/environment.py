"""--ship-env: this Python environment (torch, imgvec, ...) packed once, for the executors of a cluster that lack it.

The archive goes to the executors as Spark's own mechanism does for any archive (spark.archives, or a Spark Connect
session's artifacts): each unpacks it into its working folder as NAME and runs PYTHON, so the tasks import what the
driver imports. It is a zip of stored (uncompressed) files: Spark's unzip restores each file's mode, so bin/python
stays executable (its untar does not, and refuses links that lead out of the archive); and the CUDA libraries that
torch's default wheel brings (most of its size) shrink by only a quarter at ~45 MB/s a core, slower to make than a
cluster's network is to send (docs/clusters.md).

A virtual environment (venv, virtualenv) is packed here, as venv-pack does, with what venv-pack refuses: editable
installs (`pip install -e .`, the README's) are shipped as their packages' files. Its `bin/python` is stored as the
base Python's executable, which finds its standard library where the environment's pyvenv.cfg says: the workers
must have that Python at the same path. A conda environment is packed with conda-pack, by the user
(the error says how). PySpark is left out: every executor puts its own Spark's PySpark first on its Python's path.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator

from imgvec.base import defaults

NAME = "imgvec_env"  # the folder each executor unpacks the archive into
PYTHON = f"./{NAME}/bin/python"  # the executors' Python, from their working folder


def archive(say: Callable[[str], None] = lambda line: None, prefix: str = sys.prefix) -> str:
    """The archive of the environment at `prefix`: made the first time, then reused while nothing in it changes.

    say: told in a line where the archive is made, and how big and long it was.
    """
    if os.path.isdir(os.path.join(prefix, "conda-meta")):
        raise ValueError(f"--ship-env packs virtual environments; {prefix} is a conda environment: pack it with "
                         f"`conda pack -o env.tar.gz` and pass --conf spark.archives=env.tar.gz#env "
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
    size = sum(os.lstat(source).st_size for source, _ in members)
    say(f"packing this Python environment for the workers, once ({size / 2**30:.1f} GB): {path}")
    start = time.monotonic()
    partial = f"{path}.{os.getpid()}.partial"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as packed:
        for source, name in members:
            packed.write(source, name)  # with its mode, which Spark's unzip restores (its untar does not)
    os.replace(partial, path)
    for older in glob.glob(os.path.join(folder, f"{tag}-*.zip")):  # the same environment's earlier packs
        if older != path:
            os.remove(older)
    say(f"packed in {time.monotonic() - start:.0f} s")
    return path


def _members(prefix: str) -> Iterator[tuple[str, str]]:
    """(file, name in the archive) for every file the executors need: the environment's own, less what the
    executors never use, then each editable install's packages under site-packages."""
    site = _site_packages(prefix)
    editable = []
    for root, folders, files in os.walk(prefix):
        relative = os.path.relpath(root, prefix)
        if root == site:
            folders[:] = [f for f in folders if not f.startswith(("pyspark", "__pycache__"))]
        else:
            folders[:] = [f for f in folders if f != "__pycache__"]
        for folder in folders:  # a link to a folder outside (lib64 -> lib is inside: that folder is packed)
            if os.path.islink(os.path.join(root, folder)):
                yield from _linked(os.path.join(root, folder), os.path.join(relative, folder), prefix)
        for name in files:
            path = os.path.join(root, name)
            if relative == "bin" and name.startswith("activate"):
                continue
            if os.path.islink(path):
                yield from _linked(path, os.path.join(relative, name), prefix)
                continue
            if root == site and (name.startswith("__editable__") or name.endswith(".egg-link")):
                if name.endswith(".pth"):
                    editable.extend(_editable_packages(path))
                continue
            if root == site and name.endswith(".pth"):
                outside = [p for p in _pth_paths(path) if not os.path.abspath(p).startswith(prefix)]
                editable.extend(package for line in outside for package in _packages_in(line))
                if outside:
                    continue
            yield path, os.path.normpath(os.path.join(relative, name))
    site_name = os.path.relpath(site, prefix)
    for package in dict.fromkeys(editable):
        name = os.path.basename(package)
        if os.path.isfile(package):
            yield package, os.path.join(site_name, name)
            continue
        for root, folders, files in os.walk(package):
            folders[:] = [f for f in folders if f != "__pycache__"]
            for file in files:
                if not file.endswith(".pyc"):
                    yield (os.path.join(root, file),
                           os.path.join(site_name, name, os.path.relpath(os.path.join(root, file), package)))


def _linked(path: str, name: str, prefix: str) -> Iterator[tuple[str, str]]:
    """A link, stored as what it leads to (a zip holds no links): a file (bin/python, to the base Python's
    executable), or a folder outside the environment; a folder inside it is packed under its own name."""
    target = os.path.realpath(path)
    if not os.path.exists(target) or os.path.isdir(target) and target.startswith(os.path.realpath(prefix) + os.sep):
        return
    if os.path.isfile(target):
        yield target, os.path.normpath(name)
    else:
        for root, _, files in os.walk(target):
            inside = os.path.join(name, os.path.relpath(root, target))
            yield from ((os.path.join(root, file), os.path.normpath(os.path.join(inside, file))) for file in files)


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


def _editable_packages(pth: str) -> list[str]:
    """The packages an editable install's .pth puts on the path: its folders' packages, or those its finder maps."""
    packages = [p for folder in _pth_paths(pth) for p in _packages_in(folder)]
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
