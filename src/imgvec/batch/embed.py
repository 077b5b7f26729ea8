"""The batch job behind `imgvec embed`: list -> plan shards -> one Spark job of shard tasks -> summary.

The driver lists names and plans; each task reads its shard's images and writes its own part
straight to OUTPUT (batch.shard), and sends back only counts. No feature vector passes through the
driver, whose memory and network do not grow with the images or their dimension.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from imgvec.base import defaults
from imgvec.base.progress import Progress
from imgvec.base.settings import FeatureSettings, RunOptions
from imgvec.base.storage import check_reachable
from imgvec.base.version import VERSION
from imgvec.dataset.lock import now
from imgvec.dataset.output import FORMAT, FeatureDataset
from imgvec.dataset.writing import check_apart, held_for_writing
from imgvec.features.vectorizer import ImageVectorizer
from imgvec.inputs.sources import check_inputs_exist, open_source, shards
from imgvec.models.engines import INT8_SAMPLE, engine_version


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
    # summed over the tasks: reading inputs (overlapping the computing), decoding and the network, writing parts
    task_seconds: Counter = field(default_factory=Counter)

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


def made_by(vectorizer: ImageVectorizer) -> dict:
    """What made the features: recorded in the output, checked on --resume."""
    ref = vectorizer.weights_ref
    weights = vectorizer.weights if vectorizer.weights in ("default", "random") else ref.path
    config = vectorizer.config
    entry = config.entry
    made = {"model": vectorizer.model_name, "weights": weights, "weights_sha256": ref.sha256,
            "dim": vectorizer.dim, "precision": config.precision, "draft": config.draft,
            "engine": config.engine, "engine_version": engine_version(config.engine),
            "imgvec_version": VERSION, "format": FORMAT}
    if entry.library:  # the library, its version and its own id of the model
        from importlib.metadata import version

        made.update(library=entry.library, library_version=version({"timm": "timm", "open_clip": "open_clip_torch"}[
            entry.library]), model_id=entry.source)
    return made


def embed(inputs: list[str], output: str, *, model: str = defaults.MODEL, weights: str = defaults.WEIGHTS,
          batch_size: int = defaults.BATCH_SIZE, device: str = defaults.DEVICE, precision: str = defaults.PRECISION,
          max_pixels: int = defaults.MAX_PIXELS, draft: bool = defaults.DRAFT, engine: str = defaults.ENGINE,
          master: str = defaults.MASTER,
          glob: str | None = None, table: bool | None = None, binary_col: str = "content", path_col: str = "path",
          resume: bool = False, overwrite: bool = False, shard_size: int = defaults.SHARD_SIZE,
          quiet: bool = False, progress_stream=None, conf: dict | None = None, spark=None) -> EmbedSummary:
    """Embed every input into `output` (a local folder or a URI). Mistakes raise ValueError before Spark starts.

    imgvec's public function: its keywords are FeatureSettings' and RunOptions', spelled out (embed_job takes them
    whole)."""
    settings = FeatureSettings(model, weights, device, batch_size, precision, max_pixels, draft, engine)
    return embed_job(inputs, output, settings, RunOptions(master, conf or {}, spark, quiet), glob=glob, table=table,
                     binary_col=binary_col, path_col=path_col, resume=resume, overwrite=overwrite,
                     shard_size=shard_size, progress_stream=progress_stream)


def embed_job(inputs: list[str], output: str, settings: FeatureSettings, run: RunOptions, *, glob: str | None = None,
              table: bool | None = None, binary_col: str = "content", path_col: str = "path", resume: bool = False,
              overwrite: bool = False, shard_size: int = defaults.SHARD_SIZE, progress_stream=None) -> EmbedSummary:
    """embed(), with the feature settings and where to run as one object each (what the command line passes)."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, not {shard_size}")
    vectorizer = ImageVectorizer.of(settings)
    source = open_source(inputs, glob=glob, binary_col=binary_col, path_col=path_col, table=table)
    check_inputs_exist(inputs)
    dataset = FeatureDataset(output)
    check_reachable(dataset.where, "output")
    check_apart(dataset, inputs)
    made = made_by(vectorizer)
    with held_for_writing(dataset, made, resume=resume, overwrite=overwrite):
        started = time.monotonic()
        done = dataset.done_paths()  # the path column only; a damaged part is an error now
        items = source.list()
        summary = EmbedSummary(dataset.location, total=len(items), listing_seconds=time.monotonic() - started)
        todo = [item for item in items if item.path not in done]
        summary.skipped = len(items) - len(todo)
        if todo and settings.precision == "int8":
            vectorizer.quantize_with(_sample_bytes(source, items))
        if todo:
            from imgvec.spark.session import session

            with session(run) as spark:
                planning = time.monotonic()
                planned = shards(todo, _shard_size(spark, len(todo), shard_size))
                summary.shards = len(planned)
                summary.planning_seconds = time.monotonic() - planning
                _run(spark, vectorizer, source, dataset, planned, summary, run.quiet, progress_stream)
        summary.seconds = time.monotonic() - started
        recorded = {**dataset.counts(), "updated": now()}
        if made["dim"] is None:  # a TorchScript model says its dimension only by running
            recorded["dim"] = dataset.dim(recorded)
        dataset.update_metadata(recorded)
    return summary


def _sample_bytes(source, items: list) -> list[bytes]:
    """A seeded sample of the job's own images, read here: what sets int8's ranges (a few dozen)."""
    import random

    sample = random.Random(0).sample(items, min(INT8_SAMPLE, len(items)))
    in_order = sorted(sample, key=lambda item: (item.source, item.row_group, item.path))  # a row group read once
    return [data for _, data, error in source.read(in_order) if data and not error]


def _shard_size(spark, images: int, largest: int) -> int:
    """`largest`, or less when there are too few images to give every task slot of the cluster a shard."""
    from imgvec.spark.session import task_slots

    slots = task_slots(spark)
    return min(largest, -(-images // slots)) if slots else largest


def _run(spark, vectorizer, source, dataset: FeatureDataset, planned: list, summary: EmbedSummary, quiet: bool,
         progress_stream) -> None:
    from imgvec.batch.shard import ShardTask, plan_shards
    from imgvec.features.dataframe import ship_weights
    from imgvec.spark.tasks import run_tasks

    todo = sum(len(s) for s in planned)
    progress = Progress(summary.total, already=summary.skipped, stream=progress_stream, quiet=quiet)
    task = ShardTask(source, vectorizer.config, ship_weights(spark, vectorizer.runtime_ref), dataset.location,
                     dataset.next_run())
    started = time.monotonic()
    try:
        counts = run_tasks(spark, plan_shards(planned), task,
                           lambda share: progress.update(summary.skipped + share * todo))
        summary.job_seconds = time.monotonic() - started
        for row in counts.to_pylist():
            summary.failed += row["failed"]
            summary.succeeded += row["rows"] - row["failed"]
            summary.error_kinds.update(json.loads(row["error_kinds"]))
            for stage in ("read", "compute", "write"):
                summary.task_seconds[stage] += row[f"{stage}_seconds"]
        progress.update(summary.skipped + summary.processed, force=True)
    finally:
        progress.close()
