"""What `imgvec dupes` finds, group by group: which files each group keeps, and each other file's witness.

What may be deleted never rests on a chain: inside each group, members in keep order (the first
path, or the largest file) each join the most similar kept file at cosine >= threshold, or are kept
themselves (kernels.witness). So every file `--keep` lists has a kept file of its own group at or above
the threshold, and a group reports its weakest pair. A file kept for its identical copies is kept in
its near group too, so that no witness is itself deleted.

The same functions label a group on the driver (small outputs, --against) and inside a Spark task
(answers.dedup_spark): one group's rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from imgvec.inputs.readback import where
from imgvec.kernels.similarity import normalise
from imgvec.kernels.witness import around_kept, best_partners, keep_order, weakest_pair, witnesses

TABLE = pa.schema([("path", pa.string()), ("group", pa.int64()), ("kind", pa.string()),
                   ("representative", pa.string()), ("similarity", pa.float32()), ("kept_file", pa.string()),
                   ("kept_similarity", pa.float32())])
# with --verify: whether each file's witness pair verified by its pixels (null: not checked), its matching points, and
# why its pixels could not be compared (an image gone or unreadable; null when they were)
VERIFIED_TABLE = pa.schema([*TABLE, ("verified", pa.bool_()), ("matches", pa.int64()), ("verify_error", pa.string())])


@dataclass
class Group:
    kind: str  # "identical" (same bytes) or "near" (cosine >= threshold)
    representative: str  # the first file the group keeps (in keep order)
    # {path, similarity: best pair in the group, bytes, kept_file: the kept file it is a copy of (itself when
    #  kept), kept_similarity: cosine to that file, output: the output it is in}
    members: list[dict] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # every file the group keeps
    weakest: dict | None = None  # {a, b, similarity}: the least similar pair of members


@dataclass
class Duplicates:
    """A result held in memory (small outputs, --against). The command reads every result through the `each_*`
    methods and `counts`, so one stored by Spark's tasks (dedup_spark.StoredDuplicates) streams the same way."""

    groups: list[Group]
    images: int  # images with features
    threshold: float
    how: str  # "exact" or "clustered (K clusters, ...)"
    threshold_source: str = ""  # where the threshold came from: the user, a calibration, the model's default
    seconds: float = 0.0
    verified: bool = False  # every witness pair was checked by its pixels (--verify)
    unverified: list[str] = field(default_factory=list)  # files kept because no kept file verified them
    unreadable: list[str] = field(default_factory=list)  # of those, the ones whose pair's image is gone or unreadable

    def to_delete(self) -> list[str]:
        """Every file that has a kept file of its group at cosine >= threshold: what --keep lists."""
        return sorted({m["path"] for g in self.groups for m in g.members if m["kept_file"] != m["path"]})

    def counts(self) -> dict:
        return {"groups": len(self.groups), "identical": sum(g.kind == "identical" for g in self.groups),
                "delete": len(self.to_delete()), "unverified": len(self.unverified),
                "unreadable": len(self.unreadable)}

    def each_group(self) -> Iterator[Group]:
        """Largest first."""
        yield from self.groups

    def each_deletable(self) -> Iterator[str]:
        """By path."""
        yield from self.to_delete()

    def each_unverified(self, unreadable: bool = False) -> Iterator[str]:
        """By path; `unreadable`: only those whose pair's pixels could not be compared."""
        yield from self.unreadable if unreadable else self.unverified

    def tables(self) -> Iterator[pa.Table]:
        """The rows --out writes (TABLE, VERIFIED_TABLE with --verify), a table at a time."""
        schema = VERIFIED_TABLE if self.verified else TABLE
        yield pa.Table.from_pylist([{"group": n, "kind": g.kind, "representative": g.representative, **m}
                                    for n, g in enumerate(self.groups) for m in g.members], schema=schema)


def evidence(member: dict) -> str:
    """The pixel verifier's word on a file's witness pair (dupes --verify), as the listing and the page say it."""
    if member.get("verified") is None:
        return ""
    problem = member.get("verify_error")
    if problem:  # the pixels could not be compared at all: say why, not "0 matching points"
        return f"not verified: {problem}" + ("; restore it or embed again without it" if "missing:" in problem else "")
    return (f"verified: {member['matches']} matching points" if member["verified"]
            else f"not verified ({member['matches']} matching points)")


def group_order(group: Group) -> tuple:
    """Largest first, then identical before near, then by the first kept file."""
    return -len(group.members), group.kind, group.representative


def label_identical(rows: list[dict], keep: str, checked: bool) -> tuple[Group, int]:
    """One group of byte-identical files ({path, bytes, input, source[, output]}): its Group, and the position of the
    file it keeps. `checked` (--verify): the same bytes need no pixels, said so in the verify columns."""
    kept = keep_order(rows, keep)[0]
    unchecked = {"verified": None, "matches": None, "verify_error": None} if checked else {}
    members = [{**_member_fields(row), "similarity": 1.0, "kept_file": rows[kept]["path"], "kept_similarity": 1.0,
                **unchecked} for row in rows]
    weakest = {"a": rows[0]["path"], "b": rows[1]["path"], "similarity": 1.0}
    return _group("identical", members, [rows[kept]["path"]], weakest), kept


def label_near(candidates: list[list[dict]], keep: str, threshold: float, check=None):
    """Near-duplicate candidates (each a list of rows {path, bytes, input, source, features, forced[, output]}:
    one component of the links) -> (groups formed around their kept files, files kept unverified, those of them
    whose pixels could not be compared)."""
    prepared = []
    for rows in candidates:
        order = keep_order(rows, keep)
        rows = [rows[k] for k in order]
        vectors = normalise(np.stack([row["features"] for row in rows]))
        prepared.append((rows, vectors, np.array([row["forced"] for row in rows])))
    assigned, verdicts = _choose_witnesses(prepared, threshold, check)
    result, unverified, unreadable = [], [], []
    for (rows, vectors, _), (leader, similarity, refused) in zip(prepared, assigned, strict=True):
        for positions in around_kept(vectors, leader):
            members_rows = []
            for position, best in zip(positions, best_partners(vectors[positions]).tolist(), strict=True):
                kept = rows[leader[position]]
                row = {**_member_fields(rows[position]), "similarity": round(float(best), 6), "kept_file": kept["path"],
                       "kept_similarity": round(float(similarity[position]), 6)}
                if check:
                    tried = [verdicts[_place(rows[k]), _place(rows[position])] for k in refused.get(position, ())]
                    verdict = (verdicts[_place(kept), _place(rows[position])] if leader[position] != position
                               else max(tried, key=lambda v: (v.error is None, v.matches)) if tried else None)
                    row.update(verified=verdict and verdict.verified, matches=verdict and verdict.matches,
                               verify_error=verdict and verdict.error)
                    if tried and leader[position] == position:
                        unverified.append(rows[position]["path"])
                        if verdict.error:  # no kept file's pixels could be compared with it
                            unreadable.append(rows[position]["path"])
                members_rows.append(row)
            kept_paths = [rows[p]["path"] for p in positions if leader[p] == p]
            a, b, weakest = weakest_pair(vectors[positions])
            result.append(_group("near", members_rows, kept_paths, {"a": rows[positions[a]]["path"],
                                                                     "b": rows[positions[b]]["path"],
                                                                     "similarity": round(float(weakest), 6)}))
    return result, unverified, unreadable


def _choose_witnesses(candidates: list, threshold: float, check):
    """Per candidate group (rows, vectors and forced files in keep order): (leader, similarity, refused: {position:
    kept positions whose pixels did not verify it}), and the verdicts. With `check`, in rounds: every witness pair
    not yet verified is checked at once (one job), the refused ones are taken out, and the witnesses are chosen
    again, until every witness is verified; a file that no kept file verifies is kept."""
    refused = [set() for _ in candidates]
    verdicts = {}
    while True:
        assigned = [witnesses(vectors, threshold, forced, refused[g])
                    for g, (_, vectors, forced) in enumerate(candidates)]
        if check is None:
            return [(leader, similarity, {}) for leader, similarity in assigned], verdicts
        pairs = {(g, int(k), i) for g, (leader, _) in enumerate(assigned) for i, k in enumerate(leader) if k != i}
        paths = {(g, k, i): (_place(candidates[g][0][k]), _place(candidates[g][0][i])) for g, k, i in pairs}
        needed = sorted({pair for pair in paths.values() if pair not in verdicts})
        if not needed:
            break
        verdicts.update(check(needed))
        for (g, k, i), pair in paths.items():
            if not verdicts[pair].verified:
                refused[g].add((k, i))
    result = []
    for (leader, similarity), pairs in zip(assigned, refused, strict=True):
        tried = {}
        for k, i in pairs:
            tried.setdefault(i, []).append(k)
        result.append((leader, similarity, tried))
    return result, verdicts


def _group(kind: str, rows: list[dict], kept: list[str], weakest: dict) -> Group:
    """`kept` in keep order: the first represents the group; members and kept files are listed by path."""
    return Group(kind, kept[0], sorted(rows, key=lambda m: m["path"]), sorted(kept), weakest)


def _member_fields(row: dict) -> dict:
    shown = {"path": row["path"], "bytes": row["bytes"], **({"input": row["input"]} if row.get("input") else {})}
    return {**shown, "output": row["output"]} if "output" in row else shown


def _place(row: dict) -> str:
    """Where a row's image is read again (its pixels verified, its thumbnail made)."""
    return where(row["path"], row.get("input"))
