"""The first home of ImageFeaturizer: Spark ML pipelines saved before imgvec's packages name imgvec.ml.ImageFeaturizer,
and load from here."""

from imgvec.features.ml import ImageFeaturizer  # noqa: F401
