"""Is a pair of images the same picture? Evidence from their pixels, not from a model's cosine.

A cosine is one network's opinion; a deletion list should rest on more. Copy detection confirms a
candidate pair by spatial verification: local features (SIFT) of both images, matched with Lowe's
ratio test, must agree on one geometric transform (RANSAC): a similarity (crops, scaling, small
rotations, borders, insets), else a general affine (a squashed aspect ratio), each also against the
second image mirrored. Different photos of similar things share few such points, and those few do
not agree on one transform.

- Images are decoded at a bounded size (their longer side scaled to SIDE, small thumbnails upscaled
  to it too, so that a 64-pixel copy still has features).
- A verdict needs MIN_INLIERS points that agree, spread over MIN_SPREAD of one image's area and MIN_SPAN
  of its width and height (a shared logo or caption banner alone does not make two photos the same).
- `PairVerifier` decodes each image once (and mirrors it only when needed), so a task that checks many
  pairs around one file pays for that file once. `verify_pairs` runs a plan of pairs on Spark's
  workers, each image read from its recorded path (local or a store), or in this process when few.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from imgvec.base.settings import RunOptions
from imgvec.spark.tasks import RowTask

SIDE = 512  # pixels of the longer side images are matched at
FEATURES = 1_000  # SIFT keypoints kept per image: the strongest
CONTRAST = 0.01  # SIFT keeps fainter features than its default 0.04: smooth pictures (skies, gradients) have few
RATIO = 0.75  # Lowe's ratio test: the best match must be clearly better than the second
MIN_DETAIL = 100  # keypoints both images need for a verdict to say something: smooth pictures (gradients, skies)
# have too few, and their copies fail as often as different pictures do (measured: benchmarks/verify.py)
MIN_INLIERS = 15  # points agreeing on one transform that make a verdict (measured: benchmarks/verify.py)
MIN_SPREAD = 0.04  # share of an image's area the agreeing points must span (their bounding box), in the image
# where the shared content is larger: an inset may be small in the copy, but a shared logo is small in both
MIN_SPAN = 0.15  # and of its width and its height each: a caption banner or a line of text is a thin strip
MAX_SCALE = 8.0  # a transform that scales by more (or less than 1/MAX_SCALE) is no copy
IN_PROCESS = 64  # up to this many pairs, no Spark job is worth starting
PAIRS_PER_TASK = 200  # pairs of one Spark task, grouped by their first image so it is decoded once
PAIRS = pa.schema([("a", pa.string()), ("b", pa.string())])
PLAN = pa.schema([("id", pa.int64()), ("a", pa.list_(pa.string())), ("b", pa.list_(pa.string()))])
VERDICTS = pa.schema([("a", pa.string()), ("b", pa.string()), ("verified", pa.bool_()), ("matches", pa.int64()),
                      ("transform", pa.string()), ("detail", pa.int64()), ("error", pa.string())])


@dataclass(frozen=True)
class Verdict:
    verified: bool
    matches: int  # points that agree on the best transform found
    transform: str  # "similarity", "affine", "mirror+similarity", "mirror+affine", or "none"
    detail: int = 0  # keypoints of the image that has fewer: below MIN_DETAIL, a failed pair says nothing
    error: str | None = None  # an image that could not be read or decoded: not verified

    @property
    def telling(self) -> bool:
        """Does this verdict say something: verified, or not verified though both images have detail to match."""
        return self.error is None and (self.verified or self.detail >= MIN_DETAIL)

    def row(self, a: str, b: str) -> dict:
        return {"a": a, "b": b, "verified": self.verified, "matches": self.matches, "transform": self.transform,
                "detail": self.detail, "error": self.error}


@dataclass
class _Features:
    grey: np.ndarray  # the image at SIDE, uint8
    points: np.ndarray  # [n, 2] float32 keypoint positions
    descriptors: np.ndarray | None  # [n, 128] float32, None when there are none
    mirrored: _Features | None = None


def _sift():
    import cv2

    return cv2.SIFT_create(nfeatures=FEATURES, contrastThreshold=CONTRAST)


def features_of(image) -> _Features:
    """SIFT keypoints of an RGB PIL image (or a grey uint8 array) at SIDE pixels on its longer side."""
    import cv2

    grey = np.asarray(image.convert("L")) if hasattr(image, "convert") else np.asarray(image, np.uint8)
    scale = SIDE / max(grey.shape)
    if scale != 1:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    keypoints, descriptors = _sift().detectAndCompute(grey, None)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return _Features(grey, points, descriptors if descriptors is not None and len(descriptors) >= 2 else None)


def _mirrored(features: _Features) -> _Features:
    if features.mirrored is None:
        features.mirrored = features_of(np.ascontiguousarray(features.grey[:, ::-1]))
    return features.mirrored


def compare(a: _Features, b: _Features) -> Verdict:
    """The verdict on two images' features: the best transform, b as it is or mirrored."""
    detail = min(len(a.points), len(b.points))
    best = Verdict(False, 0, "none", detail)
    for mirrored in (False, True):
        other = _mirrored(b) if mirrored else b
        for kind, matches in _agreeing(a, other):
            name = f"mirror+{kind}" if mirrored else kind
            if matches >= MIN_INLIERS:
                return Verdict(True, matches, name, detail)
            if matches > best.matches:
                best = Verdict(False, matches, "none", detail)
    return best


def _agreeing(a: _Features, b: _Features):
    """(transform kind, points that agree on it and span both images) for a similarity, then an affine."""
    import cv2

    if a.descriptors is None or b.descriptors is None:
        return
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 3:  # an affine needs three
        return
    source = a.points[[m.queryIdx for m in good]]
    target = b.points[[m.trainIdx for m in good]]
    for kind, estimate in (("similarity", cv2.estimateAffinePartial2D), ("affine", cv2.estimateAffine2D)):
        matrix, inliers = estimate(source, target, method=cv2.RANSAC, ransacReprojThreshold=SIDE * 0.01,
                                   maxIters=2_000, confidence=0.995)
        if matrix is None or inliers is None:
            yield kind, 0
            continue
        inliers = inliers.ravel().astype(bool)
        if not _plausible(matrix) or not (_spread(source[inliers], a.grey.shape)
                                          or _spread(target[inliers], b.grey.shape)):
            yield kind, 0
            continue
        yield kind, int(inliers.sum())


def _plausible(matrix: np.ndarray) -> bool:
    """A transform a copy can have: neither collapsed nor blown up, and not folded over."""
    linear = matrix[:, :2]
    if not np.isfinite(linear).all():
        return False
    determinant = float(np.linalg.det(linear))
    scales = np.linalg.svd(linear, compute_uv=False)
    return determinant > 0 and scales.min() >= 1 / MAX_SCALE and scales.max() <= MAX_SCALE


def _spread(points: np.ndarray, shape: tuple) -> bool:
    """Do the agreeing points span enough of an image: of its area, and of its width and its height each?"""
    if len(points) < 3:
        return False
    span = (points.max(axis=0) - points.min(axis=0)) / np.array([shape[1], shape[0]], np.float32)
    return bool(span.min() >= MIN_SPAN and span[0] * span[1] >= MIN_SPREAD)


def verify(a, b) -> Verdict:
    """Is RGB image `b` a copy of RGB image `a` (or the other way round)? Both PIL images."""
    return compare(features_of(a), features_of(b))


class PairVerifier:
    """Verdicts on pairs of places (inputs.readback.where), each image read and decoded once."""

    def __init__(self, images: dict | None = None, read: dict | None = None):
        self.cache: dict[str, _Features | str] = {}
        self.images = images or {}  # place -> RGB PIL image already in memory (calibrate's copies)
        self.read = read or {}  # place -> bytes (or why not) already read: a task's tar members

    def features(self, path: str) -> _Features | str:
        if path not in self.cache:
            self.cache[path] = self._load(path)
        return self.cache[path]

    def _load(self, path: str) -> _Features | str:
        from imgvec.inputs.decode import decode_image
        from imgvec.inputs.readback import read_back_one

        image = self.images.get(path)
        if image is None:
            data = self.read.pop(path, None) or read_back_one(path)
            image = data if isinstance(data, str) else decode_image(data, draft=SIDE)
        if isinstance(image, str):
            return f"{path}: {image}"
        return features_of(image)

    def __call__(self, a: str, b: str) -> Verdict:
        first, second = self.features(a), self.features(b)
        for problem in (first, second):
            if isinstance(problem, str):
                return Verdict(False, 0, "none", error=problem)
        return compare(first, second)


@dataclass(frozen=True)
class VerifyTask(RowTask):
    """On a worker: the verdicts of a task's pairs."""

    RESULT: ClassVar[pa.Schema] = VERDICTS

    def run(self, rows):
        for row in rows:
            found = verdicts_here(list(zip(row["a"], row["b"], strict=True)))
            yield pa.RecordBatch.from_pylist([verdict.row(a, b) for (a, b), verdict in found.items()],
                                             schema=VERDICTS)


def verdicts_here(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Verdict]:
    """{(a, b): Verdict} for pairs of places, in this process (a task's): each image read and decoded once, each
    tar streamed once."""
    from imgvec.inputs.readback import read_back
    from imgvec.inputs.tars import split_member_path

    in_tars = [p for p in {p for pair in pairs for p in pair} if split_member_path(p)]
    verifier = PairVerifier(read=read_back(in_tars))
    return {(a, b): verifier(a, b) for a, b in pairs}


def verify_pairs(pairs: list[tuple[str, str]], run: RunOptions = RunOptions(),
                 report=None) -> dict[tuple[str, str], Verdict]:
    """{(a, b): Verdict} for each pair of paths: on Spark's workers when there are many (or `run.spark` is given),
    else in this process."""
    pairs = sorted(set(pairs))
    if not pairs:
        return {}
    tasks = [pairs[i : i + PAIRS_PER_TASK] for i in range(0, len(pairs), PAIRS_PER_TASK)]  # sorted: a together
    plan = pa.table({"id": list(range(len(tasks))), "a": [[a for a, _ in t] for t in tasks],
                     "b": [[b for _, b in t] for t in tasks]}, schema=PLAN)
    if run.spark is None and len(pairs) <= IN_PROCESS:
        rows = VerifyTask().here(plan)
    else:
        from imgvec.spark.session import session
        from imgvec.spark.tasks import run_tasks

        with session(run) as spark:
            rows = run_tasks(spark, plan, VerifyTask(), report)
    return {(r.pop("a"), r.pop("b")): Verdict(**r) for r in rows.to_pylist()}
