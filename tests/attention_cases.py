"""Attention test cases shared by the GPU tests (test_attention_cuda.py) and
the CUDA-emulator tests (test_cuda_emulation_attention.py): a case is
(batch, Hq, Hk, L, S, E, Ev, mask, causal alignment or None), where mask is
None | "bool" | "float" (full (N, Hq, L, S)) | "bool_b" / "float_b" ((L, S),
broadcast over batch and heads) | "float_h" ((Hq, 1, S))."""

from __future__ import annotations

import torch


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
