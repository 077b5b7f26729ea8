"""fp32 against bf16 on the CPU, per CPU kind: is `--precision bf16` faster on this machine?

The kinds are this CPU as it is, and the same CPU held to older instruction sets: ATen's kernels
(ATEN_CPU_CAPABILITY) and oneDNN's (ONEDNN_MAX_CPU_ISA) both capped, so bf16 runs as it would on
an AVX-512 CPU without BF16 or an AVX2-only CPU (AMD EPYC before Zen 4, most Intel desktops).
One single-threaded process per kind, imgvec's own forward pass (ResNet-50, channels_last,
batch 16, pre-decoded 224x224 crops). A measurement, not a test: it prints images/s and ratios.

    python benchmarks/precision.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

KINDS = {  # name -> environment that caps the instruction set
    "this CPU": {},
    "AVX-512 without BF16": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def measure(seconds: float) -> dict:
    """Runs in the child: images/s of fp32 and bf16, and what torch says about this CPU."""
    import numpy as np
    import torch

    from imgvec.features.featurize import FeatureConfig, get_featurizer
    from imgvec.models.hardware import native_bf16
    from imgvec.models.weights import WeightsRef

    torch.set_num_threads(1)
    crops = list(np.random.default_rng(0).integers(0, 256, (16, 224, 224, 3), dtype=np.uint8))
    result = {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16()}
    for precision in ("fp32", "bf16"):
        featurizer = get_featurizer(FeatureConfig("resnet50", "cpu", 16, precision), WeightsRef("random"))
        featurizer._forward(crops)  # warm-up: oneDNN picks and caches its kernels
        images, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            featurizer._forward(crops)
            images += len(crops)
        result[precision] = images / (time.perf_counter() - started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per precision and kind")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.seconds)))
        return
    print(f"{'CPU kind':<22} {'torch sees':<10} {'native bf16':<11} {'fp32 img/s':>10} {'bf16 img/s':>10} "
          f"{'bf16/fp32':>9}")
    for name, env in KINDS.items():
        child = subprocess.run([sys.executable, __file__, "--child", "--seconds", str(args.seconds)],
                               env={**os.environ, **env}, capture_output=True, text=True, check=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{name:<22} {r['capability']:<10} {str(r['native_bf16']):<11} {r['fp32']:>10.2f} "
              f"{r['bf16']:>10.2f} {r['bf16'] / r['fp32']:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
