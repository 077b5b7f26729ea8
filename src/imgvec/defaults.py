"""Every default setting, defined once: the CLI, ImageVectorizer, ImageFeaturizer and the batch job read them here.

Plain values only, so that `imgvec --help` shows them without importing torch or pyspark.
"""

MODEL = "resnet50"
WEIGHTS = "default"  # or "random", or a state_dict file
DEVICE = "auto"  # the task's GPU, else CUDA, else the CPU
BATCH_SIZE = 16  # images per forward pass: the fastest on the CPUs measured (README, Tuning)
PRECISION = "fp32"  # exact; "bf16" and "fp16" are opt-in
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_PIXELS = 120_000_000  # a 100-megapixel camera; at most ~400 MB of pixels for one RGBA image in memory
DRAFT = False  # reduced-scale JPEG decoding is opt-in
SHARD_SIZE = 512  # images per task of the batch job: PySpark's ~0.25 s per task stays under 15% on tiny images
