"""The batch job behind `imgvec embed`: plan pieces of the inputs -> one Spark job of piece tasks -> summary.

The driver plans over input *files* (batch.shard's pieces: folders, row groups, tars, manifest slices); each task
enumerates its piece's images, reads them and writes parts straight to OUTPUT, and sends back only counts. A
resumed run finds what is left by joining, on Spark, the pieces' names with the output's paths. Neither the
images, their names nor their feature vectors pass through the driver, whose memory grows with the input files.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import islice

from imgvec.base import defaults
from imgvec.base.progress import Progress
from imgvec.base.settings import FeatureSettings, RunOptions
from imgvec.base.storage import check_reachable
from imgvec.base.version import VERSION
from imgvec.dataset import names
from imgvec.dataset.lock import now
from imgvec.dataset.output import FORMAT, FeatureDataset
from imgvec.dataset.writing import check_apart, held_for_writing
from imgvec.features.vectorizer import ImageVectorizer
from imgvec.inputs.sources import check_inputs_exist, open_source
from imgvec.models.engines import INT8_SAMPLE, engine_version

SMALL_PLAN = 16  # pieces whose names are checked in this process rather than by a Spark job


@dataclass
class EmbedSummary:
    output: str
    total: int = 0  # inputs, including those an earlier run had done (a repeated entry counts once)
    skipped: int = 0  # already in the output (--resume)
    repeated: int = 0  # entries of a manifest that named a path again: each path is embedded once
    succeeded: int = 0
    failed: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    listing_seconds: float = 0.0  # the input files, and what they hold when the files say it (Parquet footers)
    planning_seconds: float = 0.0  # the plan of pieces, and how a table names its rows
    job_seconds: float = 0.0  # the Spark job: pieces (resumed: joined with the output's paths) -> parts
    tasks: int = 0  # pieces of the inputs, one task each
    parts: int = 0
    # summed over the tasks: reading inputs (overlapping the computing), decoding and the network, writing parts
    task_seconds: Counter = field(default_factory=Counter)

    @property
    def shards(self) -> int:
        """The old name of `tasks` (one task per shard before tasks took pieces)."""
        import warnings

        warnings.warn("EmbedSummary.shards is now EmbedSummary.tasks", DeprecationWarning, stacklevel=2)
        return self.tasks

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


def made_by(vectorizer: ImageVectorizer, columns=()) -> dict:
    """What made the features, and the input columns kept: recorded in the output, checked on --resume."""
    ref = vectorizer.weights_ref
    weights = vectorizer.weights if vectorizer.weights in ("default", "random") else ref.path
    config = vectorizer.config
    entry = config.entry
    made = {"model": vectorizer.model_name, "weights": weights, "weights_sha256": ref.sha256,
            "dim": vectorizer.dim, "precision": config.precision, "draft": config.draft,
            "engine": config.engine, "engine_version": engine_version(config.engine),
            "imgvec_version": VERSION, "format": FORMAT, "columns": list(columns)}
    if entry.library:  # the library, its version and its own id of the model
        from importlib.metadata import version

        made.update(library=entry.library, library_version=version({"timm": "timm", "open_clip": "open_clip_torch"}[
            entry.library]), model_id=entry.source)
    return made


def embed(inputs: list[str], output: str, *, model: str = defaults.MODEL, weights: str = defaults.WEIGHTS,
          batch_size: int = defaults.BATCH_SIZE, device: str = defaults.DEVICE, precision: str = defaults.PRECISION,
          max_pixels: int = defaults.MAX_PIXELS, draft: bool = defaults.DRAFT, engine: str = defaults.ENGINE,
          master: str = defaults.MASTER, glob: str | None = None, table: bool | None = None,
          binary_col: str | None = None, path_col: str | None = None, manifest: str | None = None, prefix: str = "",
          keep_columns=(), resume: bool = False, overwrite: bool = False, shard_size: int = defaults.SHARD_SIZE,
          quiet: bool = False, progress_stream=None, conf: dict | None = None, spark=None) -> EmbedSummary:
    """Embed every input into `output` (a local folder or a URI). Mistakes raise ValueError before Spark starts.

    imgvec's public function: its keywords are FeatureSettings' and RunOptions', spelled out (embed_job takes them
    whole)."""
    settings = FeatureSettings(model, weights, device, batch_size, precision, max_pixels, draft, engine)
    return embed_job(inputs, output, settings, RunOptions(master, conf or {}, spark, quiet), glob=glob, table=table,
                     binary_col=binary_col, path_col=path_col, manifest=manifest, prefix=prefix,
                     keep_columns=keep_columns, resume=resume, overwrite=overwrite, shard_size=shard_size,
                     progress_stream=progress_stream)


def embed_job(inputs: list[str], output: str, settings: FeatureSettings, run: RunOptions, *, glob: str | None = None,
              table: bool | None = None, binary_col: str | None = None, path_col: str | None = None,
              manifest: str | None = None, prefix: str = "", keep_columns=(), resume: bool = False,
              overwrite: bool = False, shard_size: int = defaults.SHARD_SIZE, progress_stream=None) -> EmbedSummary:
    """embed(), with the feature settings and where to run as one object each (what the command line passes)."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, not {shard_size}")
    vectorizer = ImageVectorizer.of(settings)
    source = open_source(list(inputs), glob=glob, binary_col=binary_col, path_col=path_col, table=table,
                         manifest=manifest, prefix=prefix, keep_columns=tuple(keep_columns))
    check_inputs_exist([*inputs, *([manifest] if manifest else [])])
    source = source.checked() if hasattr(source, "checked") else source
    dataset = FeatureDataset(output)
    check_reachable(dataset.where, "output")
    check_apart(dataset, [*inputs, *([manifest] if manifest else [])])
    made = made_by(vectorizer, source.columns.names)
    with held_for_writing(dataset, made, resume=resume, overwrite=overwrite):
        started = time.monotonic()
        earlier = dataset.part_names()  # names of files, not of images: what a resumed run has done is joined
        from imgvec.spark.session import session, task_slots

        with session(run) as spark:
            slots = task_slots(spark) or 1
            listing = time.monotonic()
            pieces = source.pieces(lambda images: min(shard_size, -(-images // slots)), partial(_listing, dataset))
            planned = source.planned_images(pieces)
            summary = EmbedSummary(dataset.location, tasks=len(pieces), listing_seconds=time.monotonic() - listing)
            planning = time.monotonic()
            tasks = min(len(pieces), 4 * slots)  # a resumed run's tasks: a few per slot balance them
            if pieces and getattr(source, "naming", None) == "struct":
                source = named_uniquely(spark, source, pieces, tasks)
            summary.planning_seconds = time.monotonic() - planning
            if pieces and settings.precision == "int8":
                vectorizer.quantize_with(_sample_bytes(source, pieces))
            before, number = Counter(), dataset.next_run()
            if pieces:
                before = _run(spark, vectorizer, source, dataset, number, pieces, earlier, summary, planned,
                              shard_size, tasks, run.quiet, progress_stream)
        # the output's counts: before this run (a resumed run's join counted them) and this run's
        recorded = {} if earlier and not pieces else output_counts(before, summary)
        summary.seconds = time.monotonic() - started
        recorded["updated"] = now()
        if summary.processed:  # which engine and precision wrote which parts (a resumed run may use others)
            recorded["runs"] = [*dataset.metadata().get("runs", []), {
                "run": number, **{k: made[k] for k in ("engine", "engine_version", "precision", "draft")},
                "images": summary.processed, "finished": recorded["updated"]}]
        if made["dim"] is None:  # a TorchScript model says its dimension only by running
            recorded["dim"] = dataset.dim(recorded)
        dataset.update_metadata(recorded)
    return summary


def _listing(dataset: FeatureDataset, key: str):
    """Where a source streams a plan too long for the driver to hold (inputs.pieces.write_listing)."""
    folder = dataset.where.child(names.INPUTS)
    folder.make_folder()
    return folder.child(names.listing(key))


def output_counts(before: Counter, summary: EmbedSummary) -> dict:
    """The output's rows, with features and failed by kind: `before` (rows by error kind, None: with features) and
    what the run added."""
    kinds = Counter({kind: n for kind, n in before.items() if kind is not None}) + summary.error_kinds
    failed = sum(kinds.values())
    total = sum(before.values()) + summary.processed
    return {"total": total, "succeeded": total - failed, "failed": failed, "error_kinds": dict(kinds.most_common())}


def named_uniquely(spark, source, pieces: list, tasks: int):
    """A Hugging Face table names its rows by the image struct's path when every row has one and none repeats;
    else by file and row number. Checked on the names alone, in a Spark job for a large table."""
    from imgvec.batch.resume import NamesTask
    from imgvec.batch.shard import plan_pieces

    plan = plan_pieces(pieces)
    if len(pieces) <= SMALL_PLAN:
        paths = NamesTask(source).here(plan).column("path")
        rows, given, distinct = len(paths), len(paths) - paths.null_count, len(set(paths.drop_null().to_pylist()))
    else:
        from pyspark.sql import functions as F

        from imgvec.spark.tasks import task_frame

        names = task_frame(spark, plan, NamesTask(source), tasks)
        rows, given, distinct = names.agg(F.count("*"), F.count("path"), F.countDistinct("path")).first()
    return source if rows == given == distinct else replace(source, naming="row")


def _sample_bytes(source, pieces: list) -> list[bytes]:
    """A seeded sample of the job's own images, read here: what sets int8's ranges (a few dozen)."""
    found = []
    for piece in random.Random(0).sample(pieces, len(pieces)):
        found += [s.data for s in islice(source.samples(piece), 4 * INT8_SAMPLE) if s.data and not s.error]
        if len(found) >= 4 * INT8_SAMPLE:
            break
    return random.Random(0).sample(found, min(INT8_SAMPLE, len(found)))


def _run(spark, vectorizer, source, dataset: FeatureDataset, number: int, pieces: list, earlier: list[str],
         summary: EmbedSummary, planned: int | None, shard_size: int, tasks: int, quiet: bool,
         progress_stream) -> Counter:
    """Runs the job, filling `summary`; returns the output's rows by error kind before it (None: with features)."""
    from imgvec.batch.resume import counted_before, joined_job
    from imgvec.batch.shard import ShardTask, plan_pieces
    from imgvec.features.dataframe import ship_weights
    from imgvec.spark.tasks import collect, task_frame

    plan = plan_pieces(pieces)
    total = planned if planned is not None else len(pieces)
    progress = Progress(total, stream=progress_stream, quiet=quiet, unit="images" if planned is not None else "pieces")
    task = ShardTask(source, vectorizer.config, ship_weights(spark, vectorizer.runtime_ref), dataset.location,
                     number, shard_size)
    started = time.monotonic()
    try:
        before = counted_before(spark, dataset, earlier, tasks) if earlier else Counter()
        if earlier or getattr(source, "may_repeat", False):
            job = joined_job(spark, plan, source, dataset, earlier, task, tasks)
        else:
            job = task_frame(spark, plan, task)
        counts = collect(spark, job, lambda share: progress.update(share * total))
        summary.job_seconds = time.monotonic() - started
        for row in counts.to_pylist():
            summary.failed += row["failed"]
            summary.succeeded += row["rows"] - row["failed"]
            summary.skipped += row["skipped"]
            summary.repeated += row["repeated"]
            summary.parts += row["parts"]
            summary.error_kinds.update(json.loads(row["error_kinds"]))
            for stage in ("read", "compute", "write"):
                summary.task_seconds[stage] += row[f"{stage}_seconds"]
        summary.total = summary.processed + summary.skipped
        progress.update(total, force=True)
    finally:
        progress.close()
    return before
