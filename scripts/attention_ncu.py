"""One forward + backward of pydl's tensor-core attention (defaults, then the
opt-in atomic dQ) and one of torch's flash backend, for Nsight Compute to read the hardware counters of each
kernel (scripts/gpu_check.sh's ncu step, NCU=1): where the time goes that the
A/B's split only times (stall reasons, issue slots, shared-memory and
tensor-pipe use, occupancy), beside the kernels pydl is measured against.
bf16, B4 H16 L4096 d128, full (no causal mask): the case the backward's split
was timed on, a quarter of the batch (the counters do not need the full grid).
Run under ncu, e.g.
  ncu --clock-control none -k regex:"dkdv_kernel|dq_kernel|forward_kernel|flash_" \
      python scripts/attention_ncu.py
"""

import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

os.environ.setdefault("PYDL_EXPERIMENTAL_CUDA", "1")
os.environ.setdefault("PYDL_STRICT", "1")  # a fallback must not be profiled as pydl

from pydl.nn.functional import scaled_dot_product_attention as sdpa  # noqa: E402


def main():
    torch.manual_seed(0)
    B, H, L, d = 4, 16, 4096, 128
    q, k, v = (torch.randn(B, H, L, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(B, H, L, d, device="cuda", dtype=torch.bfloat16)
    ours = torch.autograd.grad(sdpa(q, k, v), (q, k, v), grad)
    # The opt-in atomic dQ's dK / dV kernel too (its own template instance).
    os.environ["PYDL_ATTENTION_TC_DQ_ATOMIC"] = "1"
    atomic = torch.autograd.grad(sdpa(q, k, v), (q, k, v), grad)
    del os.environ["PYDL_ATTENTION_TC_DQ_ATOMIC"]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        theirs = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad)
    torch.cuda.synchronize()
    # A profile of wrong kernels is worthless: say how far the gradients are apart.
    for label, grads in (("defaults", ours), ("atomic dQ", atomic)):
        diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(grads, theirs)]
        print(f"max|grad diff from flash|, {label}: dq %.1e dk %.1e dv %.1e" % tuple(diffs),
              flush=True)


if __name__ == "__main__":
    main()
