"""Search and de-duplication at scale: `imgvec index`, queries, and `imgvec dupes` over generated vectors.

    python benchmarks/search.py [--vectors 1000000] [--dims 512 2048] [--sample 100000] [--cores 2]

For each dimension, one imgvec output of clustered vectors with planted near-duplicates (2% of the
rows are another row plus a little noise: cosine 0.92-0.997) is generated once and cached. Then,
each command as a user runs it (a fresh process, local Spark on --cores):
  - `imgvec index OUTPUT`: wall time, the type it chose, recall@10 measured at build;
  - 1,000 queries one at a time through the stored index (NeighbourIndex, loaded once): p50/p99
    latency, and recall@10 against exact search of the same queries over every vector;
  - `imgvec dupes OUTPUT --threshold 0.9` (clustered on Spark): wall time and groups;
  - on a --sample output of the same kind: clustered dupes against `--exact`, recall and precision
    of the files found to have a near-duplicate (groups form around kept files, so the files, not
    the pairs of co-members, are what the two searches must agree on);
  - new against old (--follow, the first dimension): 10^4 NEW vectors (5% near copies of OLD rows)
    through `imgvec dupes NEW --against OLD` with OLD's index, and its NEW x OLD pair recall
    against exact search; then the same 10^4 added to OLD as parts of a new run (a copy of OLD
    made of hard links) and `imgvec index` updating the index, against the full build's time;
  - `imgvec calibrate` on OLD's size: counting its 50,000-vector pairs sample and drawing the pairs
    to verify (the originals it copies need images, which generated vectors have not:
    benchmarks/threshold.py measures calibrate on real pictures);
  - `dupes --verify`'s cost (--verify-cost, the first dimension): the witness pairs `dupes --keep first`
    needs at 0.75, times the verifier's cost per pair measured in the same run on the bundled photos.
A measurement, never a pass/fail test. Results: benchmarks/results/search-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from imgvec.base import defaults

CACHE = os.path.join(tempfile.gettempdir(), "imgvec-search")
PART_ROWS = 512
THRESHOLD = 0.9
VERIFY_THRESHOLD = 0.75
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "images")


def make_output(count: int, dim: int, seed: int = 0, share: float = 0.02) -> str:
    """An imgvec output of `count` clustered vectors, `share` of them planted near-duplicates of another (made
    once, then reused)."""
    folder = os.path.join(CACHE, f"vectors-{count}-{dim}-{seed}" + (f"-{share}" if share != 0.02 else ""))
    if not os.path.exists(os.path.join(folder, ".complete")):
        _write_output(folder, dim, ((start, rows) for start, rows, _ in generated_parts(count, dim, seed, share)))
    return folder


def make_new(old_count: int, count: int, dim: int, share: float = 0.3) -> tuple[str, np.ndarray, np.ndarray]:
    """NEW for `dupes NEW --against OLD`, OLD being make_output(old_count, dim, share=0.3): `count` vectors (paths
    new/...), `share` of them near-copies of OLD rows chosen at random, the rest new ones drawn alike. (folder,
    [n, 2] planted (NEW row, OLD row), their cosines); made once, then reused."""
    folder = os.path.join(CACHE, f"new-{count}-{dim}-against-{old_count}")
    planted_file = os.path.join(folder, "_planted.npz")
    if os.path.exists(os.path.join(folder, ".complete")):
        stored = np.load(planted_file)
        return folder, stored["pairs"], stored["cosines"]
    rng = np.random.default_rng(1)
    rows = next(generated_parts(count, dim, seed=1, share=0.0, part_rows=count))[1]  # new vectors, drawn alike
    copies = np.sort(rng.choice(count, int(share * count), replace=False))
    originals = np.sort(rng.choice(old_count, len(copies), replace=False))
    found = []
    for start, old_rows, _ in generated_parts(old_count, dim, 0, 0.3):  # OLD's rows, generated again
        mine = originals[(originals >= start) & (originals < start + len(old_rows))]
        found.append(old_rows[mine - start])
    noise = rng.uniform(0.05, 0.4, (len(copies), 1)).astype(np.float32)
    rows[copies] = np.concatenate(found) + noise * rng.standard_normal((len(copies), dim), np.float32)
    unit = rows[copies] / np.linalg.norm(rows[copies], axis=1, keepdims=True)
    originals_unit = np.concatenate(found) / np.linalg.norm(np.concatenate(found), axis=1, keepdims=True)
    pairs, cosines = np.stack([copies, originals], axis=1), np.einsum("ij,ij->i", unit, originals_unit)
    _write_output(folder, dim, ((start, rows[start : start + PART_ROWS]) for start in range(0, count, PART_ROWS)),
                  prefix="new", done=lambda: np.savez(planted_file, pairs=pairs, cosines=cosines))
    return folder, pairs, cosines


def _write_output(folder: str, dim: int, parts, prefix: str = "img", done=lambda: None) -> None:
    """An imgvec output of (first row, vectors) parts, written by imgvec's own writer, marked complete."""
    import pyarrow as pa

    from imgvec.dataset.output import FORMAT, FeatureDataset
    from imgvec.dataset.writing import held_for_writing

    dataset = FeatureDataset(folder)
    identity = {"model": "generated", "weights": "none", "weights_sha256": None, "dim": dim, "format": FORMAT}
    with held_for_writing(dataset, identity, resume=False, overwrite=True):
        for start, rows in parts:
            n = len(rows)
            features = pa.ListArray.from_arrays(pa.array(np.arange(0, rows.size + 1, dim, dtype=np.int32)),
                                                pa.array(rows.ravel()))
            dataset.write_part(pa.table({"path": [f"{prefix}/{i:08d}.jpg" for i in range(start, start + n)],
                                         "features": features, "error": pa.nulls(n, pa.string())}),
                               f"part-0000-{start // PART_ROWS:06d}.parquet")
        dataset.update_metadata(dataset.counts())
    done()
    open(os.path.join(folder, ".complete"), "w").close()


def generated_parts(count: int, dim: int, seed: int, share: float, part_rows: int = PART_ROWS):
    """make_output's parts, generated again the same way: (first row, vectors, [n, 2] planted pairs (copy, original)
    as row numbers of the output)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, count // 50), dim)).astype(np.float32)
    previous = None
    for start in range(0, count, part_rows):
        n = min(part_rows, count - start)
        rows = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim), np.float32)
        planted = np.flatnonzero(rng.random(n) < share)
        source = rows if previous is None else np.concatenate([previous, rows])
        chosen = rng.integers(0, len(source), len(planted))  # a row of this part or the one before
        originals = source[chosen]
        noise = rng.uniform(0.05, 0.4, (len(planted), 1)).astype(np.float32)
        rows[planted] = originals + noise * rng.standard_normal((len(planted), dim), np.float32)
        first = start - (0 if previous is None else len(previous))  # the row number of source's first row
        yield start, rows, np.stack([start + planted, first + chosen], axis=1)
        previous = rows


def planted_pairs(count: int, dim: int, seed: int = 0, share: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """make_output's planted near-duplicates: [n, 2] (copy, original) row numbers, and each pair's cosine as stored
    (an original that was itself replaced by a later copy is no longer what the copy was made from)."""
    pairs, cosines, previous = [], [], None
    for start, rows, planted in generated_parts(count, dim, seed, share):
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        both = unit if previous is None else np.concatenate([previous, unit])
        first = start - (0 if previous is None else len(previous))
        cosines.append(np.einsum("ij,ij->i", both[planted[:, 0] - first], both[planted[:, 1] - first]))
        pairs.append(planted)
        previous = unit
    return np.concatenate(pairs), np.concatenate(cosines)


def imgvec(*args) -> tuple[float, str]:
    """Runs the command; (wall seconds, stdout)."""
    started = time.monotonic()
    done = subprocess.run(["imgvec", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"imgvec {' '.join(map(str, args))} failed: {done.stderr[-2000:]}")
    return time.monotonic() - started, done.stdout


def queries(output: str, count: int = 1000) -> dict:
    """Latency of single queries through the stored index, and their recall@10 against exact search."""
    from imgvec.answers.index import NeighbourIndex
    from imgvec.dataset.output import FeatureDataset
    from imgvec.dataset.rows import part_vectors
    from imgvec.kernels.similarity import Best, normalise

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
                     "segments": len(description["segments"]), "nprobe": description.get("nprobe"),
                     "recall_at_10_at_build": description["recall_at_10"]}}
    print(f"{dim}-d: {text.strip()} (command {seconds:.1f} s)", flush=True)
    run["queries"] = queries(output)
    print(f"{dim}-d: queries {run['queries']}", flush=True)
    return run


def new_output(old: str, count: int, dim: int, share: float = 0.05, seed: int = 2) -> tuple[str, np.ndarray]:
    """NEW: `count` vectors of OLD's kind, `share` of them near copies of OLD rows; and those rows' ids in OLD."""
    import pyarrow as pa

    from imgvec.dataset.output import FORMAT, FeatureDataset
    from imgvec.dataset.searchable import open_searchable
    from imgvec.dataset.writing import held_for_writing

    folder = os.path.join(CACHE, f"new-{count}-{dim}-{seed}")
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    features = open_searchable(old)
    rows = []
    for number in rng.choice(len(features.parts), 20, replace=False):
        rows.append(features.vectors(int(number))[1])
    pool = np.concatenate(rows)
    vectors = pool[rng.integers(0, len(pool), count)] + 0.7 * rng.standard_normal((count, dim), np.float32)
    copies = np.flatnonzero(rng.random(count) < share)
    originals = rng.integers(0, len(pool), len(copies))
    noise = rng.uniform(0.05, 0.4, (len(copies), 1)).astype(np.float32)
    vectors[copies] = pool[originals] + noise * rng.standard_normal((len(copies), dim), np.float32)
    dataset = FeatureDataset(folder)
    identity = {"model": "generated", "weights": "none", "weights_sha256": None, "dim": dim, "format": FORMAT}
    with held_for_writing(dataset, identity, resume=False, overwrite=False):
        for start in range(0, count, PART_ROWS):
            part = vectors[start : start + PART_ROWS]
            dataset.write_part(pa.table({"path": [f"new/{i:08d}.jpg" for i in range(start, start + len(part))],
                                         "features": pa.array(list(part), pa.list_(pa.float32())),
                                         "error": pa.nulls(len(part), pa.string())}),
                               f"part-0000-{start // PART_ROWS:06d}.parquet")
        dataset.update_metadata(dataset.counts())
    return folder, vectors


def exact_against(old: str, new_vectors: np.ndarray, threshold: float) -> set:
    """Every (new row, old path) pair at or above the threshold, part by part."""
    from imgvec.dataset.searchable import open_searchable
    from imgvec.kernels.similarity import normalise

    features = open_searchable(old)
    new_vectors = normalise(new_vectors)
    found = set()
    for number in range(len(features.parts)):
        ids, part = features.vectors(number)
        rows, cols = np.nonzero(new_vectors @ normalise(part).T >= threshold)
        found |= {(int(r), int(ids[c])) for r, c in zip(rows, cols, strict=True)}
    paths = dict(zip(sorted({i for _, i in found}), features.rows(sorted({i for _, i in found})).column(
        "path").to_pylist(), strict=True))
    return {(f"new/{r:08d}.jpg", paths[i]) for r, i in found}


def follow(old: str, dim: int, build_seconds: float, spark: list[str], count: int = 10_000) -> dict:
    """New against old with OLD's index, and an index update of OLD + NEW against the full build."""
    from itertools import product

    new, vectors = new_output(old, count, dim)
    seconds, text = imgvec("dupes", new, "--against", old, "--threshold", THRESHOLD, "--keep", "first", "--json")
    found = json.loads(text)
    pairs_found = {(a["path"], b["path"]) for g in found["groups"] for a, b in product(g["members"], repeat=2)
                   if a["path"].startswith("new/") and not b["path"].startswith("new/")}
    started = time.monotonic()
    truth = exact_against(old, vectors, THRESHOLD)
    result = {"against": {"new": count, "seconds": round(seconds, 1), "search": found["search"],
                          "groups": len(found["groups"]), "delete": len(found["delete"]),
                          "old_files_listed": sum(not p.startswith("new/") for p in found["delete"]),
                          "exact_pairs": len(truth), "exact_seconds": round(time.monotonic() - started, 1),
                          "pair_recall": round(len(truth & pairs_found) / max(1, len(truth)), 4)}}
    print(f"{dim}-d: against {result['against']}", flush=True)
    grown = os.path.join(CACHE, f"grown-{dim}")
    shutil.rmtree(grown, ignore_errors=True)
    shutil.copytree(old, grown, copy_function=os.link)  # hard links: the update never rewrites a file it keeps
    from imgvec.dataset.output import FeatureDataset

    dataset = FeatureDataset(grown)
    for name in os.listdir(new):
        if name.startswith("part-"):
            os.link(os.path.join(new, name), os.path.join(grown, name.replace("part-0000-", "part-0001-")))
    dataset.update_metadata(dataset.counts())
    seconds, text = imgvec("index", grown, *spark)
    description = json.load(open(os.path.join(grown, "_imgvec_index", "index.json")))
    result["index_update"] = {"added": description["added"], "seconds": round(seconds, 1),
                              "full_build_seconds": build_seconds,
                              "ratio_to_build": round(seconds / build_seconds, 3),
                              "recall_at_10": description["recall_at_10"], "nprobe": description.get("nprobe"),
                              "advice": description["advice"]}
    print(f"{dim}-d: index update {result['index_update']}", flush=True)
    shutil.rmtree(grown)
    return result


def calibrate_pairs(old: str) -> dict:
    """What calibrate's pairs cost at OLD's size: its pairs sample read, counted and drawn for verification."""
    from imgvec.answers.calibrate import PAIRS_SAMPLE, sample_pairs
    from imgvec.dataset.searchable import open_searchable

    started = time.monotonic()
    features = open_searchable(old)
    ids, vectors = features.sample(PAIRS_SAMPLE)
    hashes = features.rows(ids, ["sha256"]).column("sha256").to_pylist()
    counts, drawn = sample_pairs(vectors, hashes)
    pairs = len(ids) * (len(ids) - 1) // 2
    scale = features.count * (features.count - 1) / 2 / pairs
    return {"pairs_sampled": pairs, "seconds": round(time.monotonic() - started, 1),
            "one_sampled_pair_stands_for": round(scale), "pairs_at_0.9_in_sample": int(counts[40]),
            "pairs_drawn_to_verify": len(drawn["a"])}


def verify_ms_per_pair() -> float:
    """Milliseconds of one core per pair the verifier checks, each image decoded for it: the bundled photos
    against crops of themselves."""
    import io

    from PIL import Image

    from imgvec.answers.verify import PairVerifier
    from imgvec.inputs.edits import make_copy

    folder = tempfile.mkdtemp(prefix="imgvec-verify-cost-")
    pairs = []
    for path in sorted(os.listdir(EXAMPLES)):
        image = Image.open(os.path.join(EXAMPLES, path)).convert("RGB")
        copy = os.path.join(folder, f"copy-{path}.jpg")
        Image.open(io.BytesIO(make_copy(image, "crop", 0))).save(copy)
        pairs.append((os.path.join(EXAMPLES, path), copy))
    started = time.perf_counter()
    verifier = PairVerifier()
    for a, b in pairs:
        verifier(a, b)
    shutil.rmtree(folder)
    return (time.perf_counter() - started) / len(pairs) * 1000


def verify_cost(output: str, cores: int, spark: list[str]) -> dict:
    """What `dupes --verify` would add at OUTPUT's size: the witness pairs of `dupes --keep first` at
    VERIFY_THRESHOLD (one round; generated vectors have no pixels), at the verifier's measured cost per pair."""
    seconds, text = imgvec("dupes", output, "--threshold", VERIFY_THRESHOLD, "--keep", "first", "--json", *spark)
    pairs = len(json.loads(text)["delete"])
    ms = verify_ms_per_pair()
    return {"threshold": VERIFY_THRESHOLD, "dupes_seconds": round(seconds, 1), "witness_pairs": pairs,
            "ms_per_pair_one_core": round(ms, 1), "verify_seconds_on_cores": round(pairs * ms / 1000 / cores, 1),
            "verify_core_hours": round(pairs * ms / 1000 / 3600, 2)}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def grouped(found: dict) -> set:
    """The files in near-duplicate groups: those that have a near-duplicate (whichever kept file each one's group
    forms around)."""
    return {m["path"] for g in found["groups"] if g["kind"] == "near" for m in g["members"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--sample", type=int, default=100_000, help="vectors of the dupes quality check")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--dupes-dims", type=int, nargs="*", default=[512], help="dimensions to run dupes on")
    parser.add_argument("--no-index", action="store_true", help="dupes only (the index and queries are skipped)")
    parser.add_argument("--verify-cost", action="store_true", help="the witness pairs of dupes at "
                        f"{VERIFY_THRESHOLD} on the first dimension, and what verifying them costs")
    parser.add_argument("--follow", action="store_true", help="new against old, the index update and calibrate's "
                        "pairs, on the first dimension (needs the index: not with --no-index)")
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
            if args.follow and dim == args.dims[0]:
                run.update(follow(output, dim, run["index"]["seconds"], spark))
                run["calibrate_pairs"] = calibrate_pairs(output)
                print(f"{dim}-d: calibrate's pairs {run['calibrate_pairs']}", flush=True)
        if args.verify_cost and dim == args.dims[0]:
            run["verify_cost"] = verify_cost(output, args.cores, spark)
            print(f"{dim}-d: dupes --verify cost {run['verify_cost']}", flush=True)
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
            truth, found = grouped(json.loads(exact)), grouped(json.loads(clustered))
            run["dupes_sample"] = {
                "vectors": args.sample, "exact_seconds": round(exact_seconds, 1),
                "clustered_seconds": round(clustered_seconds, 1), "exact_grouped_files": len(truth),
                "grouped_file_recall": round(len(truth & found) / max(1, len(truth)), 4),
                "grouped_file_precision": round(len(truth & found) / max(1, len(found)), 4)}
            print(f"{dim}-d: dupes on a sample {run['dupes_sample']}", flush=True)
        results["runs"].append(run)
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    path = os.path.join(folder, f"search-{results['date']}-{'-'.join(map(str, args.dims))}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(main())
