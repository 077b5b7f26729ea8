"""Shared test helpers: the real command, Spark sessions, reference features, generated outputs and corpora.

Imported by the tests and by conftest.py (which holds the fixtures); never import a test module.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "images"


IMGVEC = shutil.which("imgvec", path=os.path.dirname(sys.executable)) or shutil.which("imgvec")


SPARK = ["--master", "local[2]"]


def imgvec(*args, timeout=300, **kwargs):
    """The real `imgvec` command in a subprocess, in the environment a user's shell has: not the marker that an
    in-process Spark Connect session leaves in this one (it would make the command's classic session a Connect one)."""
    kwargs.setdefault("env", {k: v for k, v in os.environ.items() if k != "SPARK_CONNECT_MODE_ENABLED"})
    return subprocess.run([IMGVEC, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


# What a JVM prints as it starts, which no imgvec command may show its user (spark.session holds it back).
JVM_START_UP = ("WARNING: Using incubator modules", "Setting default log level to", "To adjust logging level use")


def assert_no_jvm_lines(stderr: str) -> None:
    shown = [line for line in stderr.splitlines() if line.startswith(JVM_START_UP)]
    assert not shown, f"the JVM's start-up lines reached the user: {shown}"


def imgvec_here(capsys, *args):
    """The `imgvec` command's main() in this process, without a new interpreter and JVM (~15 s each): for what is
    not about the command's process (its exit, its JVM's lines). Spark's workers get the environment this process's
    JVM started with. capsys None (a module's fixture): what it printed is left to pytest's capture."""
    from imgvec.cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr() if capsys is not None else types.SimpleNamespace(out="", err="")
    return types.SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def assert_usage_error(result, fragment):
    """Exit 2 and one line that says what is wrong, with no traceback and no terminal escape codes."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("imgvec: error:") and fragment in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr


def without_module(folder, name: str) -> dict:
    """An environment in which `import name` fails, as if the package were not installed: a subprocess's env."""
    shadow = pathlib.Path(folder) / "shadow" / name
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError('No module named {name}')\n")
    return {**os.environ, "PYTHONPATH": f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def seed_default_weights(model_name: str, seed: int = 1234) -> str:
    """Put a deterministic state_dict where torchvision's hub cache expects its pretrained file."""
    import torch
    import torchvision.models as tvm

    from imgvec.models.weights import hub_checkpoint_path

    enum = {"resnet50": tvm.ResNet50_Weights, "resnet18": tvm.ResNet18_Weights}[model_name]
    path = hub_checkpoint_path(enum.DEFAULT.url)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = getattr(tvm, model_name)(weights=None)
        torch.save(net.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def max_relative_difference(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def classic_session(master: str = "local[2]", **conf):
    """A fresh classic SparkSession; any earlier one in this process is stopped first."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from imgvec.spark.session import get_session

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)  # left behind by an earlier Spark Connect session
    # The first session's settings become the JVM's system properties, which every later
    # SparkContext in this process reads as defaults: forget the ones an earlier test chose.
    if SparkContext._jvm is not None:
        for key in _session_settings_set:
            SparkContext._jvm.java.lang.System.clearProperty(key)
    base = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
            "spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"}
    _session_settings_set.update(conf)
    return get_session(master, app_name="imgvec-tests", conf={**base, **conf})


_session_settings_set: set[str] = set()


def reference_features(vectorizer, paths) -> dict:
    """Single-process features for each file: what every distributed run must equal."""
    import numpy as np

    out = {}
    for path in paths:
        features, errors = vectorizer.embed([open(path, "rb").read()])
        out[str(path)] = None if errors[0] else np.asarray(features[0])
    return out


def assert_same_features(rows, reference, path_col="path", features_col="features", cosine=None):
    """Every row's features equal the single-process reference (max relative difference <= 1e-4), or
    where another engine computed them, point the same way (cosine >= `cosine`)."""
    import numpy as np

    assert len(rows) == len(reference)
    for row in rows:
        path = row[path_col].removeprefix("file:")
        expected = reference[path]
        if expected is None:
            assert row[features_col] is None and row["error"], path
        else:
            assert row["error"] is None, (path, row["error"])
            if cosine is None:
                assert max_relative_difference(row[features_col], expected) <= 1e-4, path
            else:
                got = np.asarray(row[features_col])
                assert got @ expected / np.linalg.norm(got) / np.linalg.norm(expected) >= cosine, path


def files_in(directory) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]


def visible_on_workers(spark, path) -> set[bool]:
    """Whether the executors can see `path` (a file of the driver's)."""
    from pyspark.sql.functions import udf

    @udf("boolean")
    def exists(_):
        return os.path.exists(path)

    return {r[0] for r in spark.range(0, 4, numPartitions=4).select(exists("id")).collect()}


def grouped_files(found: dict) -> set:
    """Every path in a near-duplicate group of `imgvec dupes --json` output: the files that have a near-duplicate.
    What a search finds, whichever kept file each one's group forms around."""
    return {m["path"] for g in found["groups"] if g["kind"] == "near" for m in g["members"]}


def co_member_pairs(found: dict) -> set:
    """Every pair of paths that share a near-duplicate group in `imgvec dupes --json` output."""
    return {tuple(sorted((a["path"], b["path"]))) for g in found["groups"] if g["kind"] == "near"
            for a, b in itertools.combinations(g["members"], 2)}


def clustered_vectors(n: int, dim: int, *, seed: int = 0, per_cluster: int = 50, spread: float = 0.35) -> np.ndarray:
    """n float32 vectors around n / per_cluster random centres: neighbours and near-duplicates to find.

    With spread 0.35 two vectors of one centre have cosine ~0.89: many pairs lie near a 0.9 threshold.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_cluster), dim)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)


def vectors_output(folder, vectors: np.ndarray, *, part_rows: int = 512, model: str = "generated", prefix: str = "img",
                   sha256: list | None = None):
    """An imgvec output holding `vectors` (paths img/00000000.jpg, ...), written by imgvec's own writer;
    `sha256`: each row's content hash (identical files), else none recorded."""
    import pyarrow as pa

    from imgvec.dataset.lock import now
    from imgvec.dataset.output import FORMAT, FeatureDataset
    from imgvec.dataset.writing import held_for_writing

    dataset = FeatureDataset(str(folder))
    identity = {"model": model, "weights": "none", "weights_sha256": None, "dim": vectors.shape[1], "format": FORMAT}
    with held_for_writing(dataset, identity, resume=False, overwrite=False):
        for start in range(0, len(vectors), part_rows):
            rows = vectors[start : start + part_rows]
            offsets = pa.array(np.arange(0, rows.size + 1, max(1, vectors.shape[1]), dtype=np.int32))
            hashes = (sha256 or [None] * len(vectors))[start : start + len(rows)]
            dataset.write_part(pa.table({"path": [f"{prefix}/{i:08d}.jpg" for i in range(start, start + len(rows))],
                                         "features": pa.ListArray.from_arrays(offsets, pa.array(rows.ravel())),
                                         "error": pa.nulls(len(rows), pa.string()),
                                         "bytes": pa.array([None if h is None else 1000 for h in hashes], pa.int64()),
                                         "sha256": pa.array(hashes, pa.string())}),
                               f"part-0000-{start // part_rows:06d}.parquet")
        dataset.update_metadata({**dataset.counts(), "updated": now()})
    return dataset


ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"  # screenshots to look at


def in_browser(page: pathlib.Path, screenshot: str | None = None) -> dict:
    """Open an HTML page imgvec wrote in headless Chromium: {images, broken (naturalWidth 0), text}.

    The page itself has no script; a copy of it gets one that counts its images once they have loaded.
    A screenshot, if asked for, goes to ARTIFACTS.
    """
    import json
    import re
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "chromium is missing: apt-get install chromium (the README's fresh machine; .ci/run)"
    probe = ("<script>window.addEventListener('load', () => { const i = [...document.images]; "
             "document.body.setAttribute('data-probe', JSON.stringify({images: i.length, "
             "broken: i.filter(x => !x.complete || x.naturalWidth === 0).length})); });</script>")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    with tempfile.TemporaryDirectory() as folder:
        probed = pathlib.Path(folder) / "probed.html"
        probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
        dom = subprocess.run([browser, *flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True,
                             timeout=120).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    result["text"] = re.sub(r"<[^>]+>", " ", dom)
    if screenshot:
        ARTIFACTS.mkdir(exist_ok=True)
        subprocess.run([browser, *flags, "--window-size=1400,1000", f"--screenshot={ARTIFACTS / screenshot}",
                        page.as_uri()], capture_output=True, timeout=120, check=True)
        assert (ARTIFACTS / screenshot).stat().st_size > 10_000
    return result


# --- corpora as large collections come: WebDataset tars, Hugging Face and img2dataset tables, manifests --------------


def example_samples() -> list[tuple[str, bytes, str]]:
    """(key, JPEG bytes, caption) of every example photo: keys 000000000, 000000001, ...; the caption is its name."""
    return [(f"{i:09d}", p.read_bytes(), p.name) for i, p in enumerate(sorted(EXAMPLES.iterdir()))]


def webdataset_shards(folder, samples, per_tar: int) -> list[pathlib.Path]:
    """Tars as img2dataset writes them (webdataset's TarWriter: KEY.jpg, KEY.txt, KEY.json), its Parquet of the
    samples and a stats file beside each: 00000.tar, 00001.tar, ..."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tars = []
    for number, start in enumerate(range(0, len(samples), per_tar)):
        chunk = samples[start : start + per_tar]
        tar = folder / f"{number:05d}.tar"
        with wds.TarWriter(str(tar)) as sink:
            for key, data, caption in chunk:
                meta = {"key": key, "caption": caption, "url": f"https://example.com/{caption}", "status": "success"}
                sink.write({"__key__": key, "jpg": data, "txt": caption, "json": json.dumps(meta)})
        pq.write_table(pa.table({"key": [k for k, _, _ in chunk], "caption": [c for _, _, c in chunk],
                                 "status": ["success"] * len(chunk)}), folder / f"{number:05d}.parquet")
        (folder / f"{number:05d}_stats.json").write_text(json.dumps({"count": len(chunk)}))
        tars.append(tar)
    return tars


def huggingface_table(path, samples) -> None:
    """A Parquet file as Hugging Face `datasets` writes an image dataset: struct<bytes, path> under its Image
    feature, marked in the schema metadata."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "text": Value("string")})
    Dataset.from_dict({"image": [{"bytes": data, "path": caption} for _, data, caption in samples],
                       "text": [caption for _, _, caption in samples]}, features=features).to_parquet(str(path))


def img2dataset_table(path, samples, failed: int = 1) -> None:
    """A Parquet file as img2dataset's `--output_format parquet` writes it: key, url, caption, status,
    error_message, sizes and the JPEG bytes (null where the download failed: `failed` such rows at the end)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"key": key, "url": f"https://example.com/{caption}", "caption": caption, "status": "success",
             "error_message": None, "width": 256, "height": 256, "jpg": data} for key, data, caption in samples]
    rows += [{"key": f"{len(samples) + i:09d}", "url": "https://example.com/gone.jpg", "caption": "gone",
              "status": "failed_to_download", "error_message": "HTTP 404", "width": None, "height": None, "jpg": None}
             for i in range(failed)]
    schema = pa.schema([("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("status", pa.string()),
                        ("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                        ("jpg", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema), path, row_group_size=4)
