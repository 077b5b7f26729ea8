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
from PIL import Image

from imgvec import defaults
from imgvec.decode import decode_image
from imgvec.engines import EngineNetwork, cpu_flags, resolve_engine
from imgvec.models import ModelEntry, Preprocess, get_model, travels_by_name
from imgvec.weights import WeightsRef, build_network, local_path

# An image longer than this many times its shorter side is first cropped to its centre:
# a 1x100000 strip must not be resized to 256x25600000.
_MAX_ASPECT = 4


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
    engine: str = defaults.ENGINE  # torch, or a CPU engine running an export of the network (engines.py)

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
        object.__setattr__(self, "engine", resolve_engine(self.engine, self.device, self.precision))

    @property
    def entry(self) -> ModelEntry:
        return get_model(self.model)


def prepare(data, p: Preprocess, max_pixels: int = defaults.MAX_PIXELS, draft: bool = False) -> np.ndarray | str:
    """Bytes -> uint8 [crop, crop, 3], or an error string."""
    image = decode_image(data, max_pixels=max_pixels, draft=p.resize if draft else None)
    if isinstance(image, str):
        return image
    try:
        return preprocess_image(image, p)
    except Exception as exc:  # a resampling failure costs one row, not the batch
        return f"corrupt: cannot resize ({type(exc).__name__}: {exc})"[:160]


def normalised(batch: np.ndarray, p: Preprocess) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], as ToTensor + Normalize (the CPU engines' input)."""
    x = batch.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_image(image: Image.Image, p: Preprocess) -> np.ndarray:
    """RGB image -> uint8 [crop, crop, 3], exactly as torchvision's Resize + CenterCrop do it on PIL images.

    Their arithmetic, written out with PIL's own calls: importing torchvision costs 1.7 s per process
    (it imports torch._dynamo), on the driver and on every Python worker.
    """
    width, height = image.size
    shorter = min(width, height)
    if max(width, height) > _MAX_ASPECT * shorter:
        side = _MAX_ASPECT * shorter  # keep the centre; the crop would discard the rest anyway
        image = _center_crop(image, min(height, side), min(width, side))
        width, height = image.size
    resample = _RESAMPLE[p.interpolation]
    if p.resize_mode == "squash":  # the whole image to the square, aspect not kept
        return np.asarray(image.resize((p.crop, p.crop), resample), dtype=np.uint8)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = p.resize, int(p.resize * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize(size, resample)
    return np.asarray(_center_crop(image, p.crop, p.crop), dtype=np.uint8)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's center_crop for a crop no larger than the image: its rounding of the offsets."""
    top = int(round((image.size[1] - height) / 2.0))
    left = int(round((image.size[0] - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


class SpeedWarning(UserWarning):
    """A setting asked for speed that this machine will not give."""


# bf16 / fp32 images/s on CPUs without native bf16, measured by benchmarks/precision.py (ResNet-50).
BF16_SPEED = {"AVX2": 0.18, "AVX512": 0.34}


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), rather than emulating it slowly.

    oneDNN, which runs the model, says no on AVX2 but yes on any AVX-512 CPU, where it emulates
    bf16; Linux's CPU flags tell the two apart.
    """
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    flags = cpu_flags()
    return flags is None or bool(flags & {"avx512_bf16", "amx_bf16"})  # unknown (not Linux): trust oneDNN


def precision_warning(precision: str, device: str) -> str | None:
    """One line when `precision` would run slower than fp32 on this machine, else None."""
    if precision != "bf16" or resolve_device(device).type != "cpu" or native_bf16():
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    speed = BF16_SPEED["AVX512" if capability.startswith("AVX512") else "AVX2"]
    return (f"this CPU ({capability}) has no native bf16: --precision bf16 runs at about {speed:.2f}x the speed "
            "of fp32 on such CPUs (measured); use fp32 unless the workers have GPUs")


def resolve_device(device: str) -> torch.device:
    """'auto': the GPU Spark gave this task, else any CUDA device, else the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{_task_gpu() or 0}")
    return torch.device("cpu")


def use_task_cpus() -> None:
    """On a Spark worker, torch intra-op threads = the CPUs Spark gave this task (spark.task.cpus)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:
        torch.set_num_threads(max(1, int(context.cpus())))


def _task_gpu() -> int | None:
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        gpus = context.resources().get("gpu") if context else None
        return int(gpus.addresses[0]) if gpus and gpus.addresses else None
    except Exception:  # not on a Spark worker
        return None


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

    def embed(self, images: Sequence) -> tuple[np.ndarray, list[str | None]]:
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
                    network = EngineNetwork(config.engine, local_path(weights), config.precision,
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
