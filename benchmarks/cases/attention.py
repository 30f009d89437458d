"""Attention cases: pydl.nn.functional.scaled_dot_product_attention vs
torch.nn.functional.scaled_dot_product_attention with the same inputs.

torch's side is pinned to its flash-attention backend (ATen's CPU flash
kernel on CPU; its math backend for the dropout row, the only one with
dropout on the CPU). Rows: forward and forward + backward, causal and not, head
dim 64 and 128, sequence length 128 .. 2048 (--quick) or 4096 (full), batch
1 x 8 heads. FLOPs: 4 * b * h * L * S * d forward (causal: half); backward
2.5x forward, so a forward + backward row counts 3.5x.

GPU rows (--device cuda): bf16 and fp16 (whatever --dtype says), head dim 64
and 128, sequence 1k and 4k (--quick) or 1k .. 8k, 16k tokens per batch
(batch = 16384 / L) x 16 heads, causal and not, forward and forward +
backward, against torch's SDPA pinned to EACH of its flash, efficient and
cuDNN backends (one provider each; a backend that refuses the case is left
out); plus float32 rows against the efficient backend (torch's only fused
fp32 kernel).

Decoding rows (KV cache): one query row (a generated token) or 16 (a
draft of speculative decoding, bottom-right causal: query i sees keys up to
S - 16 + i; torch's side takes that as an explicit boolean mask, as a torch
user would write it) against S = 1024 / 4096 cached keys, B1 x 8 heads:
memory-bound, so the per-call overhead shows.

Module rows: pydl.nn.TransformerEncoderLayer vs torch's (same weights,
d_ff = 4 x embed, dropout 0.1 in training; torch's inference fast path on),
and pydl.nn.MultiheadAttention vs torch.nn.MultiheadAttention (same
weights, self-attention, batch_first, need_weights=False, and at L=1024 also
need_weights=True (the averaged weights, differentiated in training); torch's module may
take its native fast path in inference). FLOPs: the four projections
(8 * B * L * E^2) plus the attention's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.harness import Case
from pydl.nn import MultiheadAttention, TransformerEncoderLayer
from pydl.nn.functional import scaled_dot_product_attention

FAMILY = "attention"

BATCH, HEADS = 1, 8
HEAD_DIMS = (64, 128)
QUICK_LENGTHS = (128, 512, 2048)
FULL_LENGTHS = (128, 512, 1024, 2048, 4096)
# (batch, length, embed_dim, heads) for the module rows.
MHA_SIZES = ((8, 128, 512, 8), (2, 1024, 512, 8))


def _torch_sdpa(q, k, v, causal, dropout=0.0):
    backend = SDPBackend.FLASH_ATTENTION if q.device.type == "cpu" or q.dtype != torch.float32 \
        else SDPBackend.EFFICIENT_ATTENTION
    if dropout > 0.0 and q.device.type == "cpu":
        backend = SDPBackend.MATH  # torch's CPU flash kernel has no dropout
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)


# GPU: 16k tokens per batch x 16 heads fill an H100 at every length.
GPU_TOKENS, GPU_HEADS = 16384, 16
GPU_QUICK_LENGTHS = (1024, 4096)
GPU_FULL_LENGTHS = (1024, 2048, 4096, 8192)
GPU_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
# float32: torch's efficient backend is the only fused fp32 kernel.
GPU_FP32 = ((4, 1024, 64), (2, 2048, 128))  # (batch, length, head dim), 16 heads


def _gpu_case(batch, length, dim, causal, train, dtype, backends):
    def make_providers():
        opts = {"device": "cuda", "dtype": dtype, "requires_grad": train}
        q, k, v = (torch.randn(batch, GPU_HEADS, length, dim, **opts) for _ in range(3))
        grad = torch.randn(batch, GPU_HEADS, length, dim, device="cuda", dtype=dtype)

        def run(fn):
            if not train:
                return fn()
            out = fn()
            torch.autograd.grad(out, (q, k, v), grad)
            return out.detach()

        def pinned(backend):
            def fn():
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return lambda: run(fn)

        providers = {}
        for name in backends:
            candidate = pinned(GPU_BACKENDS[name])
            try:  # leave out a backend that refuses this case (dtype, head dim, card)
                with torch.set_grad_enabled(train):
                    candidate()
            except RuntimeError:
                continue
            providers[f"torch {name}"] = candidate
        providers["pydl"] = lambda: run(
            lambda: scaled_dot_product_attention(q, k, v, is_causal=causal))
        return providers

    return make_providers


def _gpu_cases(cfg) -> list[Case]:
    out = []
    lengths = GPU_QUICK_LENGTHS if cfg.quick else GPU_FULL_LENGTHS
    rows = [(GPU_TOKENS // length, length, dim, dtype, tuple(GPU_BACKENDS))
            for dtype in (torch.bfloat16, torch.float16) for dim in HEAD_DIMS for length in lengths]
    rows += [(b, length, dim, torch.float32, ("efficient",)) for b, length, dim in GPU_FP32]
    for train in (False, True):
        for causal in (False, True):
            for batch, length, dim, dtype, backends in rows:
                fwd = 4 * batch * GPU_HEADS * length * length * dim * (0.5 if causal else 1.0)
                elem = torch.empty((), dtype=dtype).element_size()
                io = 4 * batch * GPU_HEADS * length * dim * elem
                kind = "fwd_bwd" if train else "fwd"
                out.append(Case(
                    name=(f"attention/{kind}/{'causal' if causal else 'full'}_L{length}_d{dim}"
                          f"_{str(dtype)[6:]}"),
                    family=FAMILY,
                    shape=f"B{batch} H{GPU_HEADS} L{length} S{length} d{dim} {str(dtype)[6:]}",
                    flops=fwd * (3.5 if train else 1.0),
                    bytes=io * (2 if train else 1),
                    make_providers=_gpu_case(batch, length, dim, causal, train, dtype, backends),
                    tags={"train": train, "causal": causal, "head_dim": dim, "length": length},
                ))
    return out


def _case(length, dim, causal, train, cfg, dropout=0.0):
    def make_providers():
        opts = {"device": cfg.device, "dtype": cfg.dtype, "requires_grad": train}
        q, k, v = (torch.randn(BATCH, HEADS, length, dim, **opts) for _ in range(3))
        grad = torch.randn(BATCH, HEADS, length, dim, device=cfg.device, dtype=cfg.dtype)

        def ours():
            return scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)

        def theirs():
            return _torch_sdpa(q, k, v, causal, dropout)

        if not train:
            return {"pydl": ours, "torch": theirs}

        def fwd_bwd(fn):
            out = fn()
            torch.autograd.grad(out, (q, k, v), grad)
            return out.detach()

        return {"pydl": lambda: fwd_bwd(ours), "torch": lambda: fwd_bwd(theirs)}

    return make_providers


# (query rows, cached keys, head dim) of the decoding rows.
DECODE_SIZES = ((1, 1024, 64), (1, 4096, 128), (16, 1024, 64))


def _decode_case(rows, keys, dim, cfg):
    def make_providers():
        opts = {"device": cfg.device, "dtype": cfg.dtype}
        q = torch.randn(BATCH, HEADS, rows, dim, **opts)
        k, v = (torch.randn(BATCH, HEADS, keys, dim, **opts) for _ in range(2))
        causal = rows > 1
        # bottom-right: query i sees keys j <= i + keys - rows
        visible = torch.ones(rows, keys, dtype=torch.bool, device=cfg.device).tril(keys - rows)

        def ours():
            return scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                causal_alignment="bottom_right")

        def theirs():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible if causal else None)

        return {"pydl": ours, "torch": theirs}

    return make_providers


def _decode_cases(cfg) -> list[Case]:
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    out = []
    for rows, keys, dim in DECODE_SIZES:
        out.append(Case(
            name=f"attention/decode/L{rows}_S{keys}_d{dim}",
            family=FAMILY,
            shape=f"B{BATCH} H{HEADS} L{rows} S{keys} d{dim}"
                  + (" bottom-right causal" if rows > 1 else ""),
            flops=4 * BATCH * HEADS * rows * keys * dim,
            bytes=elem * BATCH * HEADS * (2 * keys + 2 * rows) * dim,
            make_providers=_decode_case(rows, keys, dim, cfg),
            tags={"train": False, "causal": rows > 1, "head_dim": dim, "length": keys},
        ))
    return out


def _mha_case(batch, length, embed, heads, train, cfg, need_weights=False, dropout=0.0):
    def make_providers():
        opts = {"device": cfg.device, "dtype": cfg.dtype}
        theirs = torch.nn.MultiheadAttention(embed, heads, dropout, batch_first=True, **opts)
        ours = MultiheadAttention(embed, heads, dropout, batch_first=True, **opts)
        ours.load_state_dict(theirs.state_dict())
        for m in (ours, theirs):
            m.train(train)
        x = torch.randn(batch, length, embed, requires_grad=train, **opts)

        def run(module):
            # Inference under no_grad, as a user runs it (torch's module then
            # takes its native fast path where it can).
            with torch.set_grad_enabled(train):
                out, weights = module(x, x, x, need_weights=need_weights)
            if train:
                (out.sum() + (weights.sum() if need_weights else 0)).backward()
            return out.detach()

        return {"pydl": lambda: run(ours), "torch": lambda: run(theirs)}

    return make_providers


def _encoder_layer_case(batch, length, embed, heads, train, cfg):
    def make_providers():
        opts = {"device": cfg.device, "dtype": cfg.dtype}
        theirs = torch.nn.TransformerEncoderLayer(embed, heads, 4 * embed, batch_first=True, **opts)
        ours = TransformerEncoderLayer(embed, heads, 4 * embed, batch_first=True, **opts)
        ours.load_state_dict(theirs.state_dict())
        for m in (ours, theirs):
            m.train(train)
        x = torch.randn(batch, length, embed, requires_grad=train, **opts)

        def run(module):
            with torch.set_grad_enabled(train):  # inference under no_grad: torch's fast path
                out = module(x)
            if train:
                out.sum().backward()
            return out.detach()

        return {"pydl": lambda: run(ours), "torch": lambda: run(theirs)}

    return make_providers


def _encoder_layer_cases(cfg) -> list[Case]:
    """TransformerEncoderLayer (d_ff = 4 x embed, dropout 0.1 as torch's
    default): in inference torch's module takes its native fast path."""
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    out = []
    for train in (False, True):
        for batch, length, embed, heads in MHA_SIZES:
            flops = 24 * batch * length * embed**2 + 4 * batch * length * length * embed
            out.append(Case(
                name=f"attention/encoder_layer_{'fwd_bwd' if train else 'fwd'}/B{batch}_L{length}_E{embed}",
                family=FAMILY,
                shape=f"B{batch} L{length} E{embed} H{heads} ff{4 * embed}"
                      + (" dropout 0.1" if train else ""),
                flops=flops * (3 if train else 1),
                bytes=elem * (12 * embed**2 + 2 * batch * length * embed),
                make_providers=_encoder_layer_case(batch, length, embed, heads, train, cfg),
                tags={"train": train, "module": True, "random": train},
            ))
    return out


def _mha_cases(cfg) -> list[Case]:
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    out = []
    for train in (False, True):
        for batch, length, embed, heads in MHA_SIZES:
            # need_weights=True (averaged weights, as torch returns them) only at
            # the long sequence: where torch leaves its fused path; in training
            # also with dropout (the weights returned are the dropped-out ones).
            variants = [(False, 0.0)]
            if length >= 1024:
                variants += [(True, 0.0)] + ([(True, 0.1)] if train else [])
            for need_weights, dropout in variants:
                flops = 8 * batch * length * embed**2 + 4 * batch * length * length * embed
                kind = ("fwd_bwd" if train else "fwd") + ("_weights" if need_weights else "") \
                    + ("_dropout" if dropout else "")
                out.append(Case(
                    name=f"attention/mha_{kind}/B{batch}_L{length}_E{embed}",
                    family=FAMILY,
                    shape=f"B{batch} L{length} E{embed} H{heads}"
                          + (" need_weights" if need_weights else "")
                          + (f" dropout {dropout}" if dropout else ""),
                    flops=flops * (3 if train else 1),
                    bytes=elem * (4 * embed**2 + 2 * batch * length * embed),
                    make_providers=_mha_case(batch, length, embed, heads, train, cfg,
                                             need_weights, dropout),
                    # dropout rows: outputs differ by their masks (tests check the math)
                    tags={"train": train, "module": True, "random": dropout > 0},
                ))
    return out


def cases(cfg) -> list[Case]:
    if cfg.device == "cuda":
        return _gpu_cases(cfg) + _mha_cases(cfg)
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
    # Training with attention dropout (Transformer layers default to 0.1).
    length, dim = 1024, 64
    out.append(Case(
        name=f"attention/fwd_bwd_dropout/full_L{length}_d{dim}",
        family=FAMILY,
        shape=f"B{BATCH} H{HEADS} L{length} S{length} d{dim} dropout 0.1",
        flops=4 * BATCH * HEADS * length * length * dim * 3.5,
        bytes=8 * BATCH * HEADS * length * dim * elem,
        make_providers=_case(length, dim, False, True, cfg, dropout=0.1),
        tags={"train": True, "causal": False, "head_dim": dim, "length": length, "random": True},
    ))
    return out + _decode_cases(cfg) + _mha_cases(cfg) + _encoder_layer_cases(cfg)
