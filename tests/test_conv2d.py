"""pydl conv2d (functional and op) against the float64 reference and torch's conv2d."""

import os
import random
import tempfile

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    LOW_PRECISION_FACTOR,
    assert_close_rel,
    needs_extension,
    rel_error,
    run_with_cpu_isa,
)
from torch._prims_common import suggest_memory_format

import pydl
from pydl import reference
from pydl.ops.conv import torch_conv2d

ACTIVATIONS = ["none", "relu", "gelu", "gelu_tanh", "silu"]

# (N, C, H, W, K, kh, kw, stride, padding, dilation, groups): the awkward ones on purpose.
CONFIGS = [
    (2, 8, 9, 11, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 8, 9, 11, 16, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    (1, 6, 13, 10, 12, 5, 3, (2, 1), (2, 1), (2, 1), 2),
    (3, 16, 8, 8, 16, 3, 3, (1, 1), (1, 1), (1, 1), 16),  # depthwise
    (2, 12, 9, 9, 12, 3, 3, (2, 2), (0, 0), (2, 2), 12),  # depthwise, strided, dilated
    (2, 64, 7, 7, 32, 1, 1, (1, 1), (0, 0), (1, 1), 1),  # 1x1
    (1, 3, 31, 29, 8, 7, 7, (2, 2), (3, 3), (1, 1), 1),  # stem
    (1, 5, 5, 5, 7, 5, 5, (1, 1), (0, 0), (1, 1), 1),  # 1x1 output
    (2, 8, 6, 7, 16, 1, 3, (3, 2), (0, 2), (1, 3), 4),  # grouped, uneven everything
    (1, 4, 1, 9, 4, 1, 3, (1, 1), (0, 1), (1, 1), 1),  # H = 1
    (2, 6, 8, 8, 12, 3, 3, (1, 1), (1, 1), (1, 1), 6),  # depthwise multiplier 2
    (1, 8, 5, 100, 8, 3, 3, (1, 1), (1, 1), (1, 1), 8),  # depthwise, wide rows (plane path)
    (1, 8, 6, 53, 8, 3, 5, (2, 2), (1, 2), (1, 2), 8),  # the same, strided and dilated
]


def _random_configs(count, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        groups = rng.choice([1, 1, 2, 3])
        c = groups * rng.randint(1, 6)
        k = groups * rng.randint(1, 6)
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        st = (rng.randint(1, 3), rng.randint(1, 3))
        dil = (rng.randint(1, 2), rng.randint(1, 2))
        pad = (rng.randint(0, 3), rng.randint(0, 3))
        h = rng.randint(dil[0] * (kh - 1) + 1, 14)
        w = rng.randint(dil[1] * (kw - 1) + 1, 14)
        out.append((rng.randint(1, 3), c, h, w, k, kh, kw, st, pad, dil, groups))
    return out


ALL_CONFIGS = CONFIGS + _random_configs(12, seed=1234)


def _make(cfg, dtype, fmt=torch.contiguous_format, bias=True, residual=False, seed=0):
    n, c, h, w, k, kh, kw, stride, padding, dilation, groups = cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    weight = torch.randn(k, c // groups, kh, kw, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(k, generator=g, dtype=torch.float64).to(dtype) if bias else None
    x = x.contiguous(memory_format=fmt)
    out_shape = F.conv2d(x.double(), weight.double(), None, stride, padding, dilation, groups).shape
    r = torch.randn(out_shape, generator=g, dtype=torch.float64).to(dtype) if residual else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), r


def _reference(x, weight, b, conf, activation, r):
    d = lambda t: None if t is None else t.double()
    return reference.conv2d(d(x), d(weight), d(b), activation=activation, residual=d(r), **conf)


@pytest.mark.parametrize("cfg", ALL_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_forward_matches_reference_and_torch(cfg, dtype, fmt):
    x, weight, b, conf, r = _make(cfg, dtype, fmt, residual=True)
    for activation in ACTIVATIONS:
        out = pydl.ops.conv2d(x, weight, b, activation=activation, residual=r, **conf)
        assert out.dtype == dtype
        assert out.is_contiguous(memory_format=suggest_memory_format(x))  # follows the input
        expected = _reference(x, weight, b, conf, activation, r)
        assert out.shape == expected.shape
        assert_close_rel(out, expected, dtype, f"{cfg} {activation}")
        assert_close_rel(out, torch_conv2d(x, weight, b, activation=activation, residual=r, **conf),
                         dtype, f"vs torch {cfg} {activation}")


@pytest.mark.parametrize("cfg", ALL_CONFIGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_matches_reference(cfg, activation):
    x, weight, b, conf, r = _make(cfg, torch.float64, residual=True, seed=7)
    leaves = [t.requires_grad_() for t in (x, weight, b, r)]
    out = pydl.ops.conv2d(x, weight, b, activation=activation, residual=r, **conf)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(_reference(x, weight, b, conf, activation, r), leaves, grad)
    for name, g_got, g_want in zip(["x", "weight", "bias", "residual"], got, want):
        assert_close_rel(g_got, g_want, torch.float64, f"grad {name} {cfg} {activation}")


def test_backward_float32_channels_last_matches_torch():
    x, weight, b, conf, _ = _make(CONFIGS[2], torch.float32, torch.channels_last)
    leaves = [t.requires_grad_() for t in (x, weight, b)]
    out = pydl.ops.conv2d(x, weight, b, activation="silu", **conf)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(F.silu(F.conv2d(x, weight, b, **conf)), leaves, grad)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for g_got, g_want in zip(got, want):
        assert_close_rel(g_got, g_want, torch.float32, "float32 grads")


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[4], CONFIGS[8]])
def test_gradcheck(cfg):
    n, c, h, w, k, kh, kw, stride, padding, dilation, groups = cfg
    small = (1, c, min(h, 7), min(w, 7), k, kh, kw, stride, padding, dilation, groups)
    x, weight, b, conf, r = _make(small, torch.float64, residual=True)
    for t in (x, weight, b, r):
        t.requires_grad_()
    for activation in ("gelu", "relu"):
        fn = lambda x, w, b, r: pydl.ops.conv2d(x, w, b, activation=activation, residual=r, **conf)
        assert torch.autograd.gradcheck(fn, (x, weight, b, r))


def test_non_contiguous_inputs():
    base = torch.randn(2, 20, 15, 17, dtype=torch.float64)
    x = base[:, 2:18:2, 1:14, ::2]  # strided view in every dim
    weight = torch.randn(8, 10, 6, 3, dtype=torch.float64).permute(0, 1, 3, 2)[:, :8]
    residual_base = torch.randn(2, 7, 8, 12, dtype=torch.float64)
    residual = residual_base.permute(0, 3, 1, 2)[:, :8, :, :4]
    assert not x.is_contiguous() and not weight.is_contiguous() and not residual.is_contiguous()
    conf = dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=1)
    out = pydl.ops.conv2d(x, weight, None, activation="relu", residual=residual, **conf)
    expected = reference.conv2d(x, weight, None, activation="relu", residual=residual, **conf)
    assert_close_rel(out, expected, torch.float64, "non-contiguous")


@needs_extension
def test_bfloat16_kernel_error_within_twice_torch():
    """The CPU kernel's bf16 support (computed in float32); pydl.ops routes
    CPU bf16 to torch's faster oneDNN kernel instead (see _backend.SUPPORTED)."""
    x, weight, b, conf, _ = _make(CONFIGS[0], torch.bfloat16, torch.channels_last)
    out = torch.ops.pydl.conv2d(x, weight, b, list(conf["stride"]), list(conf["padding"]),
                                list(conf["dilation"]), conf["groups"], "gelu", None)
    assert out.dtype == torch.bfloat16
    expected = _reference(x, weight, b, conf, "gelu", None)
    torch_err = rel_error(F.gelu(F.conv2d(x, weight, b, **conf)), expected)
    assert rel_error(out, expected) <= LOW_PRECISION_FACTOR * torch_err + 1e-6


def test_padding_same_and_valid_strings():
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    for kernel, dilation in (((3, 4), (1, 1)), ((2, 5), (2, 1))):
        weight = torch.randn(6, 4, *kernel, dtype=torch.float64)
        for padding in ("same", "valid"):
            out = pydl.ops.conv2d(x, weight, padding=padding, dilation=dilation)
            expected = reference.conv2d(x, weight, padding=padding, dilation=dilation)
            assert out.shape == expected.shape
            assert_close_rel(out, expected, torch.float64, padding)


def test_unbatched_input():
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    out = pydl.ops.conv2d(x, weight, padding=1)
    assert out.shape == (5, 8, 8)
    assert_close_rel(out, F.conv2d(x, weight, padding=1), torch.float64, "unbatched")


def test_empty_batch_forward_and_backward():
    x = torch.randn(0, 4, 8, 8, requires_grad=True)
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    out = pydl.ops.conv2d(x, weight, bias, padding=1, activation="relu")
    assert out.shape == (0, 6, 8, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (torch.randn(4, 8), torch.randn(6, 4, 3, 3), {}), "expected"),
        (lambda: (torch.randn(1, 2, 4, 8, 8), torch.randn(6, 4, 3, 3), {}), "expected"),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3).double(), {}), "dtype|type"),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(6, 2, 3, 3), {"groups": 3}), "divisible|groups=3"),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(6, 3, 3, 3), {}), "channels"),
        (lambda: (torch.randn(2, 4, 2, 2), torch.randn(6, 4, 3, 3), {}), "output|size|small"),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), {"stride": 0}), "stride"),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), {"padding": -1}), "padding"),
    ],
)
def test_bad_input_gives_clear_errors(make, message):
    x, weight, kwargs = make()
    with pytest.raises((RuntimeError, ValueError), match=f"(?i){message}"):
        pydl.ops.conv2d(x, weight, **kwargs)


def test_bad_activation_and_residual():
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="activation"):
        pydl.ops.conv2d(x, weight, activation="tanh")
    with pytest.raises((RuntimeError, ValueError), match="(?i)residual|size|shape"):
        pydl.ops.conv2d(x, weight, residual=torch.randn(1, 3, 5, 5))


@needs_extension
def test_op_errors_come_from_cpp():
    x, weight = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.pydl.conv2d(x, weight.double(), None, [1, 1], [1, 1], [1, 1], 1, "none", None)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        torch.ops.pydl.conv2d(x, weight, torch.randn(5), [1, 1], [1, 1], [1, 1], 1, "none", None)
    with pytest.raises(RuntimeError, match="unknown activation"):
        torch.ops.pydl.conv2d(x, weight, None, [1, 1], [1, 1], [1, 1], 1, "tanh", None)


@needs_extension
def test_gradients_only_where_asked_and_no_double_backward():
    # The op's autograd (C++): each gradient only for the tensors that
    # require it (bias absent, residual present: the edges shift), no graph
    # under no_grad, and a second-order gradient refused loudly.
    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    out = pydl.ops.conv2d(x, w, None, activation="gelu", residual=r)
    g_w, g_r = torch.autograd.grad(out.square().sum(), (w, r), retain_graph=True)
    ref = torch_conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, "gelu", r)
    want_w, want_r = torch.autograd.grad(ref.square().sum(), (w, r))
    assert_close_rel(g_w, want_w, torch.float64, "grad_weight")
    assert_close_rel(g_r, want_r, torch.float64, "grad_residual")
    assert g_w.grad_fn is None
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.square().sum(), w, create_graph=True)
    with torch.no_grad():
        assert pydl.ops.conv2d(x, w, None, residual=r).grad_fn is None


@needs_extension
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[8]])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
def test_opcheck(cfg, activation):
    x, weight, b, conf, r = _make(cfg, torch.float64, residual=True)
    args = (x.requires_grad_(), weight.requires_grad_(), b.requires_grad_(), list(conf["stride"]),
            list(conf["padding"]), list(conf["dilation"]), conf["groups"], activation,
            r.requires_grad_())
    torch.library.opcheck(torch.ops.pydl.conv2d.default, args)


@needs_extension
@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_each_cpu_isa_build_is_correct(isa):
    """Each per-ISA build of the CPU loops, forced with ATEN_CPU_CAPABILITY."""
    code = (
        "import torch, pydl\n"
        "from pydl import reference\n"
        "x = torch.randn(2, 6, 9, 8, dtype=torch.float64)\n"
        "w = torch.randn(6, 3, 3, 3, dtype=torch.float64)\n"
        "b = torch.randn(6, dtype=torch.float64)\n"
        "for groups, wt in ((2, w), (6, w[:, :1])):\n"
        "    got = torch.ops.pydl.conv2d(x, wt, b, [2, 1], [1, 1], [1, 1], groups, 'gelu', None)\n"
        "    want = reference.conv2d(x, wt, b, (2, 1), 1, 1, groups, 'gelu')\n"
        "    assert (got - want).abs().max() < 1e-10, (got - want).abs().max()\n"
        "    got = torch.ops.pydl.conv2d(x.float(), wt.float(), b.float(), [1, 1], [1, 1], [1, 1], groups, 'silu', None)\n"
        "    want = reference.conv2d(x, wt, b, 1, 1, 1, groups, 'silu')\n"
        "    assert (got - want).abs().max() < 1e-4\n"
        "print(torch.ops.pydl.conv2d_cpu_isa())\n"
    )
    result = run_with_cpu_isa(isa, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == isa.upper()


# Float32 dense layers with 64-channel output blocks, a kernel wider than 1x1
# and >= 64 output pixels: the AVX-512 build runs them on the direct kernel
# (csrc/conv/cpu/isa/direct_avx512.h), other builds on the GEMM path. Row
# widths hit its 14-pixel blocks, the 7-pixel block and tails of 1 to 6
# pixels after each; strides, dilation, uneven padding and channel counts
# that are no multiple of 16 on purpose.
DIRECT_CONFIGS = [
    (1, 64, 16, 29, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # rows 14 + 14 + 1
    (2, 17, 9, 20, 128, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # 14 + 6, two blocks
    (1, 3, 30, 30, 64, 7, 7, (2, 2), (3, 3), (1, 1), 1),  # stem-like, rows 14 + 1
    (2, 24, 12, 13, 64, 3, 5, (2, 1), (2, 0), (1, 2), 1),  # dilated, rows of 5
    (1, 40, 19, 12, 192, 2, 2, (1, 2), (0, 1), (2, 1), 1),  # rows of 7, three blocks
    (1, 8, 12, 11, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # 7 + 4
    (2, 5, 20, 16, 64, 3, 3, (2, 1), (2, 1), (2, 1), 1),  # dilated and strided rows, 14 + 2
    (1, 16, 9, 10, 64, 3, 3, (1, 1), (1, 0), (1, 1), 1),  # 7 + 1 (W 10, no column padding)
    (1, 32, 8, 12, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # 7 + 5
    (1, 12, 11, 17, 64, 3, 3, (1, 1), (1, 2), (1, 1), 1),  # 14 + 5
    (1, 12, 11, 15, 64, 3, 3, (1, 1), (1, 2), (1, 1), 1),  # 14 + 3
    (1, 12, 11, 11, 64, 3, 3, (1, 1), (1, 2), (1, 1), 1),  # 7 + 6
    (1, 12, 16, 9, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # 7 + 2
    (1, 12, 16, 10, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # 7 + 3
    (2, 16, 7, 7, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # rows of 7 in pairs, across images
    (3, 8, 13, 14, 128, 3, 3, (2, 2), (1, 1), (1, 1), 1),  # the same strided, 21 rows: one alone
]


def _direct_kernel_built():
    return pydl._ext.loaded() and torch.ops.pydl.conv2d_cpu_isa() == "AVX512"


def _max_rel(out, expected):
    return ((out.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("cfg", DIRECT_CONFIGS)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_direct_kernel_shapes_match_reference(cfg, fmt):
    x, weight, b, conf, r = _make(cfg, torch.float32, fmt, residual=True, seed=3)
    weight = weight.contiguous(memory_format=fmt)
    for activation, residual, bias in (("none", None, None), ("gelu", r, b)):
        out = pydl.ops.conv2d(x, weight, bias, activation=activation, residual=residual, **conf)
        expected = _reference(x, weight, bias, conf, activation, residual)
        assert out.is_contiguous(memory_format=fmt)
        # elementwise, so one wrong pixel or channel cannot hide in a norm
        assert _max_rel(out, expected) < 2e-6, f"{cfg} {fmt} {activation}"


@needs_extension
def test_direct_kernel_reads_strided_and_low_precision_inputs():
    cfg = DIRECT_CONFIGS[1]
    x, weight, b, conf, _ = _make(cfg, torch.float32, seed=4)
    wide = torch.randn(x.shape[0], x.shape[1] + 5, x.shape[2], 2 * x.shape[3])
    view = wide[:, 2 : 2 + x.shape[1], :, ::2]  # strided in C and W
    view.copy_(x)
    assert not view.is_contiguous()
    wide_weight = torch.randn(2 * weight.shape[0], weight.shape[1] + 1, *weight.shape[2:])
    weight_view = wide_weight[::2, 1:]  # strided in Cout and Cin
    weight_view.copy_(weight)
    assert not weight_view.is_contiguous()
    out = pydl.ops.conv2d(view, weight_view, b, activation="relu", **conf)
    assert _max_rel(out, _reference(x, weight, b, conf, "relu", None)) < 2e-6
    # channels_last storage whose pixels are further apart than C
    padded = torch.zeros(x.shape[0], x.shape[2], x.shape[3], x.shape[1] + 3)
    padded[..., : x.shape[1]] = x.permute(0, 2, 3, 1)
    gapped = padded.permute(0, 3, 1, 2)[:, : x.shape[1]]
    assert gapped.stride(1) == 1 and gapped.stride(3) == x.shape[1] + 3
    out = pydl.ops.conv2d(gapped, weight, b, **conf)
    assert _max_rel(out, _reference(x, weight, b, conf, "none", None)) < 2e-6
    for low in (torch.bfloat16, torch.float16):
        xl, wl, bl = x.to(low), weight.to(low), b.to(low)
        got = torch.ops.pydl.conv2d(xl, wl, bl, list(conf["stride"]), list(conf["padding"]),
                                    list(conf["dilation"]), 1, "none", None)
        expected = _reference(xl, wl, bl, conf, "none", None)
        torch_err = rel_error(F.conv2d(xl.float(), wl.float(), bl.float(), **conf).to(low),
                              expected)
        assert got.dtype == low
        assert rel_error(got, expected) <= LOW_PRECISION_FACTOR * torch_err + 1e-6, low


@pytest.mark.skipif(not _direct_kernel_built(), reason="the direct kernel is AVX-512 only")
def test_direct_kernel_and_gemm_path_agree():
    """PYDL_CONV_DIRECT=0 (read once per process) keeps the GEMM path: the
    same layer through both paths, in two processes, agrees to float32
    rounding and with the reference. Stride 2, so the GEMM path sums the
    taps in its phase order, the direct kernel in (row, column) order: the
    outputs differ in their last bits, which shows the direct kernel ran
    (at stride 1 both paths can round identically)."""
    code = (
        "import torch, pydl\n"
        "from pydl import reference\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(2, 32, 21, 45, generator=g).contiguous(memory_format=torch.channels_last)\n"
        "w = torch.randn(128, 32, 3, 3, generator=g)\n"
        "b = torch.randn(128, generator=g)\n"
        "out = torch.ops.pydl.conv2d(x, w, b, [2, 2], [1, 1], [1, 1], 1, 'silu', None)\n"
        "ref = reference.conv2d(x.double(), w.double(), b.double(), 2, 1, 1, 1, 'silu')\n"
        "assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 2e-6\n"
        "torch.save(out, __import__('os').environ['PYDL_TEST_OUT'])\n"
    )
    outs = []
    with tempfile.TemporaryDirectory() as tmp:
        for flag in ("1", "0"):
            path = os.path.join(tmp, f"out{flag}.pt")
            result = run_with_cpu_isa("avx512", code, PYDL_CONV_DIRECT=flag, PYDL_TEST_OUT=path)
            assert result.returncode == 0, result.stderr
            outs.append(torch.load(path))
    assert _max_rel(outs[0], outs[1].double()) < 2e-6
    assert not torch.equal(outs[0], outs[1])


# Stride-1 dense layers with 64 input channels: their input gradient is a
# convolution with the flipped, transposed weight, padded by dil*(k-1) - pad
# (here different from pad), and runs on the direct kernel too.
DX_BY_CONV_CONFIGS = [
    DIRECT_CONFIGS[0],
    (1, 64, 9, 10, 64, 3, 3, (1, 1), (1, 0), (1, 1), 1),  # gradient padding (1, 2)
    (1, 64, 12, 13, 64, 3, 3, (1, 1), (0, 0), (2, 2), 1),  # dilated: (4, 4)
    (2, 64, 9, 11, 64, 3, 5, (1, 1), (2, 1), (1, 2), 1),  # 3 x 5, uneven: (0, 7)
]


@pytest.mark.parametrize("cfg", DX_BY_CONV_CONFIGS + [DIRECT_CONFIGS[3]])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("only_input", [False, True])
def test_float32_gradients_of_direct_kernel_shapes(cfg, fmt, only_input):
    x, weight, b, conf, r = _make(cfg, torch.float32, fmt, residual=True, seed=5)
    leaves = [t.requires_grad_() for t in (x, weight, b, r)]
    if only_input:
        out = pydl.ops.conv2d(x, weight.detach(), None, activation="relu", **conf)
        grad = torch.randn_like(out)
        (got,) = torch.autograd.grad(out, [x], grad)
        expected = _reference(x, weight.detach(), None, conf, "relu", None)
        (want,) = torch.autograd.grad(expected, [x], grad.double())
        assert got.is_contiguous(memory_format=fmt)
        assert _max_rel(got, want) < 2e-5, f"grad x only {cfg}"
        return
    out = pydl.ops.conv2d(x, weight, b, activation="silu", residual=r, **conf)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(_reference(x, weight, b, conf, "silu", r), leaves, grad.double())
    assert got[0].is_contiguous(memory_format=fmt)
    for name, g_got, g_want in zip(["x", "weight", "bias", "residual"], got, want):
        assert _max_rel(g_got, g_want) < 2e-5, f"grad {name} {cfg}"
