"""Depthwise conv2d's CPU kernels (csrc/conv/cpu/isa/depthwise.h) against the float64 reference.

Each shape is picked for a branch of the kernels: channels_last input runs the
direct kernel (whole kernel rows through depthwise_rows for 3/5/7-wide
kernels at column stride 1 or 2 and dilation 1; depthwise_interior's pixel
and channel blocks otherwise; border pixels; the C % vector-width tail), NCHW
input with narrow rows the packed path (depthwise_rows at column stride 1),
NCHW with rows of >= 24 pixels at column stride 2 or >= 96 pixels the plane
path (conv2d_cpu.cpp's rule). Output rows of 1 to 17 pixels
hit the 8- and 4-pixel blocks, the 4-block moved back to the row's end, and
rows too narrow for either.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_extension, run_with_cpu_isa

import pydl
from pydl import reference

# (N, C, H, W, kh, kw, stride, padding, dilation)
CONFIGS = [
    (2, 16, 9, 14, 3, 3, (1, 1), (1, 1), (1, 1)),  # rows 14: 8 + 4 interior, 2 borders
    (1, 37, 8, 19, 3, 3, (1, 1), (1, 1), (1, 1)),  # channel tail of 5 (AVX-512), rows 17
    (2, 48, 7, 7, 3, 3, (1, 1), (1, 1), (1, 1)),  # rows of 7: 4 + the moved-back 4
    (1, 20, 6, 6, 3, 3, (1, 1), (0, 0), (1, 1)),  # unpadded rows of 4
    (1, 24, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1)),  # interior of 3: pixel by pixel
    (2, 40, 11, 13, 3, 3, (2, 2), (1, 1), (1, 1)),  # stride 2, rows of 7
    (1, 32, 12, 29, 3, 3, (2, 2), (1, 1), (1, 1)),  # stride 2, rows of 15
    (1, 18, 10, 12, 5, 5, (1, 1), (2, 2), (1, 1)),  # 5x5, tail of 2
    (1, 64, 9, 21, 5, 5, (2, 2), (2, 2), (1, 1)),  # 5x5 stride 2
    (1, 16, 13, 20, 7, 7, (1, 1), (3, 3), (1, 1)),  # 7x7
    (1, 16, 10, 22, 3, 5, (1, 2), (1, 2), (1, 1)),  # 3x5, column stride 2 only
    (1, 16, 10, 12, 5, 3, (2, 1), (2, 1), (1, 1)),  # 5x3, row stride 2 only
    (1, 24, 10, 16, 3, 3, (1, 1), (2, 2), (2, 2)),  # dilated: depthwise_interior
    (1, 16, 9, 11, 2, 2, (1, 1), (0, 0), (1, 1)),  # 2x2: depthwise_interior
    (1, 16, 8, 10, 3, 3, (3, 3), (1, 1), (1, 1)),  # stride 3: depthwise_interior
    (1, 3, 9, 12, 3, 3, (1, 1), (1, 1), (1, 1)),  # fewer channels than any vector
    (1, 16, 15, 31, 7, 7, (2, 2), (3, 3), (1, 1)),  # 7x7 stride 2
    (1, 16, 4, 4, 3, 3, (1, 1), (3, 3), (1, 1)),  # padding past the kernel: taps-less pixels
    (1, 16, 6, 30, 3, 3, (1, 1), (1, 1), (1, 1)),  # NCHW rows of 30: still packed
    (1, 16, 5, 100, 3, 3, (1, 1), (1, 1), (1, 1)),  # NCHW rows of 100: the plane path
    (1, 16, 7, 61, 5, 5, (1, 2), (2, 2), (1, 1)),  # NCHW rows of 31 at stride 2: planes
    (1, 16, 3, 3, 3, 3, (1, 1), (0, 0), (1, 1)),  # a single output pixel
]


def _run(cfg, dtype, fmt, activation, with_residual=True, seed=0):
    n, c, h, w, kh, kw, stride, padding, dilation = cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c, 1, kh, kw, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    conf = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    out_shape = F.conv2d(x, weight, None, **conf).shape
    residual = torch.randn(out_shape, generator=g, dtype=torch.float64) if with_residual else None
    expected = reference.conv2d(x, weight, bias, activation=activation, residual=residual, **conf)
    x, weight, bias = (t.to(dtype) for t in (x, weight, bias))
    x = x.contiguous(memory_format=fmt)
    if residual is not None:
        residual = residual.to(dtype).contiguous(memory_format=fmt)
    out = pydl.ops.conv2d(x, weight, bias, activation=activation, residual=residual, **conf)
    return out, expected


def _max_rel(out, expected):
    return ((out.double() - expected).abs().max() / expected.abs().max()).item()


@needs_extension
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depthwise_shapes_match_reference(cfg, fmt, dtype):
    # gelu: the epilogue kept out of line; without a residual, an NCHW output
    # row is written by one transpose.
    for activation, with_residual in (("none", True), ("relu", False), ("gelu", True),
                                      ("gelu", False)):
        out, expected = _run(cfg, dtype, fmt, activation, with_residual)
        assert out.shape == expected.shape
        assert out.is_contiguous(memory_format=fmt)
        tol = 2e-6 if dtype == torch.float32 else 1e-13
        assert _max_rel(out, expected) < tol, (cfg, fmt, dtype, activation, with_residual)


@needs_extension
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_depthwise_without_bias_or_residual_matches_torch(fmt):
    x = torch.randn(2, 48, 14, 14).contiguous(memory_format=fmt)
    weight = torch.randn(48, 1, 3, 3)
    for stride in (1, 2):
        got = pydl.ops.conv2d(x, weight, None, stride, 1, 1, 48)
        want = F.conv2d(x.double(), weight.double(), None, stride, 1, 1, 48)
        assert got.is_contiguous(memory_format=fmt)
        assert _max_rel(got, want) < 2e-6


@needs_extension
def test_depthwise_reads_a_channel_slice_of_an_nchw_tensor():
    """pack_input's transpose with a channel stride that is not H * W."""
    base = torch.randn(2, 40, 9, 13, dtype=torch.float64)
    x = base[:, 3:35]
    assert x.stride(1) == 9 * 13 and x.stride(0) == 40 * 9 * 13
    weight = torch.randn(32, 1, 3, 3, dtype=torch.float64)
    want = F.conv2d(x, weight, None, 1, 1, 1, 32)
    assert _max_rel(pydl.ops.conv2d(x, weight, None, 1, 1, 1, 32), want) < 1e-13
    sliced = base.float()[:, 3:35]  # a float32 view, same strides
    assert _max_rel(pydl.ops.conv2d(sliced, weight.float(), None, 1, 1, 1, 32), want) < 2e-6


@needs_extension
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_depthwise_bfloat16_within_twice_torch_error(fmt):
    """The kernel's bf16 path (float32 compute, the generic epilogue); called
    through the op, since pydl.ops routes CPU bf16 to torch's oneDNN."""
    x = torch.randn(2, 32, 10, 10, dtype=torch.float64)
    weight = torch.randn(32, 1, 3, 3, dtype=torch.float64)
    want = F.conv2d(x, weight, None, 1, 1, 1, 32)
    xb = x.bfloat16().contiguous(memory_format=fmt)
    got = torch.ops.pydl.conv2d(xb, weight.bfloat16(), None, [1, 1], [1, 1], [1, 1], 32, "none",
                                None)
    torch_err = _max_rel(F.conv2d(xb, weight.bfloat16(), None, 1, 1, 1, 32), want)
    assert got.dtype == torch.bfloat16
    assert _max_rel(got, want) <= 2 * torch_err + 1e-3


@needs_extension
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_depthwise_shapes_on_other_isa_builds(isa):
    """The same shapes through the AVX2 build (8-float vectors, 16 registers) and the
    default build (no register pinning)."""
    code = (
        "import torch, sys\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "from test_conv2d_depthwise import CONFIGS, _run, _max_rel\n"
        "for cfg in CONFIGS:\n"
        "    for fmt in (torch.channels_last, torch.contiguous_format):\n"
        "        out, expected = _run(cfg, torch.float32, fmt, 'relu')\n"
        "        assert _max_rel(out, expected) < 2e-6, (cfg, fmt)\n"
        "        out, expected = _run(cfg, torch.float32, fmt, 'silu', with_residual=False)\n"
        "        assert _max_rel(out, expected) < 2e-6, (cfg, fmt)\n"
        "        out, expected = _run(cfg, torch.float64, fmt, 'none')\n"
        "        assert _max_rel(out, expected) < 1e-13, (cfg, fmt)\n"
        "print(torch.ops.pydl.conv2d_cpu_isa())\n"
    )
    result = run_with_cpu_isa(isa, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == isa.upper()
