"""`imgvec`: embed images into a feature dataset, then find similar images and near-duplicates.

Thin: arguments -> the library. Exit 0 when the run completed (bad images are rows with errors),
2 for a usage or configuration error (one line, no traceback), 3 when --max-error-rate is
exceeded, 130 when interrupted, 141 (128 + SIGPIPE, as a shell reports `yes | head -1`) when the reader of
its output went away (`| head`, a closed pager): then it stops quietly, as coreutils do.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import sys
import warnings

from imgvec.base import defaults
from imgvec.base.settings import FeatureSettings
from imgvec.cli.parser import UsageError, parse_args, run_options
from imgvec.cli.text import calibration_text, count, embed_summary

EXIT_USAGE, EXIT_ERROR_RATE, EXIT_INTERRUPTED, EXIT_READER_GONE = 2, 3, 130, 141


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        args = parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as error:
        return _fail(str(error))
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        print("\nimgvec: interrupted; finished shards are kept, run again with --resume to complete",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as error:  # configuration: WeightsUnavailable, OutputError, ...
        return _fail(str(error))
    except Exception as error:
        from pyspark.errors import AnalysisException

        if isinstance(error, AnalysisException):  # e.g. a glob that matches nothing
            return _fail(error.getMessage() if hasattr(error, "getMessage") else str(error))
        raise


def entry() -> None:
    """The `imgvec` command: main(), then exit without tearing down torch's and pyspark's modules.

    That teardown takes ~0.8 s and does nothing a command needs: its files are closed, and Spark's JVM
    stops by itself when this process's pipe to it closes (so the command does not wait for it to stop
    either: jvm.ends_with_process). The exit handlers still run.
    """
    from imgvec.spark import jvm

    jvm.ends_with_process = True
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # what was still buffered found no reader
        code = _reader_gone()
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def _reader_gone() -> int:
    """The reader of stdout went away: nothing more is written there, and nothing is said about it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere rather than raising again
        os.close(devnull)
    except (OSError, ValueError):  # a stdout that is no file (a caller's capture)
        pass
    return EXIT_READER_GONE


_library_show_warning = warnings.showwarning


def _show_warning(message, category, *args, **kwargs):
    """imgvec's own warnings in one line, like its errors; others as Python prints them."""
    if category.__module__.startswith("imgvec"):
        print(f"imgvec: warning: {message}", file=sys.stderr)
    else:
        _library_show_warning(message, category, *args, **kwargs)


def _fail(message: str) -> int:
    line = (message.strip().splitlines() or ["failed"])[0]
    line = "".join(c for c in line if c.isprintable())  # a last guard: messages are made clean where they arise
    print(f"imgvec: error: {line}", file=sys.stderr)
    return EXIT_USAGE


def run_embed(args) -> int:
    run = run_options(args)
    if args.max_error_rate is not None and not 0 <= args.max_error_rate <= 1:
        raise UsageError("--max-error-rate is a share between 0 and 1, e.g. 0.05")
    from imgvec.spark import session

    session.start_early(run)  # the JVM starts while torch is imported and the arguments checked
    try:
        from imgvec.batch.embed import embed_job

        summary = embed_job(args.inputs, args.output, FeatureSettings.of(args), run, glob=args.glob, table=args.table,
                            binary_col=args.binary_col, path_col=args.path_col, manifest=args.manifest,
                            prefix=args.prefix, keep_columns=args.keep_columns, resume=args.resume,
                            overwrite=args.overwrite, shard_size=args.shard_size)
    finally:
        session.drop_early()  # unused: the command failed first, or had nothing to do
    print(embed_summary(summary))
    rate = summary.failed / summary.processed if summary.processed else 0.0
    if args.max_error_rate is not None and rate > args.max_error_rate:
        print(f"imgvec: error rate {rate:.1%} is above --max-error-rate {args.max_error_rate:.1%}", file=sys.stderr)
        return EXIT_ERROR_RATE
    return 0


def run_index(args) -> int:
    from imgvec.answers.index import build_index

    built = build_index(args.output, kind=args.index_type, memory=args.memory, rebuild=args.rebuild,
                        run=run_options(args))
    setting = "".join(f", {name} {built[name]}" for name in ("nprobe", "ef_search") if name in built)
    what = "built" if built["updates"] == 0 else f"updated: {count(built['added'], 'vector')} added without retraining"
    print(f"imgvec index: {built['type']} index of {built['count']} vectors in {built['seconds']:.1f} s, {what} "
          f"({built['factory']}{setting}; {count(len(built['segments']), 'segment')})")
    print(f"  recall@10 {built['recall_at_10']:.3f} against exact search on "
          f"{count(built['queries'], 'held-out query', 'held-out queries')}")
    if built["advice"]:
        print(f"  {built['advice']}")
    return 0


def run_similar(args) -> int:
    from imgvec.answers.similar import find_similar

    page = _new_file(args.html, "--html") if args.html else None
    how, results = find_similar(args.output, args.queries, args.k, exact=args.exact, texts=args.text)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"search: {how}")
        for result in results:
            print(f"query: {result['query']!r} (text)" if result.get("text") else f"query: {result['query']}")
            for m in result["matches"]:
                print(f"  {m['rank']:3d}  {m['similarity']:.4f}  {m['path']}")
    if page is not None:
        from imgvec.answers.gallery import similar_page

        page.write_bytes(similar_page(how, results).encode())
        print(f"page written to {page.uri}", file=sys.stderr)
    return 0


def run_dupes(args) -> int:
    from imgvec.answers.dedup import evidence, find_duplicates

    out = _new_file(args.out, "--out") if args.out else None
    page = _new_file(args.html, "--html") if args.html else None
    if args.show < 1:
        raise UsageError("--show is how many groups to show, at least 1")
    found = find_duplicates(args.output, args.threshold, keep=args.keep or defaults.KEEP, exact=args.exact,
                            clusters=args.clusters, against=args.against, verify=args.verify, run=run_options(args))
    if out is not None:
        out.write_with(lambda path, fs: _write_tables(found.tables(), path, fs))
    if found.threshold_source != "given":
        print(f"imgvec: threshold {found.threshold}: {found.threshold_source}", file=sys.stderr)
    counts = found.counts()
    summary = (f"{count(counts['groups'], 'group')} among {found.images} images (cosine >= {found.threshold}; "
               f"{found.how}; {found.seconds:.1f} s): {counts['identical']} of byte-identical files, "
               f"{counts['groups'] - counts['identical']} of near-duplicates")
    if found.verified:
        summary += (f"; every file to delete verified by its pixels, {count(counts['unverified'], 'file')} kept "
                    "unverified" + (f" ({counts['unreadable']} of them because an image is gone or unreadable)"
                                    if counts["unreadable"] else ""))
    if args.json:  # streamed: one group in memory at a time
        head = {"images": found.images, "threshold": found.threshold, "threshold_source": found.threshold_source,
                "search": found.how}
        lists = {"groups": (vars(g) for g in found.each_group()),
                 **({"delete": found.each_deletable()} if args.keep else {}),
                 **({"unverified": found.each_unverified(), "unreadable": found.each_unverified(unreadable=True)}
                    if found.verified else {})}
        _print_json(head, lists)
    elif args.keep:  # the list alone on stdout, to read or to pipe; the summary on stderr
        print(summary + f"; {counts['delete']} files to delete, each with a kept file of its group at "
              f"cosine >= {found.threshold} (kept: the {args.keep} of each)", file=sys.stderr)
        for path in found.each_deletable():
            print(path)
    else:
        print(summary)
        for n, group in enumerate(itertools.islice(found.each_group(), args.show), 1):
            weakest = f", weakest pair {group.weakest['similarity']:.4f}" if group.kind == "near" else ""
            print(f"group {n} ({group.kind}, {len(group.members)} images{weakest})")
            for member in group.members[: args.show]:
                said = evidence(member)
                if member["kept_file"] == member["path"]:
                    print(f"  {member['similarity']:.4f}  {member['path']}  (keep{', ' + said if said else ''})")
                else:
                    copy = "" if len(group.kept) == 1 else f"copy of {member['kept_file']}"
                    about = ", ".join(x for x in (copy, said) if x)
                    print(f"  {member['kept_similarity']:.4f}  {member['path']}" + (f"  ({about})" if about else ""))
            if len(group.members) > args.show:
                print(f"  ... and {len(group.members) - args.show} more")
        if counts["groups"] > args.show:
            print(f"... and {counts['groups'] - args.show} smaller groups" + ("" if args.out else " (--out FILE "
                  "writes every group)"))
    if out is not None:
        print(f"groups written to {out.uri}", file=sys.stderr)
    if page is not None:
        from imgvec.answers.gallery import dupes_page

        page.write_bytes(dupes_page(found, args.show, out.uri if out else None, run_options(args)).encode())
        print(f"page written to {page.uri}", file=sys.stderr)
    return 0


def _write_tables(tables, path: str, fs) -> None:
    """Tables of one schema into one Parquet file, a table at a time."""
    import pyarrow.parquet as pq

    writer = None
    for table in tables:
        writer = writer or pq.ParquetWriter(path, table.schema, filesystem=fs)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def _print_json(head: dict, lists: dict) -> None:
    """One JSON object, its `lists` (name -> iterator) streamed item by item."""
    print("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()), end="")
    for name, items in lists.items():
        print(f", {json.dumps(name)}: [", end="")
        for n, item in enumerate(items):
            print(("," if n else "") + "\n  " + json.dumps(item), end="")
        print("]", end="")
    print("}")


def run_calibrate(args) -> int:
    if args.old_precision is not None:  # the old name of --min-precision, which embed's --precision is not
        print("imgvec: warning: calibrate's --precision is now --min-precision; the old name still works",
              file=sys.stderr)
        args.min_precision = args.old_precision
    if args.sample < 2:
        raise UsageError("--sample is how many originals to edit, at least 2")
    if not 0 < args.min_precision < 1:
        raise UsageError("--min-precision is a share between 0 and 1, e.g. 0.99")
    run = run_options(args)
    from imgvec.spark import session

    session.start_early(run)  # the JVM starts while the sample is read; its start-up lines held back
    try:
        from imgvec.answers.calibrate import calibrate

        result = calibrate(args.output, sample=args.sample, min_precision=args.min_precision, run=run)
    finally:
        session.drop_early()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(calibration_text(result))
    return 0


def _new_file(text: str, flag: str):
    """Where --out or --html writes, checked before any work: never over an existing file."""
    from imgvec.base.storage import check_reachable, open_location

    where = open_location(text)
    check_reachable(where, flag)
    if where.info().type != where.info().type.NotFound:
        raise UsageError(f"{flag} {where.uri} already exists; give a new file name")
    if where.is_local and not os.path.isdir(os.path.dirname(where.path)):
        raise UsageError(f"{flag} {where.uri}: its folder does not exist")
    return where


def run_models(args) -> int:
    from imgvec.models.registry import PRESETS, get_model, list_models
    from imgvec.models.weights import available_offline

    rows = []
    for name in [e.name for e in list_models()] + sorted(PRESETS):
        try:
            entry, missing = get_model(name), None
        except ValueError as error:  # a preset whose library is not installed
            entry, missing = None, str(error)
        rows.append({"name": name, "dim": entry and entry.dim,
                     "weights_offline": bool(entry) and available_offline(entry),
                     "description": missing or entry.description, "licence": entry.licence if entry else "",
                     "use": entry.use if entry else "",
                     "dupes_threshold": defaults.THRESHOLDS.get(name, defaults.THRESHOLD),
                     "threshold_measured": name in defaults.THRESHOLDS})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<20} {'dim':>5}  {'offline':<7}  {'dupes':<6}  description")
    for r in rows:
        threshold = f"{r['dupes_threshold']}{'' if r['threshold_measured'] else '*'}"
        about = r["description"] + (f"; {r['use']}; {r['licence']}" if r["use"] else "")
        print(f"{r['name']:<20} {r['dim'] or '?':>5}  {'yes' if r['weights_offline'] else 'no':<7}  "
              f"{threshold:<6}  {about}")
    print("offline: whether pretrained weights are on this machine now (else they download on first use)")
    print("dupes: the threshold imgvec dupes uses for an output not calibrated (* not measured for this model; "
          "imgvec calibrate OUTPUT measures one on your images)")
    print("also: --model timm:NAME (any timm model, its pooled embedding; pip install \"imgvec[timm]\"), "
          "--model open_clip:ARCH/PRETRAINED (the image tower; text queries with similar --text; "
          "pip install \"imgvec[clip]\"), --model torchscript:PATH (your own TorchScript file)")
    return 0


def run_info(args) -> int:
    from imgvec.answers.index import IndexProblem, NeighbourIndex
    from imgvec.dataset.output import open_output

    dataset, metadata = open_output(args.output)
    parts = dataset.part_names()
    info = {**metadata, **dataset.counts(), "location": dataset.location, "parts": len(parts),
            "dim": dataset.dim(metadata, parts)}
    try:
        index = NeighbourIndex.open(dataset, metadata=metadata, parts=parts)
        info["index"] = index.summary if index else "none (imgvec index builds one)"
    except IndexProblem as problem:  # info describes the output; the index's problem is part of that
        info["index"] = f"unusable: {problem}"
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        calibration = info.get("calibration")
        info["threshold"] = (f"{calibration['threshold']} (imgvec calibrate, {calibration['created']})" if calibration
                             else "not calibrated (imgvec calibrate measures one)")
        for key in ("location", "model", "model_id", "library", "library_version", "dim", "weights", "weights_sha256",
                    "precision", "engine", "engine_version", "draft", "imgvec_version", "created", "updated", "parts",
                    "total", "succeeded", "failed", "index", "threshold"):
            if key in info or key not in ("model_id", "library", "library_version", "engine", "engine_version"):
                print(f"{key:<15} {info.get(key)}")
        for kind, n in info["error_kinds"].items():
            print(f"  error {kind:<12} {n}")
        for run in info.get("runs", []):  # what wrote each run's parts: a resumed run may use another engine
            print(f"  run {run['run']}: {count(run['images'], 'image')} by {run['engine']} {run['engine_version']} "
                  f"({run['precision']}{', draft' if run['draft'] else ''})")
    return 0


COMMANDS = {"embed": run_embed, "index": run_index, "similar": run_similar, "dupes": run_dupes,
            "calibrate": run_calibrate, "models": run_models, "info": run_info}

if __name__ == "__main__":
    sys.exit(main())
