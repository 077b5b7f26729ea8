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
