"""A batch of image bytes -> a [N, dim] float32 array and an error per row. No Spark here.

`get_featurizer(config, weights)` builds the network at most once per process and per
configuration; Spark workers call it on every batch and get the cached one back.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from imgvec.base import defaults
from imgvec.inputs.preprocess import normalised, prepare
from imgvec.models.engines import EngineNetwork, resolve_engine
from imgvec.models.entry import ModelEntry
from imgvec.models.hardware import resolve_device
from imgvec.models.registry import get_model, travels_by_name
from imgvec.models.weights import WeightsRef, build_network, weights_file

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class FeatureConfig:
    """Everything a worker needs to compute features: small, frozen, picklable, hashable."""

    model: str | ModelEntry = defaults.MODEL
    device: str = defaults.DEVICE
    batch_size: int = defaults.BATCH_SIZE
    precision: str = defaults.PRECISION  # "bf16" (CPU or GPU) or "fp16" (GPU): autocast, not bit-identical
    max_pixels: int = defaults.MAX_PIXELS
    draft: bool = defaults.DRAFT  # reduced-size JPEG decoding: faster on large photos, not bit-identical
    engine: str = defaults.ENGINE  # torch, or a CPU engine running an export of the network (models.engines)

    def __post_init__(self):
        entry = get_model(self.model)  # unknown names fail here, on the driver
        if isinstance(self.model, str) and not travels_by_name(self.model):
            # Registered in this process only: travel to the workers whole, not by name.
            object.__setattr__(self, "model", entry)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {self.batch_size!r}")
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, not {self.max_pixels!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {self.device!r}")
        if self.precision not in defaults.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(defaults.PRECISIONS)}, not {self.precision!r}")
        object.__setattr__(self, "engine", resolve_engine(self.engine, self.device, self.precision,
                                                          entry.torchscript))

    @property
    def entry(self) -> ModelEntry:
        return get_model(self.model)


class Featurizer:
    """A loaded network with its preprocessing, on one device, under one configuration."""

    def __init__(self, config: FeatureConfig, network: torch.nn.Module, device: torch.device):
        self.config = config
        self.entry = config.entry
        self.device = device
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a GPU; on the CPU use 'bf16'")
        self.autocast = AUTOCAST.get(config.precision)  # int8 is an engine's
        self.net = network
        # Decoding in threads (Pillow releases the GIL) when the task has cores to spare, e.g. a GPU task.
        threads = torch.get_num_threads() if self.device.type == "cuda" or torch.get_num_threads() > 1 else 1
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imgvec-decode") if threads > 1 else None
        p = self.entry.preprocess
        self._mean = torch.tensor(p.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(p.std, device=self.device).view(1, 3, 1, 1)
        self.dim = self.entry.dim

    def vectors(self, images: Sequence) -> tuple[np.ndarray, list[str | None]]:
        """Features [N, dim] (NaN rows where the image was bad) and one error (or None) per row."""
        prepared = list(self._pool.map(self._prepare, images) if self._pool else map(self._prepare, images))
        good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        errors = [p if isinstance(p, str) else None for p in prepared]
        out = self._forward([prepared[i] for i in good])
        if self.dim is None:
            self.dim = out.shape[1] if len(out) else None
        features = np.full((len(images), out.shape[1] if len(out) else (self.dim or 0)), np.nan, np.float32)
        if good:
            features[good] = out
        return features, errors

    def _prepare(self, data) -> np.ndarray | str:
        return prepare(data, self.entry.preprocess, self.config.max_pixels, self.config.draft)

    @torch.inference_mode()
    def _forward(self, pixels: list[np.ndarray]) -> np.ndarray:
        outputs = []
        step = self.config.batch_size
        for start in range(0, len(pixels), step):
            if isinstance(self.net, EngineNetwork):
                outputs.append(self.net(normalised(np.stack(pixels[start : start + step]), self.entry.preprocess)))
                continue
            batch = torch.from_numpy(np.stack(pixels[start : start + step]))  # uint8 NHWC
            if self.device.type == "cuda":
                batch = batch.pin_memory()  # lets the copy below run asynchronously
            # NHWC -> NCHW view: channels_last memory, no copy; then ToTensor + Normalize on the device.
            x = batch.permute(0, 3, 1, 2).to(self.device, non_blocking=True)
            x = ((x.float() / 255.0) - self._mean) / self._std
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                y = self.net(x.contiguous(memory_format=torch.channels_last))
            outputs.append(y.float().flatten(1).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.empty((0, self.dim or 0), np.float32)


# --- one network per process -------------------------------------------------------------
# Networks are keyed by what makes them (model, weights, device); decoding settings, batch size
# and precision only make a new, light Featurizer around the same network.

_networks: dict[tuple, torch.nn.Module] = {}
_featurizers: dict[tuple, Featurizer] = {}
_cache_lock = threading.Lock()
_loads: Counter = Counter()


def get_featurizer(config: FeatureConfig, weights: WeightsRef) -> Featurizer:
    """The process's featurizer for this configuration; the network is built on first use."""
    device = resolve_device(config.device)  # "auto" may mean a different GPU for each task
    key = (config, weights, device)
    with _cache_lock:
        featurizer = _featurizers.get(key)
        if featurizer is None:
            network_key = _network_key(config, weights, device)
            network = _networks.get(network_key)
            if network is None:
                if config.engine != "torch":  # `weights` is the engine's export (engines.export)
                    network = EngineNetwork(config.engine, weights_file(weights), config.precision,
                                            torch.get_num_threads())
                else:
                    network = build_network(config.entry, weights).to(device, memory_format=torch.channels_last)
                _networks[network_key] = network
                _loads[network_key] += 1
            featurizer = _featurizers[key] = Featurizer(config, network, device)
    return featurizer


def _network_key(config: FeatureConfig, weights: WeightsRef, device: torch.device) -> tuple:
    if config.engine != "torch":  # an engine's threads are fixed when it loads: one per task's CPUs
        return config.model, weights, config.engine, config.precision, torch.get_num_threads()
    return config.model, weights, device


def model_loads(config: FeatureConfig | None = None, weights: WeightsRef | None = None) -> dict:
    """How many networks this process has built (for one configuration, if given).

    Tests and benchmarks prove with it that a worker builds each model once, however many tasks it runs.
    """
    if config is None:
        return {"pid": os.getpid(), "loads": sum(_loads.values())}
    return {"pid": os.getpid(), "loads": _loads[_network_key(config, weights, resolve_device(config.device))]}
