"""CUDA LSTM kernels (csrc/lstm/lstm_cuda.cu): pydl.nn.LSTM / LSTMCell on a GPU
against the float64 CPU reference and torch's cuDNN LSTM.

Run by scripts/gpu_check.sh with PYDL_EXPERIMENTAL_CUDA=1 (the kernels are
opt-in until verified). Tolerances: float64 1e-10 and float32 (TF32 off)
2e-5 relative (Frobenius norm); float16 / bfloat16: pydl's error against the
float64 reference at most twice torch's own (cuDNN's) plus 4e-3 (about one
bf16 rounding step).
"""

from __future__ import annotations

import pytest
import torch
from conftest import rel_error
from torch.nn.utils.rnn import pack_padded_sequence

import pydl
from pydl import _ext

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
    pytest.mark.skipif(not _ext.loaded() or not _ext.built_with_cuda(),
                       reason="pydl._C not loaded or built without CUDA"),
]

EXACT = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.fixture(autouse=True)
def _opt_in(monkeypatch):
    monkeypatch.setenv("PYDL_EXPERIMENTAL_CUDA", "1")
    monkeypatch.setenv("PYDL_STRICT", "1")
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _models(dtype, **kw):
    torch.manual_seed(0)
    exact = torch.nn.LSTM(dtype=torch.float64, **kw)
    ours = pydl.nn.LSTM(device="cuda", dtype=dtype, **kw)
    theirs = torch.nn.LSTM(device="cuda", dtype=dtype, **kw)
    ours.load_state_dict(exact.state_dict())
    theirs.load_state_dict(exact.state_dict())
    return ours, theirs, exact


def _check(got, want, exact, dtype, what):
    err = rel_error(got, exact)
    if dtype in EXACT:
        assert err <= EXACT[dtype], f"{what}: relative error {err:.2e}"
    else:
        torch_err = rel_error(want, exact)
        # + one bf16 rounding step (2^-8): the cuBLAS loop rounds the gate
        # pre-activations to the storage dtype each step, cuDNN may not.
        assert err <= 2 * torch_err + 4e-3, f"{what}: {err:.2e} vs torch's {torch_err:.2e}"


def _run(model, x, hx, packed_lengths=None):
    """(output, h_n, c_n) and the gradients of their sum w.r.t. x, hx and weights."""
    x = x.detach().requires_grad_()
    hx = tuple(t.detach().requires_grad_() for t in hx)
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, enforce_sorted=False)
    out, (h, c) = model(inp, hx)
    out = out.data if packed_lengths is not None else out
    loss = out.double().square().sum() + h.double().sum() + 2 * c.double().sum()
    grads = torch.autograd.grad(loss, [x, *hx, *model.parameters()])
    return [out, h, c, *grads]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(proj_size=24),
])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("persistent", ["1", "0"])
def test_lstm_matches_reference_and_cudnn(dtype, config, packed, persistent, monkeypatch):
    """Batch 6 takes the persistent kernel (no projection, not float64) unless
    PYDL_LSTM_PERSISTENT=0, which forces the cuBLAS + pointwise loop."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", persistent)
    ours, theirs, exact = _models(dtype, input_size=40, hidden_size=64, **config)
    T, B = 9, 6
    d = 2 if ours.bidirectional else 1
    out_size = ours.proj_size or ours.hidden_size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, 40, generator=g, dtype=torch.float64)
    h0 = torch.randn(ours.num_layers * d, B, out_size, generator=g, dtype=torch.float64)
    c0 = torch.randn(ours.num_layers * d, B, 64, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 5, 9, 1, 7]) if packed else None
    on_gpu = lambda t: t.to("cuda", dtype)
    got = _run(ours, on_gpu(x), (on_gpu(h0), on_gpu(c0)), lengths)
    want = _run(theirs, on_gpu(x), (on_gpu(h0), on_gpu(c0)), lengths)
    ref = _run(exact, x, (h0, c0), lengths)
    for k, (a, b, e) in enumerate(zip(got, want, ref)):
        _check(a.cpu(), b.cpu(), e, dtype, f"tensor {k}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_lstm_cell_matches_reference(dtype):
    torch.manual_seed(0)
    exact = torch.nn.LSTMCell(20, 33, dtype=torch.float64)
    ours = pydl.nn.LSTMCell(20, 33, device="cuda", dtype=dtype)
    theirs = torch.nn.LSTMCell(20, 33, device="cuda", dtype=dtype)
    ours.load_state_dict(exact.state_dict())
    theirs.load_state_dict(exact.state_dict())
    x = torch.randn(7, 20, dtype=torch.float64)
    hx = (torch.randn(7, 33, dtype=torch.float64), torch.randn(7, 33, dtype=torch.float64))

    def run(cell, device, dt):
        xi = x.to(device, dt).requires_grad_()
        hi = tuple(t.to(device, dt).requires_grad_() for t in hx)
        h, c = cell(xi, hi)
        grads = torch.autograd.grad(h.double().sum() + 3 * c.double().sum(),
                                    [xi, *hi, *cell.parameters()])
        return [h, c, *grads]

    for k, (a, b, e) in enumerate(zip(run(ours, "cuda", dtype), run(theirs, "cuda", dtype),
                                       run(exact, "cpu", torch.float64))):
        _check(a.cpu(), b.cpu(), e, dtype, f"tensor {k}")


# Across the persistent kernels' limits (on a 132-SM H100/H200; at most 8
# hidden units per block, their weights in registers): one row; a hidden
# size that does not divide over the SMs (units per block 8, a last block
# with 1); 16 rows at H 1000 (the forward's 64 KB of shared memory, above
# 48 KB); H 1001 (8 units per block, 16 k per lane); too large (H 1500: 12
# units per block, the cuBLAS loop); and just above its batch limit (33
# rows: the cuBLAS loop). Forward and backward, both directions.
@pytest.mark.parametrize("batch, hidden", [(1, 256), (16, 130), (3, 640), (16, 1000), (2, 1001),
                                           (2, 1500), (33, 96)])
def test_persistent_sizes_match_reference(batch, hidden):
    ours, _, exact = _models(torch.float32, input_size=16, hidden_size=hidden, bidirectional=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, batch, 16, dtype=torch.float64, generator=g)
    got = _run(ours, x.float().cuda(), tuple(torch.zeros(2, batch, hidden, device="cuda")
                                             for _ in range(2)))
    want = _run(exact, x, tuple(torch.zeros(2, batch, hidden, dtype=torch.float64)
                                for _ in range(2)))
    for k, (a, e) in enumerate(zip(got, want)):
        assert rel_error(a.cpu(), e) <= 2e-5, f"tensor {k}"


def _packed_inputs(T, batch, input_size, hidden, seed):
    """float64 x (T, batch, input_size), h0 / c0 for two directions, and
    lengths in [1, T] (the first T) for pack_padded_sequence."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, batch, input_size, dtype=torch.float64, generator=g)
    h0 = torch.randn(2, batch, hidden, dtype=torch.float64, generator=g)
    c0 = torch.randn(2, batch, hidden, dtype=torch.float64, generator=g)
    lengths = torch.randint(1, T + 1, (batch,), generator=g)
    lengths[0] = T
    return x, h0, c0, lengths


def _kernels_run(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.key for e in prof.key_averages()]


@pytest.mark.parametrize("batch, hidden, expected", [(3, 64, True), (3, 1001, True),
                                                     (16, 1000, True), (3, 1500, False)])
def test_persistent_kernel_actually_runs(batch, hidden, expected, monkeypatch):
    """The persistent kernels (forward, and backward in training) fall back
    to the cuBLAS loop quietly when they cannot launch; the tests above would
    pass either way, so check by name which kernel ran (H=1001: 8 units per
    block, the most; 16 rows at H=1000: 64 KB of shared memory; H=1500 does
    not fit)."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1")
    ours, _, _ = _models(torch.float32, input_size=16, hidden_size=hidden)
    x = torch.randn(5, batch, 16, device="cuda")
    with torch.no_grad():
        names = _kernels_run(lambda: ours(x))
    ran = any("persistent_forward_kernel" in n for n in names)
    assert ran == expected, names
    x.requires_grad_()
    names = _kernels_run(lambda: ours(x)[0].sum().backward())
    ran = any("persistent_backward_kernel" in n for n in names)
    assert ran == expected, names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch, hidden", [(1, 64), (8, 64), (3, 40), (5, 1)])
def test_single_block_forward(dtype, batch, hidden, monkeypatch):
    """PYDL_LSTM_SINGLE_BLOCK=1 (opt-in until this passes on a GPU): the
    forward of hidden <= 64, batch <= 8 in one block, h in shared memory;
    the persistent backward after it. By name, it ran (forward and, in
    training, the multi-block backward); packed, bidirectional, against the
    float64 reference."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1")
    monkeypatch.setenv("PYDL_LSTM_SINGLE_BLOCK", "1")
    ours, theirs, exact = _models(dtype, input_size=16, hidden_size=hidden, bidirectional=True)
    x, h0, c0, lengths = _packed_inputs(9, batch, 16, hidden, seed=4)
    got = []
    cast = lambda t: t.to("cuda", dtype)  # noqa: E731
    names = _kernels_run(lambda: got.extend(_run(ours, cast(x), (cast(h0), cast(c0)), lengths)))
    assert any("single_block_forward_kernel" in n for n in names), names
    assert not any("persistent_forward_kernel" in n for n in names), names
    assert any("persistent_backward_kernel" in n for n in names), names
    want = _run(theirs, cast(x), (cast(h0), cast(c0)), lengths)
    exact_results = _run(exact, x, (h0, c0), lengths)
    for k, (a, w, e) in enumerate(zip(got, want, exact_results)):
        _check(a.cpu().double(), w.cpu().double(), e, dtype, f"tensor {k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch, hidden", [(1, 64), (3, 40), (8, 256), (16, 512)])
def test_tagged_exchange(dtype, batch, hidden, monkeypatch):
    """PYDL_LSTM_TAGGED_EXCHANGE=1 (opt-in until this passes on a GPU): the
    persistent kernels hand h and the dh shares to each other as (value,
    step) words with no grid barrier per step. By name, the tagged forward
    and backward ran (16 x 512: 32 words of h per thread to gather, 16 at a
    time); packed, bidirectional, against the float64 reference, torch's
    LSTM and the grid-barrier kernels (the same floats added in the same
    order)."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1")
    monkeypatch.delenv("PYDL_LSTM_SINGLE_BLOCK", raising=False)
    ours, theirs, exact = _models(dtype, input_size=16, hidden_size=hidden, bidirectional=True)
    x, h0, c0, lengths = _packed_inputs(9, batch, 16, hidden, seed=5)
    cast = lambda t: t.to("cuda", dtype)  # noqa: E731
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("PYDL_LSTM_TAGGED_EXCHANGE", mode)
        got = []
        names = _kernels_run(
            lambda: got.extend(_run(ours, cast(x), (cast(h0), cast(c0)), lengths)))
        tagged = [n for n in names if "persistent_" in n and "_kernel<" in n and "true>" in n]
        assert len(tagged) == (2 if mode == "1" else 0), names  # forward and backward
        results[mode] = got
    want = _run(theirs, cast(x), (cast(h0), cast(c0)), lengths)
    exact_results = _run(exact, x, (h0, c0), lengths)
    for k, (a, g, w, e) in enumerate(zip(results["1"], results["0"], want, exact_results)):
        _check(a.cpu().double(), w.cpu().double(), e, dtype, f"tensor {k}")
        # (Bitwise on the emulator; here a compiler may contract differently.)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert rel_error(a.cpu().double(), g.cpu().double()) <= tol, f"tensor {k}: vs the grid"


@pytest.mark.parametrize("batch, hidden", [(64, 256), (48, 512)])
def test_persistent_kernel_past_its_default_batch(batch, hidden, monkeypatch):
    """PYDL_LSTM_PERSISTENT_MAX_BATCH lets the persistent kernels take more
    than 32 rows per step (the LSTM benchmarks' "pydl persistent" A/B): they
    must run (forward and backward, by name) and match the reference on a
    packed bidirectional batch (64 x 256 and 48 x 512 floats of h: 64 and
    96 KB of the forward's shared memory)."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1")
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT_MAX_BATCH", str(batch))
    ours, _, exact = _models(torch.float32, input_size=16, hidden_size=hidden, bidirectional=True)
    x, h0, c0, lengths = _packed_inputs(7, batch, 16, hidden, seed=3)
    got = []
    names = _kernels_run(lambda: got.extend(
        _run(ours, x.float().cuda(), (h0.float().cuda(), c0.float().cuda()), lengths)))
    assert any("persistent_forward_kernel" in n for n in names), names
    assert any("persistent_backward_kernel" in n for n in names), names
    want = _run(exact, x, (h0, c0), lengths)
    for k, (a, e) in enumerate(zip(got, want)):
        assert rel_error(a.cpu(), e) <= 2e-5, f"tensor {k}"


def test_layer_op_gradcheck_float64_packed():
    """The cuBLAS loop (float64 never takes the persistent kernel) with more hx
    rows than batch_sizes[0], a trailing empty step, reverse and a projection."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).cuda().requires_grad_()
    bs = torch.tensor([3, 2, 2, 0])
    for reverse, proj in ((False, None), (True, r(2, 4))):
        out = proj.shape[0] if proj is not None else 4
        tensors = [r(7, 3), r(5, out), r(5, 4), r(16, 3), r(16, out), r(16), r(16)]

        def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=proj):
            return torch.ops.pydl.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                             reverse)[:3]

        assert torch.autograd.gradcheck(fn, tensors)


def test_runs_on_the_current_stream():
    """Work queued behind a long sleep on a side stream: pydl's kernels must wait
    for it (they run on the current stream), so the result is only right if
    nothing ran on the default stream."""
    ours, _, exact = _models(torch.float32, input_size=8, hidden_size=16)
    x_cpu = torch.randn(5, 3, 8)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy
        # From pinned memory the copy is truly queued behind the sleep (from
        # pageable memory the host would wait for the side stream first).
        x = x_cpu.pin_memory().cuda(non_blocking=True)
        out, (h, c) = ours(x)
        loss = out.sum() + h.sum()
        loss.backward()
    stream.synchronize()
    want, _ = exact(x_cpu.double())
    assert rel_error(out.cpu(), want) <= 2e-5
    assert ours.weight_hh_l0.grad is not None


def test_cuda_graph_capture_and_replay():
    """A captured small-batch forward replays right with new input: under
    capture the layer takes the cuBLAS loop (the persistent kernel's step
    table would be copied from a pinned buffer freed after capture)."""
    ours, _, exact = _models(torch.float32, input_size=8, hidden_size=32)
    static_x = torch.randn(6, 2, 8, device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch advises
            ours(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, _ = ours(static_x)
        for seed in (1, 2):
            x = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(seed))
            static_x.copy_(x)
            graph.replay()
            torch.cuda.synchronize()
            want, _ = exact(x.double())
            assert rel_error(static_out.cpu(), want) <= 2e-5, f"replay {seed}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_cell_under_autocast_casts_like_torch(dtype):
    """CUDA autocast casts lstm_cell's floating tensors but float64 to the
    autocast dtype (torch's lower-precision rule): float32 cells return
    float16, float64 cells stay float64, as torch's."""
    torch.manual_seed(0)
    ours = pydl.nn.LSTMCell(20, 33, device="cuda", dtype=dtype)
    theirs = torch.nn.LSTMCell(20, 33, device="cuda", dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(7, 20, device="cuda", dtype=dtype)
    hx = tuple(torch.randn(7, 33, device="cuda", dtype=dtype) for _ in range(2))
    for args in ((x,), (x, hx)):
        with torch.autocast("cuda", dtype=torch.float16):
            got, want = ours(*args), theirs(*args)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype == (torch.float16 if dtype == torch.float32 else dtype)
            assert torch.allclose(a.double(), b.double(), atol=1e-2 if dtype == torch.float32
                                  else 1e-10)


@pytest.mark.parametrize("dtype, input_size, hidden, batch, packed, pydl_runs", [
    (torch.bfloat16, 16, 64, 8, False, True),
    (torch.bfloat16, 16, 64, 16, False, True),
    (torch.bfloat16, 16, 64, 17, False, False),
    (torch.float32, 16, 64, 8, False, False),     # cuDNN's small-hidden persistent algorithm
    (torch.float32, 16, 256, 8, False, True),
    (torch.float16, 128, 256, 8, False, False),   # cuDNN's fp16 persistent algorithm
    (torch.float16, 128, 256, 1, False, True),
    (torch.bfloat16, 16, 256, 32, True, True),    # packed: up to 32 rows at hidden <= 256
    (torch.bfloat16, 16, 256, 33, True, False),
])
def test_default_routing_without_opt_in(dtype, input_size, hidden, batch, packed, pydl_runs,
                                        monkeypatch):
    """Without PYDL_EXPERIMENTAL_CUDA, pydl.nn.LSTM runs pydl's persistent
    kernel where it beat cuDNN (batch <= 16, packed <= 32 at hidden <= 256,
    not where torch runs cuDNN's persistent algorithms) and torch's elsewhere
    (pydl/nn/rnn.py); LSTMCell runs torch's cell (pydl/ops/lstm.py)."""
    monkeypatch.delenv("PYDL_EXPERIMENTAL_CUDA")
    monkeypatch.delenv("PYDL_STRICT")
    props = torch.cuda.get_device_properties(0)
    if dtype == torch.float16 and hidden > 192 and not (
            props.major >= 8 and props.multi_processor_count >= 98 and props.minor != 6):
        pydl_runs = True  # torch runs no cuDNN persistent algorithm on this card
    ours = pydl.nn.LSTM(input_size, hidden).cuda().to(dtype)
    x = torch.randn(5, batch, input_size, device="cuda", dtype=dtype)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [5] + [3] * (batch - 1))
    with torch.no_grad():
        names = _kernels_run(lambda: ours(x))
    if pydl_runs:
        assert any("persistent_forward_kernel" in n for n in names), names
    else:
        assert not any("pydl" in n for n in names), names
    cell = pydl.nn.LSTMCell(16, 64).cuda()
    with torch.no_grad():
        names = _kernels_run(lambda: cell(torch.randn(batch, 16, device="cuda")))
    assert not any("pydl" in n for n in names), names
