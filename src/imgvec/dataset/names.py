"""Every file name of an output, built and parsed here and nowhere else.

OUTPUT/
  _imgvec.json                       what made the features (dataset.output)
  _imgvec.lock                       the run writing it now (dataset.lock)
  part-<run>-<piece>-<n>.parquet     the n-th shard of a task's piece of the inputs (batch.shard)
  .tmp-<random>-<name>               a file being written (storage.Location.write_with)
  _imgvec_index/                     the nearest-neighbour index (answers.index):
    index.json                         its description
    trained-<build>.faiss              the trained, empty index
    queries-<build>.npz                held-out queries
    truth-<build>-<n>.npz              their exact neighbours among the vectors of update n (0: the build)
    segment-<build>-<n>.faiss          the vectors of some parts (`shard-…` before imgvec-index/2)
  _imgvec_inputs/                    what `imgvec embed` listed, too long for its plan (inputs.pieces.write_listing):
    files.parquet                      a flat folder's files, listed again by each run
    manifest-<key>.parquet             a compressed manifest, converted once (key: its URI, size and time)
  _imgvec_dupes/                     the last `imgvec dupes` on Spark (answers.dedup_spark):
    groups/ members/ delete/ unverified/   its result, part-<partition>.parquet files in order
    work-<random>/                     its stages while it runs

A "piece" is what one task of `imgvec embed` reads (a folder, a row group, a tar...), a "shard" at most
--shard-size of its images, written as one part; an index is stored in "segments".
"""

from __future__ import annotations

import re

METADATA = "_imgvec.json"
LOCK = "_imgvec.lock"
INDEX = "_imgvec_index"
INDEX_DESCRIPTION = "index.json"
DUPES = "_imgvec_dupes"
INPUTS = "_imgvec_inputs"

# part-<run>-<piece>-<n>; part-<run>-<shard> before format /3; format /1 had no run
_PART = re.compile(r"part-(?:([0-9]+)-)?([0-9]+)(?:-([0-9]+))?\.parquet")
_TEMPORARY = re.compile(r"\.tmp-.*")
_INDEX_FILE = re.compile(r"(trained|queries|segment|shard|truth)-([0-9a-f]+)(?:-([0-9]+))?\.(?:faiss|npz)")


def part(run: int, piece: int, shard: int) -> str:
    return f"part-{run:04d}-{piece:06d}-{shard:04d}.parquet"


def is_part(name: str) -> bool:
    return _PART.fullmatch(name) is not None


def part_run(name: str) -> int | None:
    """The run that wrote a part (None for a part of format /1, which had no run number)."""
    match = _PART.fullmatch(name)
    return int(match.group(1)) if match and match.group(1) else None


def is_temporary(name: str) -> bool:
    return _TEMPORARY.fullmatch(name) is not None


def trained(build: str) -> str:
    return f"trained-{build}.faiss"


def queries(build: str) -> str:
    return f"queries-{build}.npz"


def truth(build: str, update: int) -> str:
    return f"truth-{build}-{update}.npz"


def segment(build: str, number: int) -> str:
    return f"segment-{build}-{number}.faiss"


def is_index_file(name: str) -> bool:
    """A file imgvec writes into an output's index folder."""
    return name == INDEX_DESCRIPTION or _INDEX_FILE.fullmatch(name) is not None or is_temporary(name)


def listing(key: str) -> str:
    return f"{key}.parquet"


def is_inputs_file(name: str) -> bool:
    """A file imgvec writes into an output's inputs folder."""
    return re.fullmatch(r"(files|(manifest|inventory)-[0-9a-f]{16})\.parquet", name) is not None or is_temporary(name)


def is_dupes_file(name: str) -> bool:
    """A file imgvec writes into an output's dupes folder: a stage's part (or what a task that died was writing),
    the centroids."""
    return re.fullmatch(r"(\.tmp-[0-9a-f]{8}-)?part-[0-9]{6,}\.parquet|centroids\.npz", name) is not None
