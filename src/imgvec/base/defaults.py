"""Every default setting, defined once: the CLI, ImageVectorizer, ImageFeaturizer and the batch job read them here.

Plain values only (and where the cache is), so that `imgvec --help` shows them without importing torch or pyspark.
"""

import os

MASTER = "local[*]"  # Spark on this machine, one task per core
MODEL = "resnet50"
WEIGHTS = "default"  # or "random", or a state_dict file
DEVICE = "auto"  # the task's GPU, else CUDA, else the CPU
BATCH_SIZE = 16  # images per forward pass: the fastest on the CPUs measured (README, Tuning)
PRECISION = "fp32"  # exact; "bf16", "fp16" (GPU) and "int8" (a CPU engine) are opt-in
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
ENGINE = "auto"  # what runs the network: the fastest measured on this kind of CPU, torch on a GPU (models.engines)
ENGINES = ("torch", "onnxruntime", "openvino", "auto")
MAX_PIXELS = 120_000_000  # a 100-megapixel camera; at most ~400 MB of pixels for one RGBA image in memory
DRAFT = False  # reduced-scale JPEG decoding is opt-in
SHARD_SIZE = 512  # images per task of the batch job: PySpark's ~0.25 s per task stays under 15% on tiny images
K = 10  # matches per query of `imgvec similar`
THRESHOLD = 0.9  # cosine at which `imgvec dupes` calls two images near-duplicates, for a model not measured
# Each built-in model's own threshold for `imgvec dupes` where its real weights could be measured here:
# `imgvec calibrate` on 87 distinct real pictures without copies (0.70-0.74 with ~15% and ~90% copies;
# benchmarks/threshold.py; README, "Choosing a threshold"). The torchvision models' ImageNet weights
# cannot be had offline here: they use THRESHOLD. `imgvec calibrate` fits one to a user's collection,
# which `dupes` then prefers.
# SSCD's is its authors' published one: cosine 0.75 is about 90% precision on DISC21.
THRESHOLDS = {"efficientnet_lite0": 0.74, "sscd": 0.75}
CALIBRATION_SAMPLE = 2_000  # originals `imgvec calibrate` edits and embeds
# The precision (its one-sided 95% lower bound, from pairs verified by their pixels) at the output's size that
# calibrate's recommended threshold must keep. 0.99 cannot be vouched for by ~2,000 checks of a verifier that
# misses some copies (benchmarks/threshold.py: a bound of 0.97-0.98 where no false pair was found)
CALIBRATION_PRECISION = 0.95
EXACT_MAX = 20_000  # up to this many vectors, search and dupes compare every pair: a few seconds on one core
INDEX_TYPE = "auto"  # flat up to EXACT_MAX vectors, then ivf-flat, then ivf-pq past INDEX_MEMORY
INDEX_TYPES = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw")
INDEX_MEMORY = 8 * 2**30  # bytes of one index shard: what one ordinary machine holds; larger indexes are sharded
RECALL_TARGET = 0.95  # recall@10 the index's search settings are tuned for at build time
TRAINING_BYTES = 256 * 2**20  # a driver's k-means sample (index, dupes), whatever the vectors' number: 512K of 128-d
CLUSTER_SIZE = 2_000  # images per k-means cluster of `imgvec dupes` at scale (SemDeDup-style)
KEEP = "first"  # which file of a duplicate group `imgvec dupes --keep` keeps: first (by path) or largest
KEEPS = ("first", "largest")


def cache_dir() -> str:
    """What imgvec makes once and reuses: engines' exports, the JVM's class archive."""
    return os.environ.get("IMGVEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "imgvec")
