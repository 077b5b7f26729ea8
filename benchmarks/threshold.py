"""Does `imgvec calibrate` recommend a threshold that the collection's own duplicates cannot fool?

One run, as a user would, on distinct real pictures (benchmarks/pictures.py: the bundled photos,
scikit-image's, Debian's wallpapers) with copies made by edits calibrate does NOT make (recrop, grey,
blur, squash, noise, hue, posterize, sharpen), at three shares of copies among the images: none, ~15%
(one copy of some pictures) and ~90% (eight copies of each). For each collection: `imgvec embed`,
`imgvec calibrate`, then `imgvec dupes` at the recorded threshold and at 0.9, scored against the truth:
copies found (a copy in the same group as its original), pair precision (pairs of co-members that are one
picture), and group purity (the share of grouped files that belong to their group's main picture).
Then `imgvec dupes --verify --keep first` at a threshold low enough that groups chain across pictures:
how many listed files have a witness that is another picture, and how many real copies are listed.

A measurement, never pass/fail: `python benchmarks/threshold.py [--model efficientnet_lite0]`.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from pictures import OTHER_EDITS, other_copy, pictures
from PIL import Image

SHARES = {"none": 0, "15%": 1, "90%": len(OTHER_EDITS)}  # copies made of each chosen picture


def imgvec(*args) -> str:
    done = subprocess.run(["imgvec", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"imgvec {' '.join(map(str, args))} failed: {done.stderr[-1500:]}")
    return done.stdout


def picture(path: str) -> str:
    return os.path.basename(path).split("_copy_")[0].removesuffix(".jpg")


def collection(folder: str, originals: list[str], share: str) -> int:
    """The originals, and copies of some of them: one copy each of every sixth (~15%), eight of each (~90%)."""
    os.makedirs(folder)
    copies = 0
    for n, path in enumerate(originals):
        shutil.copy(path, folder)
        kinds = OTHER_EDITS[: SHARES[share]] if share != "15%" else (OTHER_EDITS[n // 6 % 8],) if n % 6 == 0 else ()
        image = Image.open(path).convert("RGB") if kinds else None
        for kind in kinds:
            with open(os.path.join(folder, f"{picture(path)}_copy_{kind}.jpg"), "wb") as f:
                f.write(other_copy(image, kind, n))
            copies += 1
    return copies


def score(found: dict) -> dict:
    """Copies found, pair precision and purity of the near groups `imgvec dupes --json` printed."""
    near = [[m["path"] for m in g["members"]] for g in found["groups"] if g["kind"] == "near"]
    found_copies = {p for g in near for p in g if "_copy_" in p and any(picture(q) == picture(p) and "_copy_" not in q
                                                                        for q in g)}
    pairs = [(a, b) for g in near for a, b in itertools.combinations(g, 2)]
    right = sum(picture(a) == picture(b) for a, b in pairs)
    grouped = sum(len(g) for g in near)
    main = sum(collections.Counter(map(picture, g)).most_common(1)[0][1] for g in near)
    return {"threshold": found["threshold"], "groups": len(near), "copies_found": len(found_copies),
            "pair_precision": round(right / len(pairs), 4) if pairs else 1.0,
            "purity": round(main / grouped, 4) if grouped else 1.0}


def verified_deletions(output: str, threshold: float, master: str) -> dict:
    """`dupes --verify --keep first` at `threshold`: listed files whose witness is another picture, real copies."""
    plain = json.loads(imgvec("dupes", output, "--threshold", threshold, "--keep", "first", "--json"))
    checked = json.loads(imgvec("dupes", output, "--threshold", threshold, "--keep", "first", "--verify", "--json",
                                "-q", "--master", master))

    def wrong(found):
        witness = {m["path"]: m["kept_file"] for g in found["groups"] for m in g["members"]}
        return sum(picture(p) != picture(witness[p]) for p in found["delete"])

    return {"threshold": threshold, "listed": len(plain["delete"]), "listed_wrong": wrong(plain),
            "verified_listed": len(checked["delete"]), "verified_listed_wrong": wrong(checked),
            "verified_listed_copies": sum("_copy_" in p for p in checked["delete"]),
            "unverified_kept": len(checked["unverified"])}


def run(model: str, sample: int, chain: float, master: str, folder: str) -> dict:
    originals = pictures(folder)
    work = tempfile.mkdtemp(prefix="imgvec-threshold-")
    results = {"model": model, "pictures": len(originals), "sample": sample, "collections": {}}
    for share in SHARES:
        photos, output = os.path.join(work, share, "photos"), os.path.join(work, share, "vectors")
        copies = collection(photos, originals, share)
        imgvec("embed", photos, "-o", output, "--model", model, "-q", "--master", master)
        started = time.monotonic()
        calibration = json.loads(imgvec("calibrate", output, "--sample", sample, "--json", "-q", "--master", master))
        seconds = time.monotonic() - started
        calibrated = score(json.loads(imgvec("dupes", output, "--json")))  # no --threshold: the recorded one
        fixed = score(json.loads(imgvec("dupes", output, "--threshold", "0.9", "--json")))
        results["collections"][share] = {
            "images": len(originals) + copies, "copies": copies,
            "calibration": {k: calibration[k] for k in ("threshold", "recall", "expected_precision",
                                                        "precision_lower_bound", "expected_true_pairs",
                                                        "expected_false_pairs", "pairs_checked", "pairs_telling",
                                                        "reached")},
            "calibrate_seconds": round(seconds, 1), "at_recorded": calibrated, "at_0.9": fixed,
            "ratio_to_0.9": round(calibrated["copies_found"] / max(1, fixed["copies_found"]), 2),
            **({"verify": verified_deletions(output, chain, master)} if share == "90%" else {})}
        print(json.dumps({share: results["collections"][share]}), file=sys.stderr)
    thresholds = [c["calibration"]["threshold"] for c in results["collections"].values()]
    results["threshold_spread"] = round(max(thresholds) - min(thresholds), 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--sample", type=int, default=100, help="calibrate's originals (--sample)")
    parser.add_argument("--chain", type=float, default=0.55, help="the threshold of the --verify run")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "imgvec-pictures"))
    print(json.dumps(run(**vars(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
