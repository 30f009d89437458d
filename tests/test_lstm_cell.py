"""pydl LSTM cell (op and nn.LSTMCell) against the float64 reference and torch.nn.LSTMCell."""

import pytest
import torch
from conftest import assert_close_rel, assert_script_ok_on_isa, needs_extension

import pydl
from pydl import _backend, reference

# (batch, input_size, hidden): awkward sizes on purpose (vector tails, batch 1).
# Batches up to 8 take the CPU register kernels, above it MKL (the default
# PYDL_LSTM_CELL_SMALL_BATCH): both sides of the switch, 7 = 4 + 2 + 1 rows.
SHAPES = [(1, 1, 1), (3, 5, 7), (8, 16, 33), (9, 16, 33), (7, 20, 17), (2, 40, 64),
          (5, 3, 130), (12, 24, 20)]


def _params(i, h, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) * 0.5
    return r(4 * h, i), r(4 * h, h), (r(4 * h) if bias else None), (r(4 * h) if bias else None)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_grads_match_reference(shape, dtype, bias):
    b, i, h = shape
    w_ih, w_hh, b_ih, b_hh = _params(i, h, dtype, bias=bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, i, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(b, h, generator=g, dtype=torch.float64).to(dtype)
    c0 = torch.randn(b, h, generator=g, dtype=torch.float64).to(dtype)
    leaves = [t.requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh) if t is not None]
    hy, cy = pydl.ops.lstm_cell(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    d = lambda t: None if t is None else t.double()
    ry, rc = reference.lstm_cell(d(x), d(h0), d(c0), d(w_ih), d(w_hh), d(b_ih), d(b_hh))
    assert_close_rel(hy, ry, dtype, "h")
    assert_close_rel(cy, rc, dtype, "c")
    gh, gc = torch.randn_like(hy), torch.randn_like(cy)
    got = torch.autograd.grad((hy * gh).sum() + (cy * gc).sum(), leaves)
    want = torch.autograd.grad((ry * gh.double()).sum() + (rc * gc.double()).sum(), leaves)
    for k, (a, e) in enumerate(zip(got, want)):
        assert_close_rel(a, e, dtype, f"grad {k}")


def test_only_h_or_only_c_used():
    w_ih, w_hh, b_ih, b_hh = _params(4, 6, torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    for pick in (0, 1):
        out = pydl.ops.lstm_cell(x, None, w_ih, w_hh, b_ih, b_hh)[pick]
        (g,) = torch.autograd.grad(out.sum(), x)
        ref = reference.lstm_cell(x, None, None, w_ih, w_hh, b_ih, b_hh)[pick]
        (r,) = torch.autograd.grad(ref.sum(), x)
        assert_close_rel(g, r, torch.float64, f"output {pick}")


def test_gradcheck():
    w_ih, w_hh, b_ih, b_hh = _params(3, 4, torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        return pydl.ops.lstm_cell(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)

    assert torch.autograd.gradcheck(fn, args)


@needs_extension
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    w_ih, w_hh, b_ih, b_hh = _params(5, 7, torch.float64, bias=bias)
    x = torch.randn(3, 5, dtype=torch.float64)
    h0, c0 = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    args = [t.requires_grad_() if t is not None else None for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]
    torch.library.opcheck(torch.ops.pydl.lstm_cell.default, tuple(args))


def test_module_is_a_drop_in():
    torch.manual_seed(0)
    ours = pydl.nn.LSTMCell(6, 9, dtype=torch.float64)
    torch.manual_seed(0)
    theirs = torch.nn.LSTMCell(6, 9, dtype=torch.float64)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    x = torch.randn(4, 6, dtype=torch.float64)
    hx = (torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64))
    for args in ((x,), (x, hx), (x[0],), (x[0], (hx[0][0], hx[1][0]))):
        for a, b in zip(ours(*args), theirs(*args)):
            assert a.shape == b.shape
            assert_close_rel(a, b, torch.float64, "module")
    no_bias = pydl.nn.LSTMCell(6, 9, bias=False, dtype=torch.float64)
    ref = torch.nn.LSTMCell(6, 9, bias=False, dtype=torch.float64)
    ref.load_state_dict(no_bias.state_dict())
    for a, b in zip(no_bias(x, hx), ref(x, hx)):
        assert_close_rel(a, b, torch.float64, "no bias")


def test_python_step_loop_and_convert():
    model = torch.nn.Sequential(torch.nn.LSTMCell(4, 8))
    converted = pydl.convert(model)
    assert type(converted[0]) is pydl.nn.LSTMCell
    cell = converted[0]
    x = torch.randn(5, 3, 4)
    state = None
    for t in range(5):
        state = cell(x[t], state)
    torch_cell = torch.nn.LSTMCell(4, 8)
    torch_cell.load_state_dict(cell.state_dict())
    ref = None
    for t in range(5):
        ref = torch_cell(x[t], ref)
    assert_close_rel(state[0], ref[0], torch.float32, "loop h")
    back = pydl.convert(converted, to="torch")
    assert type(back[0]) is torch.nn.LSTMCell


def test_torch_compile_fullgraph():
    cell = pydl.nn.LSTMCell(4, 6, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(cell, backend="aot_eager", fullgraph=True)
    h, c = compiled(x)
    eh, _ = cell(x)
    assert_close_rel(h, eh, torch.float64, "compiled h")
    (h.sum() + c.sum()).backward()
    assert x.grad is not None


@needs_extension
def test_compiled_autograd_and_separate_bias_gradients():
    # Compiled autograd traces the C++ autograd node (it rejects
    # mark_non_differentiable, so the workspace is returned beside the node).
    from torch._dynamo import compiled_autograd

    torch.manual_seed(0)
    cell = pydl.nn.LSTMCell(4, 6, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)

    def grads():
        state = None
        for _ in range(3):
            state = cell(x, state)
        return torch.autograd.grad(state[0].sum(), [cell.weight_hh, cell.bias_ih, cell.bias_hh])

    want = grads()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        got = grads()
    for g, w, name in zip(got, want, ("weight_hh", "bias_ih", "bias_hh")):
        assert_close_rel(g, w, torch.float64, name)
    # b_ih and b_hh share the gradient's values, not its storage.
    assert want[1].data_ptr() != want[2].data_ptr()
    hy, _, workspace = torch.ops.pydl.lstm_cell(x, torch.zeros(3, 6, dtype=x.dtype),
                                                torch.zeros(3, 6, dtype=x.dtype), cell.weight_ih,
                                                cell.weight_hh, cell.bias_ih, cell.bias_hh)
    assert hy.requires_grad and not workspace.requires_grad


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (torch.randn(2, 5), torch.nn.LSTMCell(4, 3), None), "features|input"),
        (lambda: (torch.randn(2, 4), torch.nn.LSTMCell(4, 3),
                  (torch.randn(2, 2), torch.randn(2, 3))), "h0|shape|hidden"),
        (lambda: (torch.randn(2, 3, 4), torch.nn.LSTMCell(4, 3), None), "expected input of shape"),
    ],
)
def test_bad_input_gives_clear_errors(make, message):
    x, torch_cell, hx = make()
    cell = pydl.convert(torch_cell)
    with pytest.raises((ValueError, RuntimeError), match=f"(?i){message}"):
        cell(x, hx)


@needs_extension
def test_op_errors_come_from_cpp():
    w_ih, w_hh, b_ih, b_hh = _params(4, 3, torch.float32)
    x, h = torch.randn(2, 4), torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="w_hh must be"):
        torch.ops.pydl.lstm_cell(x, h, h, w_ih, w_ih, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="dtype and device"):
        torch.ops.pydl.lstm_cell(x, h.double(), h, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="cx must be"):
        torch.ops.pydl.lstm_cell(x, h, torch.randn(3, 3), w_ih, w_hh, b_ih, b_hh)


@pytest.mark.parametrize("give_b_ih", [True, False])
@pytest.mark.parametrize("wanted", [("x",), ("b_hh",), ("w_hh", "b_hh"), ("h0", "b_ih")])
def test_grads_of_a_subset_of_inputs(give_b_ih, wanted):
    """Only the asked-for gradients, each at its own input (an absent b_ih
    shifts b_hh's place in the C++ autograd's needs_input_grad)."""
    if "b_ih" in wanted and not give_b_ih:
        pytest.skip("b_ih absent")
    w_ih, w_hh, b_ih, b_hh = _params(5, 6, torch.float64)
    b_ih = b_ih if give_b_ih else None
    g = torch.Generator().manual_seed(2)
    x, h0, c0 = (torch.randn(3, n, generator=g, dtype=torch.float64) for n in (5, 6, 6))
    named = {"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
    leaves = [named[k].requires_grad_() for k in wanted]
    hy, cy = pydl.ops.lstm_cell(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    got = torch.autograd.grad((hy * 1.5).sum() + cy.sum(), leaves)
    ry, rc = reference.lstm_cell(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    want = torch.autograd.grad((ry * 1.5).sum() + rc.sum(), leaves)
    for name, a, e in zip(wanted, got, want):
        assert_close_rel(a, e, torch.float64, name)


# Batches above 8 through the register kernels (several row blocks: the
# weight gradient's accumulate path, the gates' 8 + 4 + ... row tiles), and
# small ones.
_WIDE_BATCH_SCRIPT = """
import torch, pydl
from pydl import reference
g = torch.Generator().manual_seed(0)
for b, i, h in ((12, 19, 20), (21, 16, 33), (64, 8, 16), (6, 5, 37), (1, 3, 17), (8, 0, 9)):
    for dtype in (torch.float32, torch.float64):
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
        ts = [r(b, i), r(b, h), r(b, h), r(4 * h, i) * 0.5, r(4 * h, h) * 0.5, r(4 * h), r(4 * h)]
        ours = [t.to(dtype).requires_grad_() for t in ts]
        refs = [t.clone().requires_grad_() for t in ts]
        hy, cy = pydl.ops.lstm_cell(ours[0], (ours[1], ours[2]), *ours[3:])
        ry, rc = reference.lstm_cell(*refs)
        gh, gc = r(b, h), r(b, h)
        got = torch.autograd.grad((hy * gh.to(dtype)).sum() + (cy * gc.to(dtype)).sum(), ours)
        want = torch.autograd.grad((ry * gh).sum() + (rc * gc).sum(), refs)
        tol = 2e-5 if dtype == torch.float32 else 1e-10
        for name, a, e in zip(["h", "c"] + [f"grad {k}" for k in range(7)],
                              [hy, cy, *got], [ry, rc, *want]):
            if e.numel() == 0:  # input size 0: an empty gradient
                assert a.shape == e.shape, (b, dtype, name)
                continue
            err = ((a.double() - e).norm() / e.norm()).item()
            assert err <= tol, (b, dtype, name, err)
print("ok")
"""


# Each per-ISA build (ATEN_CPU_CAPABILITY): AVX2 holds 4 rows per block
# (batch 5-8 takes two), AVX-512 8 and two column vectors per weight-gradient
# job; hidden sizes off the vector width; input size 0.
@needs_extension
@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_register_kernels_above_the_default_batch_limit(isa):
    assert_script_ok_on_isa(isa, _WIDE_BATCH_SCRIPT, PYDL_LSTM_CELL_SMALL_BATCH="64",
                            PYDL_STRICT="1")


@pytest.mark.parametrize("scale", [30.0, 1e4])
def test_saturated_gates_stay_finite_and_exact(scale):
    """Pre-activations far past exp's float range: the gates saturate to 0/1,
    no inf/inf or 0 * inf in the vectorized activations."""
    w_ih, w_hh, b_ih, b_hh = _params(8, 40, torch.float32)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 8, generator=g) * scale
    h0, c0 = torch.randn(3, 40, generator=g), torch.randn(3, 40, generator=g) * scale
    hy, cy = pydl.ops.lstm_cell(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    d = lambda t: t.double()
    ry, rc = reference.lstm_cell(d(x), d(h0), d(c0), d(w_ih), d(w_hh), d(b_ih), d(b_hh))
    assert torch.isfinite(hy).all() and torch.isfinite(cy).all()
    assert_close_rel(hy, ry, torch.float32, "h")
    assert_close_rel(cy, rc, torch.float32, "c")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("give_hx", [False, True])
def test_cpu_autocast_keeps_the_dtype_like_torch(dtype, give_hx):
    """CPU autocast has no lstm_cell rule: torch's cell returns the input's
    dtype (float32 stays float32, float64 float64), and so does pydl's, the
    call computed as without autocast (pydl's kernel in strict mode too)."""
    torch.manual_seed(0)
    ours = pydl.nn.LSTMCell(6, 9, dtype=dtype)
    theirs = torch.nn.LSTMCell(6, 9, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    hx = tuple(torch.randn(4, 9, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    args = (x, hx) if give_hx else (x,)
    want_exact = ours(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(*args), theirs(*args)
    kernel = _backend.explain("lstm", "cpu", dtype)[0] == _backend.PYDL
    for a, b, e, name in zip(got, want, want_exact, ("h", "c")):
        assert a.dtype == b.dtype == dtype, name
        if kernel:
            assert_close_rel(a, e, dtype, name)
        else:  # torch's cell, under autocast as torch runs it
            assert torch.equal(a, b), name
        # torch's float32 cell multiplies in bf16 under CPU autocast
        assert torch.allclose(a, b, atol=2e-2 if dtype == torch.float32 else 1e-12), name
    (grad,) = torch.autograd.grad(got[0].sum() + got[1].sum(), x)
    assert grad.dtype == dtype
