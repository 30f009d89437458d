"""conv2d cases: ResNet-50 and MobileNetV2 layers, plain and fused with bias + ReLU.

Rows per layer, batch and memory format (input and weight in the same format
on both sides):
  * plain conv:      "pydl" (pydl.ops.conv2d) vs "torch" (F.conv2d);
  * conv+bias+relu:  "pydl" (fused, activation="relu"), "pydl unfused" (pydl
    conv+bias, then torch's relu) and torch's conv+bias followed by relu;
  * training (a few layers, batch 1): forward + backward of conv+bias+relu
    (all gradients), pydl vs torch; FLOPs counted as 3x the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.harness import Case
from pydl.ops import conv2d
from pydl.ops.conv import torch_conv2d

FAMILY = "conv2d"

# name, C in, K out, H (= W), kernel, stride, padding, groups
LAYERS = [
    ("r50_3x3_64@56", 64, 64, 56, 3, 1, 1, 1),
    ("r50_3x3_128@28", 128, 128, 28, 3, 1, 1, 1),
    ("r50_3x3_256@14", 256, 256, 14, 3, 1, 1, 1),
    ("r50_3x3_512@7", 512, 512, 7, 3, 1, 1, 1),
    ("r50_1x1_64to256@56", 64, 256, 56, 1, 1, 0, 1),
    ("r50_1x1_256to64@56", 256, 64, 56, 1, 1, 0, 1),
    ("r50_1x1_512to128@28", 512, 128, 28, 1, 1, 0, 1),
    ("r50_1x1_1024to256@14", 1024, 256, 14, 1, 1, 0, 1),
    ("r50_stem7x7_3to64@224", 3, 64, 224, 7, 2, 3, 1),
    ("mbv2_dw3x3_32@112", 32, 32, 112, 3, 1, 1, 32),
    ("mbv2_dw3x3_144@56_s2", 144, 144, 56, 3, 2, 1, 144),
    ("mbv2_dw3x3_384@14", 384, 384, 14, 3, 1, 1, 384),
    ("mbv2_dw3x3_960@7", 960, 960, 7, 3, 1, 1, 960),
    # MobileNetV3's 5x5 depthwise: 72 channels leave a tail of 8 past the
    # AVX-512 float vectors (depthwise.h, depthwise_channel_tail)
    ("mbv3_dw5x5_72@28", 72, 72, 28, 5, 1, 2, 72),
]

# Layers that also get a forward+backward row (batch 1).
TRAIN_LAYERS = {"r50_3x3_64@56", "r50_1x1_256to64@56", "mbv2_dw3x3_144@56_s2"}

# The quick CPU run (batch 8) leaves out its slowest layers to stay in budget.
QUICK_SKIP = {"r50_stem7x7_3to64@224"}


def _batches(cfg) -> tuple[int, ...]:
    if cfg.device == "cpu" and cfg.quick:
        return (1, 8)
    return (1, 32)


def _make(layer, n, fmt, fused, cfg, train=False):
    _, c, k, h, ks, s, p, g = layer

    def make_providers():
        mf = torch.channels_last if fmt == "nhwc" else torch.contiguous_format
        opts = {"device": cfg.device, "dtype": cfg.dtype}
        x = torch.randn(n, c, h, h, **opts).contiguous(memory_format=mf)
        w = torch.randn(k, c // g, ks, ks, **opts) / (c // g * ks * ks) ** 0.5
        w = w.contiguous(memory_format=mf)
        if train:
            b = torch.randn(k, **opts)
            for t in (x, w, b):
                t.requires_grad_()
            grad = torch.randn_like(torch_conv2d(x, w, b, s, p, 1, g, "relu", None))

            def step(forward):
                out = forward()
                out.backward(grad)
                return out.detach()

            return {
                "pydl": lambda: step(lambda: conv2d(x, w, b, s, p, 1, g, activation="relu")),
                "torch": lambda: step(lambda: torch_conv2d(x, w, b, s, p, 1, g, "relu", None)),
            }
        if not fused:
            return {
                "pydl": lambda: conv2d(x, w, None, s, p, 1, g),
                "torch": lambda: torch_conv2d(x, w, None, s, p, 1, g, "none", None),
            }
        b = torch.randn(k, **opts)
        return {
            "pydl": lambda: conv2d(x, w, b, s, p, 1, g, activation="relu"),
            "pydl unfused": lambda: F.relu(conv2d(x, w, b, s, p, 1, g)),
            "torch (conv+bias, relu)": lambda: torch_conv2d(x, w, b, s, p, 1, g, "relu", None),
        }

    return make_providers


def cases(cfg) -> list[Case]:
    out = []
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    for n in _batches(cfg):
        for layer in LAYERS:
            name, c, k, h, ks, s, p, g = layer
            if cfg.quick and cfg.device == "cpu" and n > 1 and name in QUICK_SKIP:
                continue
            oh = (h + 2 * p - ks) // s + 1
            flops = 2 * n * k * oh * oh * (c // g) * ks * ks
            shape = f"{n}x{c}x{h}x{h}->{k} {ks}x{ks} s{s} p{p}" + (f" g{g}" if g > 1 else "")
            for fmt in cfg.formats:
                for fused in (False, True):
                    nbytes = elem * (n * c * h * h + k * (c // g) * ks * ks + n * k * oh * oh
                                     + (k if fused else 0))
                    out.append(Case(
                        name=f"conv2d/{name}/b{n}/{fmt}" + ("/bias+relu" if fused else ""),
                        family=FAMILY,
                        shape=shape,
                        flops=flops,
                        bytes=nbytes,
                        make_providers=_make(layer, n, fmt, fused, cfg),
                        tags={"layer": name, "batch": n, "format": fmt, "fused": fused},
                    ))
                if n == 1 and name in TRAIN_LAYERS:
                    out.append(Case(
                        name=f"conv2d/{name}/b{n}/{fmt}/train",
                        family=FAMILY,
                        shape=shape,
                        flops=3 * flops,
                        bytes=3 * nbytes,
                        make_providers=_make(layer, n, fmt, True, cfg, train=True),
                        tags={"layer": name, "batch": n, "format": fmt, "fused": True,
                              "train": True},
                    ))
    return out
