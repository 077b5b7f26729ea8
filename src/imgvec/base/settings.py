"""What a user asks for, as two plain objects passed whole: the features they want, and where Spark runs.

Plain values only (no torch, no pyspark), checked where they are used; defaults come from base.defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from imgvec.base import defaults


@dataclass(frozen=True)
class FeatureSettings:
    """The features asked for: which model and weights, and how to run it (ImageVectorizer's arguments)."""

    model: Any = defaults.MODEL  # a registered name, 'timm:…', 'open_clip:…', 'torchscript:PATH' or a ModelEntry
    weights: str = defaults.WEIGHTS
    device: str = defaults.DEVICE
    batch_size: int = defaults.BATCH_SIZE
    precision: str = defaults.PRECISION
    max_pixels: int = defaults.MAX_PIXELS
    draft: bool = defaults.DRAFT
    engine: str = defaults.ENGINE

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def of(cls, source) -> FeatureSettings:
        """The settings held by an object's attributes of the same names (the command line's arguments)."""
        return cls(**{name: getattr(source, name) for name in cls.names()})


@dataclass(frozen=True)
class RunOptions:
    """Where a command's Spark work runs: a master URL (sc://host:port for Spark Connect) with extra settings,
    or a session the caller already has; quiet: no progress lines; ship_env: this Python environment is packed and
    sent to the executors (spark.environment)."""

    master: str = defaults.MASTER
    conf: dict = field(default_factory=dict, hash=False)
    spark: Any = field(default=None, compare=False, hash=False)
    quiet: bool = False
    ship_env: bool = False
