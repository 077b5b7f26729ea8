"""imgvec: image feature vectors at scale on Apache Spark with PyTorch."""

from importlib.metadata import PackageNotFoundError, version

from imgvec.decode import decode_image
from imgvec.ml import ImageFeaturizer
from imgvec.models import ModelEntry, Preprocess, get_model, list_models, register_model, torchscript_model
from imgvec.spark import get_session, read_images
from imgvec.vectorizer import ImageVectorizer
from imgvec.weights import WeightsUnavailable

try:
    __version__ = version("imgvec")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ImageFeaturizer",
    "ImageVectorizer",
    "ModelEntry",
    "Preprocess",
    "WeightsUnavailable",
    "__version__",
    "decode_image",
    "get_model",
    "get_session",
    "list_models",
    "read_images",
    "register_model",
    "torchscript_model",
]
