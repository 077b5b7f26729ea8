"""`imgvec calibrate`: what each `dupes` threshold means for this output's model on this output's images.

  driver   a seeded sample of the output's stored vectors (whole parts at random), of which the first
           --sample are the originals to copy; the rest only take part in the pairs of different images
  tasks    read each original from its recorded path (local or a store), make its known copies
           (edits.py), embed original and copies with the output's model and weights, and return
           the cosine of each copy to its original: cosines only, never vectors
  driver   per threshold: the share of copies found, per edit and overall; the pairs of different
           sampled originals at or above it, scaled to the output's size (they grow with N^2); the
           expected precision; the threshold with the highest recall that keeps --precision

Expected precision counts the copies found as if half the output's images were copies of the other
half (N/2 true pairs, found at the measured recall) against the false pairs expected among all N.
A collection with fewer copies has a lower precision at the same threshold: ask for a higher one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from imgvec import defaults
from imgvec.edits import EDITS, make_copy
from imgvec.lock import now
from imgvec.searchable import open_searchable

THRESHOLDS = np.round(np.arange(0.50, 0.995, 0.01), 2)
PAIRS_SAMPLE = 50_000  # stored vectors whose pairs estimate the false pairs: cheap (no edits, no model), and
# enough that one false pair among them stands for <= 400 at 10^6 images (precision 0.99 can be vouched for)
BLOCK = 512
ORIGINALS_PER_TASK = 50
PLAN = pa.schema([("id", pa.int64()), ("originals", pa.list_(pa.int64())), ("paths", pa.list_(pa.string())),
                  ("hosts", pa.list_(pa.string()))])
COSINES = pa.schema([("original", pa.int64()), ("cosines", pa.list_(pa.float32())), ("error", pa.string())])


@dataclass(frozen=True)
class CopyTask:
    """On a worker: each original's known copies, embedded with the output's model, and their cosines to it."""

    config: object  # featurize.FeatureConfig
    weights: object  # weights.WeightsRef, shipped

    def __call__(self, batches):
        from imgvec.featurize import get_featurizer, use_task_cpus

        use_task_cpus()
        featurizer = get_featurizer(self.config, self.weights)
        for batch in batches:
            for row in batch.to_pylist():
                results = [self.one(featurizer, *item) for item in zip(row["originals"], row["paths"], row["hosts"],
                                                                       strict=True)]
                yield pa.RecordBatch.from_pylist(results, schema=COSINES)

    def one(self, featurizer, original: int, path: str, host: str) -> dict:
        from imgvec.decode import decode_image
        from imgvec.storage import read_file

        try:
            data = read_file(path)
        except (OSError, ValueError) as exc:
            return {"original": original, "cosines": None, "error": f"{path}: {' '.join(str(exc).split())[:120]}"}
        image = decode_image(data)
        if isinstance(image, str):
            return {"original": original, "cosines": None, "error": f"{path}: {image}"}
        try:
            host_image = decode_image(read_file(host))
        except (OSError, ValueError):
            host_image = None
        host_image = None if isinstance(host_image, str) else host_image
        copies = [make_copy(image, kind, original, host_image) for kind in EDITS]
        vectors, errors = featurizer.embed([data, *copies])
        if errors[0]:
            return {"original": original, "cosines": None, "error": f"{path}: {errors[0]}"}
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return {"original": original, "cosines": (vectors[1:] @ vectors[0]).tolist(), "error": None}


def calibrate(output: str, *, sample: int = defaults.CALIBRATION_SAMPLE,
              precision: float = defaults.CALIBRATION_PRECISION, master: str = "local[*]", conf: dict | None = None,
              spark=None, quiet: bool = False) -> dict:
    """Measure, record in OUTPUT's metadata and return the calibration. ValueError (one line) for what cannot be."""
    from imgvec.jobs import collect, ddl, one_row_per_partition, session
    from imgvec.progress import Progress
    from imgvec.spark import ship_weights
    from imgvec.vectorizer import recorded_vectorizer

    started = time.monotonic()
    features = open_searchable(output)
    images = features.count
    ids, vectors = features.sample(max(sample, PAIRS_SAMPLE))
    hashes = features.rows(ids, ["sha256"]).column("sha256").to_pylist()
    n = min(sample, len(ids))
    if n < 2:
        raise ValueError(f"{features.location} has {n} image with features; calibrate needs at least 2")
    distinct_pairs = len(ids) * (len(ids) - 1) // 2
    all_pairs = images * (images - 1) // 2
    _check_resolution(len(ids), images, distinct_pairs, all_pairs, precision, features.location)
    paths = features.rows(ids[:n]).column("path").to_pylist()
    vectorizer = recorded_vectorizer(features.metadata, features.location)
    tasks = max(1, -(-n // ORIGINALS_PER_TASK))
    order = np.arange(n)
    plan = pa.table({"id": list(range(tasks)), "originals": [order[t::tasks].tolist() for t in range(tasks)],
                     "paths": [[paths[i] for i in order[t::tasks]] for t in range(tasks)],
                     "hosts": [[paths[(i + 1) % n] for i in order[t::tasks]] for t in range(tasks)]}, schema=PLAN)
    progress = Progress(n, quiet=quiet, unit="originals")
    try:
        with session(master, conf, spark) as spark:
            task = CopyTask(vectorizer.config, ship_weights(spark, vectorizer.runtime_ref))
            found = collect(spark, one_row_per_partition(spark, plan).mapInArrow(task, ddl(COSINES)),
                            lambda share: progress.update(share * n))
    finally:
        progress.close()
    found = sorted(found.to_pylist(), key=lambda r: r["original"])
    failed = next((r["error"] for r in found if r["error"]), None)
    if failed:
        raise ValueError(f"calibrate needs the originals, and {failed}; restore it or embed again without it")
    cosines = np.array([r["cosines"] for r in found], np.float32)  # [originals, edits]
    false = false_pairs(vectors, hashes)
    table = [_row(t, cosines, count, distinct_pairs, all_pairs, images) for t, count in zip(THRESHOLDS, false,
                                                                                           strict=True)]
    good = [r for r in table if r["precision"] >= precision]
    chosen = max(good, key=lambda r: (r["recall"], -r["threshold"])) if good else table[-1]
    result = {"output": features.location, "model": features.metadata.get("model"),
              "weights_sha256": features.metadata.get("weights_sha256"), "images": images, "originals": n,
              "pairs_sampled": distinct_pairs, "edits": dict(EDITS), "precision": precision,
              "threshold": chosen["threshold"], "recall": chosen["recall"],
              "expected_precision": chosen["precision"], "expected_false_pairs": chosen["expected_false_pairs"],
              "reached": bool(good), "created": now(), "table": table,
              "seconds": round(time.monotonic() - started, 1)}
    with features.dataset.locked():
        features.dataset.update_metadata({"calibration": {k: v for k, v in result.items() if k != "output"}})
    return result


def false_pairs(vectors: np.ndarray, hashes: list) -> np.ndarray:
    """For each of THRESHOLDS, the pairs of different images (rows i < j, not byte-identical) at or above it,
    block by block: the n^2 similarities are never held at once."""
    codes = np.unique(np.array([h or f"row{i}" for i, h in enumerate(hashes)]), return_inverse=True)[1]
    edges = np.append(THRESHOLDS, np.inf)
    counts = np.zeros(len(THRESHOLDS), np.int64)
    for start in range(0, len(vectors), BLOCK):
        similarities = vectors[start : start + BLOCK] @ vectors[start:].T
        later = np.arange(similarities.shape[1])[None, :] > np.arange(len(similarities))[:, None]
        mine = later & (codes[start : start + BLOCK, None] != codes[None, start:])
        counts += np.histogram(similarities[mine & (similarities >= THRESHOLDS[0])], edges)[0]
    return np.cumsum(counts[::-1])[::-1]  # at or above each threshold


def _row(threshold: float, cosines: np.ndarray, false: int, distinct_pairs: int, all_pairs: int,
         images: int) -> dict:
    found = cosines >= threshold
    expected_false = false / max(1, distinct_pairs) * all_pairs
    recall = float(found.mean())
    true = recall * images / 2  # as if half the images were copies of the other half
    return {"threshold": float(threshold), "recall": round(recall, 4),
            "recall_by_edit": {kind: round(float(found[:, k].mean()), 4) for k, kind in enumerate(EDITS)},
            "false_pairs_in_sample": int(false), "expected_false_pairs": round(expected_false, 3),
            "precision": round(true / (true + expected_false), 4) if true + expected_false else 1.0}


def _check_resolution(n: int, images: int, distinct_pairs: int, all_pairs: int, precision: float, where: str):
    """A sample whose one false pair would already break `precision` at the output's size cannot vouch for it."""
    if n >= images:
        return  # every image is in the sample: its false pairs are the output's, not an estimate
    one_pair = all_pairs / distinct_pairs  # false pairs at the output's size that one in the sample stands for
    best = (images / 2) / (images / 2 + one_pair)  # even if every copy were found
    if best < precision:
        needed = int(np.ceil(np.sqrt(2 * all_pairs * precision / ((1 - precision) * images / 2)))) + 1
        raise ValueError(f"a sample of {n} images ({distinct_pairs} pairs) cannot vouch for precision {precision} "
                         f"at {images} images: one false pair in it stands for {one_pair:.3g}, so it can estimate "
                         f"precision up to {best:.3f}; pass --precision {np.floor(best * 1000) / 1000} or "
                         f"--sample {min(needed, images)}")
