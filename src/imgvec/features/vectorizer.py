"""ImageVectorizer: the seed article's class, done so that it works on Spark workers.

It holds a configuration, never a SparkSession or a network: it pickles to a few hundred
bytes, and each process that uses it builds the network once, on first use.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from imgvec.base import defaults
from imgvec.base.settings import FeatureSettings
from imgvec.features.featurize import FeatureConfig, Featurizer, get_featurizer
from imgvec.models.engines import INT8_SAMPLE, EngineWarning, NotExportable, export
from imgvec.models.hardware import SpeedWarning, int8_warning, precision_warning
from imgvec.models.weights import WeightsRef, file_sha256, resolve_weights


class ImageVectorizer:
    """Feature vectors from image bytes.

    model:      a registered name (`imgvec models`), 'torchscript:PATH' or a ModelEntry.
    weights:    'default' (pretrained, from the torch hub cache), 'random' (deterministic,
                for tests and benchmarks) or the path of a state_dict file.
    device:     'auto' (the task's GPU, else CUDA, else CPU), 'cpu', 'cuda' or 'cuda:N'.
    batch_size: images per forward pass.
    precision:  'fp32' (exact, the default), 'bf16' (CPU or GPU), 'fp16' (GPU) or 'int8' (a CPU engine):
                faster, see README.
    draft:      decode large JPEGs at a reduced scale: faster, not bit-identical, see README.
    engine:     'auto' (the default: the fastest engine measured on this kind of CPU, torch on a GPU; the same
                features), 'torch', 'onnxruntime' or 'openvino' (the network exported once, run on the CPU).
                int8 is quantised on images: `quantize_with(images)`, done for you by `imgvec embed` and
                `process_images`.
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
        engine: str = defaults.ENGINE,
    ):
        self.config = FeatureConfig(model, device, batch_size, precision, max_pixels, draft, engine)
        for slower in (precision_warning(precision, device), int8_warning(precision)):
            if slower:
                warnings.warn(slower, SpeedWarning, stacklevel=2)
        self.weights = weights
        # Resolved here, on the driver: a missing file is an error now, not on a worker later.
        self.weights_ref: WeightsRef = resolve_weights(self.config.entry, weights)
        self._text = None  # the text tower, built on first use (embed_text)
        self._int8_images: list = []  # int8: images whose activations set the ranges
        self._runtime: WeightsRef | None = None  # what workers load: the weights, or an engine's export
        if self.engine != "torch":  # exported now, on the driver: a model ONNX cannot express fails here
            try:
                export(self.config.entry, self.weights_ref, defaults.PRECISION)
            except NotExportable as error:
                if engine != "auto" or precision == "int8":  # asked for by name, or int8 that only an engine runs
                    raise
                warnings.warn(f"{error.model} cannot be exported to ONNX ({error.why}): it runs on torch",
                              EngineWarning, stacklevel=2)
                self.config = replace(self.config, engine="torch")

    @property
    def model_name(self) -> str:
        return self.config.entry.name

    @property
    def dim(self) -> int | None:
        """Feature length (None for a TorchScript model until it has run once)."""
        return self.config.entry.dim

    @property
    def engine(self) -> str:
        return self.config.engine

    @classmethod
    def of(cls, settings: FeatureSettings) -> ImageVectorizer:
        """The vectorizer for settings given as one object."""
        return cls(settings.model, settings.weights, settings.device, settings.batch_size,
                   precision=settings.precision, max_pixels=settings.max_pixels, draft=settings.draft,
                   engine=settings.engine)

    def quantize_with(self, images: Sequence[bytes]) -> None:
        """The images whose activations set int8's ranges (a seeded sample of the job's own: a few dozen)."""
        if self._int8_images != list(images):
            self._int8_images, self._runtime = list(images), None

    def calibrate_int8(self, images: Sequence[bytes]) -> None:
        """The old name of quantize_with ("calibrate" now means imgvec calibrate's thresholds only)."""
        warnings.warn("ImageVectorizer.calibrate_int8 is now quantize_with; the old name still works",
                      DeprecationWarning, stacklevel=2)
        self.quantize_with(images)

    @property
    def runtime_ref(self) -> WeightsRef:
        """What a worker loads: the weights for torch, else the engine's export (made here, on the driver, once)."""
        if self.engine == "torch":
            return self.weights_ref
        if self._runtime is None:
            if self.config.precision == "int8" and not self._int8_images:
                raise ValueError("--precision int8 is quantised on images: call quantize_with(images) first")
            path = export(self.config.entry, self.weights_ref, self.config.precision, self._int8_images)
            self._runtime = WeightsRef("file", path, file_sha256(path))
        return self._runtime

    def _featurizer(self) -> Featurizer:
        return get_featurizer(self.config, self.runtime_ref)

    def embed(self, images: Sequence[bytes | None]) -> tuple[np.ndarray, list[str | None]]:
        """[N, dim] float32 features (NaN rows for bad images) and an error string or None per image."""
        return self._featurizer().vectors(list(images))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """[N, dim] features of texts, in the space of the images' (CLIP-family models: `model.text`)."""
        if not self.config.entry.text:
            raise ValueError(f"{self.model_name} embeds images only; text queries need a CLIP-family model "
                             "(open_clip:ARCH/PRETRAINED, clip_vit_b32)")
        if self._text is None:
            from imgvec.models.libraries import TextEncoder

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
        from imgvec.features.dataframe import check_binary_column, featurize_dataframe

        if self.config.precision == "int8" and not self._int8_images:  # its first images set int8's ranges
            check_binary_column(df, input_col)
            rows = df.select(input_col).where(df[input_col].isNotNull()).limit(INT8_SAMPLE).collect()
            self.quantize_with([row[0] for row in rows])
        return featurize_dataframe(df, self.config, self.runtime_ref, input_col, output_col, error_col)

    # Pickle the configuration only: no session, no tensors.
    def __getstate__(self):
        weights_ref = self.weights_ref
        unquantised = self.config.precision == "int8" and not self._int8_images
        runtime = None if unquantised else self.runtime_ref  # None: the worker says int8 needs images
        if "pyspark.sql" in sys.modules:  # pickled for a Spark job, perhaps: the weights go with it
            from imgvec.features.dataframe import ship_with_active_session

            runtime = runtime and ship_with_active_session(runtime)
            weights_ref = runtime if self.engine == "torch" else weights_ref
        return {"config": self.config, "weights": self.weights, "weights_ref": weights_ref, "_text": None,
                "_int8_images": [], "_runtime": runtime}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        c = self.config
        return (f"ImageVectorizer(model={self.model_name!r}, weights={self.weights!r}, "
                f"device={c.device!r}, batch_size={c.batch_size}, engine={c.engine!r})")


def recorded_vectorizer(metadata: dict, location: str) -> ImageVectorizer:
    """The model, weights and modes that made an output, on the CPU here; an error if the weights differ.

    An int8 output's queries are embedded in fp32 by torch: cosine >= 0.978 to its int8 features (measured)."""
    precision = metadata.get("precision") or defaults.PRECISION
    vectorizer = ImageVectorizer(metadata["model"], weights=metadata["weights"], device="cpu",
                                 precision=defaults.PRECISION if precision == "int8" else precision,
                                 draft=bool(metadata.get("draft")))
    if vectorizer.weights_ref.sha256 != metadata.get("weights_sha256"):
        raise ValueError(f"the weights for {metadata['model']} here differ from those that made {location}")
    return vectorizer
