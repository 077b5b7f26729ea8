"""Weights: resolve what the user asked for to a file with a hash (driver), load it safely (anywhere)."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # models imports this module; nothing here needs models at run time
    from imgvec.models.entry import ModelEntry


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
    ref = WeightsRef("file", path, file_sha256(path))
    check_weights(entry, ref)
    return ref


def check_weights(entry: ModelEntry, ref: WeightsRef) -> None:
    """Raise WeightsUnavailable now, on the driver, for a file no worker could load into `entry`."""
    if entry.torchscript:
        if not _is_torchscript(ref.path):
            raise WeightsUnavailable(f"{ref.path} is not a TorchScript archive; save one with "
                                     "torch.jit.save(torch.jit.script(model), PATH)")
        return
    _check_fits(entry, ref.path, ref.sha256)


@lru_cache(maxsize=32)
def _check_fits(entry: ModelEntry, path: str, sha256: str) -> None:  # sha256 keys the cache
    state = load_state_dict(path, mmap=True)
    try:
        with torch.device("meta"):  # the architecture's shapes without allocating or initialising weights
            net = entry.build()
    except Exception:  # a user's builder that cannot run on the meta device
        net = entry.build()
    _load_into(net, entry, state, path)


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


def weights_file(ref: WeightsRef) -> str:
    """The file to read in this process: the shipped copy when there is one, checked by hash."""
    path = ref.path
    if ref.shipped_name:
        path = _shipped_copy(ref.shipped_name) or path  # unpickled outside a Spark job: the original file
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"weights file {path} is not on this machine")
    if file_sha256(path) != ref.sha256:
        raise WeightsUnavailable(
            f"weights file {path} does not match sha256 {ref.sha256}: it changed after the job started")
    return path


def _shipped_copy(name: str) -> str | None:
    from pyspark import SparkFiles

    try:
        path = SparkFiles.get(name)
    except Exception:  # no Spark job here
        return None
    return path if os.path.isfile(path) else None


def build_network(entry: ModelEntry, ref: WeightsRef) -> nn.Module:
    """The feature extractor with its weights, in eval mode, on the CPU."""
    if entry.torchscript:
        net = torch.jit.load(weights_file(ref), map_location="cpu")
        return net.eval()
    if ref.kind == "random":
        # Same tensors in every process, without disturbing the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = entry.build()
    else:
        net = entry.build()
    if ref.kind == "file":
        return _load_into(net, entry, load_state_dict(weights_file(ref)), ref.path).eval()
    return (entry.to_features(net) if entry.to_features is not None else net).eval()


def _load_into(net: nn.Module, entry: ModelEntry, state: dict, path: str) -> nn.Module:
    """The feature extractor of `net` (the full architecture) holding `state`; the classifier's keys may be absent."""
    full_keys = set(net.state_dict())
    if entry.to_features is not None:
        net = entry.to_features(net)
    expected = net.state_dict()
    head_keys = full_keys - set(expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in head_keys]
    reshaped = [k for k, t in state.items() if k in expected and tuple(t.shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        raise WeightsUnavailable(
            f"{path} does not fit model {entry.name!r} (a state_dict for another model?): missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}, other shape {_few(reshaped)}")
    net.load_state_dict(state, strict=False, assign=_on_meta(net))
    return net


def _on_meta(net: nn.Module) -> bool:
    return any(t.is_meta for t in net.state_dict().values())


def load_state_dict(path: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors only (weights_only=True): a file holding pickled code or objects is refused."""
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load: code, not tensors
        raise WeightsUnavailable(
            f"{path} is a TorchScript archive, not a state_dict; load it explicitly with model='torchscript:PATH'"
        )
    if _is_safetensors(path):  # the Hugging Face hub's format (timm, open_clip): tensors only by design
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:
            raise WeightsUnavailable(f"{path} is a damaged safetensors file ({_first_line(exc)})") from None
    if not zipfile.is_zipfile(path) and not _is_legacy_torch_file(path):
        raise WeightsUnavailable(f"{path} is not a PyTorch checkpoint; save the weights with "
                                 "torch.save(model.state_dict(), PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as exc:
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


def _is_safetensors(path: str) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _is_legacy_torch_file(path: str) -> bool:
    """torch.save's pre-1.6 format: a pickle stream (protocol 2+ starts with 0x80)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: Exception) -> str:
    """The first line of an exception's text, without the terminal escape codes torch puts in it."""
    text = _TERMINAL_CODES.sub("", str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:160]


def _few(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
