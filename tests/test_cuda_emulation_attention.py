"""pydl's CUDA attention code run on the CPU emulator of the CUDA execution
model (tests/emulated_cuda.py, tests/cuda_emulation/): the CUDA entry's host
code and every kernel (CUDA-core float16 / bfloat16 / float32 / float64,
tensor-core forward and backward with emulated cp.async, ldmatrix and mma),
compared with the float64 reference and with the CPU kernels.

What this proves and what it does not: the kernels' indexing, tiling,
masking, online softmax, dropout hashing, fragment layouts and barriers are
right as the CUDA programming model defines them (the emulator reports
barrier misuse, reads of shared memory nothing wrote come out NaN, a result
that changes with the thread order is a race). It says nothing about speed,
the memory model between blocks, or compiler behaviour; the `gpu` tests on a
real GPU (scripts/gpu_check.sh) remain the verification DESIGN.md asks for.
"""

from __future__ import annotations

import math

import emulated_cuda
import pytest
import torch
from attention_cases import case_id, case_inputs, in_dtype, rising_scores
from conftest import LOW_PRECISION_FACTOR, RTOL, rel_error

from pydl import _ext, reference

pytestmark = emulated_cuda.pytest_marks()

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LOW = (torch.float16, torch.bfloat16)
FLOOR = 1e-3  # low precision: absolute floor of the relative-error bound


@pytest.fixture(scope="module")
def emu():
    with emulated_cuda.emulated_device():
        yield emulated_cuda.ops()


def test_warp_tensor_core_selftest():
    """The emulated ldmatrix / mma layouts against the PTX ISA tables and a plain matmul."""
    run = emulated_cuda.run_warp_tensor_core_selftest()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "FAIL" not in run.stdout


# Cases as attention_cases.py describes them, like test_attention_cuda.py's
# but sized for the emulator. Head dims that are
# multiples of 8 take the tensor-core kernels for float16 / bfloat16.
CASES = [
    (2, 2, 2, 64, 64, 64, 64, None, None),
    (1, 2, 2, 1, 1, 8, 8, None, None),
    (1, 2, 2, 17, 129, 40, 40, None, None),
    (1, 2, 2, 67, 150, 80, 80, "float", None),
    (1, 4, 2, 129, 17, 128, 64, "bool_b", "top_left"),
    (1, 1, 1, 150, 47, 64, 64, None, "bottom_right"),  # L > S: 103 rows see nothing
    (1, 1, 1, 65, 64, 256, 256, "float_b", "top_left"),
    (1, 4, 1, 64, 65, 64, 128, "bool", "bottom_right"),
    (1, 1, 1, 130, 130, 128, 128, None, "top_left"),
    (1, 2, 2, 17, 1, 8, 24, None, "bottom_right"),  # only the last row sees the key
    (1, 3, 1, 20, 70, 256, 40, "float_h", None),
    (1, 2, 2, 33, 47, 12, 20, "float_b", "top_left"),  # not multiples of 8: CUDA cores
    (2, 2, 2, 40, 70, 64, 64, "float", None),  # a per-batch mask: its batch stride
    (2, 4, 2, 50, 37, 96, 96, "float", "top_left"),
    (1, 2, 2, 17, 150, 64, 64, None, "top_left"),  # key blocks no query row sees
    (1, 2, 1, 20, 30, 200, 136, "float_b", None),  # d 256 bucket, partly valid columns
    (1, 2, 2, 1, 200, 64, 64, None, None),
    (1, 2, 2, 9, 1, 32, 32, "float", None),
]

# Each case runs under one of the scheduler's thread orders (cycled), so every
# kernel variant also meets a schedule other than the plain one.
SCHEDULES = [{}, {"warp_greedy": True, "reverse": True, "eager_copies": True},
             {"reverse": True}, {"warp_greedy": True, "eager_copies": True}]


def _schedule(case):
    return emulated_cuda.emulated_device(**SCHEDULES[CASES.index(case) % len(SCHEDULES)])


def _reference(case, q, k, v, mask):
    causal = case[8]
    return reference.scaled_dot_product_attention(
        q, k, v, mask, is_causal=causal is not None, causal_alignment=causal or "top_left",
        enable_gqa=case[1] != case[2], return_lse=True)


def _op_args(case, q, k, v, mask, seed=None, p=0.0):
    causal = case[8]
    seed_t = None if seed is None else torch.tensor([seed])
    return (q, k, v, mask, seed_t, p, causal is not None, causal == "bottom_right",
            q.shape[-1] ** -0.5)


def _check(got, exact, dtype, what, low_ref=None):
    assert torch.isfinite(got).all(), f"{what} ({dtype}): NaN/inf"
    err = rel_error(got, exact)
    if dtype in LOW:
        theirs = 0.0 if low_ref is None else rel_error(low_ref, exact)
        bound = LOW_PRECISION_FACTOR * (theirs if math.isfinite(theirs) else 1e-2) + FLOOR
    else:
        bound = RTOL[dtype]
        # and element-wise, so one wrong entry is not diluted by the norm
        worst = (got.double() - exact).abs().max().item() if got.numel() else 0.0
        scale = exact.abs().max().item() if exact.numel() else 0.0
        assert worst <= 10 * bound * max(scale, 1e-3), f"{what} ({dtype}): max error {worst:.3e}"
    assert err <= bound, f"{what} ({dtype}): relative error {err:.3e} > {bound:.3e}"


def _finite_lse(lse):
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def _low_precision_reference(case, dtype, q, k, v, mask):
    """The reference evaluated in `dtype` (torch's own rounding): the yardstick for fp16/bf16."""
    if dtype not in LOW:
        return None, None
    return _reference(case, *[in_dtype(t, dtype) for t in (q, k, v, mask)])


def _tensor_cores(case, dtype):
    """Whether the entry should pick the tensor-core kernels (fp16/bf16, E and Ev % 8 == 0)."""
    return dtype in LOW and case[5] % 8 == 0 and case[6] % 8 == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_reference(emu, case, dtype):
    q, k, v, mask = case_inputs(case)
    exact_out, _ = _reference(case, q, k, v, mask)
    mmas = emu.mma_count()
    with _schedule(case):
        out, lse = emu.attention(*_op_args(case, *[in_dtype(t, dtype) for t in (q, k, v, mask)]))
    assert (emu.mma_count() > mmas) == _tensor_cores(case, dtype), "not the expected kernels"
    low_out, _ = _low_precision_reference(case, dtype, q, k, v, mask)
    _check(out, exact_out, dtype, "out", low_out)
    # lse against the float64 reference on the inputs as rounded to dtype
    rounded = [None if t is None else in_dtype(t, dtype).to(t.dtype) for t in (q, k, v, mask)]
    _, exact_lse = _reference(case, *rounded)
    assert torch.equal(torch.isinf(lse), torch.isinf(exact_lse)), "rows with no key: lse = -inf"
    lse_tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_error(_finite_lse(lse), _finite_lse(exact_lse)) <= lse_tol


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_grads_match_reference(emu, case, dtype):
    """dq, dk, dv and the additive mask's gradient, with a gradient reaching lse too."""
    q, k, v, mask = case_inputs(case)
    g = torch.Generator().manual_seed(9)
    grad_out = torch.randn(case[0], case[1], case[3], case[6], generator=g, dtype=torch.float64)
    grad_lse = torch.randn(case[0], case[1], case[3], generator=g, dtype=torch.float64)

    def grads_of(fn, tensors):
        leaves = [t.detach().requires_grad_() for t in tensors[:3]]
        m = tensors[3]
        if m is not None and m.dtype != torch.bool:
            m = m.detach().requires_grad_()
            leaves.append(m)
        out, lse = fn(*leaves[:3], m)
        loss = (out.double() * grad_out).sum() + (_finite_lse(lse).double() * grad_lse).sum()
        return torch.autograd.grad(loss, leaves)

    exact = grads_of(lambda *a: _reference(case, *a), (q, k, v, mask))
    cast = [in_dtype(t, dtype) for t in (q, k, v, mask)]
    args = _op_args(case, *cast)
    want_mask_grad = mask is not None and mask.dtype != torch.bool
    with _schedule(case):
        out, lse = emu.attention(*args)
        mmas = emu.mma_count()
        got = emu.attention_backward(grad_out.to(dtype), *args[:5], out, lse,
                                     grad_lse.to(lse.dtype), *args[5:],
                                     [True, True, True, want_mask_grad])
    assert (emu.mma_count() > mmas) == _tensor_cores(case, dtype), "not the expected kernels"
    low = grads_of(lambda *a: _reference(case, *a), cast) if dtype in LOW else [None] * 4
    for name, a, e, t in zip(["dq", "dk", "dv", "dmask"], got, exact, low):
        if name == "dmask" and not want_mask_grad:
            continue
        assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        _check(a, e, dtype, name, t)


def _dropout_args(dtype, p, seed):
    """GQA, bottom-right causal, an additive mask; L and S span several query
    blocks and key tiles, so every tile's dropout offsets are exercised."""
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 4, 75, 40, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 160, 40, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 160, 24, generator=g, dtype=torch.float64)
    mask = torch.randn(75, 160, generator=g, dtype=torch.float64)
    return (q.to(dtype), k.to(dtype), v.to(dtype), mask.to(dtype), torch.tensor([seed]), p,
            True, True, 0.3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_dropout_equals_cpu_kernel_for_the_same_seed(emu, dtype, p):
    """The CUDA and CPU kernels share the Philox hash: the same seed drops the
    same weights, so outputs and all gradients (with one reaching lse) agree.
    float16, which the CPU kernel lacks: against its float32 run on the same
    (rounded) inputs."""
    if not _ext.loaded():
        pytest.skip("needs pydl's CPU kernel")
    args = _dropout_args(dtype, p, 0x1234_5678_9ABC)
    cpu_dtype = torch.float32 if dtype == torch.float16 else dtype
    cpu_args = [a.to(cpu_dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args]
    out_c, lse_c = torch.ops.pydl.attention(*cpu_args)
    out_e, lse_e = emu.attention(*args)
    tol = 10 * RTOL[dtype] if dtype not in LOW else 2e-2
    assert rel_error(out_e, out_c) <= tol
    assert rel_error(lse_e, lse_c) <= max(RTOL.get(dtype, 1e-5), 1e-6)
    g = torch.Generator().manual_seed(12)
    grad_out = torch.randn(out_c.shape, generator=g, dtype=torch.float64)
    grad_lse = torch.randn(lse_c.shape, generator=g, dtype=torch.float64)

    def back(op, a, o, lse):
        return op.attention_backward(grad_out.to(a[0].dtype), *a[:5], o, lse,
                                     grad_lse.to(lse.dtype), *a[5:], [True, True, True, True])

    for name, a, e in zip(["dq", "dk", "dv", "dmask"], back(emu, args, out_e, lse_e),
                          back(torch.ops.pydl, cpu_args, out_c, lse_c)):
        assert rel_error(a, e) <= tol, f"dropout {name} differs from the CPU kernel"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_pattern_equals_cpu_kernel(emu, dtype):
    """value = identity makes the output the dropped weights: the zero pattern is the keep mask."""
    seed, p, S = 987654321, 0.4, 150  # several key tiles and query blocks
    q = torch.randn(2, 3, 70, 16, dtype=torch.float64) * 0.1  # small scores: no weight underflows
    k = torch.randn(2, 3, S, 16, dtype=torch.float64) * 0.1
    eye = torch.eye(S, dtype=torch.float64).expand(2, 3, S, S)
    cpu_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    want = reference.scaled_dot_product_attention(q, k, eye, scale=0.25)
    if _ext.loaded():
        want, _ = torch.ops.pydl.attention(q.to(cpu_dtype), k.to(cpu_dtype), eye.to(cpu_dtype),
                                           None, torch.tensor([seed]), p, False, False, 0.25)
    got, _ = emu.attention(q.to(dtype), k.to(dtype), eye.to(dtype), None, torch.tensor([seed]),
                           p, False, False, 0.25)
    kept = (got != 0).double().mean().item()
    assert abs(kept - (1 - p)) < 0.05
    if _ext.loaded():
        assert torch.equal(got != 0, want != 0), "the CUDA and CPU kernels drop different weights"


@pytest.mark.parametrize("shape, p", [((2, 3, 70, 150), 0.4), ((1, 1, 1, 1), 0.5),
                                      ((1, 2, 5, 7), 0.9), ((2, 1, 3, 0), 0.3)])
def test_dropout_keep_kernel_equals_the_cpu_op_and_kernels(emu, shape, p):
    """attention_dropout_keep's CUDA kernel (what MultiheadAttention applies
    to weights rebuilt from the lse on a GPU) decides as the CPU op, and as
    the CUDA attention kernel itself (value = identity: out is the weights)."""
    seed = torch.tensor([0x1234_5678_9ABC])
    got = emu.attention_dropout_keep(seed, *shape, p)
    assert got.dtype == torch.bool and got.shape == shape
    if _ext.loaded():
        assert torch.equal(got, torch.ops.pydl.attention_dropout_keep(seed, *shape, p))
    n, h, L, S = shape
    if S == 0:
        return
    q = torch.randn(n, h, L, 16, dtype=torch.float64) * 0.1  # no weight underflows
    k = torch.randn(n, h, S, 16, dtype=torch.float64) * 0.1
    eye = torch.eye(S, dtype=torch.float64).expand(n, h, S, S)
    dropped, _ = emu.attention(q, k, eye, None, seed, p, False, False, 0.25)
    assert torch.equal(dropped != 0, got)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_dropout_near_one_stays_finite(emu, dtype):
    """p close to 1: a kept weight is P / (1 - p), here 1/64 / 1e-4 = 156,
    more than fp16 products should carry; the tensor-core kernels keep P in
    [0, 1] for their half-precision products and scale in float32. Uniform
    scores (q = 0) and enough rows that some weights are kept."""
    p, L, S, E = 0.9999, 1024, 64, 64
    g = torch.Generator().manual_seed(3)
    q = torch.zeros(1, 4, L, E, dtype=torch.float64)
    k = torch.randn(1, 4, S, E, generator=g, dtype=torch.float64)
    v = torch.ones(1, 4, S, E, dtype=torch.float64)
    args = (q.to(dtype), k.to(dtype), v.to(dtype), None, torch.tensor([5]), p, False, False,
            E ** -0.5)
    out, lse = emu.attention(*args)
    grads = emu.attention_backward(torch.ones_like(out), *args[:5], out, lse, None, *args[5:],
                                   [True, True, True, False])
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in grads[:3])
    assert (out != 0).any(), "no weight kept: the test needs another seed"
    assert out.abs().max() > 100, "no large kept weight: the case tests nothing"
    if _ext.loaded():  # the same keep decisions as the CPU kernel (float32)
        want, _ = torch.ops.pydl.attention(*[a.float() if isinstance(a, torch.Tensor) and
                                             a.is_floating_point() else a for a in args])
        assert rel_error(out, want) <= 2e-2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_results_do_not_depend_on_thread_order(emu, dtype):
    """Between barriers the threads run in lockstep or warp by warp, first-to-
    last or last-to-first, and cp.async copies land at the latest wait or at
    once: a read that races with another thread's write (or with a copy)
    would change the result."""
    case = (1, 4, 2, 70, 250, 64, 64, "float_b", "bottom_right")  # several key tiles
    q, k, v, mask = (in_dtype(t, dtype) for t in case_inputs(case))
    args = _op_args(case, q, k, v, mask, seed=77, p=0.3)
    grad_out = torch.randn(1, 4, 70, 64, dtype=torch.float64).to(dtype)

    def run():
        out, lse = emu.attention(*args)
        grads = emu.attention_backward(grad_out, *args[:5], out, lse, None, *args[5:],
                                       [True, True, True, True])
        return [out, lse, *grads]

    results = {}
    # lockstep / warp by warp x forward / reversed, copies late or early
    schedules = [(False, False, False), (False, True, True), (True, False, True),
                 (True, True, False)]
    for greedy, reverse, eager in schedules:
        with emulated_cuda.emulated_device(warp_greedy=greedy, reverse=reverse,
                                           eager_copies=eager):
            results[greedy, reverse, eager] = run()
    base = results[False, False, False]
    for order, got in results.items():
        for name, a, b in zip(["out", "lse", "dq", "dk", "dv", "dmask"], got, base):
            assert torch.equal(a, b), \
                f"{name} changes with (warp greedy, reversed, eager copies) = {order}"


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("smem_kb, forward_on_tensor_cores", [(99, True), (64, False)])
def test_small_shared_memory_device_takes_cuda_core_kernels(emu, dtype, smem_kb,
                                                          forward_on_tensor_cores):
    """A card with less opt-in shared memory than a tile needs (sm_86 / sm_89:
    99 KB) runs that pass on the CUDA-core kernels instead of failing the
    launch: at head dim 256 the forward tile (99 KB) fits and the backward's
    do not; with 64 KB (sm_75) neither does."""
    case = (1, 2, 2, 40, 50, 256, 256, None, "top_left")
    q, k, v, mask = case_inputs(case)
    g = torch.Generator().manual_seed(9)
    grad_out = torch.randn(1, 2, 40, 256, generator=g, dtype=torch.float64)
    exact = [t.detach().requires_grad_() for t in (q, k, v)]
    exact_out, _ = _reference(case, *exact, None)
    exact_grads = torch.autograd.grad((exact_out * grad_out).sum(), exact)
    args = _op_args(case, *[in_dtype(t, dtype) for t in (q, k, v, mask)])
    with emulated_cuda.emulated_device(max_smem_optin=smem_kb * 1024):
        before = emu.mma_count()
        out, lse = emu.attention(*args)
        forward_mmas = emu.mma_count() - before
        grads = emu.attention_backward(grad_out.to(dtype), *args[:5], out, lse, None, *args[5:],
                                       [True, True, True, False])
        backward_mmas = emu.mma_count() - before - forward_mmas
    assert (forward_mmas > 0) == forward_on_tensor_cores and backward_mmas == 0
    low = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
    low_out, _ = _reference(case, *low, None)
    low_grads = torch.autograd.grad((low_out.double() * grad_out).sum(), low)
    _check(out, exact_out, dtype, "out", low_out)
    for name, a, e, t in zip(["dq", "dk", "dv"], grads, exact_grads, low_grads):
        _check(a, e, dtype, name, t)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nlhe", "sliced", "misaligned", "offset"])
def test_stridedcase_inputs(emu, dtype, layout):
    """(N, L, H, E).transpose(1, 2) views, a head-dim slice, a one-element
    offset slice, and a contiguous tensor at a one-element storage offset:
    forward and gradients."""
    g = torch.Generator().manual_seed(4)

    def at_offset(t):
        flat = torch.empty(t.numel() + 1, dtype=t.dtype)
        return flat[1:].view(1, 2, 70, 48).copy_(t.transpose(1, 2))

    view = {"nlhe": lambda t: t.transpose(1, 2),
            "sliced": lambda t: t.transpose(1, 2)[..., :40],
            "misaligned": lambda t: t.transpose(1, 2)[..., 1:41],
            "offset": at_offset}[layout]
    bases = [torch.randn(1, 70, 2, 48, generator=g, dtype=torch.float64) for _ in range(3)]
    q, k, v = (view(b) for b in bases)
    cast = [view(b.to(dtype)) for b in bases]
    case = (1, 2, 2, 70, 70, q.shape[-1], q.shape[-1], None, "top_left")
    grad_out = torch.randn(1, 2, 70, q.shape[-1], generator=g, dtype=torch.float64)

    def grads_of(tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out, _ = _reference(case, *leaves, None)
        return out, torch.autograd.grad((out.double() * grad_out).sum(), leaves)

    exact_out, exact_grads = grads_of((q, k, v))
    args = _op_args(case, *cast, None)
    out, lse = emu.attention(*args)
    got = emu.attention_backward(grad_out.to(dtype), *args[:5], out, lse, None, *args[5:],
                                 [True, True, True, False])
    low_out, low_grads = grads_of(cast) if dtype in LOW else (None, [None] * 3)
    _check(out, exact_out, dtype, f"{layout} out", low_out)
    for name, a, e, t in zip(["dq", "dk", "dv"], got, exact_grads, low_grads):
        _check(a, e, dtype, f"{layout} {name}", t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, True), (False, True, False)])
def test_backward_computes_only_the_gradients_asked_for(emu, dtype, wanted):
    """output_mask: the grads asked for equal those of a full backward; the others are None."""
    case = (1, 4, 2, 70, 90, 64, 64, "float", "bottom_right")
    q, k, v, mask = (in_dtype(t, dtype) for t in case_inputs(case))
    args = _op_args(case, q, k, v, mask)
    out, lse = emu.attention(*args)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    full = emu.attention_backward(grad_out, *args[:5], out, lse, None, *args[5:],
                                  [True, True, True, True])
    part = emu.attention_backward(grad_out, *args[:5], out, lse, None, *args[5:],
                                  [*wanted, False])
    for name, ask, a, b in zip("qkv", wanted, part, full):
        if ask:
            assert torch.equal(a, b), f"d{name} differs from the full backward's"
        else:
            assert a is None, f"d{name} computed though not asked for"


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_tensor_core_ldmatrix_is_free_of_bank_conflicts(emu, dtype, head_dim):
    """A performance property the emulator can check without a GPU: every
    ldmatrix of the tensor-core forward and backward reads its 8 rows from 8
    different bank groups (the padded smem pitch), so no wavefront is replayed."""
    case = (1, 2, 1, 70, 90, head_dim, head_dim, None, "bottom_right")
    q, k, v, _ = (in_dtype(t, dtype) for t in case_inputs(case))
    args = _op_args(case, q, k, v, None, seed=3, p=0.2)
    ideal0, actual0 = emu.smem_wavefronts()
    out, lse = emu.attention(*args)
    emu.attention_backward(torch.ones_like(out), *args[:5], out, lse, None, *args[5:],
                           [True, True, True, False])
    ideal, actual = (a - b for a, b in zip(emu.smem_wavefronts(), (ideal0, actual0)))
    assert ideal > 0, "no ldmatrix ran"
    assert actual == ideal, f"bank conflicts: {actual} wavefronts for {ideal} ldmatrix phases"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_score_makes_its_rows_nan(emu, dtype):
    """A NaN in k makes every score of its head NaN: that head's output and
    lse are NaN (torch's rule), not the zeros of a fully masked row; the other
    head stays finite (tensor-core kernels for fp16/bf16, CUDA-core ones for
    float32/float64)."""
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g, dtype=torch.float64) for n in (9, 13, 13))
    k[0, 1, 3, 5] = float("nan")
    args = (q.to(dtype), k.to(dtype), v.to(dtype), None, None, 0.0, False, False, 0.125)
    out, lse = emu.attention(*args)
    assert out[0, 1].isnan().all() and lse[0, 1].isnan().all()
    assert torch.isfinite(out[0, 0]).all() and torch.isfinite(lse[0, 0]).all()
    dq = emu.attention_backward(torch.ones_like(out), *args[:5], out, lse, None, *args[5:],
                                [True, False, False, False])[0]
    assert dq[0, 1].isnan().all() and torch.isfinite(dq[0, 0]).all()


def _forward_on_tensor_cores(emu, case, dtype, seed=None, p=0.0):
    """The emulated forward's (out, lse); asserts that it ran on the tensor cores."""
    q, k, v, mask = case_inputs(case)
    before = emu.mma_count()
    out, lse = emu.attention(*_op_args(case, *[in_dtype(t, dtype) for t in (q, k, v, mask)],
                                       seed=seed, p=p))
    assert emu.mma_count() > before, "not on the tensor cores"
    return out, lse


def _check_forward(case, dtype, out, lse):
    q, k, v, mask = case_inputs(case)
    exact_out, exact_lse = _reference(case, q, k, v, mask)
    low_out, _ = _low_precision_reference(case, dtype, q, k, v, mask)
    _check(out, exact_out, dtype, "out", low_out)
    assert torch.equal(torch.isinf(lse), torch.isinf(exact_lse))


def _reference_grads(case, dtype, q, k, v, mask):
    """A grad_out and the float64 reference's (dq, dk, dv) for it, on the
    exact inputs and on the inputs rounded to `dtype` (the yardstick)."""
    g = torch.Generator().manual_seed(9)
    grad_out = torch.randn(case[0], case[1], case[3], case[6], generator=g, dtype=torch.float64)

    def input_grads(qkv):
        leaves = [t.detach().requires_grad_() for t in qkv]
        out = _reference(case, *leaves, in_dtype(mask, leaves[0].dtype))[0]
        return torch.autograd.grad((out.double() * grad_out).sum(), leaves)

    return grad_out, input_grads((q, k, v)), input_grads([in_dtype(t, dtype) for t in (q, k, v)])


def _check_tc_backward(emu, case, dtype, inputs, out, lse, grads, what):
    """The emulated backward's dq, dk, dv (from this forward's out and lse)
    against _reference_grads' `grads`."""
    grad_out, exact, low = grads
    args = _op_args(case, *[in_dtype(t, dtype) for t in inputs])
    got = emu.attention_backward(grad_out.to(dtype), *args[:5], out, lse, None, *args[5:],
                                 [True, True, True, False])[:3]
    for name, a, e, t in zip(["dq", "dk", "dv"], got, exact, low):
        _check(a, e, dtype, f"{name} ({what})", t)


def _identity_value_args(case, dtype):
    """The case's op arguments with dropout (p 0.3, seed 4) and V = identity
    (padded to a multiple of 8 columns, for the tensor cores): the output's
    first S columns are the dropped-out weights."""
    q, k, _, _ = case_inputs(case)
    S, E = case[4], case[5]
    padded = (S + 7) // 8 * 8
    eye = torch.eye(S, padded, dtype=torch.float64).expand(*k.shape[:-1], padded)
    return _op_args((*case[:5], E, padded, None, case[8]), in_dtype(q, dtype),
                    in_dtype(k, dtype), eye.to(dtype), None, seed=4, p=0.3)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[8], CASES[13], CASES[5], CASES[14]],
                         ids=case_id)
def test_tensor_core_m_tile_layouts(emu, case, dtype, monkeypatch):
    """Both layouts, forced by the A/B switch PYDL_ATTENTION_TC_MTILES, on the
    general softmax (PYDL_ATTENTION_TC_WHOLE_TILES=0; test_whole_tile_softmax
    runs the default, whole-tile one): two m16 tiles per warp (head dims 64 /
    128: the forward's and the dQ kernel's 128-row CTAs with 32-key tiles;
    head dim 64: the dK / dV kernel's 128-key CTAs) and one everywhere
    (64-row CTAs, 64-key tiles; the backward's default). Both match the
    reference (output, dq, dk, dv); with dropout both keep the same weights
    (the keep rule depends on (row, key) only)."""
    monkeypatch.setenv("PYDL_ATTENTION_TC_WHOLE_TILES", "0")
    inputs = case_inputs(case)
    grads = _reference_grads(case, dtype, *inputs)
    for tiles in ("1", "2"):
        monkeypatch.setenv("PYDL_ATTENTION_TC_MTILES", tiles)
        out, lse = _forward_on_tensor_cores(emu, case, dtype)
        _check_forward(case, dtype, out, lse)
        _check_tc_backward(emu, case, dtype, inputs, out, lse, grads, f"{tiles} m-tiles")
    dropped = []
    for tiles in ("1", "2"):
        monkeypatch.setenv("PYDL_ATTENTION_TC_MTILES", tiles)
        before = emu.mma_count()
        dropped.append(emu.attention(*_identity_value_args(case, dtype))[0][..., :case[4]] != 0)
        assert emu.mma_count() > before, "not on the tensor cores"
    assert torch.equal(dropped[0], dropped[1])
    assert dropped[0].any(), "no weight kept"


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("tiles", ["1", "2"])
def test_head_dim_128_forward_fits_99_kb_in_both_layouts(emu, dtype, tiles, monkeypatch):
    """sm_86 / sm_89 (99 KB of opt-in shared memory): head dim 128's forward
    tiles (68 KB with two m-tiles per warp, 85 KB with one) fit: it stays on
    the tensor cores."""
    monkeypatch.setenv("PYDL_ATTENTION_TC_MTILES", tiles)
    case = (1, 2, 2, 70, 90, 128, 128, "float", None)
    with emulated_cuda.emulated_device(max_smem_optin=99 * 1024):
        out, lse = _forward_on_tensor_cores(emu, case, dtype)
    _check_forward(case, dtype, out, lse)


# Bottom-right causal with S - L = 62 (offset = 30 mod 32 and 62 mod 64): the
# last key tile a CTA takes whole ends exactly on its first row's causal limit
# in every kernel, so an off-by-one in a whole-tile condition shows.
WHOLE_TILE_EDGES = [
    (1, 4, 2, 100, 162, 64, 64, None, "bottom_right"),  # and GQA
    (1, 2, 2, 90, 152, 128, 128, None, "bottom_right"),
    (1, 2, 2, 134, 100, 64, 64, None, "bottom_right"),  # L > S: offset -34
]


# bf16 only: the whole-tile logic does not depend on the storage type (the
# lazy-rescale test below runs fp16 too, whose range P must fit); the CI's
# time goes to cases instead.
@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[7], CASES[8], CASES[13],
                                  CASES[14], CASES[16]] + WHOLE_TILE_EDGES, ids=case_id)
def test_whole_tile_softmax(emu, case, dtype, monkeypatch):
    """The whole-tile softmax (the default; set here with
    PYDL_ATTENTION_TC_WHOLE_TILES=1) (tiles no
    score of which is hidden skip the visibility tests; ex2.approx; the
    forward rescales O lazily) in both m-tile layouts: output and lse against the
    reference, gradients through its lse; with dropout it keeps the general
    path's weights."""
    inputs = case_inputs(case)
    grads = _reference_grads(case, dtype, *inputs)
    rounded = [None if t is None else in_dtype(t, dtype).to(t.dtype) for t in inputs]
    _, rounded_lse = _reference(case, *rounded)
    monkeypatch.setenv("PYDL_ATTENTION_TC_WHOLE_TILES", "1")
    for tiles in ("1", "2"):
        monkeypatch.setenv("PYDL_ATTENTION_TC_MTILES", tiles)
        out, lse = _forward_on_tensor_cores(emu, case, dtype)
        _check_forward(case, dtype, out, lse)
        assert rel_error(_finite_lse(lse), _finite_lse(rounded_lse)) <= 1e-5
        _check_tc_backward(emu, case, dtype, inputs, out, lse, grads, f"{tiles} m-tiles")
    kept = []
    for whole in ("0", "1"):
        monkeypatch.setenv("PYDL_ATTENTION_TC_WHOLE_TILES", whole)
        kept.append(emu.attention(*_identity_value_args(case, dtype))[0][..., :case[4]] != 0)
    assert torch.equal(kept[0], kept[1])
    assert kept[1].any(), "no weight kept"
    # The backward with dropout (default m-tiles: one, so whole tiles in both
    # kernels) gives the general path's gradients for the same forward.
    monkeypatch.delenv("PYDL_ATTENTION_TC_MTILES")
    _dropout_backward_matches_across(emu, case, dtype, inputs, grads[0],
                                     "PYDL_ATTENTION_TC_WHOLE_TILES", monkeypatch)


def test_atomic_dq_yields_to_deterministic_algorithms(emu, monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the atomic dQ's switch
    is ignored: the two-kernel backward runs (as many mma as without it)."""
    case = CASES[0]
    inputs = case_inputs(case)
    grads = _reference_grads(case, torch.bfloat16, *inputs)
    out, lse = _forward_on_tensor_cores(emu, case, torch.bfloat16)
    mma = {}
    deterministic = torch.are_deterministic_algorithms_enabled()
    for atomic, strict in (("0", False), ("1", True)):
        monkeypatch.setenv("PYDL_ATTENTION_TC_DQ_ATOMIC", atomic)
        torch.use_deterministic_algorithms(strict)
        try:
            before = emu.mma_count()
            _check_tc_backward(emu, case, torch.bfloat16, inputs, out, lse, grads, atomic)
            mma[atomic] = emu.mma_count() - before
        finally:
            torch.use_deterministic_algorithms(deterministic)
    assert mma["1"] == mma["0"], mma


def _dropout_backward_matches_across(emu, case, dtype, inputs, grad_out, switch, monkeypatch):
    """One forward with dropout (p 0.3, seed 4), under the switches as they
    are; its backward with `switch` = 0 and = 1: the same dq, dk, dv (the
    same kept weights), within 1e-2."""
    args = _op_args(case, *[in_dtype(t, dtype) for t in inputs], seed=4, p=0.3)
    out, lse = emu.attention(*args)
    per_mode = []
    for value in ("0", "1"):
        monkeypatch.setenv(switch, value)
        per_mode.append(emu.attention_backward(grad_out.to(dtype), *args[:5], out, lse, None,
                                               *args[5:], [True, True, True, False])[:3])
    for name, off, on in zip(["dq", "dk", "dv"], *per_mode):
        assert rel_error(on, off.double()) <= 1e-2, f"{name} with dropout, {switch}"


# (case, dtype): plain d64; GQA + bool mask + causal (d128 / Ev 64); L > S,
# rows that see nothing; d256 with a float mask (8 warps: split row groups);
# GQA + float mask + causal at d96 (the 128 bucket, partly valid columns);
# key blocks no query row sees; d200 / Ev136 (the 256 bucket).
ATOMIC_DQ_CASES = [(CASES[0], torch.bfloat16), (CASES[4], torch.float16),
                   (CASES[5], torch.bfloat16), (CASES[6], torch.bfloat16),
                   (CASES[13], torch.float16), (CASES[14], torch.bfloat16),
                   (CASES[15], torch.bfloat16)]


@pytest.mark.parametrize("case, dtype", ATOMIC_DQ_CASES, ids=lambda x: case_id(x) if
                         isinstance(x, tuple) else str(x))
def test_atomic_dq(emu, case, dtype, monkeypatch):
    """PYDL_ATTENTION_TC_DQ_ATOMIC=1: dQ summed by the dK / dV kernel (float
    atomics, then one conversion kernel) instead of a dQ kernel: every
    gradient against the reference; fewer mma than the two-kernel backward
    (no recomputed S and dP), so the switch really changed the path; and with
    dropout the two-kernel backward's gradients."""
    inputs = case_inputs(case)
    grads = _reference_grads(case, dtype, *inputs)
    out, lse = _forward_on_tensor_cores(emu, case, dtype)
    mma = {}
    for atomic in ("0", "1"):
        monkeypatch.setenv("PYDL_ATTENTION_TC_DQ_ATOMIC", atomic)
        before = emu.mma_count()
        with _schedule(case):
            _check_tc_backward(emu, case, dtype, inputs, out, lse, grads, f"atomic dQ {atomic}")
        mma[atomic] = emu.mma_count() - before
    assert mma["1"] < mma["0"], f"mma: {mma}: the atomic dQ did not run"
    monkeypatch.delenv("PYDL_ATTENTION_TC_DQ_ATOMIC")
    _dropout_backward_matches_across(emu, case, dtype, inputs, grads[0],
                                     "PYDL_ATTENTION_TC_DQ_ATOMIC", monkeypatch)


def test_whole_tile_softmax_lazy_rescale(emu, monkeypatch):
    """Scores that climb along the keys by less than the lazy-rescale margin
    in some tiles and by far more in others: the stale reference max still
    gives the reference's output and lse."""
    L, S, d = 70, 300, 64
    q, k, v = rising_scores(L, S, d)
    case = (1, 2, 2, L, S, d, d, None, None)
    exact_out, _ = _reference(case, q, k, v, None)
    monkeypatch.setenv("PYDL_ATTENTION_TC_WHOLE_TILES", "1")
    for dtype in LOW:
        qc, kc, vc = (t.to(dtype) for t in (q, k, v))
        out, lse = emu.attention(*_op_args(case, qc, kc, vc, None))
        low_out, _ = _low_precision_reference(case, dtype, q, k, v, None)
        _check(out, exact_out, dtype, "out", low_out)
        _, rounded_lse = _reference(case, qc.double(), kc.double(), vc.double(), None)
        assert rel_error(lse, rounded_lse) <= 1e-5
