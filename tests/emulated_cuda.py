"""pydl's CUDA kernels compiled for the CPU emulator of the CUDA execution model
(tests/cuda_emulation/cuda_emulator.h), loaded as torch.ops.pydl_emulated.

The emulated ops take CPU tensors and run the same host code (argument
handling, path choice) and the same kernel source as the CUDA ops, each CUDA
thread a fiber. Needs the CUDA toolkit's headers (not a GPU); the build is
cached under build/cuda_emulation.
"""

import contextlib
import functools
import glob
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES_DIR = os.path.join(ROOT, "tests", "cuda_emulation")
BUILD_DIR = os.path.join(ROOT, "build", "cuda_emulation")

# The same half-type macros as the real CUDA build (setup.py / torch's nvcc flags).
HALF_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]


def cuda_include_dirs() -> list:
    """The CUDA toolkit's include folder plus the nvidia-* wheels' headers, or []."""
    homes = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    toolkit = [os.path.join(h, "include") for h in homes if h]
    toolkit = [d for d in toolkit if os.path.isfile(os.path.join(d, "cuda_fp16.h"))][:1]
    if not toolkit:
        return []
    wheels = []
    for entry in sys.path:
        wheels.extend(sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include"))))
    return toolkit + list(dict.fromkeys(wheels))


def unavailable_reason() -> str:
    """Why the emulated kernels cannot be built here ('' if they can)."""
    if sys.platform != "linux":
        return "the CUDA emulator uses Linux ucontext fibers"
    if not cuda_include_dirs():
        return "no CUDA toolkit headers (cuda_fp16.h) found"
    from torch.utils import cpp_extension

    if torch.version.cuda is None or not any(
            os.path.isfile(os.path.join(d, "ATen", "cuda", "CUDAContext.h"))
            for d in cpp_extension.include_paths()):
        return "this torch is a CPU-only build (the CUDA entries include ATen's CUDA headers)"
    return ""


def pytest_marks() -> list:
    """Skips where the emulator cannot build, and in the extension-disabled
    pass (these tests check CUDA source, not a mode of pydl: run them once)."""
    import pytest

    reason = unavailable_reason()
    return [
        pytest.mark.skipif(bool(reason), reason=reason or "available"),
        pytest.mark.skipif(os.environ.get("PYDL_DISABLE_EXTENSION") == "1",
                           reason="CUDA source checks: run once, in the extension-mode pass"),
    ]


def _cflags() -> list:
    return [
        "-std=c++20",
        "-O1",
        "-DPYDL_CUDA_EMULATION",
        "-include",
        os.path.join(SOURCES_DIR, "cuda_emulator.h"),
        "-Wno-unused-function",
        *HALF_DEFINES,
    ]


@functools.cache
def _library():
    """Builds (once, cached on disk) and loads the emulated kernels."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    from torch.utils import cpp_extension

    os.makedirs(BUILD_DIR, exist_ok=True)
    sources = sorted(glob.glob(os.path.join(SOURCES_DIR, "*_emulated.cpp")))
    sources.append(os.path.join(SOURCES_DIR, "cuda_emulator.cpp"))
    cpp_extension.load(
        name="pydl_cuda_emulated",
        sources=sources,
        extra_cflags=_cflags(),
        extra_include_paths=[os.path.join(ROOT, "csrc"), SOURCES_DIR, *cuda_include_dirs()],
        # The emulator defines the CUDA runtime calls the host code makes;
        # bind them inside the library, never to the real runtime torch loaded.
        extra_ldflags=["-Wl,-Bsymbolic"],
        build_directory=BUILD_DIR,
        is_python_module=False,
        with_cuda=False,
        verbose=False,
    )
    return torch.ops.pydl_emulated


def _guarded_copy(t: torch.Tensor) -> torch.Tensor:
    """t in fresh guarded memory: the same storage size, offset and strides,
    so the kernels see the same layout, with an inaccessible page right after."""
    storage = t.untyped_storage()
    numel = storage.nbytes() // t.element_size()
    whole = torch.empty(0, dtype=t.dtype).set_(storage, 0, (numel,), (1,))
    return torch.empty(numel, dtype=t.dtype).copy_(whole).as_strided(
        t.shape, t.stride(), t.storage_offset())


class _GuardedOps:
    """torch.ops.pydl_emulated, with each kernel op called on guarded copies
    of its tensors and every tensor it allocates guarded too (cuda_emulator.h:
    guard_host_allocations): a kernel's access past any tensor faults."""

    _SETTINGS = frozenset({"configure", "guard_host_allocations", "launch_count", "block_count",
                           "mma_count", "grid_barrier_count", "smem_wavefronts"})

    def __init__(self, library):
        self._library = library

    def __getattr__(self, name):
        op = getattr(self._library, name)
        if name in self._SETTINGS:
            return op

        def guarded(*args):
            self._library.guard_host_allocations(True)
            try:
                copies = [_guarded_copy(a) if isinstance(a, torch.Tensor) else a for a in args]
                return op(*copies)
            finally:
                self._library.guard_host_allocations(False)

        return guarded


@functools.cache
def ops():
    """The emulated CUDA ops (builds them on first use): attention,
    attention_backward, lstm_cell(_backward), lstm_layer(_backward), with
    pydl's schemas, taking CPU tensors; plus configure and the counters
    launch_count / block_count / mma_count / grid_barrier_count / smem_wavefronts."""
    return _GuardedOps(_library())


H100_SMEM = 227 * 1024
_DEFAULT_DEVICE = (8, H100_SMEM, False, False, False, False)
_device_stack = [_DEFAULT_DEVICE]


@contextlib.contextmanager
def emulated_device(sm_count=8, max_smem_optin=H100_SMEM, warp_greedy=False, reverse=False,
                    eager_copies=False, block_greedy=False):
    """The emulated device's shape and the scheduler's choices, for the `with`
    body (block_greedy: each block of a cooperative launch runs as far as it
    can before the next starts). Nests: on exit the enclosing settings come
    back."""
    _device_stack.append((sm_count, max_smem_optin, warp_greedy, block_greedy, reverse,
                          eager_copies))
    ops().configure(*_device_stack[-1])
    try:
        yield
    finally:
        _device_stack.pop()
        ops().configure(*_device_stack[-1])


def run_warp_tensor_core_selftest() -> subprocess.CompletedProcess:
    """Compiles and runs the self-test of the emulated ldmatrix / mma layouts."""
    os.makedirs(BUILD_DIR, exist_ok=True)
    exe = os.path.join(BUILD_DIR, "warp_tensor_core_selftest")
    src = os.path.join(SOURCES_DIR, "warp_tensor_core_selftest.cpp")
    include = [f"-I{d}" for d in cuda_include_dirs()[:1]]
    build = subprocess.run(["g++", "-std=c++17", "-O1", *include, src, "-o", exe],
                           capture_output=True, text=True, check=False)
    if build.returncode != 0:
        return build
    return subprocess.run([exe], capture_output=True, text=True, check=False, timeout=300)
