"""imgvec: image feature vectors at scale on Apache Spark with PyTorch.

Public names load on first use, so `imgvec --help` does not wait for torch and pyspark.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imgvec")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

_PUBLIC = {
    "ImageFeaturizer": "imgvec.ml",
    "ImageVectorizer": "imgvec.vectorizer",
    "ModelEntry": "imgvec.models",
    "Preprocess": "imgvec.models",
    "WeightsUnavailable": "imgvec.weights",
    "decode_image": "imgvec.decode",
    "embed": "imgvec.embed",
    "get_model": "imgvec.models",
    "get_session": "imgvec.jobs",
    "list_models": "imgvec.models",
    "read_images": "imgvec.spark",
    "register_model": "imgvec.models",
    "torchscript_model": "imgvec.models",
}

__all__ = [*sorted(_PUBLIC), "__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imgvec' has no attribute {name!r}")


def __dir__():
    return __all__
