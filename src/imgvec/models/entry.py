"""A model entry: how to make one feature extractor (its network, feature size and preprocessing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from imgvec.inputs.preprocess import Preprocess


@dataclass(frozen=True)
class ModelEntry:
    """How to make one feature extractor.

    build:           returns the network with untrained weights, in the layout its state_dict uses.
    to_features:     turns that network into one that returns a [N, dim] feature tensor.
    default_weights: default_weights(download) returns the local path of the recommended pretrained
                     state_dict, fetching it into the torch hub cache first when `download` is true
                     and it is missing; raises WeightsUnavailable when it cannot be had.
                     None: `weights="default"` means the weights `build()` gives.
    torchscript:     the weights file is a TorchScript archive holding the whole feature extractor.
    library, source: "timm" or "open_clip" and the model's id there (models.libraries); recorded in the output.
    text:            it embeds text too (CLIP): `similar --text`.
    licence, use:    what `imgvec models` says of a preset.
    """

    name: str
    dim: int | None
    preprocess: Preprocess
    # Compared by name, not by function identity: an entry unpickled on a worker for every task
    # must still find the network that worker built for the first one.
    build: Callable[[], nn.Module] | None = field(default=None, compare=False)
    to_features: Callable[[nn.Module], nn.Module] | None = field(default=None, compare=False)
    default_weights: Callable[[bool], str] | None = field(default=None, compare=False)
    torchscript: bool = False
    description: str = field(default="", compare=False)
    library: str | None = None
    source: str | None = None  # the library's own name for it: "timm:NAME", "open_clip:ARCH/PRETRAINED"
    text: bool = False
    licence: str = field(default="", compare=False)
    use: str = field(default="", compare=False)
