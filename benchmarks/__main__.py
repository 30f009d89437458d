"""python -m benchmarks: time pydl against torch's own ops; print a table, write CSV + PNG.

    python -m benchmarks --quick                  # CPU, a few minutes
    python -m benchmarks --device cuda            # bf16, channels_last
    python -m benchmarks --quick --only stem      # cases whose name contains "stem"
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import pydl
from benchmarks import harness, report
from benchmarks.cases import Config, collect

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16, "float64": torch.float64}
FORMATS = ("nchw", "nhwc")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="smaller batches and shorter timing")
    p.add_argument("--only", metavar="SUBSTR", help="run only cases whose name contains SUBSTR")
    p.add_argument("--dtype", choices=list(DTYPES),
                   help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--formats", default=None, metavar="LIST",
                   help="memory formats, comma-separated from nchw,nhwc "
                        "(default: both on cpu, nhwc on cuda)")
    p.add_argument("--min-time", type=float, default=None, metavar="S",
                   help="seconds of timing per provider and case "
                        "(default: cpu 0.3 quick / 1.0 full, cuda 0.1 / 0.3)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                   metavar="DIR", help="where CSV and PNG files go (default: benchmarks/results/)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: no CUDA GPU is visible to torch {torch.__version__} "
                f"(torch.cuda.is_available() is False, torch built with CUDA "
                f"{torch.version.cuda or 'none'}). Run on a GPU machine, or use --device cpu.")
    args.dtype = DTYPES[args.dtype or ("float32" if args.device == "cpu" else "bfloat16")]
    formats = args.formats or ("nchw,nhwc" if args.device == "cpu" else "nhwc")
    args.formats = tuple(f.strip() for f in formats.split(",") if f.strip())
    if not args.formats or any(f not in FORMATS for f in args.formats):
        p.error(f"--formats: expected a comma-separated list from {','.join(FORMATS)}, got {formats!r}")
    if args.min_time is None:
        args.min_time = {("cpu", True): 0.3, ("cpu", False): 1.0,
                         ("cuda", True): 0.1, ("cuda", False): 0.3}[(args.device, args.quick)]
    return args


def header(args, device_name: str) -> str:
    info = pydl.info()
    lines = [(f"# pydl benchmarks: {args.device} ({device_name}), {str(args.dtype)[6:]}, "
              f"{'quick' if args.quick else 'full'}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}, {harness.now()}")]
    lines += ["# " + line for line in str(info).splitlines()]
    env = {k: os.environ.get(k, "unset") for k in ("PYDL_EXPERIMENTAL_CUDA", "PYDL_STRICT")}
    lines.append("# env: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if args.device == "cpu":
        lines.append(f"# torch baseline: CPU conv via oneDNN (mkldnn enabled="
                     f"{torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled})")
    else:
        lines.append(f"# torch baseline: cuDNN {torch.backends.cudnn.version()}, "
                     f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
                     f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if args.device == "cpu" and load > 0.5:
        lines.append(f"# WARNING: load average {load:.1f} before start: other processes share "
                     f"the CPU, so times are noisy")
    return "\n".join(lines)


def write_outputs(rows, out_dir: str, device: str, dtype: torch.dtype) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    default = torch.float32 if device == "cpu" else torch.bfloat16
    suffix = device + ("" if dtype == default else "_" + str(dtype)[6:])
    groups = {fam: [r for r in rows if r["family"] == fam] for fam in dict.fromkeys(r["family"] for r in rows)}
    groups["all"] = rows
    written = []
    for stem, group in groups.items():
        csv_path = os.path.join(out_dir, f"{stem}_{suffix}.csv")
        report.write_csv(group, csv_path)
        written.append(csv_path)
        png_path = csv_path[:-4] + ".png"
        if report.plot_csv(csv_path, png_path):
            written.append(png_path)
    return written


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # torch's baseline gets its best cuDNN algorithm
    cfg = Config(device=args.device, dtype=args.dtype, quick=args.quick, formats=args.formats)
    cases = collect(cfg, args.only)
    if not cases:
        print(f"no benchmark case name contains {args.only!r}; names look like "
              f"{collect(cfg)[0].name!r}", file=sys.stderr)
        return 2
    device_name = harness.machine_name(args.device)
    print(header(args, device_name), flush=True)

    peak = harness.measure_peak(args.device, args.dtype, args.quick)
    print(f"# peak: {peak.matmul_gflops:.1f} GFLOP/s ({peak.matmul_desc}), "
          f"{peak.copy_gbps:.1f} GB/s ({peak.copy_desc}, read+write)", flush=True)

    results = []
    bar = harness.progress(len(cases))
    try:
        for case in cases:
            bar.set_description_str(case.name)
            results.append(harness.run_case(case, args.device, args.dtype, args.min_time, rounds=3))
            bar.update(1)
    except KeyboardInterrupt:
        # Ctrl-C or a time cap (timeout -s INT): report the cases measured so far.
        print(f"\n# interrupted: {len(results)} of {len(cases)} cases measured", flush=True)
        if not results:
            return 130
    finally:
        bar.close()

    meta = {
        "device": args.device, "device_name": device_name, "dtype": str(args.dtype)[6:],
        "threads": torch.get_num_threads(), "mode": "quick" if args.quick else "full",
        "torch": torch.__version__, "pydl": pydl.__version__, "date": harness.now(),
    }
    rows = report.to_rows(results, peak, meta)
    print()
    print(report.format_table(rows))
    print()
    print(report.summary(rows))
    print("speedup = torch time / provider time (>1: faster than torch); %peak of the "
          "matmul above, %bw of the copy above")
    for path in write_outputs(rows, args.out, args.device, args.dtype):
        rel = os.path.relpath(path)
        print(f"wrote {path if rel.startswith('..') else rel}")
    print(f"# {len(results)} cases in {time.perf_counter() - start:.0f} s")
    return 0 if len(results) == len(cases) else 130


if __name__ == "__main__":
    sys.exit(main())
