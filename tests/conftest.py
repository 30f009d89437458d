"""Shared test settings. Tolerances are stated once, here.

The suite runs in two modes (see .ci/run):
  * extension mode, PYDL_STRICT=1: every pydl op must run pydl's kernel;
  * PYDL_DISABLE_EXTENSION=1: the same tests check the fallback (torch's ops)
    against the float64 reference; tests of the kernels themselves skip.
"""

import os
import subprocess
import sys

import pytest
import torch

import pydl
from pydl import _ext

# Relative error bound (Frobenius norm) against the float64 reference, per dtype.
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}
# Low precision: at most this many times torch's own error against the reference.
LOW_PRECISION_FACTOR = 2.0

needs_extension = pytest.mark.skipif(
    not _ext.loaded(), reason=f"pydl._C not in use: {_ext.load_error()}"
)


def run_with_cpu_isa(isa: str, code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python with ATEN_CPU_CAPABILITY=isa ("default",
    "avx2", "avx512"; pydl's per-ISA kernel builds follow ATen's choice) and
    the extra environment; skips the test where this CPU cannot run `isa`."""
    if isa != "default" and torch.backends.cpu.get_cpu_capability() not in (
        ["AVX512"] if isa == "avx512" else ["AVX2", "AVX512"]
    ):
        pytest.skip(f"this CPU cannot run {isa}")
    full_env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, **env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=300, check=False)


def assert_script_ok_on_isa(isa: str, code: str, **env: str) -> None:
    """run_with_cpu_isa, then: the script exited 0 and printed "ok"."""
    result = run_with_cpu_isa(isa, code, **env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    denom = expected.norm().item()
    return (actual - expected).norm().item() / (denom if denom > 0 else 1.0)


def assert_close_rel(actual, expected, dtype, what=""):
    err = rel_error(actual, expected)
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3e} > {RTOL[dtype]:.1e} ({dtype})"


def pytest_report_header(config):
    return str(pydl.info())
