"""Weights: resolve what the user asked for to a file with a hash (driver), load it safely (anywhere)."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from imgvec.models import ModelEntry


class WeightsUnavailable(ValueError):
    """The weights the user asked for cannot be had; the message says what to do instead."""


@dataclass(frozen=True)
class WeightsRef:
    """What a worker needs to get the same weights: a kind, and for files a path and a sha256.

    kind: "random" (deterministic init), "builder" (what the model's builder gives),
          or "file" (a state_dict, or a TorchScript archive for TorchScript models).
    shipped_name: set once the file has been sent with Spark; workers then read SparkFiles.get(it).
    """

    kind: str
    path: str | None = None
    sha256: str | None = None
    shipped_name: str | None = None

    @property
    def label(self) -> str:
        """Short, stable description for metadata: what made the features."""
        return self.kind if self.kind != "file" else f"{os.path.basename(self.path)} sha256:{self.sha256}"


def hub_checkpoint_path(url: str) -> str:
    """Where torch.hub (and so torchvision) keeps the file for `url`: $TORCH_HOME/hub/checkpoints."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def resolve_weights(entry: ModelEntry, weights: str) -> WeightsRef:
    """'default' | 'random' | a path -> a WeightsRef. Runs on the driver; never falls back silently."""
    if not isinstance(weights, str) or not weights:
        raise WeightsUnavailable(f"weights must be 'default', 'random' or a file path, not {weights!r}")
    if weights == "random":
        if entry.torchscript:
            raise WeightsUnavailable("a TorchScript model carries its own weights; use weights='default'")
        return WeightsRef("random")
    if weights == "default":
        if entry.default_weights is None:
            return WeightsRef("builder")
        path = entry.default_weights(True)
    else:
        path = weights
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"weights file {path} does not exist; pass 'default', 'random' or an existing file")
    return WeightsRef("file", path, file_sha256(path))


def available_offline(entry: ModelEntry) -> bool:
    """Whether weights='default' works right now without a download."""
    if entry.default_weights is None:
        return True
    try:
        return os.path.isfile(entry.default_weights(False))
    except WeightsUnavailable:
        return False


def file_sha256(path: str) -> str:
    return _sha256(path, os.path.getsize(path), os.path.getmtime(path))


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime: float) -> str:  # size and mtime key the cache
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_path(ref: WeightsRef) -> str:
    """The file to read in this process: the shipped copy when there is one, checked by hash."""
    path = ref.path
    if ref.shipped_name:
        from pyspark import SparkFiles

        path = SparkFiles.get(ref.shipped_name)
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"weights file {path} is not on this machine")
    if file_sha256(path) != ref.sha256:
        raise WeightsUnavailable(
            f"weights file {path} does not match sha256 {ref.sha256}: it changed after the job started")
    return path


def build_network(entry: ModelEntry, ref: WeightsRef) -> nn.Module:
    """The feature extractor with its weights, in eval mode, on the CPU."""
    if entry.torchscript:
        net = torch.jit.load(local_path(ref), map_location="cpu")
        return net.eval()
    if ref.kind == "random":
        # Same tensors in every process, without disturbing the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = entry.build()
    else:
        net = entry.build()
    full_keys = set(net.state_dict())
    if entry.to_features is not None:
        net = entry.to_features(net)
    if ref.kind == "file":
        state = load_state_dict(local_path(ref))
        head_keys = full_keys - set(net.state_dict())
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # tensors of the wrong shape
            raise WeightsUnavailable(f"{ref.path} does not fit model {entry.name!r}: {_first_line(exc)}") from None
        unexpected = [k for k in unexpected if k not in head_keys]
        if missing or unexpected:
            raise WeightsUnavailable(
                f"{ref.path} does not fit model {entry.name!r}: "
                f"missing {_few(missing)}, unexpected {_few(unexpected)}"
            )
    return net.eval()


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors only (weights_only=True): a file holding pickled code or objects is refused."""
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load: code, not tensors
        raise WeightsUnavailable(
            f"{path} is a TorchScript archive, not a state_dict; load it explicitly with model='torchscript:PATH'"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        raise WeightsUnavailable(
            f"{path} is not a plain state_dict and was not loaded, because loading it would run "
            f"pickled code ({_first_line(exc)}). Save the weights with "
            "torch.save(model.state_dict(), PATH), or pass a TorchScript file as model='torchscript:PATH'."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # common checkpoint layout
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{path} does not hold a state_dict (a dict of tensors)")
    return state


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _few(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
