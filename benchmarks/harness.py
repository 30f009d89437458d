"""Timing, machine peak, and the table / CSV / PNG that every benchmark family shares.

A family (benchmarks/cases/<family>.py) returns ``Case`` objects; ``run_cases``
times every provider of a case in the same process, interleaved, and
``to_rows`` turns the times into one row per (case, provider) with the same
columns every time (Liger / xformers style). The plot is drawn from the CSV.
"""

from __future__ import annotations

import csv
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

COLUMNS = [
    "family", "case", "shape", "provider", "backend", "time_ms", "speedup",
    "gflops", "pct_peak_flops", "gbps", "pct_peak_bw", "check",
    "flops", "bytes", "peak_gflops", "peak_gbps",
    "device", "device_name", "dtype", "threads", "mode", "torch", "pydl", "date",
]


@dataclass
class Case:
    """One benchmark problem.

    ``make_providers()`` returns {provider name: zero-argument callable bound to
    its inputs}. It is called just before the case is timed (and the inputs
    freed after) so that only one case's tensors are alive at a time. Names
    starting with "torch" are baselines (the first one is the reference for
    speedup and the output check); "pydl" is pydl's main path, and
    "pydl <suffix>" names are pydl variants (e.g. "pydl unfused").
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
    with torch.no_grad():
        for name, fn in providers.items():
            try:
                outs[name] = fn()
                _sync(device)
            except Exception as exc:  # noqa: BLE001  keep going: the row says what failed
                checks[name] = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        ref = next((outs[n] for n in outs if n.startswith("torch")), None)
        for name, out in outs.items():
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


def to_rows(results: list[Result], peak: Peak, meta: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for res in results:
        case = res.case
        base = next((n for n in res.times_ms if n.startswith("torch")), None)
        base_ms = res.times_ms.get(base, math.nan)
        for name, ms in res.times_ms.items():
            gflops = case.flops / ms / 1e6 if case.flops else math.nan
            gbps = case.bytes / ms / 1e6 if case.bytes else math.nan
            rows.append({
                **meta,
                "family": case.family, "case": case.name, "shape": case.shape,
                "provider": name, "backend": res.backends[name],
                "time_ms": ms, "speedup": base_ms / ms,
                "gflops": gflops, "pct_peak_flops": 100 * gflops / peak.matmul_gflops,
                "gbps": gbps, "pct_peak_bw": 100 * gbps / peak.copy_gbps,
                "check": res.checks.get(name, ""),
                "flops": case.flops, "bytes": case.bytes,
                "peak_gflops": peak.matmul_gflops, "peak_gbps": peak.copy_gbps,
            })
    return rows


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table; case and shape are printed once per case."""
    cw = max([len("case")] + [len(r["case"]) for r in rows])
    sw = max([len("shape")] + [len(r["shape"]) for r in rows])
    pw = max([len("provider")] + [len(r["provider"]) for r in rows])
    head = (f"{'case':<{cw}}  {'shape':<{sw}}  {'provider':<{pw}}  {'ms':>9}  {'speedup':>7}  "
            f"{'GFLOP/s':>8}  {'%peak':>6}  {'GB/s':>7}  {'%bw':>5}  check")
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        first = r["case"] != last
        last = r["case"]
        lines.append(
            f"{r['case'] if first else '':<{cw}}  {r['shape'] if first else '':<{sw}}  "
            f"{r['provider']:<{pw}}  {_fmt(r['time_ms'], '9.3f')}  {_fmt(r['speedup'], '6.2f')}x  "
            f"{_fmt(r['gflops'], '8.1f')}  {_fmt(r['pct_peak_flops'], '5.1f')}%  "
            f"{_fmt(r['gbps'], '7.1f')}  {_fmt(r['pct_peak_bw'], '4.0f')}%  {r['check']}"
            + (f" (served by {r['backend']})"
               if r["provider"].startswith("pydl") and r["backend"] != "pydl" else "")
        )
    return "\n".join(lines)


def _geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else math.nan


def summary(rows: list[dict[str, Any]]) -> str:
    """Geometric-mean ratios: pydl vs torch, and pydl vs each pydl variant."""
    by_case: dict[str, dict[str, float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["provider"]] = r["time_ms"]
    pairs: dict[str, list[float]] = {}
    for times in by_case.values():
        if "pydl" not in times:
            continue
        for name, ms in times.items():
            if name != "pydl" and name.startswith(("torch", "pydl")):
                label = "torch" if name.startswith("torch") else name
                pairs.setdefault(label, []).append(ms / times["pydl"])
    lines = []
    for label, ratios in pairs.items():
        wins = sum(x > 1 for x in ratios)
        lines.append(f"pydl vs {label}: geomean speedup {_geomean(ratios):.2f}x over "
                     f"{len(ratios)} cases (pydl faster in {wins}), "
                     f"min {min(ratios):.2f}x, max {max(ratios):.2f}x")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot_csv(csv_path: str, png_path: str) -> bool:
    """Grouped horizontal bars of speedup vs torch per case, read from the CSV."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    cases = list(dict.fromkeys(r["case"] for r in rows))
    variants = list(dict.fromkeys(r["provider"] for r in rows if not r["provider"].startswith("torch")))
    speed = {(r["case"], r["provider"]): float(r["speedup"]) for r in rows}
    finite = [v for v in speed.values() if math.isfinite(v) and v > 0] or [1.0]
    xlim = (min(min(finite), 1.0) / 1.5, max(max(finite), 1.0) * 2.0)
    per_panel = 36
    ncols = min(3, -(-len(cases) // per_panel))
    per_panel = -(-len(cases) // ncols)
    height = 0.8 / max(1, len(variants))
    fig, axes = plt.subplots(1, ncols, squeeze=False,
                             figsize=(7.5 * ncols, 1.6 + 0.27 * per_panel))
    for p, ax in enumerate(axes[0]):
        chunk = cases[p * per_panel:(p + 1) * per_panel]
        for i, name in enumerate(variants):
            ys = [c for c, case in enumerate(chunk) if math.isfinite(speed.get((case, name), math.nan))]
            xs = [speed[(chunk[c], name)] for c in ys]
            bars = ax.barh([y - 0.4 + height * (i + 0.5) for y in ys], xs, height=height,
                           label=name, color=f"C{i}")
            ax.bar_label(bars, labels=[f"{x:.2f}" for x in xs], fontsize=5, padding=1)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlim(*xlim)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_yticks(range(len(chunk)))
        ax.set_yticklabels(chunk, fontsize=7)
        ax.set_ylim(per_panel - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("speedup vs torch (torch time / provider time; >1: faster)", fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"pydl {', '.join(dict.fromkeys(r['family'] for r in rows))} vs torch on "
                 f"{r0['device_name']}: {r0['dtype']}, torch {r0['torch']}, "
                 f"{r0['threads']} threads, {r0['mode']}, {r0['date']}", fontsize=10)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return True


def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
