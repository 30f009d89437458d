"""A/B of the persistent LSTM kernel's grid on a GPU, in one process:
hidden units per block (PYDL_LSTM_PERSISTENT_UNITS, read per call; the
default is ceil(hidden / SMs), one block per SM) beside cuDNN.

Also the one-block forward (PYDL_LSTM_SINGLE_BLOCK=1, opt-in, not yet run on
a GPU) where it serves (hidden <= 64, batch <= 8): h in shared memory, a
__syncthreads per step instead of the grid barrier; and the tagged exchange
(PYDL_LSTM_TAGGED_EXCHANGE=1, opt-in, not yet run on a GPU) on the default
grid: h passed as (value, step) words the readers poll, no grid barrier per
step. A "training" line per case times forward + backward of the default
grid with and without it (the backward's dh shares go the same way).

Question: does a step's latency fall with the block count? On an H200 (bf16
and float32, 2026-11-28) a step took 3.7 us at batch 1 whether hidden was 64,
128 or 256 (64-128 blocks at the grid barrier), while cuDNN's small-hidden
persistent algorithm took 1.1-2.2 us in float32. Prints, per case, the
microseconds per step of each grid and of cuDNN, and each grid's largest
difference from the default grid's output (a wrong but fast grid must show).
Inference, T 100. scripts/gpu_check.sh runs it. Timing: CUDA events around
10 back-to-back calls, median of 10.
"""

import os

import torch

os.environ.setdefault("PYDL_EXPERIMENTAL_CUDA", "1")
os.environ.setdefault("PYDL_STRICT", "1")  # a fallback must not be timed as pydl
from gpu_timing import median_ms  # noqa: E402  (scripts/)

import pydl  # noqa: E402

STEPS = 100
CASES = [(1, 64), (8, 64), (1, 256), (8, 256), (16, 1024)]  # (batch, hidden); input = hidden
UNITS = ["", "2", "4", "8"]  # "": the default grid
SINGLE = "single"  # PYDL_LSTM_SINGLE_BLOCK=1: the one-block forward (hidden <= 64, batch <= 8)
TAGGED = "tagged"  # PYDL_LSTM_TAGGED_EXCHANGE=1 on the default grid
SWITCHES = ("PYDL_LSTM_PERSISTENT_UNITS", "PYDL_LSTM_SINGLE_BLOCK", "PYDL_LSTM_TAGGED_EXCHANGE")


def with_units(units, fn):
    """fn() under PYDL_LSTM_PERSISTENT_UNITS=units, with the single-block
    forward (units == SINGLE) or the tagged exchange (units == TAGGED); ""
    leaves all three unset."""
    for name in SWITCHES:
        os.environ.pop(name, None)
    if units == SINGLE:
        os.environ["PYDL_LSTM_SINGLE_BLOCK"] = "1"
    elif units == TAGGED:
        os.environ["PYDL_LSTM_TAGGED_EXCHANGE"] = "1"
    elif units:
        os.environ["PYDL_LSTM_PERSISTENT_UNITS"] = units
    try:
        return fn()
    finally:
        for name in SWITCHES:
            os.environ.pop(name, None)


def main():
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()} ({sms} SMs), torch {torch.__version__}, T {STEPS}")
    for dtype in (torch.bfloat16, torch.float32):
        for batch, hidden in CASES:
            theirs = torch.nn.LSTM(hidden, hidden, device="cuda", dtype=dtype)
            ours = pydl.nn.LSTM(hidden, hidden, device="cuda", dtype=dtype)
            ours.load_state_dict(theirs.state_dict())
            x = torch.randn(STEPS, batch, hidden, device="cuda", dtype=dtype)

            def run(module=ours, x=x):
                with torch.no_grad():
                    return module(x)[0]

            us, diff = {}, {}
            base = with_units("", run)
            single = [SINGLE] if hidden <= 64 and batch <= 8 else []
            for units in UNITS + single + [TAGGED]:
                label = (f"U{units}" if units not in ("", SINGLE, TAGGED) else
                         "single block" if units == SINGLE else
                         "tagged" if units == TAGGED else f"default U{-(-hidden // sms)}")
                us[label] = with_units(units, lambda: median_ms(run)) * 1e3 / STEPS
                diff[label] = (with_units(units, run).float() - base.float()).abs().max().item()
            us["cuDNN"] = median_ms(lambda: run(theirs)) * 1e3 / STEPS
            cells = ", ".join(f"{label} {t:.2f}" for label, t in us.items())
            diffs = " / ".join(f"{d:.1e}" for d in diff.values())
            print(f"{str(dtype)[6:]} B{batch} H{hidden}: us per step {cells}; "
                  f"max|out - default| {diffs}", flush=True)

            xg = x.detach().clone().requires_grad_()

            def train(module=ours):
                module(xg)[0].float().square().sum().backward()
                return xg.grad

            train_us = {}
            for units in ("", TAGGED):
                train_us["tagged" if units else "default"] = (
                    with_units(units, lambda: median_ms(train, reps=5)) * 1e3 / STEPS)
            train_us["cuDNN"] = median_ms(lambda: train(theirs), reps=5) * 1e3 / STEPS
            xg.grad = None
            grid_grad = with_units("", train).clone()
            xg.grad = None
            tagged_grad = with_units(TAGGED, train)
            gdiff = (tagged_grad.float() - grid_grad.float()).abs().max().item()
            cells = ", ".join(f"{label} {t:.2f}" for label, t in train_us.items())
            print(f"  training: us per step {cells}; max|dx tagged - default| {gdiff:.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
