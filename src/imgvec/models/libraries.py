"""Models of other libraries: any timm model (`timm:NAME`) and any open_clip model (`open_clip:ARCH/PRETRAINED`).

timm and open_clip own their architectures, their pretrained weights (in the Hugging Face hub cache)
and their preprocessing. imgvec builds their network with their own code, resolves their weights
on the driver to one file with a sha256 (shipped to the workers like any other: workers never reach
the hub; HF_HUB_OFFLINE=1 is respected), and reads their preprocessing into imgvec's batched decode
path, which tests hold to their own single-image pipeline.

  timm       features: the model's own pooled embedding (num_classes=0); preprocessing:
             timm.data.resolve_data_config (resize to input size / crop_pct, centre crop)
  open_clip  features: the image tower's embedding (encode_image); preprocessing: open_clip's own
             (shortest-side resize and centre crop, or a squash to the square for SigLIP); its text
             tower embeds text queries on the driver (TextEncoder)

Nothing here is imported unless such a model is asked for; the library missing is one line naming
imgvec's extra.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn

from imgvec.base.text import one_line
from imgvec.inputs.preprocess import Preprocess
from imgvec.models.entry import ModelEntry
from imgvec.models.weights import WeightsUnavailable

PREFIXES = {"timm:": "timm", "open_clip:": "open_clip"}
EXTRAS = {"timm": "timm", "open_clip": "clip"}


def is_library_model(name) -> bool:
    return isinstance(name, str) and name.startswith(tuple(PREFIXES))


def library_of(name: str) -> str:
    return next(library for prefix, library in PREFIXES.items() if name.startswith(prefix))


def _import(library: str):
    try:
        return __import__(library)
    except ImportError:
        raise ValueError(f"model {library}:… needs the {library} library: pip install \"imgvec[{EXTRAS[library]}]\"") \
            from None


@lru_cache(maxsize=32)
def library_entry(name: str) -> ModelEntry:
    """The entry for `timm:NAME` or `open_clip:ARCH[/PRETRAINED]`; an unknown name is one line (ValueError)."""
    library = library_of(name)
    spec = name.split(":", 1)[1]
    return _timm_entry(name, spec) if library == "timm" else _open_clip_entry(name, spec)


def _device():
    return torch.get_default_device()  # "meta" while weights are checked against the architecture's shapes


# --- timm ------------------------------------------------------------------------------------------


def _timm_entry(name: str, spec: str) -> ModelEntry:
    timm = _import("timm")
    if not timm.is_model(spec.split(".")[0]):
        raise ValueError(f"unknown timm model {spec!r}; timm.list_models('*{spec[:6]}*') lists names like it")
    try:
        with torch.device("meta"):
            net = timm.create_model(spec, pretrained=False)
    except Exception as exc:  # an unknown pretrained tag, a model timm cannot build
        raise ValueError(f"timm cannot build {spec!r} ({_short(exc)})") from None
    config = timm.data.resolve_data_config({}, model=net)
    _, height, width = config["input_size"]
    if height != width or config.get("crop_mode", "center") != "center":
        raise ValueError(f"timm model {spec!r} takes {height}x{width} inputs ({config.get('crop_mode')} crop); imgvec "
                         "takes square centre crops")
    preprocess = Preprocess(resize=int(height / config["crop_pct"]), crop=height, mean=tuple(config["mean"]),
                            std=tuple(config["std"]), interpolation=_interpolation(config["interpolation"]))
    hub_id = net.pretrained_cfg.get("hf_hub_id")
    return ModelEntry(
        name=name, dim=int(net.num_features), preprocess=preprocess,
        build=lambda: _import("timm").create_model(spec, pretrained=False),
        to_features=_timm_features,
        default_weights=lambda download=True: _from_hub(name, hub_id, ("model.safetensors", "pytorch_model.bin"),
                                                        download),
        description=f"timm {spec}", library="timm", source=name)


def _timm_features(net: nn.Module) -> nn.Module:
    net.reset_classifier(0)  # the pooled embedding, as timm.create_model(..., num_classes=0) gives it
    return net


def _interpolation(name: str) -> str:
    return {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}.get(name, "bicubic")


# --- open_clip -----------------------------------------------------------------------------------


def _open_clip_entry(name: str, spec: str) -> ModelEntry:
    open_clip = _import("open_clip")
    arch, _, pretrained = spec.partition("/")
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; open_clip.list_models() lists them")
    config = open_clip.get_model_config(arch)
    tag = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    if pretrained and not tag:
        known = ", ".join(t for a, t in open_clip.list_pretrained() if a == arch) or "none"
        raise ValueError(f"open_clip has no pretrained {pretrained!r} for {arch}; it has: {known}")
    size = config["vision_cfg"].get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    squash = tag.get("resize_mode") == "squash"
    preprocess = Preprocess(resize=size, crop=size, mean=tuple(tag.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                            std=tuple(tag.get("std", open_clip.OPENAI_DATASET_STD)),
                            interpolation=_interpolation(tag.get("interpolation", "bicubic")),
                            resize_mode="squash" if squash else "shortest")
    hub = (tag.get("hf_hub") or "").strip("/")
    return ModelEntry(
        name=name, dim=int(config["embed_dim"]), preprocess=preprocess,
        build=lambda: _open_clip_model(arch),
        to_features=lambda net: ImageTower(net.visual),
        default_weights=(lambda download=True: _from_hub(name, hub, ("open_clip_model.safetensors",
                                                                     "open_clip_pytorch_model.bin"), download)
                         ) if pretrained else None,
        description=f"open_clip {arch}" + (f", {pretrained}" if pretrained else ""), library="open_clip",
        source=name, text=True)


def _open_clip_model(arch: str) -> nn.Module:
    open_clip = _import("open_clip")
    with _quiet_root_logger():  # "No pretrained weights loaded": imgvec loads them itself
        return open_clip.create_model(arch, pretrained=None, device=_device())


class ImageTower(nn.Module):
    """The image side of a CLIP model: encode_image without the text tower. Its keys keep the `visual.` prefix
    of the whole model's state_dict, which is what a checkpoint holds."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        return self.visual(x)


@contextmanager
def _quiet_root_logger():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class TextEncoder:
    """The text tower of an open_clip model with the weights that made an output: text -> [N, dim] features."""

    def __init__(self, entry: ModelEntry, weights):
        from imgvec.models.weights import load_state_dict, weights_file

        open_clip = _import("open_clip")
        arch = entry.source.split(":", 1)[1].partition("/")[0]
        if weights.kind == "random":  # the same deterministic initialisation as the image tower's
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model = _open_clip_model(arch)
        else:
            self.model = _open_clip_model(arch)
            if weights.kind == "file":
                self.model.load_state_dict(load_state_dict(weights_file(weights)))
        self.model.eval()
        try:
            self.tokenizer = open_clip.get_tokenizer(arch)
        except Exception as exc:  # a Hugging Face tokenizer that is not in the cache
            raise WeightsUnavailable(f"the tokenizer of {entry.name} cannot be had ({_short(exc)}); fill the Hugging "
                                     f"Face cache ({_hub_cache()}) or query by image") from None

    @torch.inference_mode()
    def embed(self, texts: list[str]):
        return self.model.encode_text(self.tokenizer(list(texts))).float().numpy()


# --- weights in the Hugging Face hub cache ----------------------------------------------------------


def _from_hub(name: str, repo: str | None, files: tuple[str, ...], download: bool) -> str:
    """The local file of a model's pretrained weights in the hub cache, downloaded there if allowed and reachable."""
    if not repo:
        raise WeightsUnavailable(f"{name} has no pretrained weights on the Hugging Face hub; pass --weights FILE")
    from huggingface_hub import hf_hub_download

    problem = None
    for filename in files:
        try:
            return hf_hub_download(repo, filename, local_files_only=not download or _offline())
        except Exception as exc:  # not cached, offline, no such file: try the next, then say what to do
            problem = problem or exc
    raise WeightsUnavailable(
        f"pretrained weights for {name} (hub id {repo}) are not in the Hugging Face cache {_hub_cache()} and could "
        f"not be downloaded ({_short(problem)}); fill it with `hf download {repo} {files[0]}` on a machine online, "
        "pass --weights FILE (a state_dict), or --weights random") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _short(exc) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")
