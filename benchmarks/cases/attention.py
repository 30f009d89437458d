"""Attention cases: pydl.nn.functional.scaled_dot_product_attention vs
torch.nn.functional.scaled_dot_product_attention with the same inputs.

torch's side is pinned to its flash-attention backend (ATen's CPU flash
kernel on CPU). Rows: forward and forward + backward, causal and not, head
dim 64 and 128, sequence length 128 .. 2048 (--quick) or 4096 (full), batch
1 x 8 heads. FLOPs: 4 * b * h * L * S * d forward (causal: half); backward
2.5x forward, so a forward + backward row counts 3.5x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.harness import Case
from pydl.nn.functional import scaled_dot_product_attention

FAMILY = "attention"

BATCH, HEADS = 1, 8
HEAD_DIMS = (64, 128)
QUICK_LENGTHS = (128, 512, 2048)
FULL_LENGTHS = (128, 512, 1024, 2048, 4096)


def _torch_sdpa(q, k, v, causal):
    backend = SDPBackend.FLASH_ATTENTION if q.device.type == "cpu" or q.dtype != torch.float32 \
        else SDPBackend.EFFICIENT_ATTENTION
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _case(length, dim, causal, train, cfg):
    def make_providers():
        opts = {"device": cfg.device, "dtype": cfg.dtype, "requires_grad": train}
        q, k, v = (torch.randn(BATCH, HEADS, length, dim, **opts) for _ in range(3))
        grad = torch.randn(BATCH, HEADS, length, dim, device=cfg.device, dtype=cfg.dtype)

        def ours():
            return scaled_dot_product_attention(q, k, v, is_causal=causal)

        def theirs():
            return _torch_sdpa(q, k, v, causal)

        if not train:
            return {"pydl": ours, "torch": theirs}

        def fwd_bwd(fn):
            out = fn()
            torch.autograd.grad(out, (q, k, v), grad)
            return out.detach()

        return {"pydl": lambda: fwd_bwd(ours), "torch": lambda: fwd_bwd(theirs)}

    return make_providers


def cases(cfg) -> list[Case]:
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    out = []
    for train in (False, True):
        for causal in (False, True):
            for dim in HEAD_DIMS:
                for length in QUICK_LENGTHS if cfg.quick else FULL_LENGTHS:
                    fwd = 4 * BATCH * HEADS * length * length * dim * (0.5 if causal else 1.0)
                    io = 4 * BATCH * HEADS * length * dim * elem  # q, k, v read, out written
                    kind = "fwd_bwd" if train else "fwd"
                    out.append(Case(
                        name=f"attention/{kind}/{'causal' if causal else 'full'}_L{length}_d{dim}",
                        family=FAMILY,
                        shape=f"B{BATCH} H{HEADS} L{length} S{length} d{dim}",
                        flops=fwd * (3.5 if train else 1.0),
                        bytes=io * (2 if train else 1),
                        make_providers=_case(length, dim, causal, train, cfg),
                        tags={"train": train, "causal": causal, "head_dim": dim,
                              "length": length},
                    ))
    return out
