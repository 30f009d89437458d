"""pydl.nn.TransformerEncoderLayer / TransformerEncoder against torch's modules
with the same weights."""

import pytest
import torch
from conftest import assert_close_rel

import pydl


def _pair(dtype, seed=0, **kw):
    torch.manual_seed(seed)
    theirs = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dtype=dtype, **kw)
    ours = pydl.nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _inputs(batch_first, dtype, L=7, B=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((B, L, 16) if batch_first else (L, B, 16), generator=g, dtype=dtype)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=dtype)
    padding = torch.zeros(B, L, dtype=torch.bool)
    padding[0, -2:] = True
    padding[2, -1] = True
    return x, causal, padding


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_layer_matches_torch_forward_and_grads(norm_first, batch_first, activation):
    dtype = torch.float64
    ours, theirs = _pair(dtype, norm_first=norm_first, batch_first=batch_first,
                         activation=activation, dropout=0.0)
    assert isinstance(ours.self_attn, pydl.nn.MultiheadAttention)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x, causal, padding = _inputs(batch_first, dtype)
    for kwargs in ({}, {"src_mask": causal}, {"src_key_padding_mask": padding},
                   {"src_mask": causal, "src_key_padding_mask": padding}):
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        got, want = ours(xa, **kwargs), theirs(xb, **kwargs)
        assert_close_rel(got, want, dtype, f"output {list(kwargs)}")
        g = torch.randn_like(got)
        ga = torch.autograd.grad((got * g).sum(), [xa, *ours.parameters()])
        gb = torch.autograd.grad((want * g).sum(), [xb, *theirs.parameters()])
        for k, (a, b) in enumerate(zip(ga, gb)):
            assert_close_rel(a, b, dtype, f"grad {k} {list(kwargs)}")


def test_layer_in_eval_matches_torch_fast_path():
    """In eval mode torch's layer takes its fused C++ fast path; pydl's runs its own."""
    ours, theirs = _pair(torch.float32, batch_first=True)
    ours.eval()
    theirs.eval()
    x, _, padding = _inputs(True, torch.float32)
    with torch.no_grad():
        got = ours(x, src_key_padding_mask=padding)
        want = theirs(x, src_key_padding_mask=padding)
    keep = ~padding  # torch's fast path may zero padded positions
    assert (got[keep] - want[keep]).abs().max() < 1e-4


def test_encoder_stack_and_convert():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dropout=0.0,
                                             batch_first=True)
    theirs = torch.nn.TransformerEncoder(layer, 2, norm=torch.nn.LayerNorm(16),
                                         enable_nested_tensor=True)
    ours = pydl.nn.TransformerEncoder(layer, 2, norm=torch.nn.LayerNorm(16))
    ours.load_state_dict(theirs.state_dict())
    assert all(type(m) is pydl.nn.TransformerEncoderLayer for m in ours.layers)
    assert not ours.use_nested_tensor
    x, causal, padding = _inputs(True, torch.float32)
    for model in (ours, theirs):
        model.eval()
    with torch.no_grad():
        got = ours(x, src_key_padding_mask=padding)
        want = theirs(x, src_key_padding_mask=padding)
    keep = ~padding
    assert (got[keep] - want[keep]).abs().max() < 1e-4
    converted = pydl.convert(torch.nn.Sequential(theirs))
    assert type(converted[0]) is pydl.nn.TransformerEncoder
    assert type(converted[0].layers[0]) is pydl.nn.TransformerEncoderLayer
    assert type(converted[0].layers[0].self_attn) is pydl.nn.MultiheadAttention
    back = pydl.convert(converted, to="torch")
    assert type(back[0].layers[1].self_attn) is torch.nn.MultiheadAttention


def test_layer_torch_compile_fullgraph():
    ours, _ = _pair(torch.float64, batch_first=True, dropout=0.0)
    x, causal, _ = _inputs(True, torch.float64)
    x.requires_grad_()
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    out = compiled(x, src_mask=causal)
    assert_close_rel(out, ours(x, src_mask=causal), torch.float64, "compiled")
    out.sum().backward()
    assert x.grad is not None


def test_dropout_in_training_is_seeded():
    ours, _ = _pair(torch.float32, batch_first=True, dropout=0.3)
    ours.train()
    x, _, _ = _inputs(True, torch.float32)
    torch.manual_seed(5)
    a = ours(x)
    torch.manual_seed(5)
    b = ours(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("activation", ["relu", "gelu", torch.nn.GELU(approximate="tanh"),
                                        torch.nn.ReLU(), torch.nn.functional.silu])
@pytest.mark.parametrize("grad", [False, True])
def test_feed_forward_activation_in_place_matches_torch(activation, grad):
    """The feed-forward block applies ReLU (and, without a graph, GELU with its
    `approximate`) in place: the same values and gradients as torch's block."""
    dtype = torch.float64
    ours, theirs = _pair(dtype, batch_first=True, activation=activation, dropout=0.0)
    x, _, _ = _inputs(True, dtype)
    with torch.set_grad_enabled(grad):
        xa = x.clone().requires_grad_(grad)
        xb = x.clone().requires_grad_(grad)
        got, want = ours._ff_block(xa), theirs._ff_block(xb)
        assert_close_rel(got, want, dtype, "feed-forward output")
        if grad:
            ga = torch.autograd.grad(got.sum(), [xa, *ours.linear1.parameters()])
            gb = torch.autograd.grad(want.sum(), [xb, *theirs.linear1.parameters()])
            for a, b in zip(ga, gb):
                assert_close_rel(a, b, dtype, "feed-forward grad")


def test_feed_forward_leaves_a_hooked_linear1_output_alone():
    """A forward hook on linear1 may keep its output: no in-place activation then."""
    ours, _ = _pair(torch.float64, batch_first=True, dropout=0.0)
    kept = []
    ours.linear1.register_forward_hook(lambda module, args, out: kept.append(out))
    x, _, _ = _inputs(True, torch.float64)
    with torch.no_grad():
        ours._ff_block(x)
        assert (kept[0] < 0).any(), "linear1's output was overwritten by the ReLU"


class _ClampedReLU(torch.nn.ReLU):
    """An nn.ReLU subclass with its own forward: not ReLU."""

    def forward(self, x):
        return x.clamp(0.0, 0.1)


def _patched_gelu():
    gelu = torch.nn.GELU()
    gelu.forward = torch.tanh  # an instance-level forward: not GELU
    return gelu


@pytest.mark.parametrize("make_activation", [
    lambda: torch.tanh, lambda: _ClampedReLU(), _patched_gelu,
    lambda: torch.nn.GELU(approximate="tanh"), lambda: torch.nn.functional.gelu,
], ids=["tanh", "relu_subclass", "gelu_instance_forward", "gelu_tanh", "F.gelu"])
@pytest.mark.parametrize("grad", [False, True])
def test_layer_calls_its_current_activation_like_torch(make_activation, grad):
    """self.activation is what the feed-forward block applies, as in torch's
    layer, also when reassigned after construction (from relu)."""
    dtype = torch.float64
    ours, theirs = _pair(dtype, batch_first=True, dropout=0.0)
    ours.activation, theirs.activation = make_activation(), make_activation()
    x, _, _ = _inputs(True, dtype)
    with torch.set_grad_enabled(grad):
        xa = x.clone().requires_grad_(grad)
        xb = x.clone().requires_grad_(grad)
        got, want = ours(xa), theirs(xb)
        assert_close_rel(got, want, dtype, "output")
        if grad:
            g = torch.randn_like(got)
            ga = torch.autograd.grad((got * g).sum(), [xa, *ours.parameters()])
            gb = torch.autograd.grad((want * g).sum(), [xb, *theirs.parameters()])
            for a, b in zip(ga, gb):
                assert_close_rel(a, b, dtype, "grad")


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.GELU])
@pytest.mark.parametrize("hook", ["forward", "forward_pre", "global_forward"])
def test_hooks_on_the_activation_module_run_like_torch(activation, hook):
    """Hooks on the activation module (its own, or global) run, and a hook's
    replacement output is used, as in torch's layer."""
    dtype = torch.float64
    ours, theirs = _pair(dtype, batch_first=True, dropout=0.0, activation=activation())
    theirs.activation = activation()  # not the module ours holds
    calls = []

    def forward_hook(module, args, out):
        calls.append(module)
        return out * 2.0 if isinstance(module, activation) else None

    handles = []
    if hook == "global_forward":
        handles.append(torch.nn.modules.module.register_module_forward_hook(forward_hook))
    for layer in (ours, theirs):
        if hook == "forward":
            handles.append(layer.activation.register_forward_hook(forward_hook))
        elif hook == "forward_pre":
            handles.append(layer.activation.register_forward_pre_hook(
                lambda module, args: (calls.append(module), (args[0] * 0.5,))[1]))
    x, _, _ = _inputs(True, dtype)
    try:
        with torch.no_grad():
            got = ours(x)
            ours_calls = [m for m in calls if m is ours.activation]
            want = theirs(x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(ours_calls) == 1
    assert_close_rel(got, want, dtype, "output")


def test_float64_layer_under_autocast_stays_float64_like_torch():
    """Autocast leaves float64 alone: a float64 layer in a bf16 autocast region
    computes in float64, as torch's does."""
    dtype = torch.float64
    ours, theirs = _pair(dtype, batch_first=True, dropout=0.0)
    x, causal, padding = _inputs(True, dtype)
    causal = causal.isneginf()  # bool like the padding mask (no deprecation warning)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(x, src_mask=causal, src_key_padding_mask=padding)
        want = theirs(x, src_mask=causal, src_key_padding_mask=padding)
    assert got.dtype == want.dtype == dtype
    assert_close_rel(got, want, dtype, "output")
