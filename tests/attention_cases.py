"""Attention test cases shared by the GPU tests (test_attention_cuda.py) and
the CUDA-emulator tests (test_cuda_emulation_attention.py), and the
MultiheadAttention dropout check shared by the CPU and GPU tests. A case is
(batch, Hq, Hk, L, S, E, Ev, mask, causal alignment or None), where mask is
None | "bool" | "float" (full (N, Hq, L, S)) | "bool_b" / "float_b" ((L, S),
broadcast over batch and heads) | "float_h" ((Hq, 1, S))."""

from __future__ import annotations

import math

import torch
from conftest import RTOL, rel_error


def case_id(case) -> str:
    n, hq, hk, L, S, E, Ev, mask, causal = case
    return f"n{n}_h{hq}-{hk}_L{L}_S{S}_E{E}-{Ev}_{mask}_{causal}"


def case_inputs(case, seed=0, device="cpu"):
    """float64 q, k, v and the mask (bool or float64) on `device`; the values
    depend only on the case and the seed."""
    n, hq, hk, L, S, E, Ev, mask_kind, _ = case
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    q, k, v = r(n, hq, L, E), r(n, hk, S, E), r(n, hk, S, Ev)
    mask = None
    if mask_kind is not None:
        shape = {"bool_b": (L, S), "float_b": (L, S), "float_h": (hq, 1, S)}.get(
            mask_kind, (n, hq, L, S))
        mask = (torch.rand(*shape, generator=g) > 0.3) if mask_kind.startswith("bool") \
            else r(*shape)
    return tuple(None if t is None else t.to(device) for t in (q, k, v, mask))


def in_dtype(t, dtype):
    """t in `dtype`, except a bool mask (and None) as it is."""
    return None if t is None else (t if t.dtype == torch.bool else t.to(dtype))


def check_dropped_weights(module, x, p):
    """MultiheadAttention ``module`` (dropout ``p``, seq-first input ``x`` on
    the module's device and dtype) in training with need_weights=True returns
    torch's weights (each 0 or the eval-mode weight / (1 - p)), reproducible
    under torch.manual_seed, and the very ones its output used:
    out = out_proj(weights @ V). fp16 / bf16: within a few roundings (2e-2)."""
    tol = RTOL.get(x.dtype, 2e-2)
    module.eval()
    _, full = module(x, x, x, average_attn_weights=False)
    module.train()
    torch.manual_seed(5)
    out, dropped = module(x, x, x, average_attn_weights=False)
    torch.manual_seed(5)
    out2, dropped2 = module(x, x, x, average_attn_weights=False)
    assert torch.equal(out, out2) and torch.equal(dropped, dropped2)
    kept = dropped != 0
    assert 0.3 < kept.double().mean().item() < 0.7
    assert rel_error(dropped[kept], full[kept] / (1 - p)) <= tol, "kept weights"
    (L, B, E), H = x.shape, module.num_heads
    w_v, b_v = module.in_proj_weight.split(E)[2], module.in_proj_bias.split(E)[2]
    v = torch.nn.functional.linear(x, w_v, b_v).view(L, B, H, E // H).permute(1, 2, 0, 3)
    heads = (dropped.to(v.dtype) @ v).permute(2, 0, 1, 3).reshape(L, B, E)
    expected = torch.nn.functional.linear(heads, module.out_proj.weight, module.out_proj.bias)
    assert rel_error(out, expected) <= tol, "out from the dropped-out weights"


def rising_scores(L=70, S=300, d=64, heads=2, seed=3, device="cpu"):
    """float64 q, k, v (batch 1) whose scores climb along the keys: about 3 per
    32-key tile over the first 100 keys (under the forward's lazy-rescale
    margin, 8 / log2 e = 5.5) and about 13 per tile after (over it), plus
    N(0, 1) noise. The whole-tile softmax keeps a stale reference max in the
    first stretch and must move it, rescaling O, in the second."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, L, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, heads, S, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, heads, S, d, generator=g, dtype=torch.float64)
    ramp = torch.cat([torch.linspace(0, 9, 100, dtype=torch.float64),
                      torch.linspace(9, 9 + 13 * (S - 100) / 32, S - 100, dtype=torch.float64)])
    q[..., 0] = math.sqrt(d)  # score_ij = ramp_j + noise at scale 1 / sqrt(d)
    k[..., 0] = ramp
    return tuple(t.to(device) for t in (q, k, v))
