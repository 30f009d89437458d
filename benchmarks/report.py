"""The table, CSV and PNG of a benchmark run: one row per (case, provider)
with the same columns every time (Liger / xformers style); the plot is drawn
from the CSV."""

from __future__ import annotations

import csv
import math
from typing import Any

from benchmarks.harness import Peak, Result

COLUMNS = [
    "family", "case", "shape", "provider", "backend", "time_ms", "speedup",
    "gflops", "pct_peak_flops", "gbps", "pct_peak_bw", "check",
    "flops", "bytes", "peak_gflops", "peak_gbps",
    "device", "device_name", "dtype", "threads", "mode", "torch", "pydl", "date",
]


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


