"""CPU engines: the network exported once on the driver, run by ONNX Runtime or OpenVINO on the workers.

PyTorch eager is not the fastest way to run a CNN on a CPU (docs/performance.md, "Engines"). The
driver exports the resolved network to ONNX (a dynamic batch axis), for int8 quantised statically on
a sample of the job's own images, and caches the file by what makes it: model, weights sha256,
precision, the int8 images and the versions that wrote it. The file travels to the workers
like weights (features.dataframe.ship_weights) and is hash-checked there (weights.weights_file). Both engines read
the same ONNX file: ONNX Runtime's int8 (QDQ) graph runs as int8 in OpenVINO too.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import warnings
from contextlib import contextmanager
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from imgvec.base import defaults
from imgvec.models.hardware import cpu_flags, cpu_has_int8, resolve_device

EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}
OPSET = 17
INT8_SAMPLE = 64  # images whose activations set int8's ranges: per-channel weights need few
# What `auto` runs fp32 with on each kind of CPU, by its instruction sets, first match: the fastest engine measured
# there (benchmarks/throughput.py --only-engines; docs/performance.md, Engines), each exact (cosine >= 0.99999 to
# torch). A CPU of another kind (not x86, or older) keeps torch: nothing was measured there.
FASTEST_FP32 = (("avx512f", "openvino"), ("avx2", "onnxruntime"))


class EngineWarning(UserWarning):
    """`auto` could not use the engine it would have picked, and runs torch instead."""


class NotExportable(ValueError):
    """A network ONNX cannot express (an operator it lacks): the CPU engines cannot run it."""

    def __init__(self, model: str, why: str):
        super().__init__(f"{model} cannot be exported to ONNX: {why}; use --engine torch")
        self.model, self.why = model, why


def installed(engine: str) -> bool:
    try:
        import_module(engine)  # each engine's module and distribution have its name
    except ImportError:
        return False
    return True


def engine_version(engine: str) -> str:
    try:
        return version(engine)
    except PackageNotFoundError:
        return "unknown"


def resolve_engine(engine: str, device: str, precision: str, torchscript: bool = False) -> str:
    """What the user asked for -> the engine that will run, checked on the driver (ValueError: one line).

    `auto` (the default): torch on a GPU (this machine's, or `device` cuda) and for TorchScript models; on a CPU the
    fastest engine measured on its kind (FASTEST_FP32) for fp32, OpenVINO for bf16 (ONNX Runtime has no fast bf16),
    OpenVINO or ONNX Runtime for int8; each only where installed, else torch. Never another precision."""
    if engine not in defaults.ENGINES:
        raise ValueError(f"engine must be one of {', '.join(defaults.ENGINES)}, not {engine!r}")
    if engine == "auto":
        on_cpu = precision != "fp16" and resolve_device(device).type == "cpu" and not torchscript
        fitting = {"fp32": (fastest_fp32(cpu_flags()),), "bf16": ("openvino",)}.get(
            precision, ("openvino", "onnxruntime"))
        engine = next((e for e in fitting if on_cpu and e != "torch" and installed(e)), "torch")
        if engine == "torch" and precision == "int8":
            raise ValueError('--precision int8 needs a CPU engine: pip install "imgvec[openvino]"')
    if engine == "torch":
        if precision == "int8":
            raise ValueError("--precision int8 runs on a CPU engine: add --engine openvino or --engine onnxruntime")
        return engine
    if not installed(engine):
        raise ValueError(f'--engine {engine} is not installed here: pip install "imgvec[{EXTRAS[engine]}]"')
    if device.startswith("cuda"):
        raise ValueError(f"--engine {engine} runs on the CPU; for --device {device} use --engine torch")
    if precision == "fp16":
        raise ValueError("--precision fp16 needs a GPU and --engine torch; on the CPU use bf16 or int8")
    if precision == "int8" and not installed("onnxruntime"):
        raise ValueError('--precision int8 is quantised by ONNX Runtime: pip install "imgvec[openvino]"')
    if precision == "bf16" and engine == "onnxruntime":
        raise ValueError("ONNX Runtime has no fast bf16 on the CPU: use --engine openvino for bf16, "
                         "or --precision int8")
    return engine


def fastest_fp32(flags: set[str] | None) -> str:
    """The engine `auto` runs fp32 with on a CPU of these instruction-set flags."""
    return next((engine for flag, engine in FASTEST_FP32 if flag in (flags or ())), "torch")


# --- the export, on the driver --------------------------------------------------------------------------


def export(entry, weights, precision: str, images: list | None = None) -> str:
    """The ONNX file for (model, weights, precision), which both engines run: from the cache, else exported now."""
    import torch

    images = images or []
    precision = "int8" if precision == "int8" else "fp32"  # bf16 is the engine's choice at load: the fp32 graph
    # The ONNX graph depends on torch's exporter; an int8 one also on onnxruntime's quantizer and its images.
    made_by = (torch.__version__, engine_version("onnxruntime"), [_digest(x) for x in images],
               not cpu_has_int8()) if precision == "int8" else (torch.__version__,)
    key = hashlib.sha256(repr((entry.name, weights.kind, weights.sha256, precision, OPSET, made_by)).encode())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", entry.name)[-60:]
    path = os.path.join(defaults.cache_dir(), "exports", f"{name}-{precision}-{key.hexdigest()[:20]}.onnx")
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if precision == "int8":
        _quantize(export(entry, weights, "fp32"), path, entry, images)
    else:
        _export_onnx(entry, weights, path)
    return path


def _digest(data) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def _export_onnx(entry, weights, path: str) -> None:
    import torch

    from imgvec.models.weights import build_network

    net = build_network(entry, weights)
    side = entry.preprocess.crop
    example = torch.zeros(2, 3, side, side)
    temporary = f"{path}.{os.getpid()}.tmp"  # a name of this process's own: two jobs may export at once
    try:
        with warnings.catch_warnings(), _quiet_stdout():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notes
            torch.onnx.export(net, (example,), temporary, dynamo=False, opset_version=OPSET, input_names=["pixels"],
                              output_names=["features"],
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
    except Exception as exc:
        raise NotExportable(entry.name, _operator(exc)) from None
    os.replace(temporary, path)


@contextmanager
def _quiet_stdout():
    """The exporter prints the graph it failed on to file descriptor 1, past sys.stdout: keep stdout the CLI's."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _operator(exc: Exception) -> str:
    """The operator an export failed on, from torch's message, else its first line."""
    text = str(exc)
    match = re.search(r"operator '?([\w:.]+)'?", text) or re.search(r"(aten::\w+|prim::\w+)", text)
    if match:
        return f"operator {match.group(1)} is not supported"
    return (text.strip().splitlines() or [type(exc).__name__])[0][:160]


def _quantize(fp32: str, path: str, entry, images: list) -> None:
    """Static int8: weights per channel, activation ranges from a sample of the job's images (MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imgvec.inputs.preprocess import normalised, prepare

    pixels = [p for p in (prepare(data, entry.preprocess) for data in images) if not isinstance(p, str)]
    if not pixels:
        raise ValueError("--precision int8 is quantised on the job's own images, and none of those sampled decode")
    batches = [{"pixels": normalised(np.stack(pixels[i : i + 16]), entry.preprocess)}
               for i in range(0, len(pixels), 16)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    prepared = f"{path}.{os.getpid()}.pre.onnx"
    temporary = f"{path}.{os.getpid()}.tmp.onnx"
    try:
        quant_pre_process(fp32, prepared)
        # Without VNNI, x86 multiplies u8 x s8 in 16-bit sums that saturate: 7-bit weights keep them in range
        # (ONNX Runtime's advice; measured here on an AVX2 CPU: EfficientNet-Lite0 cosine 0.73 -> see tests)
        quantize_static(prepared, temporary, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=not cpu_has_int8())
    finally:
        if os.path.exists(prepared):
            os.unlink(prepared)
    os.replace(temporary, path)


# --- running it, on a worker --------------------------------------------------------------------------


class EngineNetwork:
    """An exported network on one engine: float32 [N, 3, H, W] (normalised) -> float32 [N, dim]."""

    def __init__(self, engine: str, path: str, precision: str, threads: int):
        self.engine = engine
        if engine == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            import openvino as ov

            # bf16 only where asked: OpenVINO would otherwise pick it by itself on CPUs that have it.
            hint = "bf16" if precision == "bf16" else "f32"
            # No pinning: OpenVINO pins each process's threads from core 0, so two single-threaded Spark
            # workers would share one core (measured: 0.66x torch instead of 1.4x).
            self._compiled = ov.Core().compile_model(path, "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint,
                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False})
            self._request = self._compiled.create_infer_request()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self.engine == "onnxruntime":
            out = self._session.run(None, {"pixels": pixels})[0]
        else:
            out = self._request.infer({0: pixels})[self._compiled.output(0)]
        return np.asarray(out, dtype=np.float32).reshape(len(pixels), -1)
