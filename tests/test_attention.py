"""pydl scaled-dot-product attention against the float64 reference and torch's SDPA.

Covers masks (bool/float, broadcast), causal in both alignments, GQA, dropout
(through the explicit-mask equivalence), the lse output, fully masked rows,
forward and backward (including the additive mask's gradient), gradcheck,
opcheck, torch.compile, bad input and the O(L + S) memory of the CPU kernel.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_rel, assert_script_ok_on_isa, needs_extension

import pydl
from pydl import _ext, reference
from pydl.nn.functional import scaled_dot_product_attention as sdpa

# (batch dims, Hq, Hk, L, S, E, Ev, mask, causal alignment or None, gqa)
# mask: None | "bool" | "float" (+ "_b": (L, S), broadcast over batch and heads)
#       | "float_row" (L, 1): a per-row shift (moves lse only) | "float_col" (1, S).
CASES = [
    ((2,), 4, 4, 37, 53, 16, 16, None, None, False),
    ((1,), 2, 2, 1, 1, 8, 8, None, None, False),
    ((1,), 1, 1, 1, 300, 32, 32, "float", None, False),
    ((2,), 2, 2, 70, 70, 64, 64, None, "top_left", False),
    ((1,), 2, 2, 300, 129, 8, 24, None, "top_left", False),
    ((2,), 3, 3, 20, 90, 32, 32, None, "bottom_right", False),
    ((1,), 2, 2, 90, 20, 16, 16, "bool", "bottom_right", False),
    ((2,), 4, 2, 65, 77, 40, 40, "bool_b", None, True),
    ((2,), 6, 2, 33, 33, 16, 16, "float_b", "top_left", True),
    ((2,), 4, 1, 17, 260, 128, 64, "float", None, True),
    ((1,), 1, 1, 40, 40, 256, 256, "float_row", None, False),
    ((2,), 2, 2, 50, 30, 64, 32, "float_col", "top_left", False),
    ((), 1, 1, 12, 19, 8, 8, "bool", None, False),  # 3-D inputs
    ((2, 2), 2, 2, 9, 11, 8, 8, "float", None, False),  # 5-D inputs
]


def _ids(case):
    b, hq, hk, L, S, E, Ev, mask, causal, gqa = case
    return f"b{'x'.join(map(str, b))}_h{hq}-{hk}_L{L}_S{S}_E{E}-{Ev}_{mask}_{causal}"


def _inputs(case, dtype, seed=0):
    b, hq, hk, L, S, E, Ev, mask_kind, causal, gqa = case
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    q, k, v = r(*b, hq, L, E), r(*b, hk, S, E), r(*b, hk, S, Ev)
    mask = None
    if mask_kind is not None:
        shape = {"float_row": (L, 1), "float_col": (1, S)}.get(
            mask_kind, (L, S) if mask_kind.endswith("_b") else (*b, hq, L, S))
        if mask_kind.startswith("bool"):
            mask = torch.rand(*shape, generator=g) > 0.3
        else:
            mask = r(*shape)
    to = lambda t: None if t is None else (t if t.dtype == torch.bool else t.to(dtype))
    return to(q), to(k), to(v), to(mask)


def _uses_extras(case):
    # What torch's SDPA cannot express: the fallback then is the reference itself.
    return case[8] == "bottom_right" or (case[8] is not None and case[7] is not None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_and_grads_match_reference(case, dtype):
    if not _ext.loaded() and _uses_extras(case):
        pytest.skip("fallback for pydl-only extras is the reference itself")
    q, k, v, mask = _inputs(case, dtype)
    causal, gqa = case[8], case[9]
    kw = dict(is_causal=causal is not None, enable_gqa=gqa,
              causal_alignment=causal or "top_left")
    float_mask = mask is not None and mask.dtype != torch.bool
    leaves = [q, k, v] + ([mask] if float_mask else [])
    for t in leaves:
        t.requires_grad_()
    out = sdpa(q, k, v, attn_mask=mask, **kw)
    d = lambda t: t.detach().double().requires_grad_() if t is not None and t.is_floating_point() else t
    rq, rk, rv, rmask = d(q), d(k), d(v), d(mask)
    ref, ref_lse = reference.scaled_dot_product_attention(rq, rk, rv, rmask, return_lse=True, **kw)
    assert out.shape == ref.shape and out.dtype == dtype
    assert_close_rel(out, ref, dtype, "out")
    grad = torch.randn(out.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, leaves, grad.to(dtype))
    ref_leaves = [rq, rk, rv] + ([rmask] if float_mask else [])
    want = torch.autograd.grad(ref, ref_leaves, grad)
    for name, a, e in zip(["q", "k", "v", "mask"], got, want):
        assert a.shape == e.shape, name
        if name == "mask" and case[7] == "float_row":  # a row shift cancels in the softmax
            assert a.abs().max().item() < 1e-4
        else:
            assert_close_rel(a, e, dtype, f"grad {name}")
    if _ext.loaded():
        _, lse = sdpa(q, k, v, attn_mask=mask, return_lse=True, **kw)
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(lse), finite)
        assert_close_rel(lse[finite], ref_lse[finite], dtype, "lse")


@pytest.mark.parametrize("layout", ["contiguous", "blhe_transposed", "broadcast_batch", "4d_gqa"])
def test_matches_torch_sdpa(layout):
    """float32 against torch's own SDPA on its math backend, on awkward layouts."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(1)
    B, H, L, S, E = 2, 4, 45, 67, 32
    if layout == "blhe_transposed":  # (B, L, H, E) storage, as in MultiheadAttention
        q = torch.randn(B, L, H, E).transpose(1, 2)
        k = torch.randn(B, S, H, E).transpose(1, 2)
        v = torch.randn(B, S, H, E).transpose(1, 2)
        kw = {"is_causal": True}
    elif layout == "broadcast_batch":
        q, k, v = torch.randn(B, H, L, E), torch.randn(1, H, S, E), torch.randn(1, H, S, E)
        kw = {"attn_mask": torch.randn(H, 1, S)}
    elif layout == "4d_gqa":
        q, k, v = torch.randn(B, H, L, E), torch.randn(B, 2, S, E), torch.randn(B, 2, S, E)
        kw = {"enable_gqa": True, "attn_mask": torch.rand(B, 1, L, S) > 0.5, "scale": 0.3}
    else:
        q, k, v = torch.randn(B, H, L, E), torch.randn(B, H, S, E), torch.randn(B, H, S, E)
        kw = {}
    ours = sdpa(q, k, v, **kw)
    with sdpa_kernel(SDPBackend.MATH):
        theirs = F.scaled_dot_product_attention(q, k, v, **kw)
    assert ours.shape == theirs.shape
    assert_close_rel(ours, theirs, torch.float32, layout)


@pytest.mark.parametrize("kind", ["empty_L", "empty_S", "empty_Ev", "mask_col_stride",
                                  "query_last_dim_strided", "2d_causal"])
def test_awkward_shapes_and_strides(kind):
    torch.manual_seed(11)
    q, k, v = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    kw = {}
    if kind == "empty_L":
        q = q[:, :, :0]
    elif kind == "empty_S":  # no keys at all: every row is fully masked -> zeros
        k, v = k[:, :, :0], v[:, :, :0]
    elif kind == "empty_Ev":
        v = v[..., :0]
    elif kind == "mask_col_stride":
        kw["attn_mask"] = torch.randn(9, 7).t()
    elif kind == "query_last_dim_strided":
        q = torch.randn(2, 3, 8, 7).transpose(-1, -2)
    else:
        q, k, v = q[0, 0], k[0, 0], v[0, 0]
        kw["is_causal"] = True
    for t in (q, k, v):
        t.requires_grad_()
    out = sdpa(q, k, v, **kw)
    d = lambda t: t.detach().double()
    ref = reference.scaled_dot_product_attention(
        d(q), d(k), d(v), **{a: d(b) if isinstance(b, torch.Tensor) else b for a, b in kw.items()})
    assert out.shape == ref.shape
    if out.numel():
        assert_close_rel(out, ref, torch.float32, kind)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("kind", ["bool", "float_-inf", "bottom_right_L>S"])
def test_fully_masked_rows_give_zeros(kind):
    """The rule: a query row that sees no key outputs zeros (lse = -inf) and
    passes zero gradient; nothing becomes NaN."""
    if not _ext.loaded() and kind == "bottom_right_L>S":
        pytest.skip("bottom-right alignment is a pydl extra")
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 2, 12, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    kw = {}
    hidden = [0, 5]
    if kind == "bool":
        mask = torch.rand(2, 2, 12, 8) > 0.3
        mask[..., hidden, :] = False
        kw = {"attn_mask": mask}
    elif kind == "float_-inf":
        mask = torch.randn(12, 8)
        mask[hidden] = float("-inf")
        kw = {"attn_mask": mask}
    else:  # query i sees keys j <= i + S - L = i - 4: rows 0..3 see nothing
        kw = {"is_causal": True, "causal_alignment": "bottom_right"}
        hidden = [0, 1, 2, 3]
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = sdpa(q, k, v, **kw)
    assert torch.isfinite(out).all()
    assert (out[..., hidden, :] == 0).all()
    grads = torch.autograd.grad(out.square().sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][..., hidden, :] == 0).all()
    d = lambda t: t.detach().double().requires_grad_()
    ref = reference.scaled_dot_product_attention(d(q), d(k), d(v), **{
        key: (val.double() if isinstance(val, torch.Tensor) and val.is_floating_point() else val)
        for key, val in kw.items()})
    assert_close_rel(out, ref, torch.float32, "out")
    if _ext.loaded():
        _, lse = sdpa(q, k, v, return_lse=True, **kw)
        assert torch.isneginf(lse[..., hidden]).all()


_NAN_SCRIPT = """
import torch, pydl
from pydl.nn.functional import scaled_dot_product_attention as sdpa
from torch.nn.attention import SDPBackend, sdpa_kernel
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    # 700 keys: more than one key block, so a NaN max from the first block
    # must carry into the next ones.
    q, k, v = (torch.randn(2, 2, 7, 40, dtype=dtype) for _ in range(3))
    k, v = torch.randn(2, 2, 700, 40, dtype=dtype), torch.randn(2, 2, 700, 40, dtype=dtype)
    k[0, 1, 3, 5] = float("nan")  # every score of head 1 in batch 0: NaN
    k[1, 0, 6, 0] = float("inf")  # +inf where q[..., 0] > 0, -inf (hidden) where < 0
    v[1, 1, 2, 9] = float("nan")  # reaches column 9 of every row of that head
    with sdpa_kernel(SDPBackend.MATH):
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for kw in ({}, {"return_lse": True}):
        got = sdpa(q, k, v, **kw)
        got = got[0] if kw else got
        assert torch.equal(got.isnan(), want.isnan()), dtype
        assert torch.allclose(got.nan_to_num(), want.nan_to_num(), atol=1e-5), dtype
    w = pydl.ops.attention_with_weights(q, k, v, None, 0.0, average_heads=False)[1]
    assert w[0, 1].isnan().all() and not w[0, 0].isnan().any(), dtype
    q.requires_grad_()
    out = sdpa(q, k, v)
    (dq,) = torch.autograd.grad(out.nan_to_num().sum(), [q])
    assert dq[0, 1].isnan().all() and not dq[0, 0].isnan().any(), dtype
print("ok")
"""


# A NaN (or +inf) score makes its row NaN, as in torch's math backend: the
# fast exp and the row max must not clamp it into a finite, wrong softmax.
# Each ISA build (the exp differs per ISA).
@needs_extension
@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_nan_and_inf_scores_give_nan_rows_like_torch(isa):
    assert_script_ok_on_isa(isa, _NAN_SCRIPT, PYDL_STRICT="1")


def _recover_dropout_mask(q, k, p, seed, **kw):
    """Dropout mask of a call, read off with value = identity (Ev = S): the
    output is then the dropped-out weights themselves, zero where dropped."""
    S = k.shape[-2]
    eye = torch.eye(S, dtype=q.dtype).expand(*k.shape[:-1], S)
    torch.manual_seed(seed)
    return sdpa(q, k, eye, dropout_p=p, **kw) != 0


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"enable_gqa": True}])
def test_dropout_is_the_reference_with_an_explicit_mask(kw):
    torch.manual_seed(3)
    hk = 1 if kw.get("enable_gqa") else 2
    q = torch.randn(2, 2, 24, 16, dtype=torch.float64)
    k, v = torch.randn(2, hk, 40, 16, dtype=torch.float64), torch.randn(2, hk, 40, 8, dtype=torch.float64)
    p = 0.3
    keep = _recover_dropout_mask(q, k, p, seed=7, **kw)
    visible = reference.scaled_dot_product_attention(
        q, k, torch.eye(40, dtype=torch.float64).expand(2, hk, 40, 40), **kw) > 0
    kept = keep[visible].double().mean().item()
    assert abs(kept - (1 - p)) < 0.05, f"kept fraction {kept:.3f}, expected {1 - p}"
    leaves = [t.requires_grad_() for t in (q, k, v)]
    torch.manual_seed(7)
    out = sdpa(q, k, v, dropout_p=p, **kw)
    torch.manual_seed(7)
    again = sdpa(q, k, v, dropout_p=p, **kw)
    assert torch.equal(out, again), "same seed must give the same output"
    torch.manual_seed(8)
    assert not torch.equal(out, sdpa(q, k, v, dropout_p=p, **kw)), "another seed, same output"
    ref = reference.scaled_dot_product_attention(q, k, v, dropout_p=p, dropout_mask=keep, **kw)
    assert_close_rel(out, ref, torch.float64, "dropout out")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad)
    for name, a, e in zip("qkv", got, want):
        assert_close_rel(a, e, torch.float64, f"dropout grad {name}")


@pytest.mark.parametrize("kw", [{}, {"is_causal": True, "causal_alignment": "bottom_right"}])
def test_lse_is_dropout_free(kw):
    """With dropout, lse is still that of the undropped scores (both backends)."""
    torch.manual_seed(12)
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 1, 11, 8), torch.randn(2, 1, 11, 8)
    out, lse = sdpa(q, k, v, dropout_p=0.5, return_lse=True, **kw)
    _, ref_lse = reference.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                        return_lse=True, **kw)
    assert out.shape == (2, 4, 9, 8) and torch.isfinite(out).all()
    assert_close_rel(lse, ref_lse, torch.float32, "lse under dropout")


def test_lse_gradient():
    """lse is differentiable too (d lse / d score = softmax weights)."""
    if not _ext.loaded():
        pytest.skip("return_lse is a pydl extra")
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out, lse = sdpa(q, k, v, return_lse=True)
    ref, ref_lse = reference.scaled_dot_product_attention(q, k, v, return_lse=True)
    got = torch.autograd.grad(out.sum() + lse.square().sum(), (q, k, v))
    want = torch.autograd.grad(ref.sum() + ref_lse.square().sum(), (q, k, v))
    for a, e in zip(got, want):
        assert_close_rel(a, e, torch.float64, "lse grad")


def test_gradcheck():
    torch.manual_seed(5)
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(4, 5, 7, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, mask):
        return sdpa(q, k, v, attn_mask=mask, enable_gqa=True)

    assert torch.autograd.gradcheck(fn, (q, k, v, mask))
    if _ext.loaded():
        def causal(q, k, v):
            return sdpa(q, k, v, is_causal=True, causal_alignment="bottom_right",
                        enable_gqa=True, return_lse=True)

        assert torch.autograd.gradcheck(causal, (q, k, v))


@needs_extension
@pytest.mark.parametrize("variant", ["plain", "mask_grad", "bool_causal_dropout"])
def test_opcheck(variant):
    torch.manual_seed(6)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    mask, seed, p, causal = None, None, 0.0, False
    if variant == "mask_grad":
        mask = torch.randn(4, 6, 9, requires_grad=True)
    elif variant == "bool_causal_dropout":
        mask, seed, p, causal = torch.rand(6, 9) > 0.2, torch.tensor([1234]), 0.25, True
    for t in (q, k, v):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.pydl.attention.default,
                          (q, k, v, mask, seed, p, causal, True, 0.35))


@needs_extension
def test_plain_calls_take_the_short_path_with_the_same_results(monkeypatch):
    # (N, H, L, E) float inputs without mask / dropout / lse go straight to the
    # op (pydl.ops.attention._plain_call); the general path must give the very
    # same output and gradients, and everything else must still take it.
    from pydl.ops import attention as entry

    torch.manual_seed(13)
    q = torch.randn(2, 3, 5, 16, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, 7, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    results = []
    for short in (True, False):
        with monkeypatch.context() as m:
            if short:  # the general path's planning must not run
                m.setattr(entry, "_plan", lambda *a: pytest.fail("general path taken"))
            else:
                m.setattr(entry, "_plain_call", lambda *a: None)
            for causal, alignment in ((False, "top_left"), (True, "bottom_right")):
                out = sdpa(q, k, v, is_causal=causal, causal_alignment=alignment, scale=0.3)
                results.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    for a, b in zip(results[:2], results[2:]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    with monkeypatch.context() as m:
        m.setattr(entry, "_plan", lambda *a: pytest.fail("general path taken"))
        sdpa(q.float(), k.float(), v.float())
        for call in (lambda: sdpa(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool)),
                     lambda: sdpa(q[0], k[0], v[0]),  # 3-D
                     lambda: sdpa(q, k[:, :1], v[:, :1]),  # broadcast heads
                     lambda: sdpa(q, k, v, return_lse=True),
                     lambda: sdpa(q, k, v.float())):  # mixed dtypes: the general path's error
            with pytest.raises(BaseException, match="general path taken"):
                call()


@needs_extension
def test_second_order_and_forward_mode_gradients_are_refused():
    # The op's autograd (C++) has no double backward and no jvp: both fail
    # loudly, never give zeros or drop a tangent in silence.
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(11)
    q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    out = sdpa(q, k, v)
    (g,) = torch.autograd.grad(out.pow(2).sum(), q, retain_graph=True)
    assert g.grad_fn is None
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    with torch.no_grad(), fwAD.dual_level():
        dual = fwAD.make_dual(q.detach(), torch.ones_like(q))
        with pytest.raises(RuntimeError):
            sdpa(dual, k.detach(), v.detach())
    # The op with the weights too; its lse output gets no gradient edge.
    out, weights, lse = torch.ops.pydl.attention_with_weights(q, k, v, None, None, 0.0, False,
                                                              False, 8 ** -0.5, True)
    assert not lse.requires_grad and lse.grad_fn is None
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(weights.pow(2).sum(), k, create_graph=True)


@needs_extension
def test_autograd_edges_follow_the_inputs():
    # Gradients only where asked: a mask that does not require grad, a
    # bool mask, value alone, lse alone (no gradient reaches out), and
    # no_grad calls build no graph.
    torch.manual_seed(12)
    q, k, v = (torch.randn(2, 2, 6, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.randn(6, 6, dtype=torch.float64)
    leaf_v = v.clone().requires_grad_()
    out = sdpa(q, k, leaf_v, attn_mask=mask)
    (g_v,) = torch.autograd.grad(out.sum(), leaf_v)
    ref = reference.scaled_dot_product_attention(q, k, leaf_v, mask)
    assert_close_rel(g_v, torch.autograd.grad(ref.sum(), leaf_v)[0], torch.float64, "dv")
    leaf_q = q.clone().requires_grad_()
    _, lse = sdpa(leaf_q, k, v, attn_mask=torch.rand(6, 6) > 0.3, return_lse=True)
    (g_q,) = torch.autograd.grad(lse.sum(), leaf_q)
    assert torch.isfinite(g_q).all() and g_q.abs().sum() > 0
    with torch.no_grad():
        assert sdpa(leaf_q, k, v).grad_fn is None
    assert sdpa(q, k, v).grad_fn is None  # nothing requires grad


def test_torch_compile_fullgraph():
    torch.manual_seed(9)
    q = torch.randn(2, 4, 10, 8, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(2, 2, 12, 8, dtype=torch.float64), torch.randn(2, 2, 12, 8, dtype=torch.float64)
    mask = torch.randn(10, 12, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, mask):
        return sdpa(q, k, v, attn_mask=mask, enable_gqa=True) * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out = compiled(q, k, v, mask)
    assert_close_rel(out, fn(q, k, v, mask), torch.float64, "compiled")
    got = torch.autograd.grad(out.sum(), (q, mask))
    want = torch.autograd.grad(fn(q, k, v, mask).sum(), (q, mask))
    for a, e in zip(got, want):
        assert_close_rel(a, e, torch.float64, "compiled grad")

    def with_dropout(q, k, v):
        return sdpa(q, k, v, dropout_p=0.3, is_causal=True)

    compiled = torch.compile(with_dropout, backend="aot_eager", fullgraph=True)
    torch.manual_seed(0)
    out = compiled(q, k[:, :1].expand(2, 4, 12, 8), v[:, :1].expand(2, 4, 12, 8))
    torch.manual_seed(0)
    assert torch.equal(out, with_dropout(q, k[:, :1].expand(2, 4, 12, 8),
                                         v[:, :1].expand(2, 4, 12, 8)))


def test_torch_compile_inductor():
    torch.manual_seed(10)
    q = torch.randn(1, 2, 16, 16, requires_grad=True)
    k, v = torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)

    def fn(q, k, v):
        return torch.relu(sdpa(q, k, v, is_causal=True)) + 1

    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(q, k, v)
    assert_close_rel(out, fn(q, k, v), torch.float32, "inductor")
    (g,) = torch.autograd.grad(out.sum(), q)
    (e,) = torch.autograd.grad(fn(q, k, v).sum(), q)
    assert_close_rel(g, e, torch.float32, "inductor grad")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 8), {}),
         "head dim"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8),
                  {"enable_gqa": True}), "multiple"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), {}),
         "enable_gqa"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 7, 8), {}),
         "value"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8),
                  {"attn_mask": torch.ones(5, 5, dtype=torch.bool)}), "does not broadcast"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8),
                  {"attn_mask": torch.ones(5, 6, dtype=torch.int32)}), "bool or the query's dtype"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8).double(),
                  torch.randn(2, 4, 6, 8), {}), "dtype"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8),
                  {"dropout_p": 1.5}), "dropout_p"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8, device="meta"),
                  torch.randn(2, 4, 6, 8), {}), "one device"),
        (lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8),
                  {"attn_mask": torch.ones(5, 6, dtype=torch.bool, device="meta")}), "is on meta"),
    ],
)
def test_bad_input_gives_clear_errors(make, message):
    q, k, v, kw = make()
    with pytest.raises(ValueError, match=f"(?i){message}"):
        sdpa(q, k, v, **kw)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fake_kernel_gives_float32_lse_for_half_types(dtype):
    """The CUDA kernels return lse in float32 for fp16 / bf16 queries; the fake
    kernel (meta tensors, torch.compile) must say the same."""
    q = torch.empty(2, 4, 5, 8, dtype=dtype, device="meta")
    k = v = torch.empty(2, 4, 6, 8, dtype=dtype, device="meta")
    out, lse = torch.ops.pydl.attention(q, k, v, None, None, 0.0, False, False, 1.0)
    assert out.dtype == dtype and out.shape == (2, 4, 5, 8)
    want = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert lse.dtype == want and lse.shape == (2, 4, 5)


@needs_extension
def test_op_errors_come_from_cpp():
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    op = torch.ops.pydl.attention
    with pytest.raises(RuntimeError, match="multiple of key/value heads"):
        op(q, k[:, :3], v[:, :3], None, None, 0.0, False, False, 1.0)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        op(q, k, v, torch.zeros(3, 5, 6), None, 0.0, False, False, 1.0)
    with pytest.raises(RuntimeError, match="must be 4-D"):
        op(q[0], k, v, None, None, 0.0, False, False, 1.0)
    with pytest.raises(RuntimeError, match="dropout_seed"):
        op(q, k, v, None, None, 0.5, False, False, 1.0)
    with pytest.raises(RuntimeError, match="dtype and device"):
        op(q, k.double(), v, None, None, 0.0, False, False, 1.0)
    with pytest.raises(RuntimeError, match="float32, float64"):
        op(q.half(), k.half(), v.half(), None, None, 0.0, False, False, 1.0)


def test_bfloat16_inference_runs_torchs_flash_kernel():
    """CPU bf16 without gradient or dropout: torch's flash kernel, the faster
    one there (tests/test_attention_bf16.py covers pydl's bf16 kernel)."""
    q, k, v = (torch.randn(1, 2, 8, 16, dtype=torch.bfloat16) for _ in range(3))
    out = sdpa(q, k, v, is_causal=True)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_autocast_computes_in_the_autocast_dtype_like_torch(monkeypatch):
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))  # no grad: torch's bf16 kernel
    mask = torch.randn(8, 8)
    with torch.autocast("cpu"):
        ours = sdpa(q, k, v, attn_mask=mask)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)


MEMORY_SCRIPT = r"""
import resource, sys, torch, pydl
L, mode = int(sys.argv[1]), sys.argv[2]
def run(n):
    q, k, v = (torch.randn(1, 1, n, 16, requires_grad=True) for _ in range(3))
    out = pydl.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=(mode == "causal"))
    out.sum().backward()
run(256)  # warm up: thread pools, allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
run(L)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(after - before)
"""


@needs_extension
def test_long_sequence_never_allocates_l_by_s():
    """Forward + backward at L = S = 16k: an L x S float32 buffer would be
    1 GiB; the process's peak memory must grow by far less than that."""
    L = 16384
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(pydl.__file__))]
                                        + env.get("PYTHONPATH", "").split(os.pathsep))
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(L), "causal"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    grew = int(result.stdout.strip().splitlines()[-1])
    assert grew < L * L * 4 / 16, f"peak memory grew by {grew / 2**20:.0f} MiB"


def test_bfloat16_extras_return_float32_lse_in_every_mode():
    """bf16 with pydl's extras (lse, bottom-right causal): pydl's bf16 kernel,
    or without it the reference computed in float32; either way the lse is
    float32 (as the op's fake kernel says) and the output bf16 and accurate."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g, dtype=torch.float64) for n in (9, 6, 6))
    out, lse = sdpa(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True,
                    causal_alignment="bottom_right", return_lse=True)
    ref, ref_lse = reference.scaled_dot_product_attention(
        q, k, v, is_causal=True, causal_alignment="bottom_right", return_lse=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert torch.isneginf(lse[..., :3]).all()
    assert (out.double() - ref).abs().max() < 3e-2
    assert torch.allclose(lse[..., 3:].double(), ref_lse[..., 3:], atol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_autocast_casts_what_torch_casts_and_leaves_float64_alone(dtype):
    """Autocast casts every floating input but float64 (as torch's SDPA rule):
    float64 stays float64, exactly the call without autocast; float16 goes
    bf16 like torch's."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64).to(dtype)
               for n in (5, 6, 6))
    mask = torch.randn(5, 6, generator=g, dtype=torch.float64).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = sdpa(q, k, v, attn_mask=mask)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert ours.dtype == theirs.dtype
    if dtype == torch.float64:
        assert_close_rel(ours, sdpa(q, k, v, attn_mask=mask), dtype, "float64 under autocast")
        assert_close_rel(ours, theirs, dtype, "float64 under autocast vs torch")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_float32_mask_with_other_query_dtypes_like_torch(dtype):
    """torch takes a float32 additive mask whatever the query's dtype (bool,
    float32 or the query's): same dtype out, as accurate as torch (the mask is
    not rounded to a half type), and the mask's gradient in float32."""
    from conftest import LOW_PRECISION_FACTOR, rel_error

    g = torch.Generator().manual_seed(5)
    exact = [torch.randn(2, 2, n, 16, generator=g, dtype=torch.float64) for n in (9, 11, 11)]
    mask64 = torch.randn(9, 11, generator=g, dtype=torch.float64) * 8  # far from bf16-exact
    ours_in = [t.to(dtype).requires_grad_() for t in exact]
    theirs_in = [t.to(dtype).requires_grad_() for t in exact]
    ours_mask, theirs_mask = (mask64.float().requires_grad_() for _ in range(2))
    exact_in = [t.detach().to(dtype).double().requires_grad_() for t in exact]
    exact_mask = mask64.float().double().requires_grad_()
    ours = sdpa(*ours_in, attn_mask=ours_mask)
    theirs = F.scaled_dot_product_attention(*theirs_in, attn_mask=theirs_mask)
    ref = reference.scaled_dot_product_attention(*exact_in, attn_mask=exact_mask)
    assert ours.dtype == theirs.dtype == dtype
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(ours, ours_in + [ours_mask], grad.to(dtype))
    want = torch.autograd.grad(theirs, theirs_in + [theirs_mask], grad.to(dtype))
    exact_grads = torch.autograd.grad(ref, exact_in + [exact_mask], grad)
    assert got[3].dtype == torch.float32
    if dtype == torch.float64:
        assert_close_rel(ours, ref, dtype, "out")
        for name, a, e in zip(("q", "k", "v", "mask"), got, exact_grads):
            assert_close_rel(a, e, a.dtype, f"grad {name}")  # the mask's: float32
        return
    for name, a, t, e in zip(("out", "q", "k", "v", "mask"), (ours, *got), (theirs, *want),
                             (ref, *exact_grads)):
        err, torch_err = rel_error(a, e), rel_error(t, e)
        assert err <= LOW_PRECISION_FACTOR * torch_err, f"{name}: {err:.2e} vs torch's {torch_err:.2e}"


@pytest.mark.parametrize("shapes, kw", [
    (((2, 0, 5, 8), (2, 0, 6, 8)), {}),
    (((2, 0, 5, 8), (2, 1, 6, 8)), {}),       # key/value heads broadcast to none
    (((2, 0, 5, 8), (2, 0, 6, 8)), {"enable_gqa": True}),
    (((2, 2, 5, 8), (2, 0, 6, 8)), {"enable_gqa": True}),  # no key/value heads: zeros
    (((0, 5, 8), (0, 6, 8)), {}),             # 3-D: the leading dim
    (((3, 0, 5, 8), (3, 0, 6, 8)), {"is_causal": True}),
    (((5, 8), (2, 0, 6, 8)), {"is_causal": True}),  # a lower-rank query keeps its own dims
    (((1, 5, 8), (2, 0, 6, 8)), {"is_causal": True}),
], ids=str)
def test_zero_heads_give_torchs_empty_results(shapes, kw):
    """No heads: torch's shapes and values (empty, or zeros for query rows
    with no key/value head), zero gradients of the inputs' shapes, without
    calling the op; the lse too."""
    g = torch.Generator().manual_seed(6)
    (qs, ks) = shapes
    make = lambda *s: torch.randn(*s, generator=g)
    ours_in = [make(*qs), make(*ks), make(*ks[:-1], 4)]
    theirs_in = [t.clone().requires_grad_() for t in ours_in]
    mask = make(5, 6).requires_grad_()
    ours_in = [t.requires_grad_() for t in ours_in]
    mask_kw = {} if kw.get("is_causal") else {"attn_mask": mask}
    ours = sdpa(*ours_in, **mask_kw, **kw)
    theirs = F.scaled_dot_product_attention(*theirs_in, **mask_kw, **kw)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs)
    got = torch.autograd.grad(ours.sum(), ours_in)
    want = torch.autograd.grad(theirs.sum(), theirs_in)
    for a, e in zip(got, want):
        assert a.shape == e.shape and torch.equal(a, e)
    if mask_kw:
        (mask_grad,) = torch.autograd.grad(sdpa(*ours_in, **mask_kw, **kw).sum(), [mask])
        assert mask_grad.shape == mask.shape and not mask_grad.any()
    if _ext.loaded():
        out, lse = sdpa(*ours_in, **mask_kw, **kw, return_lse=True)
        assert out.shape == theirs.shape and lse.shape == theirs.shape[:-1]
        assert lse.dtype == torch.float32 and torch.isneginf(lse).all()
        lse.exp().sum().backward()


def test_zero_heads_compile_fullgraph():
    """The empty results trace (one tensor as query, key and value too)."""
    q = torch.randn(2, 0, 5, 8, requires_grad=True)
    compiled = torch.compile(sdpa, backend="aot_eager", fullgraph=True)
    out = compiled(q, q, q)
    assert out.shape == (2, 0, 5, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape
