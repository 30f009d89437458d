"""Static checks of the compiled CUDA kernels, no GPU needed: no kernel in
pydl._C keeps a per-thread stack (local memory: spilled registers, or an
array indexed at run time), read from its sm_80 / sm_90 cubins with
cuobjdump (it comes with triton, which torch's CUDA build installs).

Local memory is a silent performance hazard the emulator cannot see: an
accumulator array nvcc fails to keep in registers still gives right answers,
through memory, in every lane, every iteration. The few kernels that do use
some are listed below with their measured stack and why; any other kernel,
or more stack than listed, fails.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess

import pytest

from pydl import _ext

# (pattern on the mangled name, most stack bytes allowed, why)
KNOWN_STACK = [
    (r"tc14forward_kernel.*ForwardTraitsILi256E", 8,
     "tensor-core forward at head dim 256: 255 registers, 12 bytes of spills (sm_90)"),
    (r"tc14forward_kernel.*ForwardTraitsILi128ELi2E", 16,
     "tensor-core forward at head dim 128 with two m-tiles per warp: 255 registers; "
     "loop-invariant values reloaded once or twice per key tile, outside the mma loops "
     "(8 bytes on sm_90, 16 on sm_80)"),
    (r"tc14forward_kernel.*ForwardTraitsILi64ELi2E", 8,
     ("tensor-core forward at head dim 64 with two m-tiles (168 registers): since the "
      "whole-tile softmax, one loop-invariant value (the key-tile count) on the stack, "
      "read once per key tile (sm_80; none on sm_90)")),
    (r"tc14forward_kernel.*ForwardTraitsILi64ELi1E", 16,
     ("tensor-core forward at head dim 64, one m-tile: capped at 168 registers (3 CTAs "
      "per SM, ForwardTraits::kMinBlocks); 16 bytes, three reloads per key tile, outside "
      "the mma and exponential loops (sm_90 SASS)")),
    (r"tc9dq_kernel.*BackwardTraitsILi64ELi1E", 32,
     ("tensor-core dQ kernel at head dim 64, one m-tile: capped at 168 registers (3 CTAs "
      "per SM, BackwardTraits::kMinBlocks); 32 bytes, one reload per key tile in its "
      "whole-tile loop (sm_90 SASS), the rest outside the loop")),
    (r"4simt(11dkdv|9dq)_kernel", 32,
     "CUDA-core backward (float32/64 and odd head dims): 8-32 bytes, not yet looked into"),
    (r"conv2d_depthwise_kernel", 8, "depthwise conv with its epilogue: 8 bytes"),
]


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    triton = importlib.util.find_spec("triton")
    if triton and triton.origin:
        path = os.path.join(os.path.dirname(triton.origin), "backends", "nvidia", "bin",
                            "cuobjdump")
        if os.path.isfile(path):
            return path
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(cuda_home, "bin", "cuobjdump")
    return path if os.path.isfile(path) else None


def _library() -> str | None:
    spec = importlib.util.find_spec("pydl._C")
    if spec and spec.origin:
        return spec.origin
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = glob.glob(os.path.join(here, "pydl", "_C*.so"))
    return found[0] if found else None


pytestmark = [
    pytest.mark.skipif(not _ext.loaded() or not _ext.built_with_cuda(),
                       reason="pydl._C not loaded or built without CUDA kernels"),
    pytest.mark.skipif(_cuobjdump() is None, reason="no cuobjdump (triton's or the toolkit's)"),
]


@functools.cache
def _kernels() -> list[tuple[str, str, int, int]]:
    """(arch, mangled name, registers, stack bytes) of every kernel in pydl._C."""
    run = subprocess.run([_cuobjdump(), "--dump-resource-usage", _library()],
                         capture_output=True, text=True, check=True)
    kernels, arch, name = [], None, None
    for line in run.stdout.splitlines():
        if m := re.match(r"arch = (sm_\d+)", line.strip()):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            name = m.group(1)
        elif (m := re.search(r"REG:(\d+) STACK:(\d+)", line)) and name:
            kernels.append((arch, name, int(m.group(1)), int(m.group(2))))
            name = None
    return kernels


def test_every_family_was_found():
    names = " ".join(name for _, name, _, _ in _kernels())
    for kernel in ("persistent_forward_kernel", "persistent_backward_kernel", "keep_mask_kernel",
                   "tc14forward_kernel", "tc11dkdv_kernel", "conv2d"):
        assert kernel in names, f"{kernel} missing from the cubins"
    assert {arch for arch, *_ in _kernels()} >= {"sm_80", "sm_90"}


def test_no_kernel_keeps_a_stack_beyond_the_known_ones():
    offenders = []
    for arch, name, registers, stack in _kernels():
        allowed = next((limit for pattern, limit, _ in KNOWN_STACK if re.search(pattern, name)), 0)
        if stack > allowed:
            offenders.append(f"{arch} {name}: {stack} bytes of stack ({registers} registers), "
                             f"allowed {allowed}")
    assert not offenders, "local memory in CUDA kernels:\n" + "\n".join(offenders)
