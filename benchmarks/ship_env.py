"""What `--ship-env` costs: the archive of a virtual environment, its size and the time to make it.

    python benchmarks/ship_env.py [PREFIX ...]      (default: this Python's environment)

For each environment, in a fresh process with an empty cache: its files and bytes, the seconds to pack them
(spark.environment.archive, a .zip of stored files), the archive's size, what torch build it holds (CUDA or CPU)
and that process's peak RSS (VmHWM); then the seconds a second call takes to find the archive made. Also, as a
reference for the choice of stored files: gzip -1 of the largest CUDA library, MB/s and the share it saves. A
measurement, never a pass/fail test. Results: benchmarks/results/ship-env-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib

PACK = """
import json, os, sys, time
from imgvec.spark import environment
prefix = sys.argv[1]
members = list(environment._members(prefix))
started = time.monotonic()
path = environment.archive(prefix=prefix)
first = time.monotonic() - started
started = time.monotonic()
environment.archive(prefix=prefix)
again = time.monotonic() - started
peak = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"files": len(members), "bytes": sum(os.lstat(s).st_size for s, _ in members),
                  "pack_seconds": first, "found_again_seconds": again, "archive_bytes": os.path.getsize(path),
                  "peak_rss_mb": peak}))
"""


def torch_build(prefix: str) -> str:
    found = glob.glob(os.path.join(prefix, "lib", "python*", "site-packages", "torch-*.dist-info"))
    cuda = glob.glob(os.path.join(prefix, "lib", "python*", "site-packages", "nvidia"))
    return f"{os.path.basename(found[0])[6:-10] if found else 'none'} ({'CUDA' if cuda else 'CPU'} build)"


def gzip_reference(prefix: str) -> dict:
    libraries = glob.glob(os.path.join(prefix, "lib", "python*", "site-packages", "nvidia", "*", "lib", "*.so*"))
    libraries += glob.glob(os.path.join(prefix, "lib", "python*", "site-packages", "torch", "lib", "*.so*"))
    if not libraries:
        return {}
    largest = max(libraries, key=os.path.getsize)
    data = open(largest, "rb").read()
    started = time.monotonic()
    packed = zlib.compress(data, 1)
    seconds = time.monotonic() - started
    return {"file": os.path.basename(largest), "mb": len(data) / 2**20, "gzip1_mb_per_s": len(data) / 2**20 / seconds,
            "gzip1_saves": 1 - len(packed) / len(data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", default=[sys.prefix])
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    results = {"date": datetime.date.today().isoformat(), "cpu": model, "cores": os.cpu_count(),
               "python": platform.python_version(), "environments": []}
    for prefix in args.prefixes:
        with tempfile.TemporaryDirectory(prefix="imgvec-ship-env-") as cache:
            done = subprocess.run([os.path.join(prefix, "bin", "python"), "-c", PACK, prefix], capture_output=True,
                                  text=True, env={**os.environ, "IMGVEC_CACHE": cache})
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            row = {"prefix": prefix, "torch": torch_build(prefix), **json.loads(done.stdout.strip().splitlines()[-1]),
                   "gzip_reference": gzip_reference(prefix)}
        results["environments"].append(row)
        print(f"{prefix}: torch {row['torch']}: {row['files']} files, {row['bytes'] / 2**30:.2f} GB -> archive "
              f"{row['archive_bytes'] / 2**30:.2f} GB in {row['pack_seconds']:.1f} s (found again in "
              f"{row['found_again_seconds']:.2f} s), peak RSS {row['peak_rss_mb']:.0f} MB; "
              f"gzip -1 reference: {json.dumps(row['gzip_reference'])}", flush=True)
    out = os.path.join(os.path.dirname(__file__), "results", f"ship-env-{results['date']}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
