"""`imgvec`: embed images into a feature dataset, then find similar images and near-duplicates.

Thin: arguments -> the library. Exit 0 when the run completed (bad images are rows with errors),
2 for a usage or configuration error (one line, no traceback), 3 when --max-error-rate is
exceeded, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import warnings

from imgvec import defaults

EXIT_USAGE, EXIT_ERROR_RATE, EXIT_INTERRUPTED = 2, 3, 130


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line that says what to do, not a usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgvec", description="Image feature vectors at scale on Apache Spark with PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    embed = commands.add_parser("embed", help="embed images (files, folders, globs or a Parquet table)",
                                description="Embed images into a Parquet dataset [path, features, error].")
    embed.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs, "
                       "or one Parquet table with a binary column; local paths or URIs (s3://, gs://, hdfs://, "
                       "abfss://, file://)")
    embed.add_argument("-o", "--output", required=True, help="output folder (a Parquet dataset): a local path or URI")
    embed.add_argument("--model", default=defaults.MODEL, help=f"model name (see 'imgvec models') or "
                       f"torchscript:PATH (default {defaults.MODEL})")
    embed.add_argument("--weights", default=defaults.WEIGHTS, help="'default' (pretrained), 'random' or a "
                       "state_dict file")
    embed.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                       help=f"images per forward pass (default {defaults.BATCH_SIZE})")
    embed.add_argument("--device", default=defaults.DEVICE, help="auto (the task's GPU, else CPU), cpu, cuda, cuda:N")
    embed.add_argument("--max-pixels", type=int, default=defaults.MAX_PIXELS, help="larger images are errors, not "
                       f"decoded (default {defaults.MAX_PIXELS}); bounds a worker's memory at ~7 bytes per pixel")
    embed.add_argument("--precision", choices=defaults.PRECISIONS, default=defaults.PRECISION,
                       help="fp32 (exact, default); bf16 (GPU, or a CPU with native bf16), fp16 (GPU) or int8 (a "
                       "CPU engine, calibrated on the job's images): faster, see README, Tuning")
    embed.add_argument("--engine", choices=defaults.ENGINES, default=defaults.ENGINE,
                       help="what runs the network: torch (default), onnxruntime or openvino (exported once, on the "
                       "CPU: faster, same features), auto (the fastest installed); see README, Tuning")
    embed.add_argument("--draft", action="store_true", help="decode large JPEGs at a reduced scale: faster, "
                       "features not bit-identical (see README)")
    _spark_options(embed)
    embed.add_argument("--glob", help="only files whose name matches, e.g. '*.jpg'")
    kind = embed.add_mutually_exclusive_group()
    kind.add_argument("--table", action="store_true", default=None, help="INPUT is a Parquet table")
    kind.add_argument("--images", dest="table", action="store_false", help="INPUT is image files")
    embed.add_argument("--binary-col", default="content", help="table column with the image bytes")
    embed.add_argument("--path-col", default="path", help="table column that names each image")
    mode = embed.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="process only inputs not yet in OUTPUT")
    mode.add_argument("--overwrite", action="store_true", help="replace OUTPUT")
    embed.add_argument("--shard-size", type=int, default=defaults.SHARD_SIZE, help="images per Spark task, each "
                       f"written as one part (default {defaults.SHARD_SIZE}, fewer when that leaves cores idle): "
                       "an interrupted run loses at most the shards in flight")
    embed.add_argument("--max-error-rate", type=float, help="exit 3 when more than this share of images fail")

    index = commands.add_parser("index", help="build a nearest-neighbour index of OUTPUT (FAISS, on Spark)",
                                description="Build OUTPUT's nearest-neighbour index (FAISS) on Spark and store it in "
                                "OUTPUT/_imgvec_index with its parameters and the recall@10 measured at build. "
                                "`similar` uses it from then on.")
    index.add_argument("output", metavar="OUTPUT")
    index.add_argument("--index-type", choices=defaults.INDEX_TYPES, default=defaults.INDEX_TYPE,
                       help=f"auto (default): flat (exact) up to {defaults.EXACT_MAX} vectors, ivf-flat while "
                       "the vectors fit --memory, ivf-pq (compressed) beyond; hnsw on request")
    index.add_argument("--memory", type=_size, default=defaults.INDEX_MEMORY, metavar="BYTES",
                       help=f"most memory one index segment may take, e.g. 16G (default "
                       f"{defaults.INDEX_MEMORY >> 30}G); a larger index is stored in segments")
    index.add_argument("--rebuild", action="store_true", help="train the index anew (by default the parts embedded "
                       "since the last build are added to it, without retraining)")
    _spark_options(index)

    similar = commands.add_parser("similar", help="rank the images most like a query",
                                  description="Rank OUTPUT's images by cosine similarity to each QUERY: by its index "
                                  "when it has one (imgvec index), else exactly, part by part.")
    similar.add_argument("output", metavar="OUTPUT")
    similar.add_argument("queries", nargs="*", metavar="QUERY", help="an image file, or a path already in OUTPUT")
    similar.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text query, e.g. 'a red car "
                         "at night', for an output of a CLIP-family model; may be repeated")
    similar.add_argument("-k", type=int, default=defaults.K, help=f"matches per query (default {defaults.K})")
    similar.add_argument("--exact", action="store_true", help="compare with every vector, even when there is an index")
    similar.add_argument("--json", action="store_true", help="JSON on stdout")
    similar.add_argument("--html", metavar="FILE", help="also write a page of thumbnails of each query and its "
                         "matches (one self-contained file; must not exist)")

    dupes = commands.add_parser(
        "dupes", help="groups of byte-identical files and of near-duplicate images",
        description="Groups of byte-identical files (same sha256 and length) and of images whose features have "
                    "cosine similarity >= THRESHOLD. Up to "
                    f"{defaults.EXACT_MAX} images every pair is compared in this process; beyond, on Spark: "
                    "k-means clusters, then every pair inside each cluster (SemDeDup).")
    dupes.add_argument("output", metavar="OUTPUT")
    dupes.add_argument("--threshold", type=float, help="cosine similarity (default: the one imgvec calibrate "
                       f"measured for OUTPUT, else the model's own, else {defaults.THRESHOLD})")
    dupes.add_argument("--against", action="append", default=[], metavar="OLD", help="only groups holding an "
                       "image of OUTPUT, compared with OLD's images too (an output of the same model; by its index "
                       "when it has one); OLD's files are always kept. May be repeated")
    dupes.add_argument("--exact", action="store_true", help="compare every pair in this process, however many")
    dupes.add_argument("--clusters", type=int, help="k-means clusters on Spark (default: one per "
                       f"{defaults.CLUSTER_SIZE} images); given, the clustered search runs whatever the size")
    dupes.add_argument("--keep", choices=defaults.KEEPS, help="print the files one would delete, one per "
                       "line: each has a kept file of its group at the threshold; files are kept in order of "
                       "path (first) or size (largest)")
    dupes.add_argument("--verify", action="store_true", help="a file is deletable only when its pixels verify it "
                       "against a kept file of its group (local features under one transform; on Spark's workers "
                       "when there are many pairs); a file no kept file verifies is kept and counted as unverified")
    dupes.add_argument("--out", metavar="FILE", help="write every group as Parquet [path, group, kind, "
                       "representative, similarity, kept_file, kept_similarity; with --verify also verified, "
                       "matches] (a local path or URI; must not exist)")
    dupes.add_argument("--html", metavar="FILE", help="write a page of thumbnails of the largest groups "
                       "(--show), kept files marked (one self-contained file; must not exist)")
    dupes.add_argument("--json", action="store_true", help="JSON on stdout")
    dupes.add_argument("--show", type=int, default=10, help="largest groups printed, and members of each "
                       "(default 10)")
    _spark_options(dupes)

    calibrate = commands.add_parser(
        "calibrate", help="measure what each dupes threshold finds on OUTPUT's own images",
        description="Make known copies of a sample of OUTPUT's images (crops, small re-encodes, colour, mirror, "
                    "text, border, rotation, picture-in-picture), embed them on Spark with OUTPUT's model and "
                    "measure the copies found per threshold (recall); check a draw of OUTPUT's own pairs by their "
                    "pixels (local features under one transform) to measure, per threshold, the true and false "
                    "pairs expected at OUTPUT's size (precision). Records the recommended threshold, which imgvec "
                    "dupes then uses.")
    calibrate.add_argument("output", metavar="OUTPUT")
    calibrate.add_argument("--sample", type=int, default=defaults.CALIBRATION_SAMPLE,
                           help=f"originals to edit (default {defaults.CALIBRATION_SAMPLE})")
    calibrate.add_argument("--min-precision", type=float, default=defaults.CALIBRATION_PRECISION,
                           help="the share of reported pairs that must be true copies (its 95%% lower bound) at "
                           f"OUTPUT's size (default {defaults.CALIBRATION_PRECISION})")
    calibrate.add_argument("--precision", type=float, dest="old_precision", help=argparse.SUPPRESS)  # renamed
    calibrate.add_argument("--json", action="store_true", help="JSON on stdout")
    _spark_options(calibrate)

    models = commands.add_parser("models", help="the models imgvec knows")
    models.add_argument("--json", action="store_true", help="JSON on stdout")

    info = commands.add_parser("info", help="what an output holds")
    info.add_argument("output", metavar="OUTPUT")
    info.add_argument("--json", action="store_true", help="JSON on stdout")
    parser.commands = commands.choices  # parse_args: each command's own parser
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, options and positionals in any order (`similar OUT -k 3 photo.jpg` as well as
    `similar OUT photo.jpg -k 3`): the command's own parser reads the rest intermixed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] not in parser.commands:
        return parser.parse_args(argv)  # no command, --help, or one that does not exist: said by the main parser
    args = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def _spark_options(parser) -> None:
    parser.add_argument("--master", default="local[*]", help="Spark master URL, or sc://host:port for Spark "
                        "Connect (default local[*])")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size is positive, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        args = parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as error:
        return _fail(str(error))
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
    from imgvec import jvm

    jvm.ends_with_process = True
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a reader that went away (`imgvec similar ... | head`)
        pass
    atexit._run_exitfuncs()
    os._exit(code)


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
    conf = _conf(args)
    if args.max_error_rate is not None and not 0 <= args.max_error_rate <= 1:
        raise UsageError("--max-error-rate is a share between 0 and 1, e.g. 0.05")
    from imgvec import jobs

    jobs.start_early(args.master, conf)  # the JVM starts while torch is imported and the arguments checked
    try:
        from imgvec.embed import embed

        summary = embed(
            args.inputs, args.output, model=args.model, weights=args.weights, batch_size=args.batch_size,
            device=args.device, precision=args.precision, max_pixels=args.max_pixels, draft=args.draft,
            engine=args.engine, master=args.master, glob=args.glob, table=args.table,
            binary_col=args.binary_col, path_col=args.path_col, resume=args.resume, overwrite=args.overwrite,
            shard_size=args.shard_size, quiet=args.quiet, conf=conf)
    finally:
        jobs.drop_early()  # unused: the command failed first, or had nothing to do
    kinds = ", ".join(f"{kind} {n}" for kind, n in summary.error_kinds.most_common(5))
    print(f"imgvec embed: {summary.processed} images in {summary.seconds:.1f} s ({summary.rate:.2f} images/s)")
    print(f"  succeeded {summary.succeeded}, failed {summary.failed}" + (f" ({kinds})" if kinds else ""))
    if summary.skipped:
        print(f"  {summary.skipped} already in the output (resumed)")
    print(f"  output: {summary.output} ({summary.total} images)")
    rate = summary.failed / summary.processed if summary.processed else 0.0
    if args.max_error_rate is not None and rate > args.max_error_rate:
        print(f"imgvec: error rate {rate:.1%} is above --max-error-rate {args.max_error_rate:.1%}", file=sys.stderr)
        return EXIT_ERROR_RATE
    return 0


def run_index(args) -> int:
    from imgvec.index import build_index

    built = build_index(args.output, kind=args.index_type, memory=args.memory, rebuild=args.rebuild,
                        master=args.master, conf=_conf(args), quiet=args.quiet)
    setting = "".join(f", {name} {built[name]}" for name in ("nprobe", "ef_search") if name in built)
    what = "built" if built["updates"] == 0 else f"updated: {_count(built['added'], 'vector')} added without retraining"
    print(f"imgvec index: {built['type']} index of {built['count']} vectors in {built['seconds']:.1f} s, {what} "
          f"({built['factory']}{setting}; {_count(len(built['segments']), 'segment')})")
    print(f"  recall@10 {built['recall_at_10']:.3f} against exact search on "
          f"{_count(built['queries'], 'held-out query', 'held-out queries')}")
    if built["advice"]:
        print(f"  {built['advice']}")
    return 0


def run_similar(args) -> int:
    from imgvec.similar import find_similar

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
        from imgvec.gallery import similar_page

        page.write_bytes(similar_page(how, results).encode())
        print(f"page written to {page.uri}", file=sys.stderr)
    return 0


def run_dupes(args) -> int:
    from imgvec.dedup import evidence, find_duplicates

    out = _new_file(args.out, "--out") if args.out else None
    page = _new_file(args.html, "--html") if args.html else None
    if args.show < 1:
        raise UsageError("--show is how many groups to show, at least 1")
    found = find_duplicates(args.output, args.threshold, keep=args.keep or defaults.KEEP, exact=args.exact,
                            clusters=args.clusters, against=args.against, verify=args.verify, master=args.master,
                            conf=_conf(args), quiet=args.quiet)
    if out is not None:
        import pyarrow.parquet as pq

        out.write_with(lambda path, fs: pq.write_table(found.table(), path, filesystem=fs))
    if found.threshold_source != "given":
        print(f"imgvec: threshold {found.threshold}: {found.threshold_source}", file=sys.stderr)
    identical = [g for g in found.groups if g.kind == "identical"]
    summary = (f"{_count(len(found.groups), 'group')} among {found.images} images (cosine >= {found.threshold}; "
               f"{found.how}; {found.seconds:.1f} s): {len(identical)} of byte-identical files, "
               f"{len(found.groups) - len(identical)} of near-duplicates")
    if found.verified:
        summary += (f"; every file to delete verified by its pixels, {_count(len(found.unverified), 'file')} kept "
                    "unverified")
    if args.json:
        print(json.dumps({"images": found.images, "threshold": found.threshold, "threshold_source":
                          found.threshold_source, "search": found.how, "groups": [vars(g) for g in found.groups],
                          **({"delete": found.to_delete()} if args.keep else {}),
                          **({"unverified": found.unverified} if found.verified else {})}, indent=2))
    elif args.keep:  # the list alone on stdout, to read or to pipe; the summary on stderr
        print(summary + f"; {len(found.to_delete())} files to delete, each with a kept file of its group at "
              f"cosine >= {found.threshold} (kept: the {args.keep} of each)", file=sys.stderr)
        for path in found.to_delete():
            print(path)
    else:
        print(summary)
        for n, group in enumerate(found.groups[: args.show], 1):
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
        if len(found.groups) > args.show:
            print(f"... and {len(found.groups) - args.show} smaller groups" + ("" if args.out else " (--out FILE "
                  "writes every group)"))
    if out is not None:
        print(f"groups written to {out.uri}", file=sys.stderr)
    if page is not None:
        from imgvec.gallery import dupes_page

        page.write_bytes(dupes_page(found, args.show, out.uri if out else None, master=args.master,
                                    conf=_conf(args)).encode())
        print(f"page written to {page.uri}", file=sys.stderr)
    return 0


def run_calibrate(args) -> int:
    if args.old_precision is not None:  # the old name of --min-precision, which embed's --precision is not
        print("imgvec: warning: calibrate's --precision is now --min-precision; the old name still works",
              file=sys.stderr)
        args.min_precision = args.old_precision
    if args.sample < 2:
        raise UsageError("--sample is how many originals to edit, at least 2")
    if not 0 < args.min_precision < 1:
        raise UsageError("--min-precision is a share between 0 and 1, e.g. 0.99")
    conf = _conf(args)
    from imgvec import jobs

    jobs.start_early(args.master, conf)  # the JVM starts while the sample is read; its start-up lines held back
    try:
        from imgvec.calibrate import calibrate

        result = calibrate(args.output, sample=args.sample, precision=args.min_precision, master=args.master,
                           conf=conf, quiet=args.quiet)
    finally:
        jobs.drop_early()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(calibration_text(result))
    return 0


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


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _new_file(text: str, flag: str):
    """Where --out or --html writes, checked before any work: never over an existing file."""
    from imgvec.storage import check_reachable, open_location

    where = open_location(text)
    check_reachable(where, flag)
    if where.info().type != where.info().type.NotFound:
        raise UsageError(f"{flag} {where.uri} already exists; give a new file name")
    if where.is_local and not os.path.isdir(os.path.dirname(where.path)):
        raise UsageError(f"{flag} {where.uri}: its folder does not exist")
    return where


def run_models(args) -> int:
    from imgvec.models import PRESETS, get_model, list_models
    from imgvec.weights import available_offline

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
    from imgvec.index import IndexProblem, NeighbourIndex
    from imgvec.output import open_output

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
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--conf takes KEY=VALUE, not {item!r}")
    return key, value


def _conf(args) -> dict:
    return dict(_key_value(item) for item in args.conf)


COMMANDS = {"embed": run_embed, "index": run_index, "similar": run_similar, "dupes": run_dupes,
            "calibrate": run_calibrate, "models": run_models, "info": run_info}

if __name__ == "__main__":
    sys.exit(main())
