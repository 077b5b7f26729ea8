"""An output opened for searching (index, similar, dupes, calibrate): one way, with one set of errors.

Its metadata is read and its parts are listed once (on a store each listing is a request), and
every command that searches it gets the same answer for an output that holds no features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from imgvec.dataset.output import FeatureDataset, open_output
from imgvec.dataset.rows import lookup, part_vectors, rows_of


@dataclass
class Searchable:
    dataset: FeatureDataset
    metadata: dict
    parts: list[str]  # part names, listed once: row ids are made from their positions
    dim: int
    count: int  # images with features

    @property
    def location(self) -> str:
        return self.dataset.location

    @property
    def maker(self) -> tuple:
        """What made the features: outputs of different makers cannot be compared."""
        return self.metadata.get("model"), self.metadata.get("weights_sha256"), self.dim

    def vectors(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and [n, dim] features of part `number`'s rows that have features."""
        return part_vectors(self.dataset.where.child(self.parts[number]), number)

    def rows(self, ids, columns=("path",)) -> pa.Table:
        return rows_of(self.dataset, ids, self.parts, columns)

    def lookup(self, paths, ranges: dict | None = None) -> dict:
        return lookup(self.dataset, paths, self.parts, ranges)

    def sample(self, size: int, into: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and normalised vectors of about `size` rows, from whole parts taken at random (seeded: the same
        sample every time), shuffled: training sets for FAISS, and calibration's originals. Each part is copied into
        one array as it is read (`into`, else a new one) and dropped: a sample of 256 MB (TRAINING_BYTES) costs the
        driver that and one part, whatever the output's size."""
        from imgvec.kernels.similarity import normalise

        rng = np.random.default_rng(0)
        matrix = np.empty((size, self.dim), np.float32) if into is None else into[:size]
        ids, have = [], 0
        for number in rng.permutation(len(self.parts)):
            if have >= size:
                break
            part_ids, part = self.vectors(int(number))
            take = min(len(part_ids), size - have)
            if take:
                ids.append(part_ids[:take])
                matrix[have : have + take] = normalise(part[:take])
                have += take
        ids, matrix = (np.concatenate(ids) if ids else np.empty(0, np.int64)), matrix[:have]
        state = rng.bit_generator.state  # the same draws shuffle the ids and the rows alike
        rng.shuffle(matrix)
        rng.bit_generator.state = state
        rng.shuffle(ids)
        return ids, matrix

def open_searchable(location: str) -> Searchable:
    """OUTPUT to search; a ValueError (one line) when it cannot be reached, is not an output or holds no features."""
    dataset, metadata = open_output(location)
    parts = dataset.part_names()
    if not parts:
        raise ValueError(f"{dataset.location} holds no features yet")
    count = dataset.size(metadata)
    dim = dataset.dim(metadata, parts) if count else None
    if not count or dim is None:
        raise ValueError(f"{dataset.location} holds no features (every image failed)")
    return Searchable(dataset, metadata, parts, dim, count)


def check_comparable(new: Searchable, old: Searchable) -> None:
    """Features of two outputs are comparable only when the same model and weights made them."""
    if new.maker != old.maker:
        raise ValueError(f"{old.location} holds features of another model ({old.maker[0]}, {old.dim}-d, weights "
                         f"{str(old.maker[1])[:12]}) than {new.location} ({new.maker[0]}, {new.dim}-d, weights "
                         f"{str(new.maker[1])[:12]}); embed both with the same --model and --weights")


# A job over an output's parts (index, dupes): each task's part names and their numbers (for row ids).
PARTS_PLAN = pa.schema([("id", pa.int64()), ("parts", pa.list_(pa.string())), ("numbers", pa.list_(pa.int64()))])


def parts_plan(parts: list[str], tasks: int, numbers: list[int] | None = None) -> pa.Table:
    """The parts cut into `tasks` runs of consecutive parts (fewer when there are fewer parts), a row each.

    `numbers`: the parts' numbers for row ids, when `parts` are not all the output's parts (an index update)."""
    numbers = list(range(len(parts))) if numbers is None else numbers
    runs = np.array_split(np.arange(len(parts)), max(1, min(len(parts), tasks)))
    return pa.table({"id": list(range(len(runs))), "parts": [[parts[i] for i in run] for run in runs],
                     "numbers": [[numbers[i] for i in run] for run in runs]}, schema=PARTS_PLAN)
