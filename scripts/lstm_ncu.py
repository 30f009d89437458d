"""One inference call of pydl's persistent LSTM forward per case and variant
(the grid-barrier kernel, then the opt-in tagged exchange), for Nsight
Compute to read the counters of each launch (scripts/gpu_check.sh's ncu
step, NCU=1): where a step's time goes (stall reasons, issue slots, L2
traffic) that scripts/lstm_persistent_ab.py only times. Cases: bf16 batch 16
hidden 1024 (20 us a step on an H200, 2026-11-28, against cuDNN's 3.2 in
fp16) and float32 batch 1 hidden 64 (3.7 us, cuDNN 1.4). T 20. Run under
ncu, e.g.
  ncu --clock-control none -k regex:persistent_forward_kernel python scripts/lstm_ncu.py
"""

import os

import torch

os.environ.setdefault("PYDL_EXPERIMENTAL_CUDA", "1")
os.environ.setdefault("PYDL_STRICT", "1")  # a fallback must not be profiled as pydl
os.environ.setdefault("PYDL_LSTM_PERSISTENT", "1")

import pydl  # noqa: E402

CASES = [(torch.bfloat16, 16, 1024), (torch.float32, 1, 64)]  # (dtype, batch, hidden)
STEPS = 20


def main():
    torch.manual_seed(0)
    for dtype, batch, hidden in CASES:
        lstm = pydl.nn.LSTM(hidden, hidden, device="cuda", dtype=dtype)
        x = torch.randn(STEPS, batch, hidden, device="cuda", dtype=dtype)
        outs = {}
        for mode in ("0", "1"):
            os.environ["PYDL_LSTM_TAGGED_EXCHANGE"] = mode
            with torch.no_grad():
                outs[mode] = lstm(x)[0].float()
        torch.cuda.synchronize()
        # A profile of a wrong kernel is worthless: say how far the two are apart.
        diff = (outs["1"] - outs["0"]).abs().max().item()
        print(f"{str(dtype)[6:]} B{batch} H{hidden}: max|tagged - grid| {diff:.1e}", flush=True)
    os.environ.pop("PYDL_LSTM_TAGGED_EXCHANGE", None)


if __name__ == "__main__":
    main()
