"""The batch job behind `imgvec embed`: list -> plan shards -> one Spark job of shard tasks -> summary.

The driver lists names and plans; each task reads its shard's images and writes its own part
straight to OUTPUT (shard.py), and sends back only counts. No feature vector passes through the
driver, whose memory and network do not grow with the images or their dimension.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from imgvec import defaults
from imgvec.engines import INT8_SAMPLE, engine_version
from imgvec.lock import now
from imgvec.output import FORMAT, FeatureDataset
from imgvec.progress import Progress
from imgvec.sources import check_inputs_exist, open_source, shards
from imgvec.storage import check_reachable
from imgvec.vectorizer import ImageVectorizer
from imgvec.writing import check_apart, run_writing


@dataclass
class EmbedSummary:
    output: str
    total: int = 0  # inputs, including those an earlier run had done
    skipped: int = 0  # already in the output (--resume)
    succeeded: int = 0
    failed: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    listing_seconds: float = 0.0  # inputs and the output's done paths: names only, on the driver
    planning_seconds: float = 0.0  # what is left to do, in shards
    job_seconds: float = 0.0  # the Spark job of shard tasks
    shards: int = 0

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


def identity(vectorizer: ImageVectorizer) -> dict:
    """What made the features: recorded in the output, checked on --resume."""
    import imgvec

    ref = vectorizer.weights_ref
    weights = vectorizer.weights if vectorizer.weights in ("default", "random") else ref.path
    config = vectorizer.config
    entry = config.entry
    made = {"model": vectorizer.model_name, "weights": weights, "weights_sha256": ref.sha256,
            "dim": vectorizer.dim, "precision": config.precision, "draft": config.draft,
            "engine": config.engine, "engine_version": engine_version(config.engine),
            "imgvec_version": imgvec.__version__, "format": FORMAT}
    if entry.library:  # the library, its version and its own id of the model
        from importlib.metadata import version

        made.update(library=entry.library, library_version=version({"timm": "timm", "open_clip": "open_clip_torch"}[
            entry.library]), model_id=entry.source)
    return made


def embed(inputs: list[str], output: str, *, model: str = defaults.MODEL, weights: str = defaults.WEIGHTS,
          batch_size: int = defaults.BATCH_SIZE, device: str = defaults.DEVICE, precision: str = defaults.PRECISION,
          max_pixels: int = defaults.MAX_PIXELS, draft: bool = defaults.DRAFT, engine: str = defaults.ENGINE,
          master: str = "local[*]",
          glob: str | None = None, table: bool | None = None, binary_col: str = "content", path_col: str = "path",
          resume: bool = False, overwrite: bool = False, shard_size: int = defaults.SHARD_SIZE,
          quiet: bool = False, progress_stream=None, conf: dict | None = None, spark=None) -> EmbedSummary:
    """Embed every input into `output` (a local folder or a URI). Mistakes raise ValueError before Spark starts."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, not {shard_size}")
    vectorizer = ImageVectorizer(model, weights=weights, device=device, batch_size=batch_size,
                                 precision=precision, max_pixels=max_pixels, draft=draft, engine=engine)
    source = open_source(inputs, glob=glob, binary_col=binary_col, path_col=path_col, table=table)
    check_inputs_exist(inputs)
    dataset = FeatureDataset(output)
    check_reachable(dataset.where, "output")
    check_apart(dataset, inputs)
    made_by = identity(vectorizer)
    with run_writing(dataset, made_by, resume=resume, overwrite=overwrite):
        started = time.monotonic()
        done = dataset.done_paths()  # the path column only; a damaged part is an error now
        items = source.list()
        summary = EmbedSummary(dataset.location, total=len(items), listing_seconds=time.monotonic() - started)
        todo = [item for item in items if item.path not in done]
        summary.skipped = len(items) - len(todo)
        if todo and precision == "int8":
            vectorizer.calibrate_int8(_sample_bytes(source, items))
        if todo:
            from imgvec.jobs import session

            with session(master, conf, spark) as spark:
                planning = time.monotonic()
                planned = shards(todo, _shard_size(spark, len(todo), shard_size))
                summary.shards = len(planned)
                summary.planning_seconds = time.monotonic() - planning
                _run(spark, vectorizer, source, dataset, planned, summary, quiet, progress_stream)
        summary.seconds = time.monotonic() - started
        recorded = {**dataset.counts(), "updated": now()}
        if made_by["dim"] is None:  # a TorchScript model says its dimension only by running
            recorded["dim"] = dataset.dim(recorded)
        dataset.update_metadata(recorded)
    return summary


def _sample_bytes(source, items: list) -> list[bytes]:
    """A seeded sample of the job's own images, read here: what calibrates int8 (a few dozen)."""
    import random

    sample = random.Random(0).sample(items, min(INT8_SAMPLE, len(items)))
    in_order = sorted(sample, key=lambda item: (item.source, item.row_group, item.path))  # a row group read once
    return [data for _, data, error in source.read(in_order) if data and not error]


def _shard_size(spark, images: int, largest: int) -> int:
    """`largest`, or less when there are too few images to give every task slot of the cluster a shard."""
    from imgvec.jobs import task_slots

    slots = task_slots(spark)
    return min(largest, -(-images // slots)) if slots else largest


def _run(spark, vectorizer, source, dataset: FeatureDataset, planned: list, summary: EmbedSummary, quiet: bool,
         progress_stream) -> None:
    from imgvec.jobs import run_shards
    from imgvec.shard import ShardTask
    from imgvec.spark import ship_weights

    todo = sum(len(s) for s in planned)
    progress = Progress(summary.total, already=summary.skipped, stream=progress_stream, quiet=quiet)
    task = ShardTask(source, vectorizer.config, ship_weights(spark, vectorizer.runtime_ref), dataset.location,
                     dataset.next_run())
    started = time.monotonic()
    try:
        counts = run_shards(spark, task, planned, lambda share: progress.update(summary.skipped + share * todo))
        summary.job_seconds = time.monotonic() - started
        for row in counts.to_pylist():
            summary.failed += row["failed"]
            summary.succeeded += row["rows"] - row["failed"]
            summary.error_kinds.update(json.loads(row["error_kinds"]))
        progress.update(summary.skipped + summary.processed, force=True)
    finally:
        progress.close()
