"""imgvec: image feature vectors at scale on Apache Spark with PyTorch.

Public names load on first use, so `imgvec --help` does not wait for torch and pyspark.
"""

from importlib import import_module

from imgvec.base.version import VERSION as __version__

_PUBLIC = {
    "ImageFeaturizer": "imgvec.features.ml",
    "ImageVectorizer": "imgvec.features.vectorizer",
    "ModelEntry": "imgvec.models.entry",
    "Preprocess": "imgvec.inputs.preprocess",
    "WeightsUnavailable": "imgvec.models.weights",
    "decode_image": "imgvec.inputs.decode",
    "embed": "imgvec.batch.embed",
    "get_model": "imgvec.models.registry",
    "get_session": "imgvec.spark.session",
    "list_models": "imgvec.models.registry",
    "read_images": "imgvec.features.dataframe",
    "register_model": "imgvec.models.registry",
    "torchscript_model": "imgvec.models.registry",
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
