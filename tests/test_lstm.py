"""pydl.nn.LSTM and torch.ops.pydl.lstm_layer against the float64 reference
(pydl.reference.lstm) and torch.nn.LSTM with the same weights."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    assert_close_rel,
    assert_script_ok_on_isa,
    needs_extension,
    rel_error,
    run_with_cpu_isa,
)
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import pydl
from pydl import reference


def _torch_exports_mkl_packed_gemm() -> bool:
    import ctypes
    import os

    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return hasattr(ctypes.CDLL(lib), "cblas_sgemm_pack")
    except OSError:
        return False


needs_mkl_packed_gemm = pytest.mark.skipif(
    not _torch_exports_mkl_packed_gemm(),
    reason="this torch exports no MKL packed GEMM: the products take plain BLAS")


CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(proj_size=3),
    dict(num_layers=2, proj_size=5, bidirectional=True, batch_first=True),
    dict(bias=False, batch_first=True),
]


def _pair(input_size, hidden, dtype, seed=0, **kw):
    torch.manual_seed(seed)
    theirs = torch.nn.LSTM(input_size, hidden, dtype=dtype, **kw)
    ours = pydl.nn.LSTM(input_size, hidden, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _states(module, batch, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = 2 if module.bidirectional else 1
    out = module.proj_size or module.hidden_size
    h0 = torch.randn(module.num_layers * d, batch, out, generator=g, dtype=dtype)
    c0 = torch.randn(module.num_layers * d, batch, module.hidden_size, generator=g, dtype=dtype)
    return h0, c0


def _grads(module, x, hx, outputs):
    """Gradients of a random projection of (output, h_n, c_n) w.r.t. x, hx, parameters."""
    out, (h, c) = outputs
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (out, h, c))
    leaves = [x, *hx, *module.parameters()]
    return torch.autograd.grad(loss, leaves, retain_graph=True)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_matches_torch_forward_and_all_grads(config, dtype):
    ours, theirs = _pair(6, 7, dtype, **config)
    T, B = 5, 3
    shape = (B, T, 6) if config.get("batch_first") else (T, B, 6)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    hx = tuple(t.requires_grad_() for t in _states(ours, B, dtype))
    got, want = ours(x, hx), theirs(x, hx)
    for a, b, what in zip((got[0], *got[1]), (want[0], *want[1]), ("output", "h_n", "c_n")):
        assert a.shape == b.shape, what
        assert_close_rel(a, b, dtype, what)
    for k, (a, b) in enumerate(zip(_grads(ours, x, hx, got), _grads(theirs, x, hx, want))):
        assert_close_rel(a, b, dtype, f"grad {k}")


# Batch sizes on both sides of the register-kernel / BLAS switch (64 rows per
# step) and hidden sizes with and without vector tails.
@pytest.mark.parametrize("batch, hidden", [(1, 64), (5, 37), (20, 16), (17, 130), (70, 24)])
def test_reference_float64_sizes(batch, hidden):
    ours, _ = _pair(9, hidden, torch.float64, proj_size=0, num_layers=1, bidirectional=True)
    x = torch.randn(4, batch, 9, dtype=torch.float64, requires_grad=True)
    hx = tuple(t.requires_grad_() for t in _states(ours, batch, torch.float64))
    out, (h, c) = ours(x, hx)
    params = dict(ours.named_parameters())
    rout, (rh, rc) = reference.lstm(x, hx, params, bidirectional=True)
    for a, b, what in ((out, rout, "output"), (h, rh, "h_n"), (c, rc, "c_n")):
        assert_close_rel(a, b, torch.float64, what)
    leaves = [x, *hx, *params.values()]
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum() + h.sum() - c.sum(), leaves)
    want = torch.autograd.grad((rout * g).sum() + rh.sum() - rc.sum(), leaves)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close_rel(a, b, torch.float64, f"grad {k}")


@pytest.mark.parametrize("config", CONFIGS[:4], ids=["default", "2layer-bidir", "proj", "all"])
def test_packed_uneven_lengths_match_torch_and_reference(config):
    dtype = torch.float64
    ours, theirs = _pair(4, 6, dtype, **config)
    batch_first = config.get("batch_first", False)
    lengths = torch.tensor([3, 7, 1, 7, 4])
    T, B = 7, 5
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4), dtype=dtype, requires_grad=True)
    hx = tuple(t.requires_grad_() for t in _states(ours, B, dtype))
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    got, want = ours(packed, hx), theirs(packed, hx)
    assert isinstance(got[0], torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(got[0].batch_sizes, want[0].batch_sizes)
    assert torch.equal(got[0].unsorted_indices, want[0].unsorted_indices)
    for a, b, what in ((got[0].data, want[0].data, "output"), (got[1][0], want[1][0], "h_n"),
                       (got[1][1], want[1][1], "c_n")):
        assert_close_rel(a, b, dtype, what)
    for k, (a, b) in enumerate(zip(_grads(ours, x, hx, got), _grads(theirs, x, hx, want))):
        assert_close_rel(a, b, dtype, f"grad {k}")
    # The reference's lengths= semantics: padded outputs are zero past each length.
    padded, _ = pad_packed_sequence(got[0], batch_first=batch_first, total_length=T)
    rout, (rh, rc) = reference.lstm(x, hx, dict(ours.named_parameters()), lengths=lengths,
                                    **{k: v for k, v in config.items() if k != "bias"})
    assert_close_rel(padded, rout, dtype, "padded output vs reference")
    assert_close_rel(got[1][0], rh, dtype, "h_n vs reference")


def test_unbatched_and_default_states():
    ours, theirs = _pair(3, 4, torch.float64, num_layers=2)
    x = torch.randn(6, 3, dtype=torch.float64)
    for args in ((x,), (x, tuple(t[:, 0] for t in _states(ours, 1, torch.float64)))):
        got, want = ours(*args), theirs(*args)
        assert got[0].shape == want[0].shape == (6, 4)
        assert got[1][0].shape == want[1][0].shape == (2, 4)
        assert_close_rel(got[0], want[0], torch.float64, "unbatched output")
        assert_close_rel(got[1][1], want[1][1], torch.float64, "unbatched c_n")


def test_only_final_state_used_and_zero_length_batch():
    ours, theirs = _pair(3, 5, torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(ours(x)[1][0].sum(), x)
    (rx,) = torch.autograd.grad(theirs(x)[1][0].sum(), x)
    assert_close_rel(gx, rx, torch.float64, "grad through h_n only")
    empty = torch.randn(4, 0, 3, dtype=torch.float64)
    out, (h, c) = ours(empty)
    assert out.shape == (4, 0, 5) and h.shape == (1, 0, 5)


def test_dropout_between_layers_is_seeded_and_off_in_eval():
    ours, _ = _pair(4, 6, torch.float64, num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    ours.train()
    torch.manual_seed(3)
    a = ours(x)[0]
    torch.manual_seed(3)
    b = ours(x)[0]
    torch.manual_seed(4)
    c = ours(x)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    ours.eval()
    theirs = torch.nn.LSTM(4, 6, num_layers=3, dropout=0.5, dtype=torch.float64).eval()
    theirs.load_state_dict(ours.state_dict())
    assert_close_rel(ours(x)[0], theirs(x)[0], torch.float64, "eval output")


@needs_extension
def test_compiled_autograd_matches_eager():
    from torch._dynamo import compiled_autograd

    torch.manual_seed(0)
    ours = pydl.nn.LSTM(3, 5, num_layers=2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    params = list(ours.parameters())

    def grads():
        out, (h, c) = ours(x)
        return torch.autograd.grad(out.sum() + c.sum(), params)

    want = grads()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        got = grads()
    for g, w in zip(got, want):
        assert_close_rel(g, w, torch.float64, "compiled autograd gradient")


@needs_extension
def test_second_order_and_forward_mode_gradients_are_refused():
    # Neither is implemented; both must fail loudly, never give zeros or
    # drop a tangent in silence.
    import torch.autograd.forward_ad as fwAD

    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = _layer_args([2, 1])
    out = torch.ops.pydl.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)[0]
    (g,) = torch.autograd.grad(out.pow(2).sum(), w_hh, retain_graph=True)
    assert g.grad_fn is None
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.pow(2).sum(), w_hh, create_graph=True)
    cell = pydl.nn.LSTMCell(3, 4, dtype=torch.float64)
    h, _ = cell(x[:2])
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(h.pow(2).sum(), cell.weight_hh, create_graph=True)
    with torch.no_grad(), fwAD.dual_level():
        dual = fwAD.make_dual(x.detach(), torch.ones_like(x))
        with pytest.raises(RuntimeError):
            torch.ops.pydl.lstm_layer(dual, bs, h0.detach(), c0.detach(), w_ih.detach(),
                                      w_hh.detach(), None, None, None, False)


def test_substituted_and_parametrized_weights_are_used():
    # The module reads its weights per call: functional_call's substitutes and
    # parametrized weights reach the kernel, as in torch's forward.
    from torch.func import functional_call
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    ours = pydl.nn.LSTM(5, 6, num_layers=2, bidirectional=True).double()
    theirs = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    subs = {k: torch.randn_like(v) for k, v in ours.state_dict().items()}
    assert_close_rel(functional_call(ours, subs, (x,))[0], functional_call(theirs, subs, (x,))[0],
                     torch.float64, "functional_call output")
    for m in (ours, theirs):
        parametrizations.weight_norm(m, "weight_hh_l1_reverse")
        with torch.no_grad():
            m.parametrizations.weight_hh_l1_reverse.original0.mul_(3)
    assert_close_rel(ours(x)[0], theirs(x)[0], torch.float64, "weight_norm output")


def test_state_dict_and_convert_round_trip():
    model = torch.nn.Sequential(torch.nn.LSTM(4, 8, num_layers=2, proj_size=3))
    keys = set(model.state_dict())
    converted = pydl.convert(model)
    assert type(converted[0]) is pydl.nn.LSTM
    assert set(converted.state_dict()) == keys
    x = torch.randn(3, 2, 4)
    reference_model = torch.nn.LSTM(4, 8, num_layers=2, proj_size=3)
    reference_model.load_state_dict(converted[0].state_dict())
    assert_close_rel(converted(x)[0], reference_model(x)[0], torch.float32, "converted")
    back = pydl.convert(converted, to="torch")
    assert type(back[0]) is torch.nn.LSTM


# Dynamo refuses every torch.nn.LSTM instance (subclasses included) unless
# allow_rnn is set, as for torch's own LSTM; with it, pydl.nn.LSTM traces to
# pydl's ops in one graph.
@torch._dynamo.config.patch(allow_rnn=True)
def test_torch_compile_fullgraph():
    ours, _ = _pair(4, 6, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    out, (h, c) = compiled(x)
    want, _ = ours(x)
    assert_close_rel(out, want, torch.float64, "compiled output")
    (out.sum() + h.sum() + c.sum()).backward()
    assert x.grad is not None and ours.weight_hh_l0.grad is not None


@needs_extension
@torch._dynamo.config.patch(allow_rnn=True)
def test_torch_compile_inductor():
    ours, _ = _pair(4, 6, torch.float32, proj_size=2)
    x = torch.randn(5, 3, 4)
    out = torch.compile(ours, fullgraph=True)(x)[0]
    assert_close_rel(out, ours(x)[0], torch.float32, "inductor output")


# ---- the op itself ------------------------------------------------------------


def _layer_args(batch_sizes, input_size=3, hidden=4, proj=0, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=dtype) * 0.5).requires_grad_()
    out = proj or hidden
    bs = torch.tensor(batch_sizes, dtype=torch.long)
    return (r(int(bs.sum()), input_size), bs, r(batch_sizes[0], out), r(batch_sizes[0], hidden),
            r(4 * hidden, input_size), r(4 * hidden, out), r(4 * hidden) if bias else None,
            r(4 * hidden) if bias else None, r(proj, hidden) if proj else None)


@needs_extension
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("biases", ["both", "none", "hh only"])
def test_op_gradcheck_packed(reverse, proj, biases):
    # Absent optional tensors have no autograd edge: every later gradient must
    # still reach its own argument (b_hh and w_hr without b_ih, w_hr alone).
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _layer_args([3, 3, 2, 1], proj=proj)
    optional = {"b_ih": b_ih if biases == "both" else None,
                "b_hh": b_hh if biases != "none" else None, "w_hr": w_hr}
    given = [x, h0, c0, w_ih, w_hh] + [t for t in optional.values() if t is not None]

    def fn(*tensors):
        it = iter(tensors[5:])
        b_ih, b_hh, w_hr = (next(it) if t is not None else None for t in optional.values())
        out, hy, cy, *_ = torch.ops.pydl.lstm_layer(*tensors[:1], bs, *tensors[1:5], b_ih, b_hh,
                                                    w_hr, reverse)
        return out, hy, cy

    assert torch.autograd.gradcheck(fn, given)


@needs_extension
def test_op_gradients_only_where_asked():
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _layer_args([2, 1], proj=2)
    for t in (x, h0, c0, w_ih, b_ih):
        t.requires_grad_(False)
    out, hy, cy, *_ = torch.ops.pydl.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, False)
    (out.sum() + cy.sum()).backward()
    assert all(t.grad is None for t in (x, h0, c0, w_ih, b_ih))
    for t in (w_hh, b_hh, w_hr):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@needs_extension
@pytest.mark.parametrize("proj, bias", [(0, True), (2, False)])
def test_op_opcheck(proj, bias):
    args = _layer_args([2, 2, 1], proj=proj, bias=bias)
    torch.library.opcheck(torch.ops.pydl.lstm_layer.default, (*args, True))


@needs_extension
def test_op_opcheck_non_contiguous_states():
    x, bs, h0, c0, *weights = _layer_args([2, 2, 1], hidden=4)
    h0t = h0.detach().t().contiguous().t().requires_grad_()  # same values, transposed strides
    c0t = c0.detach().t().contiguous().t().requires_grad_()
    torch.library.opcheck(torch.ops.pydl.lstm_layer.default, (x, bs, h0t, c0t, *weights, False))


def _stack_weights(layers, directions, input_size, hidden, proj=0, bias=True):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    out, weights = proj or hidden, []
    for layer in range(layers):
        for _ in range(directions):
            size = input_size if layer == 0 else directions * out
            weights += [r(4 * hidden, size), r(4 * hidden, out),
                        r(4 * hidden) if bias else None, r(4 * hidden) if bias else None,
                        r(proj, hidden) if proj else None]
    return weights


@needs_extension
@pytest.mark.parametrize("layers, bidir, proj, bias", [(1, False, 0, True), (2, True, 2, False)])
def test_stack_op_opcheck_padded_and_packed(layers, bidir, proj, bias):
    # pydl::lstm is composite over lstm_layer: schema, fake tensors and
    # autograd must hold through it, with hx given or None (zeros made inside).
    d = 2 if bidir else 1
    weights = _stack_weights(layers, d, 3, 4, proj, bias)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.pydl.lstm.default,
                          (x, None, None, None, weights, layers, 0.0, False, bidir))
    rows = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    bs = torch.tensor([3, 2, 1])
    h0 = torch.randn(layers * d, 3, proj or 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(layers * d, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.pydl.lstm.default,
                          (rows, bs, h0, c0, weights, layers, 0.0, False, bidir))


@needs_extension
@pytest.mark.parametrize("proj", [0, 3])
def test_stack_op_matches_torch_with_zero_states(proj):
    # hx None: the op's own zeros, against torch.nn.LSTM given explicit zeros.
    ours, theirs = _pair(3, 4, torch.float64, num_layers=2, bidirectional=True, proj_size=proj)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, h, c = torch.ops.pydl.lstm(x, None, None, None, ours._layer_weights(), 2, 0.0, False,
                                    True)
    zeros = (torch.zeros(4, 2, proj or 4, dtype=torch.float64),
             torch.zeros(4, 2, 4, dtype=torch.float64))
    want, (wh, wc) = theirs(x, zeros)
    assert out.shape == (5, 2, 2 * (proj or 4)) and h.shape == (4, 2, proj or 4)
    for got, ref, what in ((out, want, "output"), (h, wh, "h_n"), (c, wc, "c_n")):
        assert_close_rel(got, ref, torch.float64, what)


@needs_extension
@torch._dynamo.config.patch(allow_rnn=True)
def test_torch_compile_dynamic_lengths_one_graph():
    # Sizes flow through the C++ stack as SymInts: new lengths and batch
    # sizes reuse the graph instead of recompiling per shape.
    from torch._dynamo.testing import CompileCounter

    ours, _ = _pair(3, 5, torch.float32, batch_first=True)
    counter = CompileCounter()
    compiled = torch.compile(ours, backend=counter, fullgraph=True, dynamic=True)
    for t in range(4, 14):
        x = torch.randn(2 + t % 3, t, 3)
        assert_close_rel(compiled(x)[0], ours(x)[0], torch.float32, f"T={t}")
    assert counter.frame_count == 1


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the side-by-side path needs two (any machine can have them)
    yield
    torch.set_num_threads(previous)


def _layer_threads(fn):
    """The set of threads that ran pydl::lstm_layer during fn()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.thread for e in prof.events() if e.name == "pydl::lstm_layer"}


@needs_extension
@pytest.mark.parametrize("grad_context", ["no_grad", "inference_mode", "weights_frozen"])
@pytest.mark.parametrize("batch, packed", [(1, False), (3, False), (5, True)])
def test_bidirectional_directions_side_by_side_match_torch(grad_context, batch, packed,
                                                           two_threads):
    # Without a graph to record, a small batch's two directions run on two
    # threads at once: same results as torch, and as the one-at-a-time path
    # (taken when gradients are needed) up to rounding.
    ours, theirs = _pair(4, 24, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(7, batch, 4, dtype=torch.float64)
    h0, c0 = _states(ours, batch, torch.float64)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([7, 6, 4, 2, 1][:batch]), enforce_sorted=False)
    want, (wh, wc) = theirs(x, (h0, c0))
    sequential, _ = ours(x, (h0, c0))  # weights require grad: one direction at a time
    if grad_context == "weights_frozen":
        ours.requires_grad_(False)
        got, (h, c) = ours(x, (h0, c0))
    else:
        with getattr(torch, grad_context)():
            got, (h, c) = ours(x, (h0, c0))
    # It did run side by side (two threads), and with a graph to record it does not.
    if grad_context == "weights_frozen":
        assert len(_layer_threads(lambda: ours(x, (h0, c0)))) == 2
    else:
        with getattr(torch, grad_context)():
            assert len(_layer_threads(lambda: ours(x, (h0, c0)))) == 2
        assert len(_layer_threads(lambda: ours(x, (h0, c0)))) == 1
    data = lambda t: t.data if packed else t
    assert_close_rel(data(got), data(want), torch.float64, "output")
    assert_close_rel(h, wh, torch.float64, "h_n")
    assert_close_rel(c, wc, torch.float64, "c_n")
    assert_close_rel(data(got), data(sequential).detach(), torch.float64, "vs one at a time")
    assert not data(got).requires_grad


_FUSED_INPUT_PROJECTION_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests_dir!r})
from test_lstm import _layer_args, _layer_reference
from conftest import assert_close_rel
for rows, input_size, in_loop in ((20, 8, True), (300, 256, False)):
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = (
        t.detach() if isinstance(t, torch.Tensor) and t.dtype != torch.long else t
        for t in _layer_args([1] * rows, input_size=input_size, hidden=16, dtype=torch.float32))
    args = (x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = torch.ops.pydl.lstm_layer(*args)[:3]
    names = {e.name for e in prof.events()}
    assert ("aten::mm" not in names) == in_loop, (rows, sorted(names))
    want = _layer_reference(*(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point()
                               else a for a in args))
    for a, e, what in zip(got, want, ("output", "hy", "cy")):
        assert_close_rel(a, e, torch.float32, what)
print("ok")
"""


@needs_extension
def test_fused_layer_projects_a_small_input_itself():
    """The fused small-batch loop computes the input projection inside its
    parallel region when the input rows fit in L2 (256 KB: here 20 x 8
    floats), with no separate GEMM call; a larger input (300 x 256 floats)
    gets the separate one, here ATen's (PYDL_LSTM_REGISTER_INPUT=0: on AMD
    it would be the register kernel, with no aten::mm either). Both match
    the reference; what this checks is that each path is taken."""
    script = _FUSED_INPUT_PROJECTION_SCRIPT.replace(
        "{tests_dir!r}", repr(os.path.dirname(os.path.abspath(__file__))))
    assert_script_ok_on_isa("default", script, PYDL_LSTM_REGISTER_INPUT="0")


@needs_extension
def test_layer_without_input_features():
    """input_size 0 (the op takes it; torch's modules refuse it): the gates
    start from zeros plus the biases, not from uninitialized memory (the
    fused loop leaves such an input projection to ATen)."""
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = (
        t.detach() if isinstance(t, torch.Tensor) and t.dtype != torch.long else t
        for t in _layer_args([1] * 10, input_size=0, hidden=16, dtype=torch.float32))
    args = (x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    got = torch.ops.pydl.lstm_layer(*args)[:3]
    want = _layer_reference(*(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point()
                               else a for a in args))
    for a, e, what in zip(got, want, ("output", "hy", "cy")):
        assert_close_rel(a, e, torch.float32, what)


# Shared by the subprocess scripts below: compare() prints the relative
# error of the output and of every gradient (input, then parameters) of
# pydl's LSTM against torch's in float64 on a packed batch (lengths in
# [min_length, steps]) and returns its row count.
_COMPARE_PACKED = """
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from pydl.nn import LSTM
def compare(input_size, hidden, steps, batch, min_length, **kw):
    ours = LSTM(input_size, hidden, **kw)
    theirs = torch.nn.LSTM(input_size, hidden, **kw).double()
    theirs.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(steps, batch, input_size)
    lengths = torch.randint(min_length, steps + 1, (batch,))
    lengths[0] = steps
    results = []
    for model, inp in ((ours, x), (theirs, x.double())):
        inp = inp.clone().requires_grad_()
        out = model(pack_padded_sequence(inp, lengths, enforce_sorted=False))[0].data
        grads = torch.autograd.grad(out.square().sum(), [inp, *model.parameters()])
        results.append([out, *grads])
    for got, want in zip(*results):
        print(float((got.double() - want).norm() / want.norm()))
    return int(lengths.sum())
torch.manual_seed(0)
"""

# 100 sequences of 10-16 steps: about 1300 rows of 70 features, two row
# chunks of the projection (936 rows each); 4H = 80, a partial 64-wide
# panel; 100 rows per step: the step loop, not the fused one.
_INPUT_PROJECTION_ON_THE_REGISTER_KERNEL = (
    _COMPARE_PACKED + "assert compare(70, 20, 16, 100, 10) > 936\n")


@needs_extension
@pytest.mark.parametrize("isa", ["default", "avx512"])
def test_input_projection_on_the_register_kernel(isa):
    """Where MKL runs its generic code (AMD) the hoisted input projection is
    pydl's register kernel over row chunks (PYDL_LSTM_REGISTER_INPUT=1
    forces it on any processor): two chunks, a partial panel, a packed
    batch, forward and every gradient against torch in float64."""
    run = run_with_cpu_isa(isa, _INPUT_PROJECTION_ON_THE_REGISTER_KERNEL,
                           PYDL_LSTM_REGISTER_INPUT="1")
    assert run.returncode == 0, run.stderr[-3000:]
    errors = [float(line) for line in run.stdout.split()]
    assert len(errors) == 6 and max(errors) < 1e-5, errors  # output, x, 4 weights


_EVERY_PRODUCT_ON_BLAS = """
import torch, pydl
from pydl.nn import LSTM
for hidden, proj in ((1, 0), (3, 1), (8, 1)):  # size-1 dimensions: any stride, any ld
    torch.manual_seed(0)
    ours = LSTM(2, hidden, proj_size=proj)
    theirs = torch.nn.LSTM(2, hidden, proj_size=proj).double()
    theirs.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(6, 5, 2)
    got, want = ours(x)[0], theirs(x.double())[0]
    print(float((got.double() - want).norm() / want.norm()))
"""


@needs_extension
def test_every_product_on_blas_with_size_one_dimensions():
    """PYDL_LSTM_SMALL_BATCH=0 sends every step product to BLAS (MKL's packed
    GEMM in float32), including (1 x n) and (k x 1) weights, whose unit
    dimension may carry any stride."""
    run = run_with_cpu_isa("default", _EVERY_PRODUCT_ON_BLAS, PYDL_LSTM_SMALL_BATCH="0")
    assert run.returncode == 0, run.stderr
    assert "incorrect" not in run.stdout + run.stderr  # MKL's message for a bad argument
    errors = [float(line) for line in run.stdout.split()]
    assert len(errors) == 3 and max(errors) < 1e-5, errors


_EVERY_PRODUCT_ON_THE_REGISTER_KERNEL = _COMPARE_PACKED + """
for proj in (0, 12):
    compare(5, 24, 5, 70, 1, proj_size=proj, bidirectional=True)
"""


@needs_extension
@pytest.mark.parametrize("isa", ["default", "avx512"])
def test_every_product_on_the_register_kernel_past_64_rows(isa):
    """Where MKL runs its generic code (AMD) every step product takes the
    register kernel, however many rows (on Intel only up to 64): 70 rows,
    packed, both directions, forward and every gradient, forced here by
    PYDL_LSTM_SMALL_BATCH on any processor. With a projection the forward
    is the step loop; without one the variable also lifts the fused loop's
    limit, so there the forward is the fused loop at 70 rows (the step loop
    without a projection past 64 rows runs by default on AMD only: the
    benchmarks' B128 / B256 rows); the backward is the step loop in both."""
    run = run_with_cpu_isa(isa, _EVERY_PRODUCT_ON_THE_REGISTER_KERNEL,
                           PYDL_LSTM_SMALL_BATCH="100000")
    assert run.returncode == 0, run.stderr[-3000:]
    errors = [float(line) for line in run.stdout.split()]
    assert len(errors) == 10 + 12 and max(errors) < 1e-5, errors  # output, x, weights


@pytest.fixture
def ran_with_intel_rule(request):
    """For tests of the step products on MKL. Where MKL runs its generic code
    (not an Intel processor) pydl keeps every step product on its register
    kernel (csrc/common/blas.h), so MKL would never run: the test reruns in
    a fresh process with PYDL_LSTM_SMALL_BATCH=8, the limit the Intel rule
    gives at these sizes (float32, H 512), and True says it passed there."""
    if os.environ.get("PYDL_LSTM_SMALL_BATCH") or torch.ops.pydl.mkl_code_path() != "generic":
        return False
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          request.node.nodeid], cwd=str(request.config.rootpath),
                         env=dict(os.environ, PYDL_LSTM_SMALL_BATCH="8"), capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-3000:]
    return True


@needs_extension
@needs_mkl_packed_gemm
def test_bidirectional_side_by_side_with_mkl_packed_products(two_threads, ran_with_intel_rule):
    """float32 at hidden 512 and 12 rows: each direction's steps take MKL's
    packed GEMM on its own worker thread (kept to that thread; results
    checked here, the threading is not)."""
    if ran_with_intel_rule:
        return
    ours, theirs = _pair(16, 512, torch.float32, num_layers=1, bidirectional=True)
    x = torch.randn(5, 12, 16)
    with torch.no_grad():
        assert len(_layer_threads(lambda: ours(x))) == 2
        got, (h, c) = ours(x)
        want, (wh, wc) = theirs(x)
    for a, b, what in ((got, want, "output"), (h, wh, "h_n"), (c, wc, "c_n")):
        assert rel_error(a, b) <= 1e-5, (what, rel_error(a, b))


@needs_extension
def test_bidirectional_side_by_side_error_from_a_worker_thread(two_threads):
    weights = _stack_weights(1, 2, 3, 4)
    weights[6] = weights[6][:, :3]  # the reverse direction's w_hh: wrong shape
    x = torch.randn(5, 1, 3, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(RuntimeError, match="w_hh"):
        torch.ops.pydl.lstm(x, None, None, None, weights, 1, 0.0, False, True)


@needs_extension
def test_bidirectional_tensor_subclass_weight_stays_on_the_calling_thread(two_threads):
    # A __torch_dispatch__ subclass among the weights (not the input): its
    # Python handler must run on the caller's thread, so its exception arrives
    # as itself (on a worker it became a SystemError).
    class Refusing(torch.Tensor):
        @staticmethod
        def __new__(cls, t):
            return torch.Tensor._make_wrapper_subclass(cls, t.shape, dtype=t.dtype)

        def __init__(self, t):
            self.t = t

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            if func is torch.ops.pydl.lstm_layer.default:
                raise ValueError("refused by the subclass")
            unwrap = lambda a: a.t if isinstance(a, Refusing) else a
            return func(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in (kwargs or {}).items()})

    weights = _stack_weights(1, 2, 3, 4)
    weights = [None if w is None else w.detach() for w in weights]
    weights[6] = Refusing(weights[6])
    x = torch.randn(5, 1, 3, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(ValueError, match="refused by the subclass"):
        torch.ops.pydl.lstm(x, None, None, None, weights, 1, 0.0, False, True)


@needs_extension
@pytest.mark.parametrize("bad", ["int32", "2-D"])
def test_stack_op_bad_batch_sizes_get_the_layer_message(bad, two_threads):
    # Read (for the side-by-side choice) only when well formed: else the
    # layer's own message, not a dtype error or a read of the wrong memory.
    weights = [None if w is None else w.detach() for w in _stack_weights(1, 2, 3, 4)]
    rows = torch.randn(6, 3, dtype=torch.float64)
    sizes = torch.tensor([3, 2, 1], dtype=torch.int32) if bad == "int32" else torch.tensor([[3, 2, 1]])
    h0 = torch.zeros(2, 3, 4, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(RuntimeError, match="batch_sizes must be a 1-D int64"):
        torch.ops.pydl.lstm(rows, sizes, h0, h0, weights, 1, 0.0, False, True)


def test_empty_sequence_refused_like_torch():
    ours, theirs = _pair(3, 5, torch.float64)
    x = torch.randn(0, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="larger than 0"):
        theirs(x)
    with pytest.raises(RuntimeError, match="larger than 0"):
        ours(x)


@needs_extension
def test_stack_op_bad_input():
    w = _stack_weights(1, 1, 3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    h0 = torch.zeros(1, 2, 4, dtype=torch.float64)
    op = torch.ops.pydl.lstm
    with pytest.raises(RuntimeError, match="expected 5 weights"):
        op(x, None, None, None, w[:4], 1, 0.0, False, False)
    with pytest.raises(RuntimeError, match="w_hh of layer-direction 0"):
        op(x, None, None, None, [w[0], None, *w[2:]], 1, 0.0, False, False)
    with pytest.raises(RuntimeError, match="both hx and cx"):
        op(x, None, h0, None, w, 1, 0.0, False, False)
    with pytest.raises(RuntimeError, match="packed rows need hx"):
        op(x[0], torch.tensor([2]), None, None, w, 1, 0.0, False, False)
    with pytest.raises(RuntimeError, match="a padded batch"):
        op(x[0], None, None, None, w, 1, 0.0, False, False)
    with pytest.raises(RuntimeError, match="num_layers must be >= 1"):
        op(x, None, None, None, [], 0, 0.0, False, False)
    with pytest.raises(RuntimeError, match="hx and cx must be"):
        op(x, None, h0[0], h0[0], w, 1, 0.0, False, False)
    with pytest.raises(RuntimeError, match="dropout must be in"):
        op(x, None, None, None, w, 1, 1.5, True, False)


def _layer_reference(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """The layer from the math, row by row in float64: sequence b runs for the
    steps whose batch size exceeds b; rows of hx past batch_sizes[0] never run."""
    sizes = batch_sizes.tolist()
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    h, c = list(h0.double()), list(c0.double())
    out = [None] * x.shape[0]
    steps = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in steps:
        for b in range(sizes[t]):
            gates = x[offsets[t] + b].double() @ w_ih.double().t() + h[b] @ w_hh.double().t()
            if b_ih is not None:
                gates = gates + b_ih.double() + b_hh.double()
            i, f, g, o = gates.chunk(4)
            c[b] = torch.sigmoid(f) * c[b] + torch.sigmoid(i) * torch.tanh(g)
            h[b] = torch.sigmoid(o) * torch.tanh(c[b])
            if w_hr is not None:
                h[b] = h[b] @ w_hr.double().t()
            out[offsets[t] + b] = h[b]
    return torch.stack(out), torch.stack(h), torch.stack(c)


# More hx rows than batch_sizes[0], a trailing empty step, and steps on both
# sides of the register-kernel / BLAS switch (64 rows).
@needs_extension
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("sizes, batch", [([4, 2, 2, 0], 6), ([70, 66, 40, 3], 70)])
@pytest.mark.parametrize("proj", [0, 2])
def test_op_matches_row_by_row_reference(reverse, sizes, batch, proj):
    x, bs, _, _, w_ih, w_hh, b_ih, b_hh, w_hr = _layer_args(sizes, proj=proj)
    g = torch.Generator().manual_seed(3)
    h0 = torch.randn(batch, proj or 4, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(batch, 4, generator=g, dtype=torch.float64, requires_grad=True)
    args = (x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    got = torch.ops.pydl.lstm_layer(*args)[:3]
    want = _layer_reference(*args)
    leaves = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in want]
    grads = torch.autograd.grad(sum((a * w).sum() for a, w in zip(got, weights)), leaves)
    ref_grads = torch.autograd.grad(sum((a * w).sum() for a, w in zip(want, weights)), leaves)
    for a, e, what in zip(got, want, ("output", "hy", "cy")):
        assert_close_rel(a, e, torch.float64, what)
    for k, (a, e) in enumerate(zip(grads, ref_grads)):
        assert_close_rel(a, e, torch.float64, f"grad {k}")


# float32 with operands past ~1 MB takes MKL's packed GEMM above rows * k =
# 4096: at hidden 512, w_hh^T (512 x 2048) above 8 rows, and w_hh (2048 x
# 512, backward) above 2; with proj 256, w_hh^T (256 x 2048) above 16. Steps
# of several row counts above the switch reuse one pack made for the largest;
# steps below it take the register kernel.
@needs_extension
@needs_mkl_packed_gemm
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [0, 256])
def test_op_float32_across_the_packed_blas_switch(reverse, proj, ran_with_intel_rule):
    if ran_with_intel_rule:
        return
    sizes = [40, 33, 20, 9, 5, 3]
    args = list(_layer_args(sizes, input_size=24, hidden=512, proj=proj, dtype=torch.float32))
    for i in (4, 5, 8):  # weights ~ 1 / sqrt(fan-in), as torch initializes: a tame recurrence
        if args[i] is not None:
            args[i] = (args[i].detach() / args[i].shape[1] ** 0.5).requires_grad_()
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = args
    args = tuple(args) + (reverse,)
    got = torch.ops.pydl.lstm_layer(*args)[:3]
    want = _layer_reference(*args)
    leaves = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in want]
    grads = torch.autograd.grad(sum((a.double() * w).sum() for a, w in zip(got, weights)), leaves)
    ref_grads = torch.autograd.grad(sum((a * w).sum() for a, w in zip(want, weights)), leaves)
    for a, e, what in zip(got, want, ("output", "hy", "cy")):
        assert_close_rel(a, e, torch.float32, what)
    for k, (a, e) in enumerate(zip(grads, ref_grads)):
        assert_close_rel(a, e, torch.float32, f"grad {k}")


# The fused small-batch forward runs the whole time loop in one parallel
# region, each thread owning a range of hidden-unit blocks, with a barrier per
# step; with one thread it runs the same loop alone. Sizes that split over two
# threads (3 blocks of 16 units, the last partial), packed rows that end at
# different steps (each thread copies its units of their h into hy).
# hidden 100: 7 unit blocks split 3 + 4 over two threads, 4 + 2 row tiles.
# Batch 1, hidden 120: 8 blocks (the last half full) split 4 + 4.
@needs_extension
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes, hidden", [([5, 5, 4, 4, 2, 1, 1], 40), ([6, 6, 5, 5, 3], 100),
                                           ([1] * 9, 120)])
def test_fused_forward_two_threads_match_one_thread_and_reference(reverse, dtype, sizes, hidden):
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = (
        t.detach() if isinstance(t, torch.Tensor) and t.dtype != torch.long else t
        for t in _layer_args(sizes, input_size=6, hidden=hidden, dtype=dtype))
    # Where the input projection is ATen's GEMM (PYDL_LSTM_FUSED_INPUT=0, or
    # larger inputs) its rounding may follow the thread count (MKL on an AMD
    # EPYC split 9 rows differently over one and two threads): small integers
    # times multiples of 2^-6 sum exactly in any order, so only the fused
    # loop's own arithmetic is compared.
    x = (x * 4).round().clamp(-2, 2)
    w_ih = (w_ih * 64).round() / 64
    args = (x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, None, reverse)
    previous = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = torch.ops.pydl.lstm_layer(*args)[:3]
    finally:
        torch.set_num_threads(previous)
    want = _layer_reference(*(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point()
                               else a for a in args))
    for one, two, e, what in zip(results[1], results[2], want, ("output", "hy", "cy")):
        # Each unit is computed the same way whichever thread owns it.
        assert torch.equal(one, two), what
        assert_close_rel(two, e, dtype, what)


# Each per-ISA build of the sequence kernels (ATEN_CPU_CAPABILITY): the fused
# small-batch step (batch 1 split over two threads, packed rows ending at
# different steps, hidden off the vector width) and the projection path.
_ISA_SEQUENCE_SCRIPT = """
import torch, pydl
from pydl import reference
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
torch.set_num_threads(2)
torch.manual_seed(0)
for hidden, batch, lengths, proj, bidir in ((120, 1, None, 0, False), (37, 3, [7, 5, 2], 0, True),
                                            (20, 2, None, 6, False)):
    for dtype in (torch.float32, torch.float64):
        m = pydl.nn.LSTM(9, hidden, proj_size=proj, bidirectional=bidir).to(dtype)
        x = torch.randn(7, batch, 9, dtype=dtype, requires_grad=True)
        params = {k: v.detach().double().requires_grad_() for k, v in m.named_parameters()}
        xr = x.detach().double().requires_grad_()
        if lengths is None:
            out = m(x)[0]
        else:
            out = pad_packed_sequence(m(pack_padded_sequence(x, lengths))[0], total_length=7)[0]
        want = reference.lstm(xr, None, params, bidirectional=bidir, proj_size=proj,
                              lengths=lengths)[0]
        g = torch.randn_like(want)
        got = torch.autograd.grad((out * g.to(dtype)).sum(), [x, *m.parameters()])
        ref = torch.autograd.grad((want * g).sum(), [xr, *params.values()])
        tol = 2e-5 if dtype == torch.float32 else 1e-10
        for name, a, e in [("output", out, want)] + list(zip(["x", *params], got, ref)):
            err = ((a.double() - e).norm() / e.norm()).item()
            assert err <= tol, (hidden, batch, dtype, name, err)
# NaN in, NaN out where torch has it (the vectorized activations clamp).
ours = pydl.nn.LSTM(9, 40)
theirs = torch.nn.LSTM(9, 40)
theirs.load_state_dict(ours.state_dict())
x = torch.randn(5, 3, 9)
x[2, 1, 4] = float("nan")
c0 = torch.zeros(1, 3, 40)
c0[0, 2, 7] = float("nan")
state = (torch.zeros(1, 3, 40), c0)
for a, e in zip(ours(x, state)[0:1] + ours(x, state)[1], theirs(x, state)[0:1] + theirs(x, state)[1]):
    assert torch.equal(a.isnan(), e.isnan()) and a.isnan().any()
print("ok")
"""


@needs_extension
@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_each_cpu_isa_build_of_the_sequence_kernels(isa):
    assert_script_ok_on_isa(isa, _ISA_SEQUENCE_SCRIPT, PYDL_STRICT="1")


# Pre-activations far past exp's float range: saturated gates, no NaN from
# the vectorized activations.
@needs_extension
def test_fused_forward_saturated_gates_stay_finite():
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = (
        t.detach() if isinstance(t, torch.Tensor) and t.dtype != torch.long else t
        for t in _layer_args([3, 3, 2], input_size=5, hidden=40, dtype=torch.float32))
    x = x * 1e4
    got = torch.ops.pydl.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)[:3]
    want = _layer_reference(x.double(), bs, h0.double(), c0.double(), w_ih.double(),
                            w_hh.double(), b_ih.double(), b_hh.double(), None, False)
    for a, e, what in zip(got, want, ("output", "hy", "cy")):
        assert torch.isfinite(a).all(), what
        assert_close_rel(a, e, torch.float32, what)


# torch propagates NaN through the cell (a NaN input reaches every unit of
# its row from the next step on, a NaN c0 entry its unit's c and h): the
# vectorized activations must not clamp it away. Hidden 40: the SIMD lanes.
@needs_extension
@pytest.mark.parametrize("where", ["input", "c0", "h0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_propagates_like_torch(where, dtype):
    torch.manual_seed(0)
    ours = pydl.nn.LSTM(9, 40, num_layers=2).to(dtype)
    theirs = torch.nn.LSTM(9, 40, num_layers=2).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 9, dtype=dtype)
    h0, c0 = torch.zeros(2, 3, 40, dtype=dtype), torch.zeros(2, 3, 40, dtype=dtype)
    {"input": x[2, 1], "c0": c0[0, 2], "h0": h0[1, 0]}[where][4] = float("nan")
    got, want = ours(x, (h0, c0)), theirs(x, (h0, c0))
    for a, e, name in zip([got[0], *got[1]], [want[0], *want[1]], ["output", "h_n", "c_n"]):
        assert a.isnan().any(), name
        assert torch.equal(a.isnan(), e.isnan()), name
        assert torch.allclose(a.nan_to_num(), e.nan_to_num(), atol=1e-5), name
    cell = pydl.nn.LSTMCell(9, 40).to(dtype)
    cell_x = torch.randn(3, 9, dtype=dtype)
    cell_x[1, 4] = float("nan")
    h, c = cell(cell_x)
    assert h[1].isnan().all() and c[1].isnan().all() and not h[0].isnan().any()


@needs_extension
def test_op_bad_input_messages():
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = (
        t.detach() if isinstance(t, torch.Tensor) and t.dtype != torch.long else t
        for t in _layer_args([2, 2]))
    op = torch.ops.pydl.lstm_layer
    with pytest.raises(RuntimeError, match="non-increasing"):
        op(x, torch.tensor([1, 2]), h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    with pytest.raises(RuntimeError, match="sum to 3 rows but the input has 4"):
        op(x, torch.tensor([2, 1]), h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    with pytest.raises(RuntimeError, match="1-D int64 CPU tensor"):
        op(x, bs.int(), h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    with pytest.raises(RuntimeError, match="w_hh must be"):
        op(x, bs, h0, c0, w_ih, w_ih, b_ih, b_hh, None, False)
    with pytest.raises(RuntimeError, match="dtype and device"):
        op(x, bs, h0.float(), c0, w_ih, w_hh, b_ih, b_hh, None, False)
    with pytest.raises(RuntimeError, match="cx must be"):
        op(x, bs, h0, c0[:1], w_ih, w_hh, b_ih, b_hh, None, False)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: (torch.randn(3, 2, 5),), "features|input.size|input_size"),
        (lambda m: (torch.randn(3, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 2, 6))),
         "h0|hidden|Expected hidden"),
        (lambda m: (torch.randn(3, 2, 4, 1),), "3-D|2D or 3D"),
        (lambda m: (torch.randn(3, 4), (torch.randn(1, 1, 6), torch.randn(1, 1, 6))),
         "2-D|unbatched"),
    ],
)
def test_module_bad_input_gives_clear_errors(make, message):
    module = pydl.nn.LSTM(4, 6)
    with pytest.raises((ValueError, RuntimeError), match=f"(?i){message}"):
        module(*make(module))


def test_cpu_autocast_follows_torch(monkeypatch):
    """Under CPU autocast (bf16) the module runs what torch's does: pydl has no
    CPU bf16 LSTM kernel, so this is the fallback PYDL_STRICT would refuse."""
    monkeypatch.setenv("PYDL_STRICT", "0")
    ours, theirs = _pair(4, 6, torch.float32)
    x = torch.randn(5, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x)[0], theirs(x)[0]
    assert got.dtype == want.dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("draw", range(6))
def test_randomized_configurations_match_torch(draw):
    """Random sizes, layers, directions, layout, projection and packing (float64)."""
    rng = torch.Generator().manual_seed(100 + draw)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=rng))
    hidden = pick(1, 40)
    config = dict(num_layers=pick(1, 3), bidirectional=bool(pick(0, 1)),
                  batch_first=bool(pick(0, 1)), bias=bool(pick(0, 1)),
                  proj_size=pick(1, hidden - 1) if hidden > 1 and pick(0, 1) else 0)
    input_size, steps, batch = pick(1, 20), pick(1, 12), pick(1, 20)
    ours, theirs = _pair(input_size, hidden, torch.float64, seed=draw, **config)
    shape = (batch, steps, input_size) if config["batch_first"] else (steps, batch, input_size)
    x = torch.randn(shape, dtype=torch.float64, generator=rng, requires_grad=True)
    hx = tuple(t.requires_grad_() for t in _states(ours, batch, torch.float64, seed=draw))
    inp = x
    if pick(0, 1):
        lengths = torch.randint(1, steps + 1, (batch,), generator=rng)
        inp = pack_padded_sequence(x, lengths, batch_first=config["batch_first"],
                                   enforce_sorted=False)
    got, want = ours(inp, hx), theirs(inp, hx)
    out_got = got[0].data if isinstance(got[0], torch.nn.utils.rnn.PackedSequence) else got[0]
    out_want = want[0].data if isinstance(want[0], torch.nn.utils.rnn.PackedSequence) else want[0]
    assert_close_rel(out_got, out_want, torch.float64, f"output {config}")
    assert_close_rel(got[1][0], want[1][0], torch.float64, f"h_n {config}")
    assert_close_rel(got[1][1], want[1][1], torch.float64, f"c_n {config}")
    for k, (a, b) in enumerate(zip(_grads(ours, x, hx, got), _grads(theirs, x, hx, want))):
        assert_close_rel(a, b, torch.float64, f"grad {k} {config}")


def test_float64_module_under_cpu_autocast_stays_float64():
    """Autocast never touches float64 (torch's rule): pydl's float64 LSTM gives
    torch's float64 result under a bf16 autocast region."""
    torch.manual_seed(0)
    ours = pydl.nn.LSTM(5, 7, num_layers=2).double()
    theirs = torch.nn.LSTM(5, 7, num_layers=2).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), theirs(x)
    assert got[0].dtype == want[0].dtype == torch.float64
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
