"""The batch job at scale: many small image files through `imgvec embed` with a tiny TorchScript model,
so that listing, planning, reading, decoding and writing dominate, not the network.

    python benchmarks/scale.py [--images 100000] [--cores 2] [--shard-size 512]

Prints, from one run: listing and planning time, images/s of the job and of the whole call, the
driver Python process's peak RSS, the bytes the tasks sent to the driver per image (Spark's
event log), the time of a `--resume` that finds nothing to do, and the in-process rate of the same
model on the same files (one single-threaded process per core: read + decode + preprocess + network)
as the baseline. A measurement, never a pass/fail test. Generated files are kept in a cache folder.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from imgvec.base import defaults

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parallel import summed_rate  # noqa: E402

CACHE = os.path.join(tempfile.gettempdir(), "imgvec-scale")
PER_FOLDER = 1000


def make_images(count: int) -> str:
    """`count` distinct 8x8 PNGs in folders of 1000 (made once, then reused)."""
    import numpy as np
    from PIL import Image

    folder = os.path.join(CACHE, f"images-{count}")
    if os.path.exists(os.path.join(folder, ".complete")):
        return folder
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = os.path.join(folder, f"{i // PER_FOLDER:05d}")
        if i % PER_FOLDER == 0:
            os.makedirs(sub, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(os.path.join(sub, f"{i:07d}.png"))
    open(os.path.join(folder, ".complete"), "w").close()
    return folder


def make_model() -> str:
    """A tiny TorchScript feature extractor: a 3x3 convolution, then a global average (16 floats)."""
    import torch

    path = os.path.join(CACHE, "tiny.pt")
    if not os.path.exists(path):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        torch.jit.save(torch.jit.script(net.eval()), path)
    return path


def _in_process(files: list[str], model: str, queue) -> None:
    import torch

    from imgvec import ImageVectorizer

    torch.set_num_threads(1)
    v = ImageVectorizer(f"torchscript:{model}", device="cpu", batch_size=16)
    v.embed([open(files[0], "rb").read()])  # load the model before the clock starts
    started = time.perf_counter()
    for start in range(0, len(files), 16):
        v.embed([open(f, "rb").read() for f in files[start:start + 16]])
    queue.put(len(files) / (time.perf_counter() - started))


def in_process_rate(folder: str, model: str, cores: int, sample: int) -> float:
    """Images/s of `cores` single-threaded processes, each embedding its share of `sample` files."""
    files = sorted(glob.glob(os.path.join(folder, "*", "*.png")))[:sample]
    return summed_rate(_in_process, [(files[i::cores], model) for i in range(cores)])


DRIVER = """
import json, resource, sys, time
from imgvec.batch.embed import embed
from imgvec.spark.session import get_session
folder, output, model, cores, shard_size, events, resume = sys.argv[1:8]
started = time.monotonic()
log = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": events, "spark.eventLog.compress": "false"}
summary = embed([folder], output, model="torchscript:" + model, master=f"local[{cores}]", shard_size=int(shard_size),
                quiet=True, resume=resume == "resume", conf=log)
print(json.dumps({"seconds": time.monotonic() - started, "job_seconds": summary.job_seconds,
                  "listing_seconds": summary.listing_seconds, "planning_seconds": summary.planning_seconds,
                  "processed": summary.processed, "shards": summary.shards, "total": summary.total,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_embed(folder, output, model, cores, shard_size, events, resume=False) -> dict:
    """embed() in a fresh driver process of its own, whose peak RSS is the driver's."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", DRIVER, folder, output, model, str(cores), str(shard_size), events,
                           "resume" if resume else "fresh"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": time.monotonic() - started}


def bytes_to_driver(events: str) -> int:
    """Sum of every task's Result Size: what the tasks sent to the driver."""
    total = 0
    for log in glob.glob(os.path.join(events, "**", "events_*"), recursive=True):
        for line in open(log):
            event = json.loads(line)
            if event["Event"] == "SparkListenerTaskEnd":
                total += (event.get("Task Metrics") or {}).get("Result Size", 0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--shard-size", type=int, default=defaults.SHARD_SIZE)
    parser.add_argument("--sample", type=int, default=10_000, help="files for the in-process baseline")
    args = parser.parse_args()

    started = time.monotonic()
    folder = make_images(args.images)
    model = make_model()
    print(f"{args.images} 8x8 PNGs in {folder} ({time.monotonic() - started:.0f} s to make or find)", flush=True)
    baseline = in_process_rate(folder, model, args.cores, min(args.sample, args.images))
    print(f"in-process: {args.cores} single-threaded processes, read + decode + network: {baseline:.0f} images/s",
          flush=True)

    work = tempfile.mkdtemp(prefix="imgvec-scale-run-")
    output, events = os.path.join(work, "vectors"), os.path.join(work, "events")
    os.makedirs(events)
    run = run_embed(folder, output, model, args.cores, args.shard_size, events)
    sent = bytes_to_driver(events)
    resumed = run_embed(folder, output, model, args.cores, args.shard_size, events, resume=True)
    job_rate = run["processed"] / run["job_seconds"]
    whole_rate = run["processed"] / run["seconds"]
    print(f"imgvec embed, local[{args.cores}], {run['shards']} shards of {args.shard_size}:")
    print(f"  listing {run['listing_seconds']:.1f} s, planning {run['planning_seconds']:.2f} s")
    print(f"  the Spark job: {job_rate:.0f} images/s = {job_rate / baseline:.2f}x in-process")
    print(f"  the whole call (Python start to return, session start included): {run['seconds']:.1f} s, "
          f"{whole_rate:.0f} images/s = {whole_rate / baseline:.2f}x in-process")
    print(f"  driver Python peak RSS {run['peak_rss_mb']:.0f} MB; tasks sent the driver {sent / run['processed']:.1f} "
          f"bytes per image ({sent} in all)")
    print(f"  --resume with nothing to do: {resumed['process_seconds']:.1f} s from process start to exit "
          f"({resumed['seconds']:.1f} s in embed(); {resumed['processed']} processed, {resumed['total']} listed)")


if __name__ == "__main__":
    main()
