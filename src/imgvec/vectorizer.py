"""ImageVectorizer: the seed article's class, done so that it works on Spark workers.

It holds a configuration, never a SparkSession or a network: it pickles to a few hundred
bytes, and each process that uses it builds the network once, on first use.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import numpy as np

from imgvec import defaults
from imgvec.featurize import FeatureConfig, Featurizer, SpeedWarning, get_featurizer, precision_warning
from imgvec.weights import WeightsRef, resolve_weights


class ImageVectorizer:
    """Feature vectors from image bytes.

    model:      a registered name (`imgvec models`), 'torchscript:PATH' or a ModelEntry.
    weights:    'default' (pretrained, from the torch hub cache), 'random' (deterministic,
                for tests and benchmarks) or the path of a state_dict file.
    device:     'auto' (the task's GPU, else CUDA, else CPU), 'cpu', 'cuda' or 'cuda:N'.
    batch_size: images per forward pass.
    precision:  'fp32' (exact, the default), 'bf16' (CPU or GPU) or 'fp16' (GPU): faster, see README.
    draft:      decode large JPEGs at a reduced scale: faster, not bit-identical, see README.
    """

    def __init__(
        self,
        model=defaults.MODEL,
        weights: str = defaults.WEIGHTS,
        device: str = defaults.DEVICE,
        batch_size: int = defaults.BATCH_SIZE,
        *,
        precision: str = defaults.PRECISION,
        max_pixels: int = defaults.MAX_PIXELS,
        draft: bool = defaults.DRAFT,
    ):
        self.config = FeatureConfig(model, device, batch_size, precision, max_pixels, draft)
        slower = precision_warning(precision, device)
        if slower:
            warnings.warn(slower, SpeedWarning, stacklevel=2)
        self.weights = weights
        # Resolved here, on the driver: a missing file is an error now, not on a worker later.
        self.weights_ref: WeightsRef = resolve_weights(self.config.entry, weights)
        self._text = None  # the text tower, built on first use (embed_text)

    @property
    def model_name(self) -> str:
        return self.config.entry.name

    @property
    def dim(self) -> int | None:
        """Feature length (None for a TorchScript model until it has run once)."""
        return self.config.entry.dim

    def _featurizer(self) -> Featurizer:
        return get_featurizer(self.config, self.weights_ref)

    def embed(self, images: Sequence[bytes | None]) -> tuple[np.ndarray, list[str | None]]:
        """[N, dim] float32 features (NaN rows for bad images) and an error string or None per image."""
        return self._featurizer().embed(list(images))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """[N, dim] features of texts, in the space of the images' (CLIP-family models: `model.text`)."""
        if not self.config.entry.text:
            raise ValueError(f"{self.model_name} embeds images only; text queries need a CLIP-family model "
                             "(open_clip:ARCH/PRETRAINED, clip_vit_b32)")
        if self._text is None:
            from imgvec.libraries import TextEncoder

            self._text = TextEncoder(self.config.entry, self.weights_ref)
        return self._text.embed(list(texts))

    def extract_features(self, image_bytes: bytes | None) -> list[float] | None:
        """The seed's method: one image's features as a list, or None when it cannot be decoded.

        None (a null in Spark) rather than an exception: one bad image must not kill a job.
        `embed([image_bytes])` says why.
        """
        return self.extract_features_batch([image_bytes])[0]

    def extract_features_batch(self, images: Sequence[bytes | None]) -> list[list[float] | None]:
        features, errors = self.embed(images)
        return [None if error else row.tolist() for row, error in zip(features, errors, strict=True)]

    def process_images(self, df, input_col: str = "content", output_col: str = "features", error_col: str = "error"):
        """The seed's method on Spark: adds `output_col` (array<float>) and `error_col` (string)."""
        from imgvec.spark import featurize_dataframe

        return featurize_dataframe(df, self.config, self.weights_ref, input_col, output_col, error_col)

    # Pickle the configuration only: no session, no tensors.
    def __getstate__(self):
        weights_ref = self.weights_ref
        if "pyspark.sql" in sys.modules:  # pickled for a Spark job, perhaps: the weights go with it
            from imgvec.spark import ship_with_active_session

            weights_ref = ship_with_active_session(weights_ref)
        return {"config": self.config, "weights": self.weights, "weights_ref": weights_ref, "_text": None}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        c = self.config
        return (f"ImageVectorizer(model={self.model_name!r}, weights={self.weights!r}, "
                f"device={c.device!r}, batch_size={c.batch_size})")


def recorded_vectorizer(metadata: dict, location: str) -> ImageVectorizer:
    """The model, weights and modes that made an output, on the CPU here; an error if the weights differ."""
    vectorizer = ImageVectorizer(metadata["model"], weights=metadata["weights"], device="cpu",
                                 precision=metadata.get("precision") or defaults.PRECISION,
                                 draft=bool(metadata.get("draft")))
    if vectorizer.weights_ref.sha256 != metadata.get("weights_sha256"):
        raise ValueError(f"the weights for {metadata['model']} here differ from those that made {location}")
    return vectorizer
