"""Before a cluster's first job: do its executors' Python, torch and imgvec match the driver's?

One small job asks each executor what it runs. Where that differs from the driver in a way that breaks unpickling
or changes features (Python's minor version, imgvec's code, torch, torchvision, NumPy's major version, the CPU
engines), or imgvec is missing there, the command stops with one line that names both sides and --ship-env, before
it reads an image, rather than with a Java stack trace from its first task.

The question is sent as source code (pickled by value), so an executor without imgvec can still answer it.
"""

from __future__ import annotations

import json
import re
import sys

_PROBE = '''
def probe(_):
    import hashlib, importlib.metadata, importlib.util, json, os, sys
    found = {"python": "%d.%d" % sys.version_info[:2]}
    for name in ("imgvec", "torch", "torchvision", "numpy", "onnxruntime", "openvino"):
        try:
            found[name] = importlib.metadata.version(name)
        except Exception:
            found[name] = None
    if found["numpy"]:
        found["numpy"] = found["numpy"].split(".")[0] + ".x"
    spec = importlib.util.find_spec("imgvec")
    if spec is not None and spec.submodule_search_locations:
        digest, root = hashlib.sha256(), spec.submodule_search_locations[0]
        for folder, folders, files in sorted(os.walk(root)):
            folders.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    digest.update(os.path.relpath(os.path.join(folder, name), root).encode())
                    with open(os.path.join(folder, name), "rb") as source:
                        digest.update(source.read())
        found["imgvec code"] = digest.hexdigest()[:12]
    else:
        found["imgvec"] = found["imgvec code"] = None
    return json.dumps(found, sort_keys=True)
'''
_NAMES = {"python": "Python", "imgvec": "imgvec", "imgvec code": "imgvec's code", "torch": "torch",
          "torchvision": "torchvision", "numpy": "NumPy", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
SHIP = "run with --ship-env to send this Python environment to the executors"


class WorkersDiffer(ValueError):
    """The executors cannot run imgvec's tasks as the driver would: one line that says what to do."""


def _probe():
    namespace = {"__name__": "imgvec_worker_probe"}  # no importable module: cloudpickle sends the function whole
    exec(_PROBE, namespace)
    return namespace["probe"]


def here() -> dict:
    return json.loads(_probe()(None))


def check(spark, slots: int | None, shipped: bool = False) -> None:
    """Stop with WorkersDiffer where the executors' Python environment differs from this one's.
    shipped: the executors got this environment by --ship-env."""
    driver = here()
    for answer in _ask(spark, min(max(slots or 2, 2), 256), shipped):
        said = difference(driver, json.loads(answer))
        if said:
            raise WorkersDiffer(said)


def difference(driver: dict, worker: dict) -> str | None:
    """What keeps an executor that answered `worker` from running the driver's tasks as the driver would."""
    if worker["imgvec"] is None:
        return (f"the executors' Python (Python {worker['python']}) has no imgvec"
                f"{'' if worker['torch'] else ' and no torch'}: {SHIP}, or install imgvec {driver['imgvec']} there")
    for key, name in _NAMES.items():
        if driver[key] and driver[key] != worker[key]:
            return (f"the executors run {name} {worker[key] or '(none)'}, the driver {name} {driver[key]}: tasks "
                    f"would fail or give other features; {SHIP}, or install the same versions on both")
    return None


def _ask(spark, tasks: int, shipped: bool) -> list[str]:
    """Each distinct answer of the executors (a few tasks spread over them)."""
    from pyspark.sql import functions as F

    probe = F.udf(_probe(), "string", useArrow=False)
    try:
        rows = spark.range(0, tasks, numPartitions=tasks).select(probe("id").alias("found")).distinct().collect()
    except Exception as error:
        raise WorkersDiffer(_one_line(error, shipped)) from None
    return [row.found for row in rows]


def _one_line(error: Exception, shipped: bool = False) -> str:
    """What a failed question says, as one line: the executors' Python would not start, is another version (as
    PySpark says, or as the paths of its traceback show when it could not even import PySpark), or could not run
    what the driver sent."""
    text = str(error)
    missing = re.search(r"Cannot run program \"([^\"]+)\"", text)
    if missing and shipped:
        return f"the executors have no {missing.group(1)}, the Python this environment was made from, which " \
               f"--ship-env needs at the same path there: make the environment from a Python the workers have, " \
               f"or pack a conda environment (docs/clusters.md)"
    if missing:
        return f"the executors cannot start Python ({missing.group(1)}): {SHIP}, or name the executors' own " \
               f"Python with --conf spark.pyspark.python=PATH"
    driver = f"{sys.version_info.major}.{sys.version_info.minor}"
    said = re.search(r"Python in worker has different version:? \(?(\d+)[., ]+(\d+)", text)
    worker_side = text.partition("Error from python worker")[2]
    seen = re.search(r"/lib/python(\d+)\.(\d+)/", worker_side)
    versions = [f"{m.group(1)}.{m.group(2)}" for m in (said, seen) if m]
    if versions and versions[0] != driver:
        return f"the executors run Python {versions[0]}, the driver Python {driver}: {SHIP} (its Python must be " \
               f"at the same path there), or run the driver with Python {versions[0]}"
    lines = [line.strip() for line in text.splitlines()]
    python_errors = [line for line in lines  # the Python side's, not Java's
                     if re.match(r"[\w.]*(Error|Exception): ", line) and not line.startswith(("org.", "java."))]
    said = python_errors[-1] if python_errors else (text.strip().splitlines() or [repr(error)])[0]
    return f"the executors could not run imgvec's check of their Python ({said[:300]}): {SHIP}"
