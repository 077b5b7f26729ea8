"""What the commands print: their summaries and tables, made from what the library returns."""

from __future__ import annotations


def count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def embed_summary(summary) -> str:
    """embed's summary: images, rate, failures by kind, and where the tasks' time went."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in summary.error_kinds.most_common(5))
    lines = [f"imgvec embed: {summary.processed} images in {summary.seconds:.1f} s ({summary.rate:.2f} images/s)",
             f"  succeeded {summary.succeeded}, failed {summary.failed}" + (f" ({kinds})" if kinds else "")]
    if summary.skipped:
        lines.append(f"  {summary.skipped} already in the output (resumed)")
    if summary.repeated:
        lines.append(f"  {count(summary.repeated, 'repeated entry', 'repeated entries')} of the manifest skipped: "
                     "each path is embedded once")
    if summary.tasks:
        spent = summary.task_seconds
        lines.append(f"  time in {count(summary.tasks, 'task')}: reading {spent['read']:.1f} s, decoding and the "
                     f"network {spent['compute']:.1f} s, writing {spent['write']:.1f} s (summed; reading overlaps)")
    lines.append(f"  output: {summary.output} ({summary.total} images)")
    return "\n".join(lines)


def calibration_text(result: dict) -> str:
    """calibrate's table as it prints it: every 0.05 and the recommended threshold (--json has every 0.01)."""
    kinds = list(result["edits"])
    lines = [f"imgvec calibrate: {result['originals']} originals x {len(kinds)} edits of {result['images']} images "
             f"({result['model']}), {result['pairs_checked']} of its pairs checked by their pixels, in "
             f"{result['seconds']:.1f} s",
             "threshold  " + " ".join(f"{k:>6}" for k in kinds) + "  recall  verifier  true pairs  false pairs  "
             f"precision  (>= bound)   (pairs expected at {result['images']} images)"]
    for row in result["table"]:
        chosen = row["threshold"] == result["threshold"]
        if not chosen and round(row["threshold"] * 100) % 5:
            continue
        lines.append(f"{row['threshold']:>9.2f}  " + " ".join(f"{row['recall_by_edit'][k]:>6.2f}" for k in kinds)
                     + f"  {row['recall']:>6.2f}  {row['verifier_recall']:>8.2f}  {row['expected_true_pairs']:>10.4g}"
                     f"  {row['expected_false_pairs']:>11.4g}  {row['precision']:>9.4f}  "
                     f"{row['precision_lower_bound']:>10.4f}" + ("  <- recommended" if chosen else ""))
    if not result["reached"]:
        lines.append(f"no threshold up to 0.99 keeps precision {result['precision']} (its lower bound): the highest "
                     "is recorded")
    lines.append(f"threshold {result['threshold']}: recall {result['recall']:.2f}, precision "
                 f"{result['expected_precision']:.4f} (>= {result['precision_lower_bound']:.4f}), "
                 f"{result['expected_false_pairs']:.4g} false pairs expected at {result['images']} images; recorded "
                 f"in {result['output']}, imgvec dupes uses it from now on")
    return "\n".join(lines)
