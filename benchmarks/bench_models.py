"""The model every benchmarked approach uses, importable on Spark workers (benchmarks/ is on PYTHONPATH)."""

from __future__ import annotations

import os

import torch


def build_features_model(weights_file: str) -> torch.nn.Module:
    """torchvision ResNet-50 with the benchmark's weights file, classifier removed."""
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(torch.load(weights_file, weights_only=True))
    net.fc = torch.nn.Identity()
    return net.eval()


def torchvision_transform():
    import torchvision

    return torchvision.models.ResNet50_Weights.DEFAULT.transforms()  # Resize 232, CenterCrop 224, Normalize


def log_load(loads_file: str) -> None:
    with open(loads_file, "a") as f:
        f.write(f"{os.getpid()}\n")


class CountedModel(torch.nn.Module):
    """The seed's broadcast model, noting each time a worker process deserialises it."""

    def __init__(self, net: torch.nn.Module, loads_file: str):
        super().__init__()
        self.net = net
        self.loads_file = loads_file

    def __setstate__(self, state):
        super().__setstate__(state)
        log_load(self.loads_file)

    def forward(self, x):
        return self.net(x)


# --- `python benchmarks/bench_models.py`: each model family's images/s on one CPU core ---------------------------

FAMILIES = [  # (model, what it stands for); random weights: speed does not depend on their values
    ("resnet50", "torchvision CNN (the default)"),
    ("efficientnet_lite0", "EfficientNet-Lite0, the offline model"),
    ("timm:resnet18", "timm CNN"),
    ("dinov2_small", "timm ViT-S/14 DINOv2 at 518 px"),
    ("clip_vit_b32", "open_clip CLIP ViT-B/32, image tower"),
    ("open_clip:ViT-B-16-SigLIP/webli", "open_clip SigLIP ViT-B/16, image tower"),
]  # sscd is a TorchScript file (no random weights): a ResNet-50 at 320x320, about 0.5x resnet50's rate by FLOPs


def main() -> None:
    """images/s through imgvec's own path (decode, preprocess, forward) with one thread, batch 16, on the bundled
    photos: a measurement, never pass/fail. The ratio column is against resnet50 in the same run."""
    import argparse
    import json
    import time

    from imgvec import ImageVectorizer

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "images")
    photos = [open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))]
    batch = (photos * 2)[:16]
    rows, base = [], None
    for model, what in FAMILIES:
        vectorizer = ImageVectorizer(model, weights="random", device="cpu", batch_size=16)
        vectorizer.embed(batch[:2])  # built, warmed
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            vectorizer.embed(batch)
            done += len(batch)
        rate = done / (time.perf_counter() - started)
        base = base or rate
        rows.append({"model": model, "family": what, "dim": vectorizer.dim, "images_per_s_per_core": round(rate, 2),
                     "x_resnet50": round(rate / base, 2)})
        print(f"{model:<34} {what:<42} {vectorizer.dim:>5}  {rate:7.2f} img/s  {rate / base:5.2f}x", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
