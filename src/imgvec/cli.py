"""`imgvec`: embed images into a feature dataset, then find similar images and near-duplicates.

Thin: arguments -> the library. Exit 0 when the run completed (bad images are rows with errors),
2 for a usage or configuration error (one line, no traceback), 3 when --max-error-rate is
exceeded, 130 when interrupted.
"""

from __future__ import annotations

import argparse
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
                       help="fp32 (exact, default); bf16 (GPU, or a CPU with native bf16) or fp16 (GPU): faster, "
                       "see README")
    embed.add_argument("--draft", action="store_true", help="decode large JPEGs at a reduced scale: faster, "
                       "features not bit-identical (see README)")
    embed.add_argument("--master", default="local[*]", help="Spark master URL, or sc://host:port for Spark Connect "
                       "(default local[*])")
    embed.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
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
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    similar = commands.add_parser("similar", help="rank the images most like a query",
                                  description="Rank OUTPUT's images by cosine similarity to each QUERY.")
    similar.add_argument("output", metavar="OUTPUT")
    similar.add_argument("queries", nargs="+", metavar="QUERY", help="an image file, or a path already in OUTPUT")
    similar.add_argument("-k", type=int, default=10, help="matches per query (default 10)")
    similar.add_argument("--json", action="store_true", help="JSON on stdout")

    dupes = commands.add_parser(
        "dupes", help="groups of near-duplicate images",
        description="Groups of images whose features have cosine similarity >= THRESHOLD. Exact search in "
                    "blocks with numpy: all vectors in memory (1M x 2048 floats = 8 GB) and every pair "
                    "compared, about a second for 10^4 images, minutes for 10^5, hours past 10^6; "
                    "beyond that use an approximate index such as faiss.")
    dupes.add_argument("output", metavar="OUTPUT")
    dupes.add_argument("--threshold", type=float, default=0.9, help="cosine similarity (default 0.9)")
    dupes.add_argument("--json", action="store_true", help="JSON on stdout")

    models = commands.add_parser("models", help="the models imgvec knows")
    models.add_argument("--json", action="store_true", help="JSON on stdout")

    info = commands.add_parser("info", help="what an output holds")
    info.add_argument("output", metavar="OUTPUT")
    info.add_argument("--json", action="store_true", help="JSON on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
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
    conf = dict(_key_value(item) for item in args.conf)
    if args.max_error_rate is not None and not 0 <= args.max_error_rate <= 1:
        raise UsageError("--max-error-rate is a share between 0 and 1, e.g. 0.05")
    from imgvec.embed import embed

    summary = embed(
        args.inputs, args.output, model=args.model, weights=args.weights, batch_size=args.batch_size,
        device=args.device, precision=args.precision, max_pixels=args.max_pixels, draft=args.draft,
        master=args.master, glob=args.glob, table=args.table, binary_col=args.binary_col,
        path_col=args.path_col, resume=args.resume, overwrite=args.overwrite, shard_size=args.shard_size,
        quiet=args.quiet, conf=conf)
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


def run_similar(args) -> int:
    from imgvec.search import nearest

    dataset, paths, vectors = _load_vectors(args.output)
    index = {p: i for i, p in enumerate(paths)}
    vectorizer = None
    results = []
    for query in args.queries:
        row = next((index[c] for c in _spellings(query) if c in index), None)
        if row is not None:
            vector = vectors[row]
        elif os.path.isfile(query):
            vectorizer = vectorizer or _recorded_vectorizer(dataset)
            features, errors = vectorizer.embed([open(query, "rb").read()])
            if errors[0]:
                raise UsageError(f"query {query} cannot be used: {errors[0]}")
            vector = features[0]
        else:
            raise UsageError(f"query {query} is neither an image file nor a path in {dataset.location}")
        matches = nearest(vector, vectors, args.k, exclude=row)
        results.append({"query": query, "matches": [
            {"rank": r + 1, "path": paths[i], "similarity": round(s, 6)} for r, (i, s) in enumerate(matches)]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(f"query: {result['query']}")
            for m in result["matches"]:
                print(f"  {m['rank']:3d}  {m['similarity']:.4f}  {m['path']}")
    return 0


def run_dupes(args) -> int:
    from imgvec.search import duplicate_groups

    if not -1 <= args.threshold <= 1:
        raise UsageError("--threshold is a cosine similarity between -1 and 1, e.g. 0.9")
    _, paths, vectors = _load_vectors(args.output)
    groups = [[{"path": paths[i], "similarity": round(s, 6)} for i, s in group]
              for group in duplicate_groups(vectors, args.threshold)]
    if args.json:
        print(json.dumps(groups, indent=2))
    else:
        print(f"{len(groups)} groups of near-duplicates among {len(paths)} images (cosine >= {args.threshold})")
        for n, group in enumerate(groups, 1):
            print(f"group {n} ({len(group)} images)")
            for member in group:
                print(f"  {member['similarity']:.4f}  {member['path']}")
    return 0


def run_models(args) -> int:
    from imgvec.models import list_models
    from imgvec.weights import available_offline

    rows = [{"name": e.name, "dim": e.dim, "weights_offline": available_offline(e), "description": e.description}
            for e in list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'model':<20} {'dim':>5}  {'offline':<7}  description")
        for r in rows:
            print(f"{r['name']:<20} {r['dim'] or '?':>5}  {'yes' if r['weights_offline'] else 'no':<7}  "
                  f"{r['description']}")
        print("offline: whether pretrained weights are on this machine now (else they download on first use)")
    return 0


def run_info(args) -> int:
    dataset = _open_dataset(args.output)
    info = {**dataset.metadata(), **dataset.counts(), "location": dataset.location, "parts": len(dataset.parts())}
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        for key in ("location", "model", "dim", "weights", "weights_sha256", "precision", "draft", "imgvec_version",
                    "created", "updated", "parts", "total", "succeeded", "failed"):
            print(f"{key:<15} {info.get(key)}")
        for kind, n in info["error_kinds"].items():
            print(f"  error {kind:<12} {n}")
    return 0


def _open_dataset(location: str):
    """An existing output, local or in a store; a clear error when it cannot be reached."""
    from imgvec.output import FeatureDataset
    from imgvec.storage import check_reachable

    dataset = FeatureDataset(location)
    check_reachable(dataset.where, "output")
    return dataset


def _load_vectors(location: str):
    dataset = _open_dataset(location)
    dataset.metadata()  # a clear error when it is not an imgvec output
    paths, vectors = dataset.vectors()
    if not paths:
        raise UsageError(f"{dataset.location} holds no features yet")
    return dataset, paths, vectors


def _recorded_vectorizer(dataset):
    """The model and weights that made the dataset, or an error if they cannot be had identically."""
    from imgvec.vectorizer import ImageVectorizer

    metadata = dataset.metadata()
    vectorizer = ImageVectorizer(metadata["model"], weights=metadata["weights"], device="cpu")
    if vectorizer.weights_ref.sha256 != metadata.get("weights_sha256"):
        raise UsageError(f"the weights for {metadata['model']} here differ from those that made "
                         f"{dataset.location}; query with a path that is already in it")
    return vectorizer


def _spellings(query: str) -> list[str]:
    absolute = os.path.abspath(query)
    return [query, f"file:{absolute}", f"file://{absolute}", absolute]


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--conf takes KEY=VALUE, not {item!r}")
    return key, value


COMMANDS = {"embed": run_embed, "similar": run_similar, "dupes": run_dupes, "models": run_models, "info": run_info}

if __name__ == "__main__":
    sys.exit(main())
