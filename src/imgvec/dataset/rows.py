"""Row addressing: a row of an output is named by one int64, (part number << 32) | row in that part.

Indexes and duplicate searches hold these 8 bytes per row, never path strings; paths and other
columns are read back from the few parts that hold the answers.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from imgvec.base.storage import Location
from imgvec.dataset.output import FeatureDataset, empty, features_matrix, path_range, read_part


def part_ids(number: int, rows) -> np.ndarray:
    """Row ids of rows of part `number` (its position in the list of part names the ids are made from)."""
    return (np.int64(number) << 32) | np.asarray(rows, np.int64)


def part_vectors(part: Location, number: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids and [n, dim] float32 features of the rows of `part` (number `number`) that have features."""
    rows, matrix = features_matrix(read_part(part, ["features"]).column("features"))
    return part_ids(number, rows), matrix


def rows_of(dataset: FeatureDataset, ids, parts: list[str], columns=("path",)) -> pa.Table:
    """The `columns` of row ids, in their order; `parts` are the part names the ids were made from."""
    ids = np.asarray(ids, np.int64)
    tables, order = [empty(columns)], [np.empty(0, np.int64)]
    for number in np.unique(ids >> 32):
        mine = np.flatnonzero((ids >> 32) == number)
        tables.append(read_part(dataset.where.child(parts[number]), columns).take(ids[mine] & 0xFFFFFFFF))
        order.append(mine)
    return pa.concat_tables(tables).take(np.argsort(np.concatenate(order), kind="stable"))


def lookup(dataset: FeatureDataset, paths, parts: list[str],
           ranges: dict | None = None) -> dict[str, tuple[int, np.ndarray | None]]:
    """Where `paths` are in the output's `parts`: {path: (row id, features or None)}.

    Only parts whose path range may hold one are read: the range from `ranges` ({part: [first, last]},
    as an index records them) or else from the part's footer.
    """
    wanted, found = set(paths), {}
    for number, name in enumerate(parts):
        part = dataset.where.child(name)
        known = (ranges or {}).get(name) or path_range(part)
        if known and not any(known[0] <= p <= known[1] for p in wanted):
            continue
        table = read_part(part, ["path", "features"])
        for row, path in enumerate(table.column("path").to_pylist()):
            if path in wanted:
                features = table.column("features")[row].values
                found[path] = (int(part_ids(number, [row])[0]),
                               None if features is None else features.to_numpy().astype(np.float32))
    return found
