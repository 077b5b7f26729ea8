"""imgvec: image feature vectors at scale on Apache Spark with PyTorch."""

from importlib.metadata import PackageNotFoundError, version

from imgvec.decode import decode_image
from imgvec.models import ModelEntry, Preprocess, get_model, list_models, register_model, torchscript_model
from imgvec.vectorizer import ImageVectorizer
from imgvec.weights import WeightsUnavailable

try:
    __version__ = version("imgvec")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ImageVectorizer",
    "ModelEntry",
    "Preprocess",
    "WeightsUnavailable",
    "decode_image",
    "get_model",
    "list_models",
    "register_model",
    "torchscript_model",
    "__version__",
]
