"""ImageFeaturizer: imgvec as a Spark ML Transformer, for Pipelines, with save and load."""

from __future__ import annotations

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from imgvec.base import defaults
from imgvec.base.settings import FeatureSettings


class ImageFeaturizer(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Adds a features column (array<float>) and an error column (string) computed from image bytes."""

    errorCol = Param(Params._dummy(), "errorCol", "column for the decode error (null when the image is good)",
                     typeConverter=TypeConverters.toString)
    model = Param(Params._dummy(), "model", "registered model name or 'torchscript:PATH'",
                  typeConverter=TypeConverters.toString)
    weights = Param(Params._dummy(), "weights", "'default', 'random' or a state_dict path",
                    typeConverter=TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "images per forward pass", typeConverter=TypeConverters.toInt)
    device = Param(Params._dummy(), "device", "'auto', 'cpu', 'cuda' or 'cuda:N'",
                   typeConverter=TypeConverters.toString)
    precision = Param(Params._dummy(), "precision", "'fp32' (exact), 'bf16' or 'fp16' (GPU)",
                      typeConverter=TypeConverters.toString)
    maxPixels = Param(Params._dummy(), "maxPixels", "larger images are errors, not decoded",
                      typeConverter=TypeConverters.toInt)
    draft = Param(Params._dummy(), "draft", "decode large JPEGs at a reduced scale (faster, not bit-identical)",
                  typeConverter=TypeConverters.toBoolean)
    engine = Param(Params._dummy(), "engine", "'auto' (the fastest measured on the CPU), 'torch', 'onnxruntime' or "
                   "'openvino'", typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol="content", outputCol="features", errorCol="error", model=defaults.MODEL,
                 weights=defaults.WEIGHTS, batchSize=defaults.BATCH_SIZE, device=defaults.DEVICE,
                 precision=defaults.PRECISION, maxPixels=defaults.MAX_PIXELS, draft=defaults.DRAFT,
                 engine=defaults.ENGINE):
        super().__init__()
        self._setDefault(inputCol="content", outputCol="features", errorCol="error",
                         **{param: getattr(FeatureSettings, name) for param, name in _SETTINGS.items()})
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol="content", outputCol="features", errorCol="error", model=defaults.MODEL,
                  weights=defaults.WEIGHTS, batchSize=defaults.BATCH_SIZE, device=defaults.DEVICE,
                  precision=defaults.PRECISION, maxPixels=defaults.MAX_PIXELS, draft=defaults.DRAFT,
                  engine=defaults.ENGINE):
        return self._set(**self._input_kwargs)

    def vectorizer(self):
        from imgvec.features.vectorizer import ImageVectorizer

        return ImageVectorizer.of(FeatureSettings(**{name: self.getOrDefault(param)
                                                     for param, name in _SETTINGS.items()}))

    def _transform(self, dataset):
        return self.vectorizer().process_images(
            dataset, input_col=self.getInputCol(), output_col=self.getOutputCol(),
            error_col=self.getOrDefault(self.errorCol))


# The transformer's params that are feature settings: Spark ML's camelCase name -> FeatureSettings' name.
_SETTINGS = {"model": "model", "weights": "weights", "batchSize": "batch_size", "device": "device",
             "precision": "precision", "maxPixels": "max_pixels", "draft": "draft", "engine": "engine"}
