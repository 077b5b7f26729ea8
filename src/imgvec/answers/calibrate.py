"""`imgvec calibrate`: what each `dupes` threshold means for this output's model on this output's images.

Recall comes from known copies; precision from the pairs the collection really has, checked by their pixels.

  driver   a seeded sample of the output's stored vectors (whole parts at random; all of them up to
           PAIRS_SAMPLE), of which the first --sample are the originals to copy. Every pair of the
           sample at cosine >= 0.50 is counted per threshold, and up to CHECKS_PER_BAND of them are drawn
           in each band of 0.05 (a seeded uniform draw, streamed: memory stays bounded)
  tasks    read each original from its recorded path (local or a store), make its known copies
           (inputs.edits), embed them with the output's model and return each copy's cosine to its
           original; the copies of the first VERIFIED_ORIGINALS are also checked by the pixel verifier
           (answers.verify): its own recall. Then the drawn pairs are verified on the workers
  driver   per threshold: recall, per edit and overall; the collection's true pairs (verified, scaled
           from each band's draw to its count, divided by the verifier's recall on the known copies) and
           false pairs (the rest), scaled to the output's size (pairs grow with N^2); precision and a
           one-sided 95% lower bound (Wilson, at the draw's effective size). Recommended: the
           threshold with the highest recall whose precision bound keeps --min-precision, or that
           expects no false pair at the output's size (a collection without copies to speak of).
           No share of copies is assumed: a collection full of copies has verified pairs, not
           false ones, so it is not pushed to a higher threshold.

`dupes` groups files around kept files (kernels.witness), so a few false pairs at the threshold do not chain
whole families together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.base import defaults
from imgvec.base.settings import RunOptions
from imgvec.dataset.lock import now
from imgvec.dataset.searchable import open_searchable
from imgvec.inputs.edits import EDITS, make_copy
from imgvec.inputs.readback import read_back, where
from imgvec.spark.tasks import RowTask

THRESHOLDS = np.round(np.arange(0.50, 0.995, 0.01), 2)
BAND = 5  # thresholds per band of the draw of pairs to verify: bands of 0.05
PAIRS_SAMPLE = 50_000  # stored vectors whose pairs stand for the output's: cheap (no edits, no model), and
# enough that one false pair among them stands for <= 400 at 10^6 images (precision 0.99 can be vouched for)
CHECKS_PER_BAND = 200  # pairs of the collection verified per band of 0.05: ~10 ms each once decoded
VERIFIED_ORIGINALS = 50  # originals whose known copies are verified too: the verifier's own recall
Z = 1.645  # one-sided 95%
NO_FALSE_PAIR = 0.5  # expected false pairs that round to none: in a collection with few pairs, one false pair is a
# group of two different pictures, and its precision cannot vouch for anything
TILE = 512
ORIGINALS_PER_TASK = 50
PLAN = pa.schema([("id", pa.int64()), ("originals", pa.list_(pa.int64())), ("paths", pa.list_(pa.string())),
                  ("hosts", pa.list_(pa.string()))])
COSINES = pa.schema([("original", pa.int64()), ("cosines", pa.list_(pa.float32())),
                     ("verified", pa.list_(pa.bool_())), ("error", pa.string())])


@dataclass(frozen=True)
class CopyTask(RowTask):
    """On a worker: each original's known copies, embedded with the output's model, and their cosines to it;
    for originals numbered below `verified_originals`, also whether the pixel verifier confirms each copy."""

    RESULT: ClassVar[pa.Schema] = COSINES
    config: object  # featurize.FeatureConfig
    weights: object  # weights.WeightsRef, shipped
    verified_originals: int = VERIFIED_ORIGINALS

    def run(self, rows):
        from imgvec.features.featurize import get_featurizer
        from imgvec.models.hardware import use_task_cpus

        use_task_cpus()
        featurizer = get_featurizer(self.config, self.weights)
        for row in rows:
            read = read_back(row["paths"] + row["hosts"])  # a task's 50 originals and hosts: each tar streamed once
            results = [self.one(featurizer, original, path, read[path], read[host])
                       for original, path, host in zip(row["originals"], row["paths"], row["hosts"], strict=True)]
            yield pa.RecordBatch.from_pylist(results, schema=COSINES)

    def one(self, featurizer, original: int, path: str, data: bytes | str, host_data: bytes | str) -> dict:
        """`data`, `host_data`: the bytes of the original and of the image its overlay edit is set in, or why they
        could not be read."""
        from imgvec.inputs.decode import decode_image

        failed = {"original": original, "cosines": None, "verified": None}
        image = data if isinstance(data, str) else decode_image(data)
        if isinstance(image, str):
            return {**failed, "error": f"{path}: {image}"}
        host_image = None if isinstance(host_data, str) else decode_image(host_data)
        host_image = None if isinstance(host_image, str) else host_image
        copies = [make_copy(image, kind, original, host_image) for kind in EDITS]
        vectors, errors = featurizer.vectors([data, *copies])
        if errors[0]:
            return {**failed, "error": f"{path}: {errors[0]}"}
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return {"original": original, "cosines": (vectors[1:] @ vectors[0]).tolist(),
                "verified": _verify_copies(image, copies) if original < self.verified_originals else None,
                "error": None}


def _verify_copies(image, copies: list[bytes]) -> list[bool | None]:
    """Whether the verifier confirms each copy of `image`; None where its verdict says nothing (too little detail)."""
    from imgvec.answers.verify import SIDE, compare, features_of
    from imgvec.inputs.decode import decode_image

    mine = features_of(image)
    verdicts = []
    for data in copies:
        copy = decode_image(data, draft=SIDE)
        verdict = None if isinstance(copy, str) else compare(mine, features_of(copy))
        verdicts.append(verdict.verified if verdict is not None and verdict.telling else None)
    return verdicts


def calibrate(output: str, *, sample: int = defaults.CALIBRATION_SAMPLE,
              min_precision: float = defaults.CALIBRATION_PRECISION, run: RunOptions = RunOptions()) -> dict:
    """Measure, record in OUTPUT's metadata and return the calibration. ValueError (one line) for what cannot be.
    `min_precision`: the least precision (its lower bound) the recommended threshold keeps at OUTPUT's size."""
    from imgvec.answers.verify import verify_pairs
    from imgvec.base.progress import Progress
    from imgvec.features.dataframe import ship_weights
    from imgvec.features.vectorizer import recorded_vectorizer
    from imgvec.spark.session import session
    from imgvec.spark.tasks import run_tasks

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
    _check_resolution(len(ids), images, distinct_pairs, all_pairs, min_precision, features.location)
    counts, drawn = sample_pairs(vectors, hashes)
    needed = np.unique(np.concatenate([np.arange(n), drawn["a"], drawn["b"]]))
    rows = features.rows(ids[needed], ["path", "input"]).to_pylist()  # read again from `input` (a table's row)
    path_of = dict(zip(needed.tolist(), [where(r["path"], r["input"]) for r in rows], strict=True))
    paths = [path_of[i] for i in range(n)]
    vectorizer = recorded_vectorizer(features.metadata, features.location)
    tasks = max(1, -(-n // ORIGINALS_PER_TASK))
    order = np.arange(n)
    plan = pa.table({"id": list(range(tasks)), "originals": [order[t::tasks].tolist() for t in range(tasks)],
                     "paths": [[paths[i] for i in order[t::tasks]] for t in range(tasks)],
                     "hosts": [[paths[(i + 1) % n] for i in order[t::tasks]] for t in range(tasks)]}, schema=PLAN)
    pairs = [(path_of[a], path_of[b]) for a, b in zip(drawn["a"].tolist(), drawn["b"].tolist(), strict=True)]
    progress = Progress(n + len(pairs), quiet=run.quiet, unit="originals and pairs")
    try:
        with session(run) as spark:
            task = CopyTask(vectorizer.config, ship_weights(spark, vectorizer.runtime_ref))
            found = run_tasks(spark, plan, task, lambda share: progress.update(share * n))
            found = sorted(found.to_pylist(), key=lambda r: r["original"])
            failed = next((r["error"] for r in found if r["error"]), None)
            if failed:
                raise ValueError(f"calibrate needs the originals, and {failed}; restore it or embed again without it")
            verdicts = verify_pairs(pairs, replace(run, spark=spark),
                                    report=lambda share: progress.update(n + share * len(pairs)))
    finally:
        progress.close()
    cosines = np.array([r["cosines"] for r in found], np.float32)  # [originals, edits]
    checked = [[np.nan if v is None else v for v in r["verified"]] for r in found if r["verified"] is not None]
    known = (cosines[: len(checked)], np.array(checked, np.float64).reshape(len(checked), len(EDITS)))
    telling = np.array([verdicts[p].telling for p in pairs], bool)
    verified = np.array([verdicts[p].verified for p in pairs], bool)
    table = precision_table(counts, drawn["cosine"][telling], verified[telling], known,
                            scale=all_pairs / max(1, distinct_pairs), exhaustive=len(ids) >= images)
    for row in table:
        row.update(_recall(row["threshold"], cosines))
    threshold, reached = recommended(table, min_precision)
    chosen = next(r for r in table if r["threshold"] == threshold)
    result = {"output": features.location, "model": features.metadata.get("model"),
              "weights_sha256": features.metadata.get("weights_sha256"), "images": images, "originals": n,
              "pairs_sampled": distinct_pairs, "pairs_checked": len(pairs),
              "pairs_telling": int(telling.sum()), "verifier_originals": len(checked),
              "edits": dict(EDITS), "precision": min_precision, "threshold": threshold, "recall": chosen["recall"],
              "expected_precision": chosen["precision"], "precision_lower_bound": chosen["precision_lower_bound"],
              "expected_false_pairs": chosen["expected_false_pairs"],
              "expected_true_pairs": chosen["expected_true_pairs"], "reached": reached, "created": now(),
              "table": table, "seconds": round(time.monotonic() - started, 1)}
    with features.dataset.locked():
        features.dataset.update_metadata({"calibration": {k: v for k, v in result.items() if k != "output"}})
    return result


def sample_pairs(vectors: np.ndarray, hashes: list, per_band: int = CHECKS_PER_BAND, seed: int = 0):
    """The pairs of different images (rows i < j, not byte-identical) at cosine >= THRESHOLDS[0], tile by tile
    (the n^2 similarities are never held at once): how many fall at or above each threshold, and a seeded uniform
    draw of at most `per_band` of them in each band of BAND thresholds ({a, b, cosine} arrays)."""
    codes = np.unique(np.array([h or f"row{i}" for i, h in enumerate(hashes)]), return_inverse=True)[1]
    edges = np.append(THRESHOLDS, np.inf)
    counts = np.zeros(len(THRESHOLDS), np.int64)
    rng = np.random.default_rng(seed)
    kept = {"a": np.empty(0, np.int64), "b": np.empty(0, np.int64), "cosine": np.empty(0, np.float32),
            "key": np.empty(0)}
    for start in range(0, len(vectors), TILE):
        similarities = vectors[start : start + TILE] @ vectors[start:].T
        later = np.arange(similarities.shape[1])[None, :] > np.arange(len(similarities))[:, None]
        mine = later & (codes[start : start + TILE, None] != codes[None, start:]) & (similarities >= THRESHOLDS[0])
        rows, cols = np.nonzero(mine)
        values = similarities[rows, cols]
        counts += np.histogram(values, edges)[0]
        found = {"a": rows + start, "b": cols + start, "cosine": values.astype(np.float32),
                 "key": rng.random(len(values))}  # a uniform draw: the per_band smallest keys of each band
        both = {k: np.concatenate([kept[k], found[k]]) for k in kept}
        band = _band(both["cosine"])
        order = np.lexsort((both["key"], band))
        rank = np.arange(len(order)) - np.searchsorted(band[order], band[order])  # place within its band
        keep = order[rank < per_band]
        kept = {k: v[keep] for k, v in both.items()}
    del kept["key"]
    return np.cumsum(counts[::-1])[::-1], kept  # counts: at or above each threshold


def _band(cosines: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(THRESHOLDS, cosines, side="right") - 1, 0, len(THRESHOLDS) - 1) // BAND


def precision_table(at_or_above: np.ndarray, cosine: np.ndarray, verified: np.ndarray, known, scale: float,
                    exhaustive: bool) -> list[dict]:
    """Per threshold: the collection's expected true and false pairs at the output's size and the precision with
    its lower bound, from the pairs counted (`at_or_above`, per threshold) and the verified draw (`cosine`,
    `verified`: only verdicts that say something). `known`: (cosines [originals, edits], verified [first
    originals, edits]: 1, 0, or NaN where the verdict says nothing) of the known copies, whose verified share at
    each threshold is the verifier's recall there. `scale`: output pairs per sample pair;
    `exhaustive`: the sample is the whole output."""
    within = -np.diff(np.append(at_or_above, 0))  # pairs per threshold step
    bands = np.arange(len(THRESHOLDS)) // BAND
    drawn_band = _band(cosine)
    known_cosines, known_verified = known[0], np.asarray(known[1], np.float64)
    table = []
    for k, threshold in enumerate(THRESHOLDS):
        share, weights, exact = 0.0, [], True  # weights: (the band's pairs, how many of them say something)
        total = int(at_or_above[k])
        for band in np.unique(bands[k:]):
            pairs = int(within[k:][bands[k:] == band].sum())  # the band's pairs at or above the threshold
            if not pairs:
                continue
            mine = (drawn_band == band) & (cosine >= threshold)
            if not mine.any():  # none drawn above the threshold: the band's draw as a whole
                mine = drawn_band == band
            checked = int(mine.sum())
            if not checked:  # none of its pairs can be told apart by their pixels: counted as false, not as none
                weights.append((pairs, pairs))
                continue
            share += pairs * verified[mine].mean()
            weights.append((pairs, checked))
            exact = exact and checked >= pairs
        seen = sum(p for p, _ in weights)
        verified_share = share / seen if seen else 0.0
        effective = seen**2 / sum(p * p / c for p, c in weights) if weights else 0.0  # Kish's effective size
        telling = ~np.isnan(known_verified)
        at = (known_cosines[: len(known_verified)] >= threshold) & telling
        recall = float(known_verified[at].mean()) if at.any() else (
            float(known_verified[telling].mean()) if telling.any() else 1.0)
        recall = max(recall, 0.5)  # a verifier that misses most copies says little; never divide by ~0
        precision = min(1.0, verified_share / recall) if seen else 1.0
        if not seen:
            lower = 1.0 if total == 0 else 0.0
        elif exhaustive and exact:
            lower = precision  # every pair of the output was checked: no sampling error
        else:
            lower = min(1.0, _wilson_lower(verified_share, effective) / recall)
        table.append({"threshold": float(threshold), "pairs_in_sample": total,
                      "pairs_checked": int(sum(c for _, c in weights)), "verifier_recall": round(recall, 4),
                      "expected_true_pairs": round(precision * total * scale, 3),
                      "expected_false_pairs": round((1 - precision) * total * scale, 3),
                      "precision": round(precision, 4), "precision_lower_bound": round(lower, 4)})
    return table


def _wilson_lower(share: float, n: float) -> float:
    if n <= 0:
        return 0.0
    centre = share + Z * Z / (2 * n)
    spread = Z * np.sqrt(share * (1 - share) / n + Z * Z / (4 * n * n))
    return float(max(0.0, (centre - spread) / (1 + Z * Z / n)))


def recommended(table: list[dict], precision: float) -> tuple[float, bool]:
    """The threshold with the highest recall (the lowest) whose precision lower bound keeps `precision`, or that
    expects no false pair at the output's size (fewer than NO_FALSE_PAIR); the highest threshold (and False)
    when none does."""
    good = [row["threshold"] for row in table
            if row["precision_lower_bound"] >= precision or row["expected_false_pairs"] < NO_FALSE_PAIR]
    return (min(good), True) if good else (table[-1]["threshold"], False)


def _recall(threshold: float, cosines: np.ndarray) -> dict:
    found = cosines >= threshold
    return {"recall": round(float(found.mean()), 4),
            "recall_by_edit": {kind: round(float(found[:, k].mean()), 4) for k, kind in enumerate(EDITS)}}


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
                         f"precision up to {best:.3f}; pass --min-precision {np.floor(best * 1000) / 1000} or "
                         f"--sample {min(needed, images)}")
