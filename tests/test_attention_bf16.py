"""pydl's CPU attention kernel in bfloat16 (MKL's bf16 tile GEMMs, float32
softmax and accumulators, float32 lse). It serves bf16 calls that need a
gradient or dropout (inference goes to torch's faster flash kernel). The
criterion is DESIGN.md's for low precision: pydl's error against the float64
reference at most LOW_PRECISION_FACTOR times torch's own bf16 error."""

import pytest
import torch
import torch.nn.functional as F
from conftest import LOW_PRECISION_FACTOR, needs_extension, rel_error

from pydl import _backend, reference
from pydl.nn.functional import scaled_dot_product_attention as sdpa

pytestmark = [
    needs_extension,
    pytest.mark.skipif(torch.bfloat16 not in _backend.SUPPORTED["attention"]["cpu"],
                       reason="no MKL bf16 GEMM or no bf16 units on this CPU"),
]


@pytest.fixture(autouse=True)
def _strict(monkeypatch):
    monkeypatch.setenv("PYDL_STRICT", "1")


def _inputs(N, H, Hk, L, S, E, Ev, seed=0):
    g = torch.Generator().manual_seed(seed)
    exact = [torch.randn(N, h, n, e, generator=g, dtype=torch.float64)
             for h, n, e in ((H, L, E), (Hk, S, E), (Hk, S, Ev))]
    return [t.requires_grad_() for t in exact], [t.detach().bfloat16().requires_grad_() for t in exact]


def _close_as_torch(ours, torchs, exact, what, eps=1e-3):
    err, torch_err = rel_error(ours, exact), rel_error(torchs, exact)
    assert err <= LOW_PRECISION_FACTOR * torch_err + eps, f"{what}: {err:.2e} vs torch's {torch_err:.2e}"


CASES = [
    # N, H, Hk, L, S, E, Ev, mask kind, causal
    (2, 4, 4, 100, 130, 64, 64, None, False),
    (1, 4, 4, 257, 257, 128, 128, None, True),
    (2, 4, 2, 64, 300, 40, 40, "bool", False),
    (1, 2, 2, 33, 47, 16, 24, "float", False),
    (1, 2, 1, 1, 9, 8, 8, None, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_forward_and_backward_as_accurate_as_torch(case):
    N, H, Hk, L, S, E, Ev, kind, causal = case
    exact, ours_in = _inputs(N, H, Hk, L, S, E, Ev)
    theirs_in = [t.detach().clone().requires_grad_() for t in ours_in]
    g = torch.Generator().manual_seed(1)
    mask = None
    if kind == "bool":
        mask = torch.rand(N, 1, L, S, generator=g) > 0.3
        mask[..., 0] = True  # torch's bf16 path gives NaN for fully masked rows
    elif kind == "float":
        mask = torch.randn(1, H, L, S, generator=g, dtype=torch.float64)
    gqa = H != Hk
    ref = reference.scaled_dot_product_attention(*exact, attn_mask=mask, is_causal=causal,
                                                 enable_gqa=gqa)
    m16 = mask.bfloat16() if kind == "float" else mask
    ours = sdpa(*ours_in, attn_mask=m16, is_causal=causal, enable_gqa=gqa)
    theirs = F.scaled_dot_product_attention(*theirs_in, attn_mask=m16, is_causal=causal,
                                            enable_gqa=gqa)
    assert ours.dtype == torch.bfloat16
    _close_as_torch(ours, theirs, ref, "out")
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(ref, exact, grad)
    got = torch.autograd.grad(ours, ours_in, grad.bfloat16())
    torchs = torch.autograd.grad(theirs, theirs_in, grad.bfloat16())
    for a, t, e, name in zip(got, torchs, want, ("dq", "dk", "dv")):
        assert a.dtype == torch.bfloat16
        _close_as_torch(a, t, e, name)


def test_extras_in_bfloat16_lse_mask_gradient_bottom_right():
    """pydl-only extras in bf16: lse (float32), the gradient of a float mask,
    bottom-right causal with rows that see no key (zeros, lse -inf)."""
    exact, ours_in = _inputs(1, 2, 2, 12, 8, 16, 16)
    mask = torch.randn(1, 1, 12, 8, dtype=torch.float64, requires_grad=True)
    mask16 = mask.detach().bfloat16().requires_grad_()
    out, lse = sdpa(*ours_in, attn_mask=mask16, is_causal=True, causal_alignment="bottom_right",
                    return_lse=True)
    ref, ref_lse = reference.scaled_dot_product_attention(
        *exact, attn_mask=mask, is_causal=True, causal_alignment="bottom_right", return_lse=True)
    assert lse.dtype == torch.float32
    assert torch.isneginf(lse[..., :4]).all() and torch.equal(out[..., :4, :],
                                                              torch.zeros_like(out[..., :4, :]))
    assert rel_error(out, ref) < 1e-2
    finite = torch.isfinite(ref_lse)
    assert torch.allclose(lse[finite].double(), ref_lse[finite], atol=3e-2)
    (g_mask,) = torch.autograd.grad(out.float().sum(), [mask16])
    (want,) = torch.autograd.grad(ref.sum(), [mask])
    assert g_mask.dtype == torch.bfloat16 and rel_error(g_mask, want) < 2e-2


def test_dropout_keeps_what_the_float32_kernel_keeps():
    """Same seed, same keep pattern as the float32 kernel: the bf16 output is
    the float32 one up to bf16 rounding."""
    _, (q, k, v) = _inputs(1, 2, 2, 40, 70, 32, 32)
    torch.manual_seed(11)
    out16 = sdpa(q, k, v, dropout_p=0.3)
    torch.manual_seed(11)
    out32 = sdpa(q.float().detach(), k.float().detach(), v.float().detach(), dropout_p=0.3)
    assert rel_error(out16, out32) < 1e-2
    out16.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_autocast_training_uses_pydls_kernel():
    """Under CPU autocast with inputs that need a gradient, the call runs pydl's
    bf16 kernel (strict mode is on) and matches torch's accuracy."""
    exact, _ = _inputs(2, 2, 2, 50, 50, 32, 32)
    x32 = [t.detach().float().requires_grad_() for t in exact]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = sdpa(*x32, is_causal=True)
    assert ours.dtype == torch.bfloat16
    ref = reference.scaled_dot_product_attention(*exact, is_causal=True)
    assert rel_error(ours, ref) < 1e-2
    ours.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in x32)


def test_opcheck_bfloat16():
    _, (q, k, v) = _inputs(1, 2, 1, 7, 9, 8, 8)
    args = (q, k, v, None, None, 0.0, True, False, 0.3)
    torch.library.opcheck(torch.ops.pydl.attention.default, args)
