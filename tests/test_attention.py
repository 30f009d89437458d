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
from conftest import assert_close_rel, needs_extension

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
