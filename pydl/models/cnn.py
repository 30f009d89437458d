"""A CNN classifier: conv blocks (conv + activation [+ max-pool]), flatten, dense layers.

Flatten comes after the convolutions, never before (the write-up's bug).
Convolutions are pydl.nn.Conv2d through pydl.models.layers, with the
activation fused into the kernel where pydl supports it.
"""

from __future__ import annotations

import torch

from pydl.models import layers
from pydl.models._config import check_input, check_positive_int, dense_stack, layer_specs

DEFAULT_CONV = ({"filters": 32, "kernel_size": 3, "activation": "relu", "pool": 0},
                {"filters": 32, "kernel_size": 3, "activation": "relu", "pool": 2},
                {"filters": 64, "kernel_size": 3, "activation": "relu", "pool": 2})
DEFAULT_DENSE = ({"units": 128, "activation": "relu", "dropout": 0.3},)


class CNNClassifier(torch.nn.Module):
    """conv_layers: [{"filters", "kernel_size", "activation", "pool"}] ('same' padding;
    pool 0/1 = none); dense_layers: [{"units", "activation", "dropout"}] or ints."""

    def __init__(self, input_shape=(1, 8, 8), num_classes: int = 10, conv_layers=DEFAULT_CONV,
                 dense_layers=DEFAULT_DENSE):
        super().__init__()
        where = "CNNClassifier"
        if len(tuple(input_shape)) != 3:
            raise ValueError(f"{where}: input_shape must be (channels, height, width), "
                             f"got {input_shape}")
        channels, h, w = (check_positive_int(v, "input_shape", where) for v in input_shape)
        self.input_shape = (channels, h, w)
        self.num_classes = check_positive_int(num_classes, "num_classes", where)
        blocks: list[torch.nn.Module] = []
        for k, spec in enumerate(layer_specs(conv_layers, ("filters", "kernel_size", "activation", "pool"),
                                             {"activation": "relu", "pool": 0}, f"{where} conv_layers")):
            blocks += layers.conv2d(channels, spec["filters"], spec["kernel_size"], spec["activation"])
            channels = spec["filters"]
            if spec["pool"] > 1:
                if spec["pool"] > min(h, w):
                    raise ValueError(f"{where} conv_layers[{k}]: pool {spec['pool']} is larger "
                                     f"than the {h}x{w} feature map")
                blocks.append(torch.nn.MaxPool2d(spec["pool"]))
                h, w = h // spec["pool"], w // spec["pool"]
        self.features = torch.nn.Sequential(*blocks)
        self.flatten = torch.nn.Flatten()
        self.classifier = dense_stack(channels * h * w, dense_layers, num_classes,
                                      f"{where} dense_layers")

    def check_input(self, X: torch.Tensor) -> None:
        check_input(X, self.input_shape, "CNNClassifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
