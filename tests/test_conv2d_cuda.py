"""CUDA forward kernels of pydl.conv2d (csrc/conv/conv2d_cuda.cu, csrc/conv/cuda/).

Every test calls ``torch.ops.pydl.conv2d`` directly and compares it with a
float64 CPU reference built from ``torch.nn.functional.conv2d`` plus bias,
residual and the activation. Tolerances (stated once, here):

* float64: 1e-10 (absolute and relative, outputs are O(1)).
* float32 with TF32 off: 1e-5.
* float16 / bfloat16 / float32 with TF32 on: pydl's relative error (Frobenius
  norm) against the float64 reference is at most twice torch's own error
  (the same computation with torch's ops, on the GPU, in that dtype) plus a
  small epsilon. For TF32 the epsilon is the TF32 rounding level, because
  cuDNN may pick a kernel that does not use TF32 for a given shape.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

try:
    import pydl._C  # noqa: F401  (registers torch.ops.pydl.*)

    _LOAD_ERROR = None
except (ImportError, OSError) as exc:  # not built, or built for another torch
    _LOAD_ERROR = str(exc)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
    pytest.mark.skipif(_LOAD_ERROR is not None, reason=f"pydl._C did not load: {_LOAD_ERROR}"),
]

ACTIVATIONS = ["none", "relu", "gelu", "gelu_tanh", "silu"]
LOW_PRECISION_EPS = {torch.float16: 1e-5, torch.bfloat16: 1e-4, "tf32": 1e-3}


def _act(name: str, z: torch.Tensor) -> torch.Tensor:
    if name == "none":
        return z
    if name == "relu":
        return F.relu(z)
    if name == "gelu":
        return F.gelu(z, approximate="none")
    if name == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if name == "silu":
        return F.silu(z)
    raise ValueError(name)


def _torch_conv(x, w, b, res, stride, padding, dilation, groups, act):
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    if res is not None:
        y = y + res
    return _act(act, y)


def _reference(x, w, b, res, stride, padding, dilation, groups, act):
    """float64 on the CPU: the definition of correct."""

    def d(t):
        return None if t is None else t.detach().to("cpu", torch.float64)

    return _torch_conv(d(x), d(w), d(b), d(res), stride, padding, dilation, groups, act)


def _pydl(x, w, b, res, stride, padding, dilation, groups, act):
    return torch.ops.pydl.conv2d(x, w, b, stride, padding, dilation, groups, act, res)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (y.detach().to("cpu", torch.float64) - ref).norm()
    return (diff / ref.norm().clamp_min(1e-30)).item()


def _out_hw(h, w, k, stride, padding, dilation):
    oh = (h + 2 * padding[0] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def _make(case, dtype, channels_last, seed, bias=True, residual=True):
    n, cin, h, w, cout, k, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(seed)
    fan_in = (cin // groups) * k[0] * k[1]
    x = torch.randn(n, cin, h, w, generator=g)
    wt = torch.randn(cout, cin // groups, k[0], k[1], generator=g) / math.sqrt(fan_in)
    b = torch.randn(cout, generator=g) * 0.5 if bias else None
    oh, ow = _out_hw(h, w, k, stride, padding, dilation)
    res = torch.randn(n, cout, oh, ow, generator=g) * 0.5 if residual else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def dev(t, f=torch.contiguous_format):
        return None if t is None else t.to("cuda", dtype).contiguous(memory_format=f)

    return dev(x, fmt), dev(wt), dev(b), dev(res, fmt), stride, padding, dilation, groups


# (N, Cin, H, W, Cout, (kh, kw), stride, padding, dilation, groups)
CASES = {
    "3x3": (2, 16, 9, 11, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "odd_sizes": (3, 5, 7, 13, 7, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "stride2": (2, 32, 15, 15, 64, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "dilation2": (2, 16, 12, 10, 16, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    "groups2": (2, 16, 8, 8, 32, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    "groups4_cin_g3": (2, 12, 9, 9, 8, (3, 3), (1, 1), (1, 1), (1, 1), 4),
    "groups4_cin_g16": (2, 64, 9, 7, 64, (3, 3), (1, 1), (1, 1), (1, 1), 4),
    "depthwise": (2, 32, 10, 10, 32, (3, 3), (1, 1), (1, 1), (1, 1), 32),
    "depthwise_c6_5x5_s2": (2, 6, 9, 9, 6, (5, 5), (2, 2), (2, 2), (1, 1), 6),
    "depthwise_multiplier2": (2, 8, 8, 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 8),
    "1x1": (2, 64, 7, 7, 128, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "1x1_stride2": (2, 32, 8, 8, 48, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    "7x7_stem": (1, 3, 32, 32, 64, (7, 7), (2, 2), (3, 3), (1, 1), 1),
    "batch1_cout136": (1, 128, 14, 14, 136, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "rect_kernel": (2, 8, 10, 12, 16, (3, 5), (2, 1), (1, 2), (1, 2), 1),
    "cin1": (2, 1, 9, 9, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "cin40_k_tail": (2, 40, 6, 6, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "many_pixels": (4, 64, 28, 28, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "no_padding": (2, 24, 11, 9, 40, (3, 3), (1, 1), (0, 0), (1, 1), 1),
}

DTYPES = ["float64", "float32", "tf32", "float16", "bfloat16"]


def _set_tf32(enabled: bool):
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    return old


def _dtype(dtype_name: str) -> torch.dtype:
    return torch.float32 if dtype_name in ("tf32", "float32") else getattr(torch, dtype_name)


def _check(dtype_name, args, act):
    """Runs pydl and asserts the per-dtype criterion."""
    dtype = _dtype(dtype_name)
    x, w, b, res, stride, padding, dilation, groups = args
    assert x.dtype == dtype
    ref = _reference(x, w, b, res, stride, padding, dilation, groups, act)
    old = _set_tf32(dtype_name == "tf32")
    try:
        y = _pydl(x, w, b, res, stride, padding, dilation, groups, act)
        torch_y = (
            _torch_conv(x, w, b, res, stride, padding, dilation, groups, act)
            if dtype_name in ("tf32", "float16", "bfloat16")
            else None
        )
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert y.shape == ref.shape and y.dtype == dtype and y.device == x.device
    assert torch.isfinite(y).all()
    if dtype_name == "float64":
        torch.testing.assert_close(y.cpu(), ref, rtol=1e-10, atol=1e-10)
    elif dtype_name == "float32":
        torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-5)
    else:
        key = "tf32" if dtype_name == "tf32" else dtype
        ours, theirs = _rel_err(y, ref), _rel_err(torch_y, ref)
        assert ours <= 2 * theirs + LOW_PRECISION_EPS[key], (
            f"pydl rel. error {ours:.3e} vs torch {theirs:.3e} ({dtype_name}, act={act})"
        )
    return y


def test_cuda_kernel_registered():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has("pydl::conv2d", "CUDA"), "pydl._C was built without the CUDA conv2d kernel"
    assert has("pydl::conv2d_backward", "CUDA")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_conv2d_shapes(case, dtype_name, channels_last):
    i = list(CASES).index(case)
    act = ACTIVATIONS[i % len(ACTIVATIONS)]
    dtype = _dtype(dtype_name)
    args = _make(CASES[case], dtype, channels_last, seed=i, bias=i % 3 != 1, residual=i % 2 == 0)
    _check(dtype_name, args, act)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("case", ["3x3", "depthwise", "groups4_cin_g3"])
def test_conv2d_activations_bias_residual(case, act, dtype_name):
    dtype = _dtype(dtype_name)
    args = _make(CASES[case], dtype, channels_last=True, seed=7, bias=True, residual=True)
    _check(dtype_name, args, act)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_conv2d_random_shapes(dtype_name):
    dtype = _dtype(dtype_name)
    rng = random.Random(1234)
    for trial in range(12):
        groups = rng.choice([1, 1, 1, 2, 3, 4, "dw"])
        cin_g = rng.choice([1, 3, 8, 13, 16, 24])
        if groups == "dw":
            groups, cin_g = rng.randint(2, 40), 1
            cout = groups * rng.choice([1, 1, 2])
        else:
            cout = groups * rng.randint(1, 40)
        cin = groups * cin_g
        k = (rng.randint(1, 5), rng.randint(1, 5))
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        dilation = (rng.randint(1, 2), rng.randint(1, 2))
        padding = (rng.randint(0, 2), rng.randint(0, 2))
        h = rng.randint(dilation[0] * (k[0] - 1) + 1, 20)
        w = rng.randint(dilation[1] * (k[1] - 1) + 1, 20)
        n = rng.randint(1, 3)
        case = (n, cin, h, w, cout, k, stride, padding, dilation, groups)
        args = _make(
            case,
            dtype,
            rng.random() < 0.5,
            seed=trial,
            bias=rng.random() < 0.7,
            residual=rng.random() < 0.5,
        )
        _check(dtype_name, args, ACTIVATIONS[trial % len(ACTIVATIONS)])


@pytest.mark.parametrize("dtype_name", ["float64", "float16"])
def test_conv2d_non_contiguous_inputs(dtype_name):
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(3)
    # Every other column: neither NCHW- nor NHWC-contiguous.
    x = torch.randn(2, 16, 10, 22, generator=g).to("cuda", dtype)[..., ::2]
    # Weight as a transposed view, bias and residual strided.
    w = (torch.randn(3, 3, 16, 24, generator=g) / 12).to("cuda", dtype).permute(3, 2, 0, 1)
    b = torch.randn(48, generator=g).to("cuda", dtype)[::2]
    res = torch.randn(2, 10, 11, 24, generator=g).to("cuda", dtype).permute(0, 3, 1, 2)
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    _check(dtype_name, (x, w, b, res, (1, 1), (1, 1), (1, 1), 1), "silu")
    # Depthwise with a non-contiguous input.
    wd = torch.randn(16, 1, 3, 3, generator=g).to("cuda", dtype)
    _check(dtype_name, (x, wd, None, None, (1, 1), (1, 1), (1, 1), 16), "relu")


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "tf32", "float64"])
def test_conv2d_misaligned_storage(dtype_name):
    """channels_last tensors whose data pointer is not 16-byte aligned take the
    scalar-load path (Cin % 8 == 0 would otherwise choose vector loads)."""
    dtype = _dtype(dtype_name)
    n, c, h, w = 2, 32, 7, 9
    g = torch.Generator().manual_seed(5)
    flat = torch.randn(n * c * h * w + 1, generator=g).to("cuda", dtype)
    x = flat[1:].as_strided((n, c, h, w), (h * w * c, 1, w * c, c))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x.data_ptr() % 16 != 0
    wt = (torch.randn(32, c, 3, 3, generator=g) / 17).to("cuda", dtype)
    _check(dtype_name, (x, wt, None, None, (1, 1), (1, 1), (1, 1), 1), "none")
    wd = torch.randn(c, 1, 3, 3, generator=g).to("cuda", dtype)
    _check(dtype_name, (x, wd, None, None, (1, 1), (1, 1), (1, 1), c), "none")


@pytest.mark.parametrize("case", ["3x3", "depthwise", "1x1"])
def test_conv2d_output_memory_format_follows_input(case):
    for channels_last in (False, True):
        x, w, b, res, *rest = _make(CASES[case], torch.float16, channels_last, seed=0)
        y = _pydl(x, w, b, res, *rest, "relu")
        if channels_last:
            assert y.is_contiguous(memory_format=torch.channels_last)
        else:
            assert y.is_contiguous()
    # Mixed: NHWC input with an NCHW residual still yields an NHWC output.
    x, w, b, res, *rest = _make(CASES[case], torch.float32, True, seed=0)
    y = _pydl(x, w, b, res.contiguous(), *rest, "none")
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_conv2d_empty_batch():
    x = torch.randn(0, 8, 9, 9, device="cuda")
    w = torch.randn(16, 8, 3, 3, device="cuda")
    y = _pydl(x, w, None, None, (2, 2), (1, 1), (1, 1), 1, "relu")
    assert y.shape == (0, 16, 5, 5)
    xd = torch.randn(0, 8, 9, 9, device="cuda").to(memory_format=torch.channels_last)
    wd = torch.randn(8, 1, 3, 3, device="cuda")
    assert _pydl(xd, wd, None, None, (1, 1), (1, 1), (1, 1), 8, "none").shape == (0, 8, 9, 9)


def test_conv2d_runs_on_current_stream_and_device():
    s = torch.cuda.Stream()
    x, w, b, res, *rest = _make(CASES["3x3"], torch.float64, True, seed=1)
    with torch.cuda.stream(s):
        y = _pydl(x, w, b, res, *rest, "gelu")
    s.synchronize()
    ref = _reference(x, w, b, res, *rest, "gelu")
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-10, atol=1e-10)


_BAD_ARGUMENTS = [
    # (weight shape, groups, activation, expected message)
    ((6, 8, 3, 3), 4, "none", "divisible"),
    ((4, 8, 3, 3), 1, "tanh", "activation"),
    ((4, 4, 3, 3), 1, "none", "expects"),
]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("bad", _BAD_ARGUMENTS, ids=[b[3] for b in _BAD_ARGUMENTS])
def test_conv2d_bad_arguments_raise(bad, device):
    """Bad input raises a RuntimeError; it must never crash the process, so
    the call runs in a child interpreter (a crash there fails this test
    instead of ending the whole test session)."""
    shape, groups, act, message = bad
    code = (
        "import torch, pydl._C\n"
        f"x = torch.randn(1, 8, 5, 5, device='{device}')\n"
        f"w = torch.randn{shape}.to('{device}')\n"
        "try:\n"
        f"    torch.ops.pydl.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], {groups}, '{act}', None)\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}: {proc.stderr[-2000:]}"
    assert "RAISED" in proc.stdout and message in proc.stdout, proc.stdout


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("case", ["odd_sizes", "groups2", "depthwise_c6_5x5_s2", "dilation2"])
def test_conv2d_backward_matches_autograd(case, act):
    n, cin, h, w, cout, k, stride, padding, dilation, groups = CASES[case]
    case = (min(n, 2), cin, min(h, 9), min(w, 9), cout, k, stride, padding, dilation, groups)
    x, wt, b, res, stride, padding, dilation, groups = _make(case, torch.float64, False, seed=11)
    out = _pydl(x, wt, b, res, stride, padding, dilation, groups, act)
    gy = torch.randn_like(out)
    gx, gw, gb, gr = torch.ops.pydl.conv2d_backward(
        gy, x, wt, b, res, out, stride, padding, dilation, groups, act, [True] * 4
    )
    leaves = [t.detach().cpu().requires_grad_() for t in (x, wt, b, res)]
    ref = _torch_conv(*leaves, stride, padding, dilation, groups, act)
    ref.backward(gy.cpu())
    for got, leaf, name in zip((gx, gw, gb, gr), leaves, ("input", "weight", "bias", "residual")):
        assert got.device == x.device, name
        torch.testing.assert_close(got.cpu(), leaf.grad, rtol=1e-9, atol=1e-9, msg=name)
