"""The feature dataset on disk: Parquet parts [path, features, error] plus `_imgvec.json`.

Every part is written to a hidden temporary name and renamed into place, so a reader (Spark,
pyarrow, pandas: all skip names starting with '_' or '.') sees whole parts or nothing, and a
run killed at any moment leaves a readable dataset that `--resume` can complete.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METADATA = "_imgvec.json"
SCHEMA = pa.schema([("path", pa.string()), ("features", pa.list_(pa.float32())), ("error", pa.string())])


class OutputError(ValueError):
    """The output cannot be used as asked (exists, belongs to another model, ...)."""


class FeatureDataset:
    def __init__(self, location: str):
        self.location = os.path.abspath(location)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.location, METADATA)

    def exists(self) -> bool:
        return os.path.isdir(self.location) and any(not n.startswith(".") for n in os.listdir(self.location))

    def parts(self) -> list[str]:
        return sorted(glob.glob(os.path.join(glob.escape(self.location), "part-*.parquet")))

    def metadata(self) -> dict:
        if not os.path.exists(self.metadata_path):
            raise OutputError(f"{self.location} is not an imgvec output (no {METADATA})")
        with open(self.metadata_path) as f:
            return json.load(f)

    # --- starting a run ----------------------------------------------------------------

    def prepare(self, identity: dict, *, resume: bool, overwrite: bool) -> None:
        """Make the folder ready for a run that writes features made by `identity` (model, weights)."""
        if os.path.exists(self.location) and not os.path.isdir(self.location):
            raise OutputError(f"output {self.location} is a file; give a folder")
        if self.exists():
            if overwrite:
                shutil.rmtree(self.location)
            elif not resume:
                raise OutputError(f"output {self.location} already exists; pass --resume to complete it "
                                  "or --overwrite to replace it")
            else:
                held = self.metadata()
                for key in ("model", "weights_sha256", "dim"):
                    if identity.get(key) is not None and held.get(key) != identity[key]:
                        raise OutputError(
                            f"output {self.location} holds features from {held.get('model')} "
                            f"({held.get('weights')}); resuming with {identity['model']} ({identity['weights']}) "
                            "would mix two models: use another output or --overwrite")
        os.makedirs(self.location, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(self.location), ".tmp-*")):
            os.remove(stale)  # a part that a killed run was writing
        if not os.path.exists(self.metadata_path):
            self.write_metadata({**identity, "created": _now()})

    def done_paths(self) -> set[str]:
        if not self.parts():
            return set()
        return set(pq.read_table(self.parts(), columns=["path"]).column("path").to_pylist())

    # --- writing -----------------------------------------------------------------------

    def write_part(self, table: pa.Table) -> str:
        """Commit one chunk's rows atomically; returns the part's path."""
        table = table.select(["path", "features", "error"]).cast(SCHEMA)
        number = 1 + max((int(os.path.basename(p)[5:10]) for p in self.parts()), default=-1)
        final = os.path.join(self.location, f"part-{number:05d}.parquet")
        temporary = os.path.join(self.location, f".tmp-part-{number:05d}.parquet")
        pq.write_table(table, temporary)
        os.replace(temporary, final)
        return final

    def write_metadata(self, metadata: dict) -> None:
        temporary = self.metadata_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
        os.replace(temporary, self.metadata_path)

    def update_counts(self, counts: dict) -> None:
        self.write_metadata({**self.metadata(), **counts, "updated": _now()})

    # --- reading -----------------------------------------------------------------------

    def read(self, columns=("path", "features", "error")) -> pa.Table:
        if not self.parts():
            return SCHEMA.empty_table().select(list(columns))
        return pq.read_table(self.parts(), columns=list(columns))

    def counts(self) -> dict:
        table = self.read(["error"])
        errors = [e for e in table.column("error").to_pylist() if e is not None]
        kinds = Counter(e.split(":", 1)[0] for e in errors)
        return {"total": table.num_rows, "succeeded": table.num_rows - len(errors), "failed": len(errors),
                "error_kinds": dict(kinds.most_common())}

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Paths and an [N, dim] float32 matrix of the images that have features."""
        table = self.read(["path", "features"])
        table = table.filter(table.column("features").is_valid())
        if table.num_rows == 0:
            return [], np.empty((0, 0), np.float32)
        flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return table.column("path").to_pylist(), flat.reshape(table.num_rows, -1).astype(np.float32, copy=False)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
