"""The driver at scale: `imgvec embed` over 10^5 to 10^7 inputs, where listing, planning and the driver's memory
are what is measured, not the network; and the answers over 10^5 to 10^7 vectors.

    python benchmarks/scale.py [--rows 100000 1000000 10000000] [--kinds table manifest files flat inventory]
                               [--cores 2]
    python benchmarks/scale.py --answers index similar dupes [--rows ...] [--cores 2]

Inputs (generated once, kept in a cache folder):
  table     a Parquet table of `rows` rows of 16 random bytes each (not images: every row becomes an error row
            at once, so the run measures planning, reading and writing, not decoding), files of 10^5 rows in row
            groups of 10^4;
  manifest  a Parquet manifest of `rows` URIs of files that do not exist (each is a `missing` row), row groups
            of 10^5;
  files     `rows` 8x8 PNGs in folders of 1,000 (real images; made slowly: keep it to 10^5), with the in-process
            rate of the same model on the same files as a baseline;
  flat      `rows` empty files in one folder (error rows at once): the driver's listing, streamed into the
            output past 10^5 files;
  inventory an S3 Inventory report of `rows` keys in CSV.gz files of 10^6 rows, under a prefix where nothing
            exists: the driver's conversion of the CSV.gz files into a listing in the output.
For each kind and size, in a fresh driver process (local Spark on --cores, a tiny TorchScript model): listing and
planning seconds, the whole run's rows/s, the driver Python process's peak RSS, and the seconds of a `--resume`
that finds nothing to do.

--answers: an imgvec output of `rows` 128-d vectors in clusters, 30% of them near-copies of another row (cosine
~0.94-0.999; benchmarks/search.py makes it, once), then each command as a user runs it, in a fresh process whose
peak RSS (VmHWM) is the driver's: `index` (seconds, the type chosen, recall@10 measured at build); `similar` by that
index (five queries, a process each: p50 seconds and the largest peak); `dupes --threshold 0.9 --keep first --out`
(seconds, files grouped, files --keep lists); `against`: `dupes NEW --against` this output, NEW being --new-rows
vectors, 30% of them near-copies of its rows (the share of those at the threshold that --keep lists). A measurement,
never a pass/fail test. Results:
benchmarks/results/scale-DATE-KINDS.json.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parallel import summed_rate  # noqa: E402

CACHE = os.path.join(tempfile.gettempdir(), "imgvec-scale")
PER_FOLDER = 1000
TABLE_FILE_ROWS, TABLE_GROUP_ROWS, MANIFEST_GROUP_ROWS = 100_000, 10_000, 100_000
INVENTORY_FILE_ROWS = 1_000_000


def make_table(rows: int) -> str:
    """A folder of Parquet files: path (img/000000000.jpg, ...) and 16 random bytes per row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = os.path.join(CACHE, f"table-{rows}")
    if os.path.exists(os.path.join(folder, "_complete")):
        return folder
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for number, start in enumerate(range(0, rows, TABLE_FILE_ROWS)):
        count = min(TABLE_FILE_ROWS, rows - start)
        content = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), count, [None, pa.py_buffer(
            rng.integers(0, 256, count * 16, dtype=np.uint8).tobytes())]).cast(pa.binary())
        paths = pa.array([f"img/{i:09d}.jpg" for i in range(start, start + count)])
        pq.write_table(pa.table({"path": paths, "content": content}), os.path.join(folder, f"{number:05d}.parquet"),
                       row_group_size=TABLE_GROUP_ROWS)
    open(os.path.join(folder, "_complete"), "w").close()
    return folder


def make_manifest(rows: int) -> str:
    """A Parquet manifest of `rows` keys under a prefix where nothing exists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(CACHE, f"manifest-{rows}.parquet")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        keys = pa.array([f"{i // PER_FOLDER:05d}/{i:09d}.jpg" for i in range(rows)])
        pq.write_table(pa.table({"bucket": pa.array(["nowhere"] * rows), "key": keys}), path + ".tmp",
                       row_group_size=MANIFEST_GROUP_ROWS)
        os.replace(path + ".tmp", path)
    return path


def make_inventory(rows: int) -> str:
    """An S3 Inventory report (manifest.json and header-less CSV.gz files of INVENTORY_FILE_ROWS keys, as S3 writes
    them) of `rows` keys; returns the manifest.json's path."""
    import gzip

    config = os.path.join(CACHE, f"inventory-{rows}", "photos", "daily")
    manifest = os.path.join(config, "2026-12-07T00-00Z", "manifest.json")
    if not os.path.exists(manifest):
        os.makedirs(os.path.join(config, "data"), exist_ok=True)
        files = []
        for number, start in enumerate(range(0, rows, INVENTORY_FILE_ROWS)):
            keys = range(start, min(rows, start + INVENTORY_FILE_ROWS))
            text = "".join(f'"photos","{i // PER_FOLDER:05d}/{i:09d}.jpg","1234","2026-12-07T00:00:00.000Z"\n'
                           for i in keys)
            with open(os.path.join(config, "data", f"{number:05d}.csv.gz"), "wb") as f:
                f.write(gzip.compress(text.encode(), 6))
            files.append({"key": f"inventory/photos/daily/data/{number:05d}.csv.gz"})
        os.makedirs(os.path.dirname(manifest), exist_ok=True)
        with open(manifest + ".tmp", "w") as f:
            json.dump({"sourceBucket": "photos", "destinationBucket": "arn:aws:s3:::inventory", "fileFormat": "CSV",
                       "fileSchema": "Bucket, Key, Size, LastModifiedDate", "files": files}, f)
        os.replace(manifest + ".tmp", manifest)
    return manifest


def make_flat(rows: int) -> str:
    """One folder of `rows` empty files (each an error row at once: the run measures the driver's listing)."""
    folder = os.path.join(CACHE, f"flat-{rows}")
    if not os.path.exists(os.path.join(folder, ".complete")):
        os.makedirs(folder, exist_ok=True)
        for i in range(rows):
            open(os.path.join(folder, f"{i:09d}.jpg"), "wb").close()
        open(os.path.join(folder, ".complete"), "w").close()
    return folder


def make_images(count: int) -> str:
    """`count` distinct 8x8 PNGs in folders of 1000."""
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
        os.makedirs(CACHE, exist_ok=True)
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
import json, sys, time
from imgvec.batch.embed import embed
kind, source, output, model, cores, resume = sys.argv[1:7]
started = time.monotonic()
inputs = {"manifest": dict(manifest=source, path_col="key", prefix="file:/nonexistent/"),
          "inventory": dict(manifest=source, prefix="file:/nonexistent/")}.get(kind, {})
summary = embed([] if inputs else [source], output, model="torchscript:" + model,
                master=f"local[{cores}]", quiet=True, resume=resume == "resume", **inputs)
print(json.dumps({"seconds": time.monotonic() - started, "job_seconds": summary.job_seconds,
                  "listing_seconds": summary.listing_seconds, "planning_seconds": summary.planning_seconds,
                  "processed": summary.processed, "skipped": summary.skipped, "tasks": summary.tasks,
                  "total": summary.total, "peak_rss_mb": peak_rss_mb()}))
"""
# ru_maxrss survives exec on Linux: a driver started right after this process built a large manifest reported that
# process's peak. VmHWM is the driver's own.
PEAK = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def run_embed(kind: str, source: str, output: str, model: str, cores: int, resume: bool = False) -> dict:
    """embed() in a fresh driver process of its own, whose peak RSS is the driver's."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PEAK + DRIVER, kind, source, output, model, str(cores),
                           "resume" if resume else "fresh"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": time.monotonic() - started}


COMMAND = """
import contextlib, json, os, sys, tempfile, time
from imgvec.cli.main import main
started = time.monotonic()
with tempfile.TemporaryFile("w+") as said:  # printed into a file, as to a terminal: not held in this process
    with contextlib.redirect_stdout(said):
        code = main(sys.argv[1:])
    seconds, peak = time.monotonic() - started, peak_rss_mb()
    said.flush()
    size = os.fstat(said.fileno()).st_size
    tail = os.pread(said.fileno(), 100000, max(0, size - 100000)).decode(errors="replace")
print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": peak, "stdout": tail}))
"""


def run_command(*argv: str) -> dict:
    """An imgvec command in a fresh process: its exit code, seconds (from the command's start), peak RSS, stdout."""
    done = subprocess.run([sys.executable, "-c", PEAK + COMMAND, *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"]:
        raise RuntimeError(f"imgvec {' '.join(argv)}: exit {result['code']}: {done.stderr[-2000:]}")
    return result


def measure_answers(rows: int, answers: list[str], cores: int, new_rows: int = 100_000) -> dict:
    from search import make_new, make_output, planted_pairs

    started = time.monotonic()
    output = make_output(rows, 128, seed=0, share=0.3)
    result = {"rows": rows, "make_seconds": round(time.monotonic() - started, 1)}
    spark = ["--master", f"local[{cores}]", "-q"]
    if "index" in answers or "similar" in answers:
        built = run_command("index", output, "--rebuild", *spark)
        description = json.load(open(os.path.join(output, "_imgvec_index", "index.json")))
        result["index"] = {"seconds": built["seconds"], "peak_rss_mb": built["peak_rss_mb"],
                           "type": description["type"], "factory": description["factory"],
                           "recall_at_10": description["recall_at_10"], "segments": len(description["segments"])}
    if "similar" in answers:
        runs = [run_command("similar", output, f"img/{i * (rows // 5):08d}.jpg", "-k", "10", "--json")
                for i in range(5)]
        seconds = sorted(r["seconds"] for r in runs)
        result["similar"] = {"p50_seconds": seconds[2], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                             "search": json.loads(runs[0]["stdout"])[0]["search"]}
    if "dupes" in answers:
        listing = os.path.join(tempfile.mkdtemp(prefix="imgvec-scale-dupes-"), "groups.parquet")
        found = run_command("dupes", output, "--threshold", "0.9", "--keep", "first", "--out", listing, *spark)
        import numpy as np
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        grouped = pq.read_table(listing, columns=["path", "group", "kept_file"])
        number = pc.cast(pc.utf8_slice_codeunits(grouped["path"], 4, 12), "int64").to_numpy()
        group = np.full(rows, -1)
        group[number] = grouped["group"].to_numpy()
        deletable = number[pc.not_equal(grouped["path"], grouped["kept_file"]).to_numpy(zero_copy_only=False)]
        every_planted, cosines = planted_pairs(rows, 128, seed=0, share=0.3)
        pairs = every_planted[cosines >= 0.9]  # the planted pairs there are at the threshold
        result["dupes"] = {"seconds": found["seconds"], "peak_rss_mb": found["peak_rss_mb"],
                           "grouped": grouped.num_rows, "rows_per_second": rows / found["seconds"],
                           "deletable": len(deletable),
                           # a planted pair at the threshold found: both grouped (groups form around kept
                           # files, so the two may be in the groups of two kept files)
                           "planted_pairs": len(pairs),
                           "planted_found": float(np.mean((group[pairs[:, 0]] >= 0) & (group[pairs[:, 1]] >= 0))),
                           # a file of no planted family (neither a copy nor an original) listed to delete
                           "listed_alone": int(np.isin(deletable, every_planted.ravel(), invert=True).sum())}
        shutil.rmtree(os.path.dirname(listing), ignore_errors=True)
    if "against" in answers:  # NEW (new_rows) against this output as OLD (by its index where it was built above)
        new, planted, cosines = make_new(rows, new_rows, 128)
        listing = os.path.join(tempfile.mkdtemp(prefix="imgvec-scale-against-"), "groups.parquet")
        found = run_command("dupes", new, "--against", output, "--threshold", "0.9", "--keep", "first", "--out",
                            listing, *spark)
        import numpy as np
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        grouped = pq.read_table(listing, columns=["path", "kept_file"])
        listed = grouped.filter(pc.not_equal(grouped["path"], grouped["kept_file"]))["path"].to_pylist()
        copies = {f"new/{i:08d}.jpg" for i in planted[cosines >= 0.9, 0]}  # the planted copies at the threshold
        result["against"] = {"new_rows": new_rows, "seconds": found["seconds"], "peak_rss_mb": found["peak_rss_mb"],
                             "grouped": grouped.num_rows, "listed": len(listed), "planted_copies": len(copies),
                             "planted_listed": len(copies & set(listed)) / max(1, len(copies)),
                             "listed_old": sum(not p.startswith("new/") for p in listed)}
        shutil.rmtree(os.path.dirname(listing), ignore_errors=True)
    return result


def answers_main(args) -> None:
    print(f"{cpu_name()}, {os.cpu_count()} cores; local[{args.cores}]", flush=True)
    results = []
    for rows in args.rows:
        result = measure_answers(rows, args.answers, args.cores, args.new_rows)
        results.append(result)
        print(json.dumps(result), flush=True)
    for answer in ("index", "similar", "dupes", "against"):
        mine = [r for r in results if answer in r]
        if len(mine) > 1:
            print(f"{answer}: driver peak RSS {mine[0][answer]['peak_rss_mb']:.0f} MB at {mine[0]['rows']} vectors, "
                  f"{mine[-1][answer]['peak_rss_mb']:.0f} MB at {mine[-1]['rows']} "
                  f"(+{mine[-1][answer]['peak_rss_mb'] - mine[0][answer]['peak_rss_mb']:.0f} MB)")
    write_results(args.answers, args.cores, results)


def write_results(names: list[str], cores: int, results: list[dict]) -> None:
    """benchmarks/results/scale-DATE-NAMES.json, with the CPU it ran on."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        f"scale-{datetime.date.today().isoformat()}-{'-'.join(names)}.json")
    with open(path, "w") as f:
        json.dump({"cpu": cpu_name(), "cores": cores, "results": results}, f, indent=2)
    print(f"written: {path}")


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--kinds", nargs="+", choices=("table", "manifest", "files", "flat", "inventory"),
                        default=["table", "manifest"])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--sample", type=int, default=10_000, help="files for the in-process baseline")
    parser.add_argument("--new-rows", type=int, default=100_000, help="--answers against: NEW's vectors")
    parser.add_argument("--answers", nargs="+", choices=("index", "similar", "dupes", "against"),
                        help="measure these answers over generated vectors instead of embed")
    args = parser.parse_args()
    if args.answers:
        return answers_main(args)

    model = make_model()
    print(f"{cpu_name()}, {os.cpu_count()} cores; local[{args.cores}]", flush=True)
    results = []
    for kind in args.kinds:
        for rows in args.rows:
            started = time.monotonic()
            make = {"table": make_table, "manifest": make_manifest, "files": make_images, "flat": make_flat,
                    "inventory": make_inventory}[kind]
            source = make(rows)
            made = time.monotonic() - started
            work = tempfile.mkdtemp(prefix="imgvec-scale-run-")
            output = os.path.join(work, "vectors")
            try:
                run = run_embed(kind, source, output, model, args.cores)
                resumed = run_embed(kind, source, output, model, args.cores, resume=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            result = {"kind": kind, "rows": rows, "tasks": run["tasks"], "listing_seconds": run["listing_seconds"],
                      "planning_seconds": run["planning_seconds"], "seconds": run["seconds"],
                      "rows_per_second": run["processed"] / run["seconds"], "peak_rss_mb": run["peak_rss_mb"],
                      "resume_seconds": resumed["seconds"], "resume_process_seconds": resumed["process_seconds"],
                      "resume_peak_rss_mb": resumed["peak_rss_mb"], "resume_skipped": resumed["skipped"]}
            if kind == "files":
                result["baseline_rows_per_second"] = in_process_rate(source, model, args.cores,
                                                                     min(args.sample, rows))
            results.append(result)
            print(f"{kind} of {rows} rows ({made:.0f} s to make or find), {run['tasks']} tasks: listing "
                  f"{run['listing_seconds']:.1f} s, planning {run['planning_seconds']:.1f} s; whole run "
                  f"{run['seconds']:.1f} s = {result['rows_per_second']:.0f} rows/s; driver peak RSS "
                  f"{run['peak_rss_mb']:.0f} MB; no-op --resume {resumed['seconds']:.1f} s "
                  f"({resumed['peak_rss_mb']:.0f} MB, {resumed['skipped']} skipped)"
                  + (f"; in-process baseline {result['baseline_rows_per_second']:.0f} images/s"
                     if kind == "files" else ""), flush=True)
    for kind in args.kinds:
        mine = [r for r in results if r["kind"] == kind]
        if len(mine) > 1:
            print(f"{kind}: driver peak RSS grows by {mine[-1]['peak_rss_mb'] - mine[0]['peak_rss_mb']:.0f} MB "
                  f"from {mine[0]['rows']} to {mine[-1]['rows']} rows")
    write_results(args.kinds, args.cores, results)


if __name__ == "__main__":
    main()
