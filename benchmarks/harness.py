"""Timing and the machine's peak, shared by every benchmark family.

A family (benchmarks/cases/<family>.py) returns ``Case`` objects; ``run_case``
times every provider of a case in the same process, interleaved.
benchmarks/report.py turns the results into the table, CSV and PNG.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on
# CPU-only machines; that warning says nothing about the benchmark.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark as tbench

Provider = Callable[[], Any]



@dataclass
class Case:
    """One benchmark problem.

    ``make_providers()`` returns {provider name: zero-argument callable bound to
    its inputs}. It is called just before the case is timed (and the inputs
    freed after) so that only one case's tensors are alive at a time. Names
    starting with "torch" are baselines (the first one is the reference for
    speedup and the output check); "pydl" is pydl's main path, and
    "pydl <suffix>" names are pydl variants (e.g. "pydl unfused").
    tags: "train" runs the providers with autograd on; "random" marks rows
    whose outputs legitimately differ (dropout), so they are not compared.
    """

    name: str
    family: str
    shape: str
    flops: float
    bytes: float  # minimum memory traffic: inputs read + output written
    make_providers: Callable[[], dict[str, Provider]]
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass
class Peak:
    matmul_gflops: float
    copy_gbps: float
    matmul_desc: str
    copy_desc: str


@dataclass
class Result:
    case: Case
    times_ms: dict[str, float]  # NaN where the provider failed
    checks: dict[str, str]
    backends: dict[str, str]


# --------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _do_bench():
    try:
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001  triton missing or broken: fall back to CUDA events
        return None
    return do_bench


def time_once(fn: Provider, device: str, budget_s: float) -> list[float]:
    """Per-call times in seconds from one measurement of about ``budget_s``."""
    if device == "cpu":
        timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        return list(timer.blocked_autorange(min_run_time=budget_s).times)
    do_bench = _do_bench()
    if do_bench is not None:
        ms = do_bench(fn, warmup=max(1, int(budget_s * 250)), rep=max(1, int(budget_s * 1000)),
                      return_mode="median")
        return [ms / 1e3]
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    reps = max(5, min(1000, int(budget_s * 1e3 / max(start.elapsed_time(end), 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for s, e in events:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in events]


def time_providers(providers: dict[str, Provider], device: str, budget_s: float,
                   rounds: int) -> dict[str, float]:
    """Median ms per provider; providers are interleaved over ``rounds`` rounds
    (alternating order) so that machine noise hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in providers}
    names = list(providers)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name] += time_once(providers[name], device, budget_s / rounds)
    return {name: statistics.median(ts) * 1e3 for name, ts in samples.items()}


def _time_matmul(n: int, device: str, dtype: torch.dtype, budget_s: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return time_providers({"mm": lambda: torch.mm(a, b)}, device, budget_s, 1)["mm"]


def _time_copy(elems: int, device: str, budget_s: float) -> float:
    src = torch.empty(elems, device=device, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    return time_providers({"copy": lambda: dst.copy_(src)}, device, budget_s, 1)["copy"]


def measure_peak(device: str, dtype: torch.dtype, quick: bool) -> Peak:
    """The machine's reachable peak, measured now: a large matmul and a large copy."""
    if device == "cpu":
        n, copy_elems, budget = (2048, 1 << 26, 1.0) if quick else (4096, 1 << 27, 3.0)
    else:
        n, copy_elems, budget = 8192, 1 << 28, 0.5
    mm_ms = _time_matmul(n, device, dtype, budget)
    cp_ms = _time_copy(copy_elems, device, budget / 2)
    nbytes = 2 * copy_elems * 4  # read + write
    return Peak(
        matmul_gflops=2 * n**3 / mm_ms / 1e6,
        copy_gbps=nbytes / cp_ms / 1e6,
        matmul_desc=f"{n}x{n}x{n} {str(dtype).replace('torch.', '')} matmul",
        copy_desc=f"{copy_elems * 4 >> 20} MiB float32 copy",
    )


# --------------------------------------------------------------------------- running


def _check(out: Any, ref: Any, dtype: torch.dtype) -> str:
    if not (isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor)):
        return "ok"
    if out.shape != ref.shape:
        return f"MISMATCH shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    tol = {torch.float64: 1e-9, torch.float32: 1e-3}.get(dtype, 3e-2)
    err = (out.double() - ref.double()).abs().max().item()
    scale = max(ref.double().abs().max().item(), 1e-12)
    return "ok" if err <= tol * scale else f"MISMATCH rel err {err / scale:.1e}"


def pydl_backend(family: str, device: str, dtype: torch.dtype) -> str:
    """Which backend pydl's entry point picks for this family/device/dtype."""
    try:
        from pydl import _backend

        return _backend.explain(family, device, dtype)[0]
    except Exception:  # noqa: BLE001  a family pydl.info() does not list (yet)
        return "?"


def run_case(case: Case, device: str, dtype: torch.dtype, budget_s: float, rounds: int) -> Result:
    """Warm up and check every provider once, then time them interleaved."""
    providers = case.make_providers()
    outs: dict[str, Any] = {}
    checks: dict[str, str] = {}
    # Autograd only for training cases (tags["train"]): inference rows stay graph-free.
    with torch.set_grad_enabled(bool(case.tags.get("train", False))):
        for name, fn in providers.items():
            try:
                outs[name] = fn()
                _sync(device)
            except Exception as exc:  # noqa: BLE001  keep going: the row says what failed
                checks[name] = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        ref = next((outs[n] for n in outs if n.startswith("torch")), None)
        for name, out in outs.items():
            if case.tags.get("random"):  # dropout: each provider draws its own mask
                checks[name] = "random"
            else:
                checks[name] = _check(out, ref, dtype) if ref is not None else "ok"
        ok = {name: providers[name] for name in outs}
        del outs, ref
        times = time_providers(ok, device, budget_s, rounds) if ok else {}
    backend = pydl_backend(case.family, device, dtype)
    return Result(
        case=case,
        times_ms={name: times.get(name, math.nan) for name in providers},
        checks=checks,
        backends={name: backend if name.startswith("pydl") else "torch" for name in providers},
    )


def progress(total: int):
    """A tqdm bar on stderr, or a plain counter when tqdm is not installed."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, file=sys.stderr, unit="case", dynamic_ncols=True)
    except ImportError:
        return _Counter(total)


class _Counter:
    def __init__(self, total: int):
        self.total, self.n, self.tty = total, 0, sys.stderr.isatty()

    def set_description_str(self, text: str) -> None:
        self.text = text

    def update(self, k: int = 1) -> None:
        self.n += k
        end = "" if self.tty and self.n < self.total else "\n"
        print(f"\r[{self.n}/{self.total}] {getattr(self, 'text', '')}", end=end,
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- reporting


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs)"


def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
