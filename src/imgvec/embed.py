"""The batch job behind `imgvec embed`: inputs -> a feature dataset, chunk by committed chunk.

Spark does the reading and the inference; the driver receives only [path, features, error]
and commits each chunk as one Parquet part. A killed run loses at most the chunks in flight.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa

from imgvec.decode import DEFAULT_MAX_PIXELS
from imgvec.output import FeatureDataset
from imgvec.progress import Progress
from imgvec.sources import chunks, open_source
from imgvec.spark import check_inputs_exist, get_session, is_connect
from imgvec.vectorizer import ImageVectorizer

DEFAULT_CHUNK_SIZE = 512


@dataclass
class EmbedSummary:
    output: str
    total: int = 0  # inputs, including those an earlier run had done
    skipped: int = 0  # already in the output (--resume)
    succeeded: int = 0
    failed: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    seconds: float = 0.0

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
    return {"model": vectorizer.model_name, "weights": weights, "weights_sha256": ref.sha256,
            "dim": vectorizer.dim, "precision": config.precision, "draft": config.draft,
            "imgvec_version": imgvec.__version__, "format": "imgvec-features/1"}


def embed(inputs: list[str], output: str, *, model: str = "resnet50", weights: str = "default",
          batch_size: int = 16, device: str = "auto", precision: str = "fp32", max_pixels: int = DEFAULT_MAX_PIXELS,
          draft: bool = False,
          master: str = "local[*]", glob: str | None = None,
          table: bool | None = None, binary_col: str = "content", path_col: str = "path",
          resume: bool = False, overwrite: bool = False, chunk_size: int | None = None,
          quiet: bool = False, progress_stream=None, conf: dict | None = None, spark=None) -> EmbedSummary:
    """Embed every input into `output`. Configuration mistakes raise ValueError before Spark starts.

    With a session of your own (`spark=`), embed sets the chunk_settings below on it.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, not {chunk_size}")
    vectorizer = ImageVectorizer(model, weights=weights, device=device, batch_size=batch_size,
                                 precision=precision, max_pixels=max_pixels, draft=draft)
    source = open_source(inputs, glob=glob, binary_col=binary_col, path_col=path_col, table=table)
    check_inputs_exist(inputs)
    dataset = FeatureDataset(output)
    dataset.check_apart_from(inputs)
    with dataset.writing(identity(vectorizer), resume=resume, overwrite=overwrite):
        done = dataset.done_paths()  # a damaged part is an error now, before Spark starts
        conf = conf or {}
        if spark is None:
            spark = get_session(master, conf=conf, quiet=True)
            if not is_connect(spark):
                spark.sparkContext.setLogLevel("ERROR")
        for key, value in chunk_settings(spark).items():
            if key not in conf:
                spark.conf.set(key, value)
        return _run(spark, vectorizer, source, dataset, done, chunk_size or default_chunk_size(spark), quiet,
                    progress_stream)


def _run(spark, vectorizer: ImageVectorizer, source, dataset: FeatureDataset, done: set[str], chunk_size: int,
         quiet: bool, progress_stream) -> EmbedSummary:
    started = time.monotonic()
    items = source.list(spark)
    todo = [item for item in items if item.path not in done]
    summary = EmbedSummary(dataset.location, total=len(items), skipped=len(items) - len(todo))
    counts = dataset.counts()
    progress = Progress(len(items), already=summary.skipped, stream=progress_stream, quiet=quiet)
    in_flight: dict[int, float] = {}  # chunk number -> images done in it so far

    def compute(number: int, chunk: list) -> pa.Table:
        def report(share):
            in_flight[number] = share * len(chunk)
            progress.update(summary.skipped + summary.processed + sum(in_flight.values()))

        with spark_progress(spark, report):
            df = vectorizer.process_images(source.load(spark, chunk)).select("path", "features", "error")
            return _complete(df.toArrow(), chunk)

    # Two chunks in flight: the next chunk's tasks fill the cores while one finishes and is written.
    # Spark Connect reports progress per session, not per job: there, one chunk at a time.
    depth = 1 if is_connect(spark) else 2
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="imgvec-chunk")

    def commit_oldest():
        number, future = pending.popleft()
        _commit(future.result(), dataset, summary, counts)
        in_flight.pop(number, None)

    try:
        pending: deque = deque()
        for number, chunk in enumerate(chunks(todo, chunk_size)):
            pending.append((number, pool.submit(compute, number, chunk)))
            if len(pending) == depth:
                commit_oldest()
        while pending:
            commit_oldest()
        progress.update(summary.skipped + summary.processed, force=True)
    except KeyboardInterrupt:
        cancel_all(spark)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        summary.seconds = time.monotonic() - started
        progress.close()
    dataset.update_counts(counts)
    return summary


def chunk_settings(spark) -> dict[str, str]:
    """Spark settings that split each chunk into one task per task slot, and list it on the driver."""
    settings = {
        # Each Spark task costs ~0.3 s on busy cores: with no byte cap, Spark splits a chunk into
        # spark.sql.files.minPartitionNum tasks (by default the cluster's cores).
        "spark.sql.files.maxPartitionBytes": str(1 << 40),
        # A chunk names its files: list them on the driver, not with a job of one task per file.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": str(1 << 20),
    }
    slots = task_slots(spark)
    if slots:  # one task per slot: per core, or per task of several CPUs (a GPU task)
        settings["spark.sql.files.minPartitionNum"] = str(slots)
    return settings


def cluster_cores(spark) -> int | None:
    """The cores Spark schedules tasks on (None on Spark Connect, which hides them)."""
    return None if is_connect(spark) else spark.sparkContext.defaultParallelism


def task_slots(spark) -> int | None:
    """How many tasks run at once: cores / spark.task.cpus (None on Spark Connect)."""
    cores = cluster_cores(spark)
    if cores is None:
        return None
    return max(1, cores // int(spark.sparkContext.getConf().get("spark.task.cpus", "1")))


def default_chunk_size(spark) -> int:
    """128 images per core: tasks long enough to amortise Spark's per-task cost (Connect hides the cores: 512)."""
    cores = cluster_cores(spark)
    return 128 * cores if cores else DEFAULT_CHUNK_SIZE


def _commit(table: pa.Table, dataset: FeatureDataset, summary: EmbedSummary, counts: dict) -> None:
    """Write one chunk's part, then record the counts: the part is the commit, the metadata follows."""
    dataset.write_part(table)
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    kinds = Counter(e.split(":", 1)[0] for e in errors)
    summary.failed += len(errors)
    summary.succeeded += table.num_rows - len(errors)
    summary.error_kinds.update(kinds)
    counts["total"] += table.num_rows
    counts["failed"] += len(errors)
    counts["succeeded"] += table.num_rows - len(errors)
    counts["error_kinds"] = dict((Counter(counts["error_kinds"]) + kinds).most_common())
    dataset.update_counts(counts)


def cancel_all(spark) -> None:
    try:
        if is_connect(spark):
            spark.interruptAll()
        else:
            spark.sparkContext.cancelAllJobs()
    except Exception:  # already stopping
        pass


def _complete(table: pa.Table, chunk) -> pa.Table:
    """One row per input: an input Spark returned no row for (deleted meanwhile) gets an error row."""
    returned = set(table.column("path").to_pylist())
    missing = [item.path for item in chunk if item.path not in returned]
    if not missing:
        return table
    extra = pa.table({"path": missing, "features": pa.nulls(len(missing), table.schema.field("features").type),
                      "error": [_why_missing(path) for path in missing]})
    return pa.concat_tables([table, extra.cast(table.schema)])


def _why_missing(path: str) -> str:
    local = path.removeprefix("file:")
    if path.startswith("file:") and os.path.isfile(local) and os.path.getsize(local) == 0:
        return "empty: 0 bytes"  # Spark's file sources skip empty files
    return "missing: the input was listed but could not be read"


@contextmanager
def spark_progress(spark, report):
    """Calls report(share of finished tasks) while the block (in this thread) runs its Spark job."""
    if is_connect(spark):
        def handler(stages=None, **_):
            report(_fraction((s.num_completed_tasks, s.num_tasks) for s in stages or []))

        spark.registerProgressHandler(handler)
        try:
            yield
        finally:
            spark.removeProgressHandler(handler)
        return
    context = spark.sparkContext
    group = f"imgvec-{uuid.uuid4().hex[:12]}"
    context.setJobGroup(group, "imgvec embed", interruptOnCancel=True)
    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(context.statusTracker(), group, stop, report), daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join()
        context.setLocalProperty("spark.jobGroup.id", None)


def _poll(status, group: str, stop: threading.Event, report) -> None:
    while not stop.wait(0.5):
        try:
            jobs = sorted(status.getJobIdsForGroup(group))
            job = status.getJobInfo(jobs[-1]) if jobs else None  # the newest: the chunk's own job
            stages = [status.getStageInfo(s) for s in job.stageIds] if job else []
            report(_fraction((s.numCompletedTasks, s.numTasks) for s in stages if s))
        except Exception:  # progress is best effort; the job is what matters
            pass


def _fraction(pairs) -> float:
    done = total = 0
    for completed, tasks in pairs:
        done, total = done + completed, total + tasks
    return done / total if total else 0.0
