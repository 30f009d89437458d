"""Timing for the GPU A/B scripts (attention_tc_ab.py, lstm_persistent_ab.py),
which run it as `from gpu_timing import median_ms` (a script's own directory
is first on sys.path)."""

import statistics

import torch


def median_ms(fn, reps=10, calls=10):
    """Median over reps of the mean of `calls` back-to-back calls, after 3
    warm-up calls: the GPU stays busy while the host queues the next call, so
    the host's per-call work (planning, checks, allocation) is not timed
    unless it is the bottleneck. CUDA events."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)
