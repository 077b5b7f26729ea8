"""Pages a person can decide from: one self-contained HTML file of thumbnails for `dupes` and `similar`.

No server and no network when opened: every thumbnail is a `data:` JPEG in the page, a little CSS,
no script. Thumbnails are made from the images read again (inputs.readback: a file, a tar's member, a table's
row; local or in a store): on Spark's workers
when there are many, in this process (a few threads) when there are few. An image that can no
longer be read is shown as its path and the reason.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from imgvec.base.settings import RunOptions
from imgvec.inputs.readback import read_back, read_back_one, where
from imgvec.inputs.tars import split_member_path
from imgvec.spark.tasks import RowTask

THUMBNAIL = 256  # pixels, the longer side
IN_PROCESS = 200  # up to this many thumbnails no Spark job is worth starting
PAGE_MEMBERS = 60  # cards of one group on the dupes page: the rest are counted
THUMBNAILS = pa.schema([("path", pa.string()), ("jpeg", pa.binary()), ("width", pa.int64()),
                        ("height", pa.int64()), ("error", pa.string())])
PLAN = pa.schema([("id", pa.int64()), ("paths", pa.list_(pa.string()))])


def thumbnail(place: str, data: bytes | str) -> dict:
    """{path: place, jpeg, width, height, error}: a JPEG of at most THUMBNAIL px and the image's own pixel size.
    `data`: the image's bytes, or why they could not be read (inputs.readback)."""
    from PIL import Image

    from imgvec.inputs.decode import decode_image

    if isinstance(data, str):
        return _unreadable(place, data)
    image = decode_image(data, draft=THUMBNAIL)
    if isinstance(image, str):
        return _unreadable(place, image)
    with Image.open(io.BytesIO(data)) as original:
        width, height = original.size  # the file's own size, not the draft decode's
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return {"path": place, "jpeg": buffer.getvalue(), "width": width, "height": height, "error": None}


def _unreadable(path: str, why: str) -> dict:
    return {"path": path, "jpeg": None, "width": None, "height": None, "error": why}


def _thumbnails_of(places: list[str]) -> list[dict]:
    """Thumbnails, each tar among the places streamed once."""
    tars = read_back([p for p in places if split_member_path(p)])
    with ThreadPoolExecutor(4, thread_name_prefix="imgvec-thumbnail") as pool:
        return list(pool.map(lambda p: thumbnail(p, tars[p] if p in tars else read_back_one(p)), places))


@dataclass(frozen=True)
class ThumbnailTask(RowTask):
    """Thumbnails of a task's places, on a worker."""

    RESULT: ClassVar[pa.Schema] = THUMBNAILS

    def run(self, rows):
        for row in rows:
            yield pa.RecordBatch.from_pylist(_thumbnails_of(row["paths"]), schema=THUMBNAILS)


def thumbnails(places: list[str], run: RunOptions = RunOptions()) -> dict[str, dict]:
    """{place: its thumbnail}, on Spark's workers when there are many. A place is where an image is read again
    (inputs.readback.where: its path, or a table's row)."""
    places = sorted(set(places))
    if len(places) <= IN_PROCESS:
        return {t["path"]: t for t in _thumbnails_of(places)}
    from imgvec.spark.session import session
    from imgvec.spark.tasks import run_tasks

    tasks = max(1, len(places) // 100)
    plan = pa.table({"id": list(range(tasks)), "paths": [places[i::tasks] for i in range(tasks)]}, schema=PLAN)
    with session(run) as spark:
        made = run_tasks(spark, plan, ThumbnailTask())
    return {t["path"]: t for t in made.to_pylist()}


# --- pages ------------------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;background:#f6f6f4;color:#222}
h1{font-size:20px;margin:0 0 4px} .summary{color:#555;margin-bottom:20px}
section{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px 16px;margin:0 0 18px}
h2{font-size:15px;margin:0 0 10px} h2 small{font-weight:normal;color:#666}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{width:260px;border:2px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
.card.keep{border-color:#2e8b57} .card.copy{border-color:#c0504d} .card.query{border-color:#3a6ea5}
.card.more{display:flex;align-items:center;justify-content:center;text-align:center;border-style:dashed;color:#444}
.card img{display:block;max-width:256px;max-height:256px;margin:0 auto 6px}
.missing{height:120px;display:flex;align-items:center;justify-content:center;text-align:center;
 background:#eee;color:#a33;font-size:12px;padding:6px;margin-bottom:6px;word-break:break-all}
.badge{display:inline-block;font-weight:bold;font-size:12px;padding:1px 6px;border-radius:4px;color:#fff}
.keep .badge{background:#2e8b57} .copy .badge{background:#c0504d} .query .badge,.match .badge{background:#3a6ea5}
.name{font-weight:600;word-break:break-all} .path{color:#666;font-size:11px;word-break:break-all}
.facts{color:#444;font-size:12px}
.evidence{font-size:12px;font-weight:600;margin-top:4px} .evidence.yes{color:#2e8b57} .evidence.no{color:#a33}
"""


def dupes_page(found, show: int, out: str | None, run: RunOptions = RunOptions()) -> str:
    """The largest `show` groups of a Duplicates result, each with at most PAGE_MEMBERS members (its kept files
    first) and its kept file marked: a page of bounded size, whatever the result's."""
    from imgvec.answers.dedup import evidence

    shown = list(itertools.islice(found.each_group(), show))
    members = [g.members if len(g.members) <= PAGE_MEMBERS else  # a large group: its kept files first
               sorted(g.members, key=lambda m: m["kept_file"] != m["path"])[:PAGE_MEMBERS] for g in shown]
    pictures = thumbnails([where(m["path"], m.get("input")) for listed in members for m in listed], run)
    counts = found.counts()
    more = counts["groups"] - len(shown)
    lines = [f"{_count(counts['groups'], 'group')} among {found.images} images at cosine &ge; {found.threshold} "
             f"({_text(found.threshold_source or 'given')}); search: {_text(found.how)}.",
             f"{_count(counts['delete'], 'file')} would be deleted by <code>--keep</code>: each has a kept file of "
             "its group at or above the threshold, shown on its card" + (", whose pixels verify it."
                                                                         if found.verified else ".")]
    if found.verified:
        lines.append(f"{_count(counts['unverified'], 'file')} kept unverified: near a kept file by cosine, but no "
                     "kept file's pixels match" + (f" ({counts['unreadable']} of them because an image is gone or "
                                                   "unreadable)." if counts["unreadable"] else "."))
    if more:
        lines.append(f"This page shows the {len(shown)} largest groups; {more} more are in "
                     + (f"<code>{_text(out)}</code>." if out else "the output of <code>--out FILE</code>."))
    sections = []
    for n, (group, listed) in enumerate(zip(shown, members, strict=True), 1):
        weakest = group.weakest["similarity"] if group.weakest else 1.0
        cards = []
        for m in listed:
            kept = m["kept_file"] == m["path"]
            badge = "KEEP" if kept else f"copy, cosine {m['kept_similarity']:.3f} to {_name(m['kept_file'])}"
            cards.append(_card(pictures[where(m["path"], m.get("input"))], "keep" if kept else "copy", badge,
                               m["path"], m.get("bytes"), m.get("output"), evidence(m)))
        rest = len(group.members) - len(listed)
        if rest:
            listing = f"<code>{_text(out)}</code>" if out else "<code>--out FILE</code>"
            cards.append(f"<div class='card more'><span>and {rest} more: {listing} lists them</span></div>")
        sections.append(f"<section><h2>Group {n}: {group.kind}, {len(group.members)} images, "
                        f"{len(group.kept)} kept <small>(weakest pair {weakest:.3f})</small></h2>"
                        f"<div class=cards>{''.join(cards)}</div></section>")
    return _page("imgvec dupes", lines, sections)


def similar_page(how: str, results: list[dict]) -> str:
    """Each query with its matches, best first."""
    queries = [r for r in results if not r.get("text")]
    pictures = thumbnails([where(r["query"], r.get("input")) for r in queries]
                          + [where(m["path"], m.get("input")) for r in results for m in r["matches"]])
    sections = []
    for result in results:
        if result.get("text"):  # a text query has no picture: its words stand in the card
            cards = [f"<div class='card query'><div class=missing style='color:#222;font-size:15px'>"
                     f"&ldquo;{_text(result['query'])}&rdquo;</div><span class=badge>TEXT QUERY</span></div>"]
        else:
            cards = [_card(pictures[where(result["query"], result.get("input"))], "query", "QUERY", result["query"],
                           result["bytes"] if "bytes" in result else _size(result["query"]))]
        cards += [_card(pictures[where(m["path"], m.get("input"))], "match", f"#{m['rank']}, cosine "
                        f"{m['similarity']:.3f}", m["path"], m["bytes"]) for m in result["matches"]]
        sections.append(f"<section><h2>{_text(_name(result['query']))}</h2><div class=cards>{''.join(cards)}</div>"
                        "</section>")
    return _page("imgvec similar", [f"{_count(len(results), 'query', 'queries')}; search: {_text(how)}."], sections)


def _card(picture: dict, kind: str, badge: str, path: str, size: int | None, output: str | None = None,
          evidence: str = "") -> str:
    if picture["jpeg"] is not None:
        image = (f"<img alt='{_text(_name(path))}' src='data:image/jpeg;base64,"
                 f"{base64.b64encode(picture['jpeg']).decode()}'>")
        pixels = f"{picture['width']} x {picture['height']} px"
    else:
        image = f"<div class=missing>cannot be shown: {_text(picture['error'])}</div>"
        pixels = None
    facts = ", ".join(x for x in (_bytes(size) if size is not None else None, pixels) if x)
    where = f"<div class=path>in {_text(output)}</div>" if output else ""
    return (f"<div class='card {kind}'>{image}<span class=badge>{_text(badge)}</span>"
            f"<div class=name>{_text(_name(path))}</div><div class=path>{_text(path)}</div>"
            f"<div class=facts>{facts}</div>{where}"
            + (f"<div class='evidence {'yes' if evidence.startswith('verified') else 'no'}'>{_text(evidence)}</div>"
               if evidence else "") + "</div>")


def _page(title: str, lines: list[str], sections: list[str]) -> str:
    summary = "".join(f"<div>{line}</div>" for line in lines)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
            f"<style>{STYLE}</style></head><body><h1>{title}</h1><div class=summary>{summary}</div>"
            f"{''.join(sections)}</body></html>\n")


def _size(path: str) -> int | None:
    """The size of a query image that is not in the output (a file given by its path)."""
    from imgvec.base.storage import open_location

    try:
        return open_location(path).info().size
    except (OSError, ValueError):
        return None


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _name(path: str) -> str:
    return os.path.basename(path.rstrip("/")) or path


def _bytes(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _text(value) -> str:
    return html.escape(str(value), quote=True)
