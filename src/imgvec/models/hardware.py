"""What this machine's CPU and GPU can do, and what a setting would cost on it: checked once, here.

The device a task runs on (the GPU Spark gave it, else CUDA, else the CPU), its share of the CPUs,
and the one-line warnings for settings that would be slower than fp32 on this CPU.
"""

from __future__ import annotations

import torch


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
    """The device to run on here: see pick_device."""
    cuda = torch.cuda.is_available()
    return torch.device(pick_device(device, cuda, _task_gpu() if cuda else None))


def pick_device(device: str, cuda: bool, task_gpu: int | None) -> str:
    """'auto': the GPU Spark gave this task (`task_gpu`), else the first CUDA device when there is one, else the CPU;
    any other device as asked."""
    if device != "auto":
        return device
    if not cuda:
        return "cpu"
    return f"cuda:{task_gpu or 0}"


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


# int8 / fp32 images/s on a CPU without VNNI or AMX (an AVX2-only AMD EPYC; issue 18's probe).
INT8_SPEED_WITHOUT_VNNI = 0.9


def int8_warning(precision: str) -> str | None:
    """One line when int8 would run slower than fp32 here: a CPU without VNNI or AMX."""
    if precision != "int8" or cpu_has_int8():
        return None
    return (f"this CPU has neither VNNI nor AMX: --precision int8 runs at about {INT8_SPEED_WITHOUT_VNNI:.1f}x "
            "the speed of fp32 on such CPUs, with 7-bit weights (measured); use fp32, or workers whose CPUs have "
            "VNNI")


def cpu_has_int8() -> bool:
    """VNNI (AVX512-VNNI or AVX-VNNI) or AMX: the instructions that make int8 faster than fp32."""
    flags = cpu_flags()
    return flags is None or bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})  # unknown: say nothing


def cpu_flags() -> set[str] | None:
    """This CPU's instruction-set flags as Linux lists them; None where they cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None
    return flags or None
