"""Per-call backend choice for every op family, and the reason for it.

Policy (DESIGN.md, "Backends and fallback"):
  * pydl's kernel when the extension is loaded and supports the device/dtype;
  * on CUDA only once the family is verified on a GPU (pydl/_verified.py) or
    PYDL_EXPERIMENTAL_CUDA=1;
  * otherwise torch's own op. With PYDL_STRICT=1 a fallback raises instead.
"""

from __future__ import annotations

import os

import torch

from pydl import _ext
from pydl._verified import VERIFIED_CUDA

PYDL = "pydl"
TORCH = "torch"

def _cpu_bf16_units() -> bool:
    """MKL's bf16 GEMM exported by libtorch (what pydl's CPU bf16 attention
    tiles call; the extension says) and bf16 units to run it (AMX or
    AVX512-BF16); without them torch's own path is the better choice."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    units = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return units and _ext.loaded() and bool(torch.ops.pydl.cpu_bf16_gemm_available())


# Devices and dtypes each family's kernels accept.
# The CPU conv2d kernel also accepts bf16/fp16 (torch.ops.pydl.conv2d computes
# them in float32), but torch's oneDNN bf16 convolution (AMX where the CPU has
# it) ran 3-8x faster on this project's machine, so those calls go to torch.
SUPPORTED = {
    "conv2d": {
        "cpu": (torch.float32, torch.float64),
        "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    },
    # LSTM cell and layer. The CUDA kernels (cuBLAS + fused pointwise) are
    # opt-in until verified on a GPU (see pydl/_verified.py).
    "lstm": {
        "cpu": (torch.float32, torch.float64),
        "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    },
    # Fused attention. CPU bf16 where the CPU has bf16 units (see _cpu_bf16_units;
    # bf16 inference still goes to torch: pydl.ops.attention._torch_is_faster);
    # the CUDA kernels are opt-in until verified on a GPU (see pydl/_verified.py).
    "attention": {
        "cpu": (torch.float32, torch.float64) + ((torch.bfloat16,) if _cpu_bf16_units() else ()),
        "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    },
}


class FallbackError(RuntimeError):
    """Raised under PYDL_STRICT=1 when a call would not use pydl's kernel."""


def strict() -> bool:
    return os.environ.get("PYDL_STRICT") == "1"


def experimental_cuda() -> bool:
    return os.environ.get("PYDL_EXPERIMENTAL_CUDA") == "1"


def explain(family: str, device_type: str, dtype: torch.dtype | None = None) -> tuple[str, str]:
    """(backend, reason) for one family on one device type (and dtype)."""
    if not _ext.loaded():
        return TORCH, _ext.load_error() or "extension not loaded"
    devices = SUPPORTED[family]
    if device_type not in devices:
        return TORCH, f"no pydl {family} kernel for device '{device_type}'"
    if dtype is not None and dtype not in devices[device_type]:
        return TORCH, f"pydl's {family} kernel on {device_type} does not support {dtype}"
    if device_type == "cuda":
        if not _ext.built_with_cuda():
            return TORCH, "extension was built without CUDA kernels (PYDL_CUDA=0 or no nvcc)"
        verified = VERIFIED_CUDA.get(family)
        if verified is not None and verified.default:
            return PYDL, f"CUDA kernel verified on {verified.card} (torch {verified.torch}, {verified.date})"
        if experimental_cuda():
            return PYDL, "opt-in CUDA kernel enabled by PYDL_EXPERIMENTAL_CUDA=1"
        if verified is not None:
            return TORCH, (
                f"CUDA kernel verified on {verified.card} but not the default: {verified.note}; "
                "set PYDL_EXPERIMENTAL_CUDA=1 to use it"
            )
        return TORCH, (
            "CUDA kernel not yet verified on a GPU (scripts/gpu_check.sh); "
            "set PYDL_EXPERIMENTAL_CUDA=1 to use it"
        )
    return PYDL, "pydl kernel"


def autocast_to(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` as autocast hands it to a lower-precision op: a floating tensor
    but float64 in ``dtype``; float64, other dtypes and None as they are."""
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def functorch_transform_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) is running:
    pydl's ops have autograd formulas but no functorch rules, so such calls
    go to torch's ops, which have them."""
    return torch._C._functorch.maybe_current_level() is not None


# pydl's CUDA kernels use cp.async, ldmatrix and bf16 mma (sm_80+), and the
# build targets sm_80 / sm_90 (+ PTX): an older card has no image to run.
CUDA_MIN_CAPABILITY = (8, 0)


_CUDA_SUPPORTED: dict[int, bool] = {}  # per device index (a dict: Dynamo traces through it quietly)


def cuda_device_supported(index: int | None) -> bool:
    """Whether CUDA device ``index`` can run pydl's CUDA kernels. True where
    no driver answers (fake CUDA tensors traced on a machine without a GPU:
    the fake kernels need no image)."""
    if not torch.cuda.is_available():
        return True
    if index is None:
        index = torch.cuda.current_device()
    if index not in _CUDA_SUPPORTED:
        _CUDA_SUPPORTED[index] = (tuple(torch.cuda.get_device_capability(index))
                                  >= CUDA_MIN_CAPABILITY)
    return _CUDA_SUPPORTED[index]


def use_pydl(family: str, tensor: torch.Tensor) -> bool:
    """Whether this call should run pydl's kernel; raises under PYDL_STRICT=1 otherwise."""
    backend, reason = explain(family, tensor.device.type, tensor.dtype)
    if backend == PYDL and tensor.is_cuda and not cuda_device_supported(tensor.device.index):
        backend, reason = TORCH, (
            f"pydl's CUDA kernels need compute capability "
            f"{'.'.join(map(str, CUDA_MIN_CAPABILITY))} or newer")
    if backend == PYDL and functorch_transform_active():
        backend, reason = TORCH, "a torch.func transform is active (pydl's ops have no functorch rules)"
    if backend == PYDL:
        return True
    if strict():
        raise FallbackError(
            f"PYDL_STRICT=1: {family} on {tensor.device.type}/{tensor.dtype} would fall back "
            f"to torch: {reason}"
        )
    return False


def verified_cuda_serves(family: str, tensor: torch.Tensor) -> bool:
    """Whether pydl's CUDA kernel for ``family`` passed the `gpu` tests
    (pydl/_verified.py, default or not) and can run ``tensor``'s call: for
    calls torch's op cannot serve, where the alternative is a slow reference
    path rather than torch's faster kernel."""
    if not tensor.is_cuda or family not in VERIFIED_CUDA:
        return False
    if not (_ext.loaded() and _ext.built_with_cuda()) or functorch_transform_active():
        return False
    return tensor.dtype in SUPPORTED[family]["cuda"] and cuda_device_supported(tensor.device.index)
