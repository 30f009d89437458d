"""pydl.nn.MultiheadAttention against torch.nn.MultiheadAttention with the same weights."""

import re

import pytest
import torch
from attention_cases import check_dropped_weights
from conftest import assert_close_rel, needs_extension

import pydl


def _pair(seed=0, **kw):
    torch.manual_seed(seed)
    ours = pydl.nn.MultiheadAttention(**kw)
    torch.manual_seed(seed)
    theirs = torch.nn.MultiheadAttention(**kw)
    return ours, theirs


def test_same_init_and_state_dict():
    for kw in ({}, {"kdim": 12, "vdim": 20}, {"bias": False}):
        ours, theirs = _pair(embed_dim=16, num_heads=4, **kw)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key


def _masks(kind, B, H, L, S, dtype):
    g = torch.Generator().manual_seed(1)
    kpm = torch.rand(B, S, generator=g) > 0.7
    kpm[:, 0] = False  # every row keeps a key: torch gives NaN otherwise
    if kind == "none":
        return {}
    if kind == "padding":
        return {"key_padding_mask": kpm}
    if kind == "bool_2d":
        m = torch.rand(L, S, generator=g) > 0.6
        m[:, 0] = False
        return {"attn_mask": m, "key_padding_mask": kpm}
    if kind == "float_3d":
        return {"attn_mask": torch.randn(B * H, L, S, generator=g, dtype=torch.float64).to(dtype)}
    if kind == "causal_hint":
        m = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=dtype)
        return {"attn_mask": m, "is_causal": True, "need_weights": False}
    raise AssertionError(kind)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["none", "padding", "bool_2d", "float_3d", "causal_hint"])
def test_matches_torch_forward_and_backward(kind, batch_first, dtype):
    B, H, L, E = 3, 4, 7, 32
    ours, theirs = _pair(embed_dim=E, num_heads=H, batch_first=batch_first, dtype=dtype)
    x = torch.randn((B, L, E) if batch_first else (L, B, E), dtype=dtype, requires_grad=True)
    kw = _masks(kind, B, H, L, L, dtype)
    out, w = ours(x, x, x, **kw)
    ref, rw = theirs(x, x, x, **kw)
    assert out.shape == ref.shape
    assert_close_rel(out, ref, dtype, "out")
    if rw is not None:
        assert_close_rel(w, rw, dtype, "weights")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + list(ours.parameters()), grad)
    want = torch.autograd.grad(ref, [x] + list(theirs.parameters()), grad)
    for a, e in zip(got, want):
        assert_close_rel(a, e, dtype, "grad")


def test_cross_attention_kdim_vdim_per_head_weights_unbatched():
    ours, theirs = _pair(embed_dim=16, num_heads=2, kdim=10, vdim=6, dtype=torch.float64)
    q, k, v = (torch.randn(5, 2, 16, dtype=torch.float64), torch.randn(9, 2, 10, dtype=torch.float64),
               torch.randn(9, 2, 6, dtype=torch.float64))
    for args in ((q, k, v), (q[:, 0], k[:, 0], v[:, 0])):
        out, w = ours(*args, average_attn_weights=False)
        ref, rw = theirs(*args, average_attn_weights=False)
        assert out.shape == ref.shape and w.shape == rw.shape
        assert_close_rel(out, ref, torch.float64, "out")
        assert_close_rel(w, rw, torch.float64, "weights")


def test_dropout_training_is_reproducible(monkeypatch):
    ours, _ = _pair(embed_dim=16, num_heads=2, dropout=0.5)
    ours.train()
    x = torch.randn(6, 2, 16)
    torch.manual_seed(3)
    a, _ = ours(x, x, x, need_weights=False)
    torch.manual_seed(3)
    b, _ = ours(x, x, x, need_weights=False)
    assert torch.equal(a, b)
    ours.eval()
    c, _ = ours(x, x, x, need_weights=False)
    assert not torch.equal(a, c)

@needs_extension
@pytest.mark.parametrize("route", ["weights_kernel", "fused_kernel_and_lse"])
def test_need_weights_with_dropout_returns_the_dropped_out_weights(monkeypatch, route):
    """As torch's module: the weights returned are those that multiplied V,
    after dropout. On the CPU in float64 pydl's weights kernel serves it; the
    route of CUDA and CPU bf16 (the fused kernel, the weights rebuilt from its
    lse with attention_dropout_keep's decisions) is forced here to check it
    in float64."""
    monkeypatch.setenv("PYDL_STRICT", "1")
    if route == "fused_kernel_and_lse":
        import pydl.ops.attention_weights as aw

        monkeypatch.setattr(aw, "kernel_serves", lambda *a, **k: False)
    ours, _ = _pair(embed_dim=16, num_heads=2, dropout=0.5, dtype=torch.float64)
    x = torch.randn(6, 2, 16, dtype=torch.float64)
    check_dropped_weights(ours, x, 0.5)


@needs_extension
def test_need_weights_with_dropout_in_bfloat16_is_pydls(monkeypatch):
    """bf16 heads in training with dropout (a bf16 module, and autocast, with
    no mask: the case whose inference goes to torch's module): pydl's fused
    kernel serves it, strict mode does not object, and the weights are the
    dropped-out ones the output used."""
    if pydl._backend.explain("attention", "cpu", torch.bfloat16)[0] != pydl._backend.PYDL:
        pytest.skip("pydl's CPU attention has no bf16 kernel on this CPU")
    monkeypatch.setenv("PYDL_STRICT", "1")
    ours, _ = _pair(embed_dim=32, num_heads=2, dropout=0.5, dtype=torch.bfloat16)
    x = torch.randn(24, 2, 32, dtype=torch.bfloat16)
    ours.train()
    assert _ran_pydl_attention(lambda: ours(x, x, x))
    check_dropped_weights(ours, x, 0.5)
    ours = ours.float().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, w = ours(x.float(), x.float(), x.float(), average_attn_weights=False)
        assert _ran_pydl_attention(lambda: ours(x.float(), x.float(), x.float()))
    assert out.dtype == w.dtype == torch.bfloat16 and (w == 0).any()
    ours.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        # no dropout: torch's module is the faster path, no error either
        assert not _ran_pydl_attention(lambda: ours(x.float(), x.float(), x.float()))


def test_torch_compile_fullgraph():
    ours, _ = _pair(embed_dim=16, num_heads=4, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    out, w = compiled(x, x, x)
    ref, rw = ours(x, x, x)
    assert_close_rel(out, ref, torch.float64, "compiled")
    assert_close_rel(w, rw, torch.float64, "compiled weights")
    out.sum().backward()
    assert x.grad is not None


@needs_extension
def test_torch_compile_fullgraph_need_weights_dropout_fused_route(monkeypatch):
    """The route of CUDA / CPU bf16 (fused kernel, weights rebuilt from its lse
    with attention_dropout_keep) traces whole: the custom autograd.Function
    and the keep op's fake kernel; the same seed gives eager's results."""
    import pydl.ops.attention_weights as aw

    monkeypatch.setattr(aw, "kernel_serves", lambda *args, **kwargs: False)
    ours, _ = _pair(embed_dim=16, num_heads=2, dropout=0.3, batch_first=True,
                    dtype=torch.float64)
    ours.train()
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        out, w = compiled(x, x, x, average_attn_weights=False)
        torch.manual_seed(1)
        ref, rw = ours(x, x, x, average_attn_weights=False)
    assert torch.equal(out, ref) and torch.equal(w, rw)
    got = torch.autograd.grad(out.sum() + w.sum(), x)[0]
    want = torch.autograd.grad(ref.sum() + rw.sum(), x)[0]
    assert_close_rel(got, want, torch.float64, "grad")


def test_bad_input_gives_clear_errors():
    ours, _ = _pair(embed_dim=16, num_heads=4)
    x = torch.randn(5, 2, 16)
    with pytest.raises(ValueError, match="feature sizes"):
        ours(torch.randn(5, 2, 8), x, x)
    with pytest.raises(ValueError, match="key_padding_mask must be"):
        ours(x, x, x, key_padding_mask=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask must be"):
        ours(x, x, x, attn_mask=torch.zeros(4, 5))
    with pytest.raises(RuntimeError, match="is_causal"):
        ours(x, x, x, is_causal=True)


def test_convert_swaps_multihead_attention_and_back():
    model = torch.nn.Sequential(torch.nn.MultiheadAttention(16, 4, batch_first=True))
    converted = pydl.convert(model)
    assert type(converted[0]) is pydl.nn.MultiheadAttention
    x = torch.randn(2, 5, 16)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    reference.load_state_dict(converted[0].state_dict())
    got, _ = converted[0](x, x, x, need_weights=False)
    want, _ = reference(x, x, x, need_weights=False)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    back = pydl.convert(converted, to="torch")
    assert type(back[0]) is torch.nn.MultiheadAttention


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_weights_are_differentiable_like_torch(average, mask_kind):
    """need_weights=True: gradients flowing through the returned weights (and
    the output) match torch's module."""
    dtype = torch.float64
    ours, theirs = _pair(embed_dim=16, num_heads=4, batch_first=True, dtype=dtype)
    x = torch.randn(2, 5, 16, dtype=dtype, requires_grad=True)
    mask = None
    if mask_kind == "bool":
        # nn.MultiheadAttention's bool attn_mask: True = may NOT attend (causal here)
        mask = ~torch.ones(5, 5, dtype=torch.bool).tril()
    elif mask_kind == "float":
        mask = torch.randn(5, 5, dtype=dtype)
    out, w = ours(x, x, x, attn_mask=mask, average_attn_weights=average)
    ref, rw = theirs(x, x, x, attn_mask=mask, average_attn_weights=average)
    assert_close_rel(w, rw, dtype, "weights")
    g, gw = torch.randn_like(out), torch.randn_like(w)
    got = torch.autograd.grad((out * g).sum() + (w * gw).sum(), [x] + list(ours.parameters()))
    want = torch.autograd.grad((ref * g).sum() + (rw * gw).sum(),
                               [x] + list(theirs.parameters()))
    for a, e in zip(got, want):
        assert_close_rel(a, e, dtype, "grad")


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("mode", ["autocast", "bf16_module"])
def test_need_weights_in_bfloat16_as_accurate_as_torch(mode, average):
    """bf16 heads (under autocast, or a bf16 module) take the lse path (the
    attention-with-weights kernel is float32/float64): against a float64
    module with the same (bf16-representable) weights and input, the error of
    the output and the weights is at most twice torch's own bf16 error."""
    from conftest import LOW_PRECISION_FACTOR, rel_error

    ours, theirs = _pair(embed_dim=64, num_heads=4, batch_first=True)
    with torch.no_grad():
        for m in (ours, theirs):
            for prm in m.parameters():
                prm.copy_(prm.bfloat16().float())  # bf16-exact, so only the math differs
    exact, _ = _pair(embed_dim=64, num_heads=4, batch_first=True, dtype=torch.float64)
    exact.load_state_dict({k: v.double() for k, v in theirs.state_dict().items()})
    x = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    ref, rw = exact(*(x.double(),) * 3, average_attn_weights=average)
    if mode == "bf16_module":
        ours, theirs = ours.bfloat16(), theirs.bfloat16()
        xs, ctx = x.clone(), torch.autocast("cpu", enabled=False)
    else:
        xs, ctx = x.float(), torch.autocast("cpu", dtype=torch.bfloat16)
    xs.requires_grad_()
    with ctx:
        out, w = ours(xs, xs, xs, average_attn_weights=average)
        t_out, t_w = theirs(xs, xs, xs, average_attn_weights=average)
    assert out.dtype == t_out.dtype and w.dtype == t_w.dtype == torch.bfloat16
    for name, a, b, e in (("out", out, t_out, ref), ("weights", w, t_w, rw)):
        err, torch_err = rel_error(a, e), rel_error(b, e)
        assert err <= LOW_PRECISION_FACTOR * torch_err, f"{name}: {err:.2e} vs {torch_err:.2e}"
    (out.float().sum() + w.float().sum()).backward()
    assert torch.isfinite(xs.grad).all()


def _ran_pydl_attention(fn) -> bool:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return any(e.key.startswith("pydl::attention") for e in prof.key_averages())


@needs_extension
def test_bf16_need_weights_without_mask_takes_torchs_faster_path(monkeypatch):
    """CPU bf16, need_weights=True, no mask: torch's module is the faster path
    (bf16 GEMMs on AMX; pydl's weights kernel is float32/float64 only), chosen
    without a fallback error; with a mask pydl's path serves the call, and a
    fully masked row gives zeros."""
    monkeypatch.setenv("PYDL_STRICT", "1")
    ours, theirs = _pair(embed_dim=32, num_heads=4, batch_first=True, dtype=torch.bfloat16)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 9, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        assert not _ran_pydl_attention(lambda: ours(x, x, x))
        out, w = ours(x, x, x)
        want_out, want_w = theirs(x, x, x)
        assert torch.equal(out, want_out) and torch.equal(w, want_w)
        pad = torch.zeros(2, 9, dtype=torch.bool)
        pad[1] = True  # every key of the second sequence is padding
        assert _ran_pydl_attention(lambda: ours(x, x, x, key_padding_mask=pad))
        out, w = ours(x, x, x, key_padding_mask=pad)
        assert (w[1] == 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("need_weights", [False, True])
def test_float64_module_under_autocast_stays_float64_like_torch(need_weights):
    """Autocast leaves float64 alone (torch's rule): a float64 module inside a
    bf16 autocast region computes and returns float64, as torch's does."""
    ours, theirs = _pair(embed_dim=16, num_heads=4, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    kw = _masks("padding", 2, 4, 7, 7, torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, w = ours(x, x, x, need_weights=need_weights, **kw)
        ref, rw = theirs(x, x, x, need_weights=need_weights, **kw)
    assert out.dtype == ref.dtype == torch.float64
    assert_close_rel(out, ref, torch.float64, "out")
    if need_weights:
        assert w.dtype == torch.float64
        assert_close_rel(w, rw, torch.float64, "weights")
    (got,) = torch.autograd.grad(out.sum(), x)
    (want,) = torch.autograd.grad(ref.sum(), x)
    assert_close_rel(got, want, torch.float64, "grad")


def test_unbatched_key_padding_mask_must_be_1d():
    """Unbatched (2-D) inputs take a 1-D (S,) key_padding_mask, as torch's; the
    message says so (not the shape after the batch dim is added)."""
    ours, _ = _pair(embed_dim=16, num_heads=4)
    q, kv = torch.randn(5, 16), torch.randn(6, 16)
    for bad in (torch.zeros(1, 6, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)):
        message = re.escape(f"1-D of shape (6,), got shape {tuple(bad.shape)}")
        with pytest.raises(ValueError, match="unbatched .*" + message):
            ours(q, kv, kv, key_padding_mask=bad)
    pad = torch.zeros(6, dtype=torch.bool)
    pad[-2:] = True
    got = ours(q, kv, kv, key_padding_mask=pad)[0]
    want = ours(q, kv[:-2], kv[:-2])[0]
    assert torch.allclose(got, want, atol=1e-6)
