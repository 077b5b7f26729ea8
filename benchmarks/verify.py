"""How far the pixel verifier (imgvec.answers.verify) can be trusted, on real pictures.

Per edit, the share of copies it verifies against their original: imgvec calibrate's eight edits and eight
it does not make (benchmarks/pictures.py), of all copies and of those whose images both have the detail a
verdict needs (verify.MIN_DETAIL keypoints); per 1,000 pairs of different pictures, how many it verifies,
among all pairs and among those a model puts at cosine >= 0.5; and milliseconds per pair on one core
(decode and features of both images, then the match; and the match alone, as when an image's features are
reused). A measurement, never pass/fail: `python benchmarks/verify.py [--model efficientnet_lite0]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time

import numpy as np
from pictures import OTHER_EDITS, other_copy, pictures
from PIL import Image
from throughput import cpu_kind

from imgvec.answers import verify
from imgvec.inputs.decode import decode_image
from imgvec.inputs.edits import EDITS, make_copy


def run(model: str, folder: str) -> dict:
    import torch

    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    paths = pictures(folder)
    images = [Image.open(p).convert("RGB") for p in paths]
    started = time.perf_counter()
    features = [verify.features_of(decode_image(open(p, "rb").read(), draft=verify.SIDE)) for p in paths]
    features_ms = (time.perf_counter() - started) / len(paths) * 1000
    recall, seconds, pairs, telling = {}, 0.0, 0, []
    for kind in [*EDITS, *OTHER_EDITS]:
        verified = []
        for n, (image, mine) in enumerate(zip(images, features, strict=True)):
            data = (make_copy(image, kind, n, images[(n + 1) % len(images)]) if kind in EDITS
                    else other_copy(image, kind, n))
            started = time.perf_counter()
            verdict = verify.compare(mine, verify.features_of(decode_image(data, draft=verify.SIDE)))
            seconds += time.perf_counter() - started
            pairs += 1
            verified.append(verdict.verified)
            if verdict.detail >= verify.MIN_DETAIL:
                telling.append(verdict.verified)
        recall[kind] = round(float(np.mean(verified)), 3)
    cosines = _cosines(model, paths)
    started = time.perf_counter()
    distinct = [(i, j, verify.compare(features[i], features[j]))
                for i, j in itertools.combinations(range(len(paths)), 2)]
    match_ms = (time.perf_counter() - started) / len(distinct) * 1000
    wrong = [(os.path.basename(paths[i]), os.path.basename(paths[j]), v.matches) for i, j, v in distinct if v.verified]
    near = [v for i, j, v in distinct if cosines[i, j] >= 0.5]
    return {"cpu": cpu_kind(), "pictures": len(paths), "side": verify.SIDE, "min_inliers": verify.MIN_INLIERS,
            "recall_calibrate_edits": {k: recall[k] for k in EDITS},
            "recall_other_edits": {k: recall[k] for k in OTHER_EDITS},
            "recall_all": round(float(np.mean(list(recall.values()))), 3),
            "recall_with_detail": round(float(np.mean(telling)), 3),
            "copies_with_detail": round(len(telling) / pairs, 3),
            "pictures_without_detail": sum(len(f.points) < verify.MIN_DETAIL for f in features),
            "distinct_pairs": len(distinct), "false_per_1000": round(1000 * len(wrong) / len(distinct), 2),
            "distinct_pairs_above_0.5": len(near),
            "false_per_1000_above_0.5": round(1000 * sum(v.verified for v in near) / max(1, len(near)), 2),
            "verified_distinct": wrong,
            "ms_per_pair_with_decode": round(features_ms + seconds / pairs * 1000, 1),
            "ms_features_per_image": round(features_ms, 1), "ms_match_only": round(match_ms, 1)}


def _cosines(model: str, paths: list[str]) -> np.ndarray:
    from imgvec import ImageVectorizer

    vectors, errors = ImageVectorizer(model, device="cpu").embed([open(p, "rb").read() for p in paths])
    assert not any(errors), errors
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors @ vectors.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", help="the model whose cosines pick the pairs")
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "imgvec-pictures"))
    print(json.dumps(run(**vars(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
