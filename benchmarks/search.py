"""Search and de-duplication at scale: `imgvec index`, queries, and `imgvec dupes` over generated vectors.

    python benchmarks/search.py [--vectors 1000000] [--dims 512 2048] [--sample 100000] [--cores 2]

For each dimension, one imgvec output of clustered vectors with planted near-duplicates (2% of the
rows are another row plus a little noise: cosine 0.92-0.997) is generated once and cached. Then,
each command as a user runs it (a fresh process, local Spark on --cores):
  - `imgvec index OUTPUT`: wall time, the type it chose, recall@10 measured at build;
  - 1,000 queries one at a time through the stored index (NeighbourIndex, loaded once): p50/p99
    latency, and recall@10 against exact search of the same queries over every vector;
  - `imgvec dupes OUTPUT --threshold 0.9` (clustered on Spark): wall time and groups;
  - on a --sample output of the same kind: clustered dupes against `--exact`, pair recall and
    precision (pairs of images that share a group).
A measurement, never a pass/fail test. Results: benchmarks/results/search-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from imgvec import defaults

CACHE = os.path.join(tempfile.gettempdir(), "imgvec-search")
PART_ROWS = 512
THRESHOLD = 0.9


def make_output(count: int, dim: int, seed: int = 0) -> str:
    """An imgvec output of `count` clustered vectors with planted near-duplicates (made once, then reused)."""
    import pyarrow as pa

    from imgvec.output import FORMAT, FeatureDataset
    from imgvec.writing import run_writing

    folder = os.path.join(CACHE, f"vectors-{count}-{dim}-{seed}")
    if os.path.exists(os.path.join(folder, ".complete")):
        return folder
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, count // 50), dim)).astype(np.float32)
    dataset = FeatureDataset(folder)
    identity = {"model": "generated", "weights": "none", "weights_sha256": None, "dim": dim, "format": FORMAT}
    with run_writing(dataset, identity, resume=False, overwrite=True):
        previous = None
        for start in range(0, count, PART_ROWS):
            n = min(PART_ROWS, count - start)
            rows = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim), np.float32)
            planted = np.flatnonzero(rng.random(n) < 0.02)
            source = rows if previous is None else np.concatenate([previous, rows])
            originals = source[rng.integers(0, len(source), len(planted))]  # a row of this part or the one before
            noise = rng.uniform(0.05, 0.4, (len(planted), 1)).astype(np.float32)
            rows[planted] = originals + noise * rng.standard_normal((len(planted), dim), np.float32)
            previous = rows
            features = pa.ListArray.from_arrays(pa.array(np.arange(0, rows.size + 1, dim, dtype=np.int32)),
                                                pa.array(rows.ravel()))
            dataset.write_part(pa.table({"path": [f"img/{i:08d}.jpg" for i in range(start, start + n)],
                                         "features": features, "error": pa.nulls(n, pa.string())}),
                               f"part-0000-{start // PART_ROWS:06d}.parquet")
        dataset.update_metadata(dataset.counts())
    open(os.path.join(folder, ".complete"), "w").close()
    return folder


def imgvec(*args) -> tuple[float, str]:
    """Runs the command; (wall seconds, stdout)."""
    started = time.monotonic()
    done = subprocess.run(["imgvec", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"imgvec {' '.join(map(str, args))} failed: {done.stderr[-2000:]}")
    return time.monotonic() - started, done.stdout


def queries(output: str, count: int = 1000) -> dict:
    """Latency of single queries through the stored index, and their recall@10 against exact search."""
    from imgvec.index import NeighbourIndex
    from imgvec.output import FeatureDataset
    from imgvec.rows import part_vectors
    from imgvec.search import Best, normalise

    dataset = FeatureDataset(output)
    parts = dataset.part_names()
    rng = np.random.default_rng(1)
    chosen = sorted(rng.choice(len(parts), count // 10, replace=False))
    ids, vectors = zip(*[part_vectors(dataset.where.child(parts[n]), int(n)) for n in chosen], strict=True)
    query_ids, query_vectors = np.concatenate(ids)[:: 51][:count], np.concatenate(vectors)[:: 51][:count]
    query_vectors = normalise(query_vectors)
    loading = time.monotonic()
    index = NeighbourIndex.open(dataset)
    index.search(query_vectors[:1], 11)  # loads the segments
    load_seconds = time.monotonic() - loading
    latencies, found = [], []
    for vector in query_vectors:
        started = time.perf_counter()
        _, neighbours = index.search(vector[None, :], 11)
        latencies.append(time.perf_counter() - started)
        found.append(neighbours[0])
    exact = Best(len(query_vectors), 11)
    for number, name in enumerate(parts):
        part_ids, part = part_vectors(dataset.where.child(name), number)
        exact.update(query_vectors @ normalise(part).T, part_ids)
    hits = sum(len(set(f[f != own][:10].tolist()) & set(t[t != own][:10].tolist()))
               for f, t, own in zip(found, exact.ids, query_ids, strict=True))
    milliseconds = np.array(latencies) * 1000
    return {"queries": len(query_vectors), "index_load_seconds": round(load_seconds, 1),
            "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
            "recall_at_10": round(hits / (10 * len(query_vectors)), 4)}


def index_and_queries(output: str, dim: int, spark: list[str]) -> dict:
    seconds, text = imgvec("index", output, *spark)
    description = json.load(open(os.path.join(output, "_imgvec_index", "index.json")))
    run = {"index": {"seconds": round(seconds, 1), "type": description["type"], "factory": description["factory"],
                     "shards": len(description["shards"]), "nprobe": description.get("nprobe"),
                     "recall_at_10_at_build": description["recall_at_10"]}}
    print(f"{dim}-d: {text.strip()} (command {seconds:.1f} s)", flush=True)
    run["queries"] = queries(output)
    print(f"{dim}-d: queries {run['queries']}", flush=True)
    return run


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def pairs(found: dict) -> set:
    from itertools import combinations

    return {tuple(sorted((a["path"], b["path"]))) for g in found["groups"] if g["kind"] == "near"
            for a, b in combinations(g["members"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--sample", type=int, default=100_000, help="vectors of the dupes quality check")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--dupes-dims", type=int, nargs="*", default=[512], help="dimensions to run dupes on")
    parser.add_argument("--no-index", action="store_true", help="dupes only (the index and queries are skipped)")
    args = parser.parse_args()
    spark = ["--master", f"local[{args.cores}]", "-q"]
    results = {"machine": _cpu(), "cores": args.cores,
               "vectors": args.vectors, "date": datetime.date.today().isoformat(), "runs": []}
    for dim in args.dims:
        started = time.monotonic()
        output = make_output(args.vectors, dim)
        run = {"dim": dim, "generate_seconds": round(time.monotonic() - started, 1)}
        if not args.no_index:
            run.update(index_and_queries(output, dim, spark))
        if dim in args.dupes_dims:
            seconds, text = imgvec("dupes", output, "--threshold", THRESHOLD, "--json", *spark)
            found = json.loads(text)
            run["dupes"] = {"seconds": round(seconds, 1), "search": found["search"], "groups": len(found["groups"]),
                            "grouped_images": sum(len(g["members"]) for g in found["groups"])}
            print(f"{dim}-d: dupes {run['dupes']}", flush=True)
            sample = make_output(args.sample, dim, seed=1)
            exact_seconds, exact = imgvec("dupes", sample, "--threshold", THRESHOLD, "--exact", "--json")
            clusters = max(2, round(args.sample / defaults.CLUSTER_SIZE))  # clustered even on a small sample
            clustered_seconds, clustered = imgvec("dupes", sample, "--threshold", THRESHOLD, "--clusters", clusters,
                                                  "--json", *spark)
            truth, found_pairs = pairs(json.loads(exact)), pairs(json.loads(clustered))
            run["dupes_sample"] = {
                "vectors": args.sample, "exact_seconds": round(exact_seconds, 1),
                "clustered_seconds": round(clustered_seconds, 1), "exact_pairs": len(truth),
                "pair_recall": round(len(truth & found_pairs) / max(1, len(truth)), 4),
                "pair_precision": round(len(truth & found_pairs) / max(1, len(found_pairs)), 4)}
            print(f"{dim}-d: dupes on a sample {run['dupes_sample']}", flush=True)
        results["runs"].append(run)
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    path = os.path.join(folder, f"search-{results['date']}-{'-'.join(map(str, args.dims))}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(main())
