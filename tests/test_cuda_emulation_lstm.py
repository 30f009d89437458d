"""pydl's CUDA LSTM code (csrc/lstm/lstm_cuda.cu: the cell, the cuBLAS-loop
layer and its backward, the persistent cooperative kernel) run on the CPU
emulator of the CUDA execution model (see test_cuda_emulation_attention.py
for what that proves and what it does not), against pydl's CPU kernels in
float64 (themselves checked against torch.nn.LSTM and the reference).
"""

from __future__ import annotations

import collections

import emulated_cuda
import pytest
import torch
from conftest import rel_error

from pydl import _ext

pytestmark = [
    *emulated_cuda.pytest_marks(),
    pytest.mark.skipif(not _ext.loaded(), reason="compares with pydl's CPU kernels"),
]

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Relative error against the float64 CPU kernel. Half types: a few storage
# roundings per step (the states and gates are stored in the dtype).
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 4e-2}


@pytest.fixture(scope="module")
def emu():
    with emulated_cuda.emulated_device():
        yield emulated_cuda.ops()


def _layer_args(T, B, I, H, lengths=None, reverse=False, proj=0, seed=1):
    """float64 lstm_layer arguments: packed rows (N, I), batch_sizes, states, weights."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.5
    lengths = lengths or [T] * B
    batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(max(lengths))])
    P = proj or H
    rows = int(batch_sizes.sum())
    return [r(rows, I), batch_sizes, r(B, P), r(B, H), r(4 * H, I), r(4 * H, P), r(4 * H),
            r(4 * H), r(P, H) if proj else None, reverse]


def _cast(args, dtype):
    return [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]


def _forward_backward(ops, args, seed=3):
    """lstm_layer's (output, hy, cy) and lstm_layer_backward's gradients, and
    how many kernels the forward and the backward launched (emulated ops only)."""
    count = ops.launch_count if hasattr(ops, "launch_count") else (lambda: 0)
    before = count()
    out = ops.lstm_layer(*args)
    forward_launches = count() - before
    output, hy, cy, gates, cells, hidden_pre = out
    g = torch.Generator().manual_seed(seed)
    grads_in = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
                for t in (output, hy, cy)]
    x, batch_sizes, hx, cx, w_ih, w_hh, _, _, w_hr, reverse = args
    mask = [True, True, True, True, True, True, w_hr is not None]
    before = count()
    grads = ops.lstm_layer_backward(*grads_in, x, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
                                    gates, cells, hidden_pre, reverse, mask)
    backward_launches = count() - before
    names = ["output", "hy", "cy", "d_input", "d_hx", "d_cx", "d_w_ih", "d_w_hh", "d_bias",
             "d_w_hr"]
    return dict(zip(names, [output, hy, cy, *grads])), (forward_launches, backward_launches)


def _compare(emu, args, dtype, persistent, monkeypatch):
    """persistent: True (grid barrier per step), "tagged" (the tagged
    exchange, PYDL_LSTM_TAGGED_EXCHANGE=1) or False (the cuBLAS loop)."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1" if persistent else "0")
    monkeypatch.setenv("PYDL_LSTM_TAGGED_EXCHANGE", "1" if persistent == "tagged" else "0")
    want, _ = _forward_backward(torch.ops.pydl, args)
    got, launches = _forward_backward(emu, _cast(args, dtype))
    for name, w in want.items():
        a = got[name]
        if w is None:  # not asked for (d_w_hr without a projection)
            assert a is None, name
            continue
        assert a.shape == w.shape, f"{name}: shape {tuple(a.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(a).all(), f"{name}: NaN/inf"
        err = rel_error(a, w)
        assert err <= TOL[dtype], f"{name} ({dtype}): relative error {err:.2e} > {TOL[dtype]:.1e}"
    return launches


# (T, B, I, H, lengths, reverse, proj)
LAYER_CASES = [
    (5, 3, 16, 64, None, False, 0),
    (6, 4, 8, 33, [6, 3, 3, 1], True, 0),  # packed, uneven, reversed
    (7, 5, 8, 40, [2, 7, 5, 7, 1], False, 0),  # unsorted lengths
    (4, 2, 8, 24, None, True, 12),  # proj_size: the cuBLAS loop only
    (3, 1, 4, 130, None, False, 0),
    (6, 4, 8, 24, [6, 4, 4, 2], True, 12),  # proj_size on a packed, reversed batch
    # hx rows past batch_sizes[0] (no step runs them: hy / cy keep hx / cx),
    # both directions
    (4, 5, 8, 24, [4, 2, 0, 0, 0], False, 0),
    (4, 5, 8, 24, [4, 4, 1, 0, 0], True, 0),
]


def _layer_id(case):
    T, B, I, H, lengths, reverse, proj = case
    return f"T{T}_B{B}_I{I}_H{H}_{'packed' if lengths else 'padded'}_rev{int(reverse)}_p{proj}"


# The emulated device's SMs (emulated_cuda's default): the persistent kernels
# hold at most 8 hidden units per block, so they serve H <= 8 x SMs.
SMS = 8


@pytest.mark.parametrize("persistent", [True, "tagged", False],
                         ids=["persistent", "tagged", "cublas_loop"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LAYER_CASES, ids=_layer_id)
def test_layer_forward_and_backward(emu, case, dtype, persistent, monkeypatch):
    T, B, I, H, lengths, reverse, proj = case
    barriers = emu.grid_barrier_count()
    launches = _compare(emu, _layer_args(T, B, I, H, lengths, reverse, proj), dtype, persistent,
                        monkeypatch)
    barriers = emu.grid_barrier_count() - barriers
    # The persistent kernels run the forward and the backward in one launch
    # each (float64, proj_size and H above 8 units per SM never take them);
    # the cuBLAS loop launches one pointwise kernel per step each way.
    takes_persistent = persistent and dtype != torch.float64 and not proj and H <= 8 * SMS
    steps = max(lengths or [T])
    assert launches == ((1, 1) if takes_persistent else (steps, steps))
    # A grid barrier per step each way; with the tagged exchange one per
    # launch (after zeroing the words), none in the steps.
    if takes_persistent:
        assert barriers == (2 if persistent == "tagged" else 2 * steps), f"{barriers} barriers"


# (SMs, B, H, whether the persistent kernels run). Units per block U =
# ceil(H / SMs) sets how the warps share the work: U 1, 2 (one group of
# units, k in 8 slices), 3 (two groups, a short one), 5 with a short last
# block, 8 (four groups, k in 2 slices); with 32 and 64 SMs a lane holds
# several k (forward 4 and 8 per lane, backward 1 and 2, the last slice
# short at H 500); 32 rows (the batch limit: 8 passes of 4 rows); 16 rows at
# H 768 with 52 KB of shared memory for the forward (above the 48 KB that
# needs the kernel's attribute raised); and sizes that do not fit: 50 units
# per block (H 400 on 8 SMs) and 33 rows.
@pytest.mark.parametrize("persistent", [True, "tagged"], ids=["persistent", "tagged"])
@pytest.mark.parametrize("sms, B, H, persistent_runs", [
    (8, 3, 7, True), (8, 2, 13, True), (8, 5, 20, True), (8, 2, 33, True), (8, 32, 64, True),
    (32, 3, 256, True), (64, 2, 500, True), (96, 16, 768, True), (8, 2, 400, False),
    (8, 33, 40, False)])
def test_persistent_kernel_sizes(emu, sms, B, H, persistent_runs, persistent, monkeypatch):
    """Also with the tagged exchange, its blocks each run as far ahead as they
    can (block_greedy): there each thread gathers h 16 words at a time (B 32 x
    H 64: 8 words; B 16 x H 768: 48, in 3 passes) and sums up to 4 blocks'
    shares at a time (63 blocks of 8 units at H 500: 2 per thread; 96 at H
    768: 3)."""
    args = _layer_args(3, B, 8, H, lengths=[3] + [2] * (B - 1))
    barriers = emu.grid_barrier_count()
    with emulated_cuda.emulated_device(sm_count=sms, block_greedy=persistent == "tagged"):
        launches = _compare(emu, args, torch.float32, persistent, monkeypatch)
    barriers = emu.grid_barrier_count() - barriers
    assert launches == ((1, 1) if persistent_runs else (3, 3)), f"{launches} launches"
    if persistent_runs:
        assert barriers == (2 if persistent == "tagged" else 6), f"{barriers} grid barriers"


# (PYDL_LSTM_PERSISTENT_UNITS, H, blocks per launch) on 8 SMs: by default
# ceil(H / 8) units per block (H 20: 3 units, 7 blocks; H 13: 2, 7; H 64: 8, 8).
@pytest.mark.parametrize("units, H, blocks", [("8", 20, 3), ("3", 13, 5), ("5", 20, 4),
                                              ("2", 64, 8), ("9", 20, 7), ("x", 20, 7)])
def test_persistent_units_switch(emu, units, H, blocks, monkeypatch):
    """PYDL_LSTM_PERSISTENT_UNITS=N (the grid A/B) gives each block at least N
    hidden units, so fewer blocks than SMs run (H 20 with 8: blocks of 8, 8
    and 4 units); never fewer units than the default. Still one launch each
    way, and the reference's numbers. Values outside 1-8 leave the default."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT_UNITS", units)
    args = _layer_args(3, 4, 8, H, lengths=[3, 2, 2, 1])
    before = emu.block_count()
    with emulated_cuda.emulated_device(sm_count=8):
        launches = _compare(emu, args, torch.float32, True, monkeypatch)
    assert launches == (1, 1), f"{launches} launches"
    assert emu.block_count() - before == 2 * blocks, "blocks of the forward and backward launches"


# The single-block forward (PYDL_LSTM_SINGLE_BLOCK=1): hidden <= 64, batch
# <= 8 (the layer cases within those, all dtypes) in one block, the backward
# the persistent kernel's as before.
SINGLE_BLOCK_CASES = [c for c in LAYER_CASES if c[3] <= 64 and c[1] <= 8 and not c[6]] + [
    (5, 8, 8, 64, [5, 5, 4, 3, 3, 2, 1, 1], False, 0),  # 8 rows ending at different steps
    (4, 3, 8, 2, None, True, 0),  # two units: warp 0 alone (H 1 would be one block either way)
    (6, 2, 8, 57, [2, 6], True, 0),  # reversed: a row starting at a later step
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SINGLE_BLOCK_CASES, ids=_layer_id)
def test_single_block_forward(emu, case, dtype, monkeypatch):
    """The forward in one block of 8 warps (8 units each, h in shared memory,
    a __syncthreads per step), against the float64 CPU kernel, its outputs
    (gates, cells) feeding the multi-block backward. One launch each way;
    the forward's is one block (the multi-block one launches ceil(H / units))."""
    T, B, I, H, lengths, reverse, proj = case
    monkeypatch.setenv("PYDL_LSTM_SINGLE_BLOCK", "1")
    before = emu.block_count()
    launches = _compare(emu, _layer_args(T, B, I, H, lengths, reverse, proj), dtype, True,
                        monkeypatch)
    assert launches == (1, 1), f"{launches} launches"
    backward_blocks = -(-H // -(-H // SMS))  # the multi-block plan: ceil(H / ceil(H / SMs))
    assert emu.block_count() - before == 1 + backward_blocks, "one block forward"


@pytest.mark.parametrize("sms, B, H", [(8, 9, 40), (16, 4, 65)])
def test_single_block_forward_leaves_larger_layers_to_the_grid(emu, sms, B, H, monkeypatch):
    """Past 8 rows or 64 units the switch changes nothing: the multi-block
    kernel runs (its usual block count), with the same results."""
    monkeypatch.setenv("PYDL_LSTM_SINGLE_BLOCK", "1")
    args = _layer_args(3, B, 8, H, lengths=[3] + [2] * (B - 1))
    before = emu.block_count()
    with emulated_cuda.emulated_device(sm_count=sms):
        launches = _compare(emu, args, torch.float32, True, monkeypatch)
    assert launches == (1, 1), f"{launches} launches"
    blocks = -(-H // -(-H // sms))
    assert emu.block_count() - before == 2 * blocks


@pytest.mark.parametrize("limit, B, persistent_runs", [("64", 64, True), ("8", 9, False),
                                                       ("8", 8, True)])
def test_persistent_batch_limit_switch(emu, limit, B, persistent_runs, monkeypatch):
    """PYDL_LSTM_PERSISTENT_MAX_BATCH moves the persistent kernels' batch
    limit (32 by default), read per call, for the A/B against the cuBLAS
    loop: batch 64 runs them and matches, batch 9 over a limit of 8 does not."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT_MAX_BATCH", limit)
    args = _layer_args(3, B, 8, 40, lengths=[3] + [2] * (B - 1))
    launches = _compare(emu, args, torch.float32, True, monkeypatch)
    assert launches == ((1, 1) if persistent_runs else (3, 3)), f"{launches} launches"


@pytest.mark.parametrize("limit", ["", "many", "-1", "16x"])
def test_persistent_batch_limit_switch_rejects_bad_values(emu, limit, monkeypatch):
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1")
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT_MAX_BATCH", limit)
    args = _cast(_layer_args(2, 2, 4, 8), torch.float32)
    with pytest.raises(RuntimeError, match="PYDL_LSTM_PERSISTENT_MAX_BATCH must be a count"):
        emu.lstm_layer(*args)


def test_persistent_kernels_plan_for_the_largest_step_not_hx(emu, monkeypatch):
    """hx / cx may have more rows than the first step (batch_sizes[0]): the
    extra rows never run and keep their state. The kernels plan shared memory
    and scratch for the steps' rows: 2 rows of H 64 with an hx of 2000 rows
    (as many rows of shared memory, 500+ KB, would not fit) still take them."""
    args = _layer_args(3, 2000, 8, 64, lengths=[3, 2] + [0] * 1998)
    assert int(args[1][0]) == 2 and args[2].shape[0] == 2000
    launches = _compare(emu, args, torch.float32, True, monkeypatch)
    assert launches == (1, 1), f"{launches} launches"


@pytest.mark.parametrize("persistent", [True, False, "single_block", "tagged"],
                         ids=["persistent", "cublas_loop", "single_block", "tagged"])
def test_results_do_not_depend_on_thread_order(emu, persistent, monkeypatch):
    """The persistent kernels' blocks share h (forward) and the gate gradients
    (backward) through global memory between grid barriers (the single-block
    forward: its warps through shared memory between __syncthreads; the
    tagged exchange: as tagged words, a block a step ahead of another at
    most): run the threads (and blocks) in other orders, no result may move
    by a bit."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1" if persistent else "0")
    monkeypatch.setenv("PYDL_LSTM_SINGLE_BLOCK", "1" if persistent == "single_block" else "0")
    monkeypatch.setenv("PYDL_LSTM_TAGGED_EXCHANGE", "1" if persistent == "tagged" else "0")
    args = _cast(_layer_args(6, 3, 8, 50, [6, 4, 2]), torch.float32)
    if persistent == "tagged":  # 2 words of h per thread to gather (8 x 64 over 256 threads)
        args = _cast(_layer_args(5, 8, 8, 64, [5, 5, 4, 4, 3, 2, 2, 1]), torch.float32)
    results = []
    # Threads in lockstep or warp by warp, blocks in lockstep or each as far
    # ahead as it can get (block_greedy: a block that overwrote a value
    # another had yet to read would leave it waiting or wrong), each order
    # forward and reversed.
    orders = [{}, {"warp_greedy": True}, {"warp_greedy": True, "reverse": True},
              {"reverse": True}, {"block_greedy": True}, {"block_greedy": True, "reverse": True}]
    for order in orders:
        before, barriers = emu.block_count(), emu.grid_barrier_count()
        with emulated_cuda.emulated_device(**order):
            results.append(_forward_backward(emu, args)[0])
        if persistent == "single_block":  # one forward block (the grid's: 8), the backward's 8
            assert emu.block_count() - before == 1 + 8
        if persistent == "tagged":  # one grid barrier per launch, none per step
            assert emu.grid_barrier_count() - barriers == 2
    # Bit for bit where only kernels computed the value; the CPU GEMMs that
    # stand in for cuBLAS (the loop's steps, the weight and input gradients)
    # may round differently with the guarded buffers' other alignment.
    from_kernels = {"output", "hy", "cy", "d_hx", "d_cx"} if persistent else set()
    for other in results[1:]:
        for name, a in other.items():
            b = results[0][name]
            if a is None or b is None:
                assert a is None and b is None, name
            elif name in from_kernels:
                assert torch.equal(a, b), name
            else:
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tagged_exchange_matches_the_grid_barrier_kernels_bit_for_bit(emu, dtype, monkeypatch):
    """The tagged exchange moves the same floats between the blocks, and each
    block adds them in the same order: every result the kernels compute is
    the grid-barrier kernels' to the bit (packed, 7 blocks of 3 units)."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "1")
    args = _cast(_layer_args(5, 4, 8, 20, [5, 4, 4, 2]), dtype)
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("PYDL_LSTM_TAGGED_EXCHANGE", mode)
        barriers = emu.grid_barrier_count()
        results[mode] = _forward_backward(emu, args)[0]
        barriers = emu.grid_barrier_count() - barriers
        assert barriers == (2 if mode == "1" else 10), f"{barriers} grid barriers"
    for name in ("output", "hy", "cy", "d_hx", "d_cx"):
        assert torch.equal(results["0"][name], results["1"][name]), name


def _aten_calls(fn):
    """How often each ATen op ran on the host inside fn."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter(e.name for e in prof.events())


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_cublas_loop_issues_no_copies_per_step(emu, packed, reverse, monkeypatch):
    """On a GPU the cuBLAS loop at batch 64 is bound by host time per ATen
    call, not by the GPU. Per step it may issue the recurrent GEMM (two where
    a reversed packed step starts sequences) and the pointwise kernel each
    way, and copies only per change of length (the final states, the
    previous h for w_hh's gradient): the op counts of the same batch over 4
    and 12 steps differ by the GEMMs of the 8 extra steps alone. The same
    code runs on the GPU (at::addmm_ / mm_out there call cuBLAS)."""
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "0")

    def calls(T):
        lengths = [T, T, T - 1, 2, 2, 1] if packed else None
        args = _cast(_layer_args(T, 6, 8, 16, lengths, reverse), torch.float32)
        return _aten_calls(lambda: _forward_backward(emu, args))

    short, long = calls(4), calls(12)
    extra = {name: long[name] - short[name] for name in set(long) | set(short)
             if long[name] != short[name]}
    gemms = sum(extra.pop(name, 0) for name in ("aten::addmm_", "aten::mm"))
    # forward + backward: one GEMM per extra step each way
    assert gemms == 2 * 8, extra
    assert extra.get("aten::copy_", 0) == 0, extra
    heavy = {name: n for name, n in extra.items()
             if name not in ("aten::narrow", "aten::slice", "aten::as_strided", "aten::t",
                             "aten::transpose", "aten::empty", "aten::resize_",
                             "aten::resolve_conj")}  # views and what the GEMMs do inside
    assert not heavy, heavy


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cell_forward_and_backward(emu, dtype):
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.5
    B, I, H = 5, 12, 37
    x, hx, cx = r(B, I), r(B, H), r(B, H)
    w_ih, w_hh, b_ih, b_hh = r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H)
    args = [x, hx, cx, w_ih, w_hh, b_ih, b_hh]

    def run(ops, a):
        hy, cy, workspace = ops.lstm_cell(*a)
        grad_hy = torch.ones_like(hy) * 0.3
        grad_cy = torch.full_like(cy, -0.2)
        grads = ops.lstm_cell_backward(grad_hy, grad_cy, *a[:3], cy, workspace, *a[3:5],
                                       [True] * 6)
        return [hy, cy, *grads]

    want = run(torch.ops.pydl, args)
    got = run(emu, _cast(args, dtype))
    for k, (a, w) in enumerate(zip(got, want)):
        assert rel_error(a, w) <= TOL[dtype], f"tensor {k} ({dtype})"


@pytest.mark.parametrize("name", ["lstm_cell", "lstm_cell_backward", "lstm_layer",
                                  "lstm_layer_backward", "attention", "attention_backward",
                                  "attention_dropout_keep"])
def test_emulated_ops_mirror_pydls_schemas(emu, name):
    """The emulated ops take pydl's schemas (both from csrc/op_schemas.h): they must not drift apart."""
    ours = getattr(torch.ops.pydl, name).default._schema
    emulated = getattr(torch.ops.pydl_emulated, name).default._schema
    assert [(a.name, str(a.type)) for a in ours.arguments] == \
        [(a.name, str(a.type)) for a in emulated.arguments]
    assert [str(r.type) for r in ours.returns] == [str(r.type) for r in emulated.returns]
