"""The command line: each command's arguments, read intermixed, and the two objects they make (RunOptions, and
FeatureSettings for embed). Nothing here imports torch or pyspark, so `imgvec --help` is instant."""

from __future__ import annotations

import argparse
import sys

from imgvec.base import defaults
from imgvec.base.settings import RunOptions


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
    embed.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders (recursive), globs, "
                       "WebDataset .tar shards (brace ranges too: 'shards/{00000..00999}.tar'), or one Parquet "
                       "table (a binary column, Hugging Face's image struct, img2dataset's output); local paths or "
                       "URIs (s3://, gs://, hdfs://, abfss://, file://)")
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
                       help="what runs the network: auto (default: the engine measured fastest on this kind of CPU, "
                       "torch on a GPU), torch, onnxruntime or openvino (exported once, run on the CPU: same "
                       "features); see docs/performance.md")
    embed.add_argument("--draft", action="store_true", help="decode large JPEGs at a reduced scale: faster, "
                       "features not bit-identical (see README)")
    _spark_options(embed)
    embed.add_argument("--glob", help="only files whose name matches, e.g. '*.jpg'")
    kind = embed.add_mutually_exclusive_group()
    kind.add_argument("--table", action="store_true", default=None, help="INPUT is a Parquet table")
    kind.add_argument("--images", dest="table", action="store_false", help="INPUT is image files")
    embed.add_argument("--binary-col", help="table column with the image bytes (default: Hugging Face's Image "
                       "column, img2dataset's jpg/png/webp, else 'content')")
    embed.add_argument("--path-col", help="table column that names each image (default 'path'; img2dataset's "
                       "'key'; Hugging Face: the image's own path), or the manifest's column of paths")
    embed.add_argument("--keep-columns", type=_names, default=(), metavar="A,B",
                       help="input table columns copied into the output (img2dataset's caption and a tar's "
                       "caption and json are kept by default)")
    embed.add_argument("--manifest", metavar="FILE", help="embed the images a list names instead of INPUTs: a "
                       "text file (a URI per line), or a CSV (with a header) or Parquet file (--path-col), e.g. an "
                       "S3 Inventory report")
    embed.add_argument("--prefix", default="", help="put before each path of --manifest, e.g. s3://bucket/")
    mode = embed.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="process only inputs not yet in OUTPUT")
    mode.add_argument("--overwrite", action="store_true", help="replace OUTPUT")
    embed.add_argument("--shard-size", type=int, default=defaults.SHARD_SIZE, help="images per part (default "
                       f"{defaults.SHARD_SIZE}; files listed together are spread over the cores): an interrupted run "
                       "loses at most the shards in flight")
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
    parser.add_argument("--master", default=defaults.MASTER, help="Spark master URL, or sc://host:port for Spark "
                        f"Connect (default {defaults.MASTER})")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    parser.add_argument("--ship-env", action="store_true", help="pack this Python environment (torch, imgvec) once "
                        "and send it to the cluster's executors, for a cluster that lacks them (docs/clusters.md)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


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


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--conf takes KEY=VALUE, not {item!r}")
    return key, value


def _conf(args) -> dict:
    return dict(_key_value(item) for item in args.conf)


def run_options(args) -> RunOptions:
    """Where the command's Spark work runs, from --master, --conf, --quiet and --ship-env."""
    return RunOptions(args.master, _conf(args), quiet=args.quiet, ship_env=args.ship_env)
