"""A/B of the tensor-core attention kernels' variants on a GPU, in one
process, beside torch's flash backend: the m-tile layouts (two m16 tiles per
warp, 128-row CTAs with 32-key tiles, against one, 64-row CTAs with 64-key
tiles: PYDL_ATTENTION_TC_MTILES=2 / 1, read per call) and the whole-tile
softmax (PYDL_ATTENTION_TC_WHOLE_TILES=0 turns it off; attention_tc_forward.cuh).
bf16, batch x heads = 16 x 16, sequence 1k and 4k, causal and not, and B2 H8.
Forward: one line per case with TFLOP/s (4 b h L S d, causal half) of the
defaults (whole-tile softmax; two m-tiles at head dim 128, one at 64), one
m-tile, the general softmax,
and flash, the ratios, and each variant's largest difference from flash's
output. Then forward + backward for two cases: the defaults (the backward
runs one m-tile), the atomic dQ (PYDL_ATTENTION_TC_DQ_ATOMIC=1: dQ summed by
the dK / dV kernel, no dQ kernel; opt-in: 1.07x faster at d128, 1.12x slower
at d64 causal on 2026-11-28),
two m-tiles in both, the general softmax, flash; and the defaults' split
between the dQ and dK / dV kernels.
Measured (H200, bf16): 2026-11-27, general softmax: forward two/one
1.11-1.20x at head dim 128, 0.98-1.02x at 64; backward two/one about 1.0x at
128, 0.77x at 64. 2026-11-28: the whole-tile softmax ran the forward
1.65-2.42x the general one, and with it one m-tile ran the forward
1.19-1.39x faster than two at head dim 64 (two 1.01-1.25x at 128) and the
backward 1.15-1.19x faster than two at 128: today's defaults. Later that day
(2f7e4aa) the dK / dV kernel's staged lse / delta took its part of the d128
split from 32.0 to 27.6 ms: forward + backward 132 -> 143 TFLOP/s (flash 313). scripts/gpu_check.sh runs it. Timing: CUDA events
around 10 back-to-back calls, median of 10.
"""

import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

os.environ.setdefault("PYDL_EXPERIMENTAL_CUDA", "1")
os.environ.setdefault("PYDL_STRICT", "1")  # a fallback must not be timed as pydl
from gpu_timing import median_ms  # noqa: E402  (scripts/)

from pydl.nn.functional import scaled_dot_product_attention as sdpa


def with_switches(tiles, whole, fn, atomic_dq=""):
    """fn() under PYDL_ATTENTION_TC_MTILES=tiles, PYDL_ATTENTION_TC_WHOLE_TILES=whole
    and PYDL_ATTENTION_TC_DQ_ATOMIC=atomic_dq ("" leaves a switch unset: the default)."""
    for name, value in (("PYDL_ATTENTION_TC_MTILES", tiles),
                        ("PYDL_ATTENTION_TC_WHOLE_TILES", whole),
                        ("PYDL_ATTENTION_TC_DQ_ATOMIC", atomic_dq)):
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    return fn()


# (label, PYDL_ATTENTION_TC_MTILES, PYDL_ATTENTION_TC_WHOLE_TILES[, PYDL_ATTENTION_TC_DQ_ATOMIC])
FORWARD_VARIANTS = [("defaults", "", ""), ("one m-tile", "1", ""), ("two m-tiles", "2", ""),
                    ("general", "", "0")]
BACKWARD_VARIANTS = [("defaults", "", ""), ("atomic dQ", "", "", "1"), ("two m-tiles", "2", ""),
                     ("general", "", "0")]


def main():
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16")
    # B16 H16 fills the device; B2 H8 at 4k does not (128-row CTAs halve the grid).
    cases = [(16, 16, d, L, causal) for d in (64, 128) for L in (1024, 4096)
             for causal in (False, True)] + [(2, 8, 128, 4096, False)]
    for B, H, d, L, causal in cases:
        q, k, v = (torch.randn(B, H, L, d, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        flops = 4 * B * H * L * L * d / (2 if causal else 1)
        run = lambda: sdpa(q, k, v, is_causal=causal)  # noqa: E731
        times, outs = {}, {}
        for label, tiles, whole in FORWARD_VARIANTS:
            times[label] = with_switches(tiles, whole, lambda: median_ms(run))
            outs[label] = with_switches(tiles, whole, run)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            def run_flash(q=q, k=k, v=v, causal=causal):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            times["flash"], outs["flash"] = median_ms(run_flash), run_flash()
        report(f"B{B} H{H} d{d} L{L} {'causal' if causal else 'full  '}", flops, times, outs)
    # Forward + backward.
    for B, H, d, L, causal in [(16, 16, 128, 4096, False), (16, 16, 64, 4096, True)]:
        q, k, v = (torch.randn(B, H, L, d, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        grad = torch.randn(B, H, L, d, device="cuda", dtype=torch.bfloat16)
        flops = 3.5 * 4 * B * H * L * L * d / (2 if causal else 1)  # forward + 2.5x backward

        def step(fn, q=q, k=k, v=v, grad=grad, causal=causal, wrt=None):
            # autograd.grad, not backward: no accumulation into q.grad timed
            return torch.autograd.grad(fn(q, k, v, is_causal=causal), wrt or (q, k, v), grad)[0]

        times, dqs = {}, {}
        for label, tiles, whole, *atomic_dq in BACKWARD_VARIANTS:
            times[label] = with_switches(tiles, whole,
                                         lambda: median_ms(lambda: step(sdpa), reps=5, calls=3),
                                         *atomic_dq)
            dqs[label] = with_switches(tiles, whole, lambda: step(sdpa), *atomic_dq)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            run_flash = lambda: step(F.scaled_dot_product_attention)  # noqa: E731
            times["flash"], dqs["flash"] = median_ms(run_flash, reps=5, calls=3), run_flash()
        report(f"fwd+bwd B{B} H{H} d{d} L{L} {'causal' if causal else 'full  '}", flops, times,
               dqs)
        # Where the backward's time goes (defaults): its dQ kernel alone
        # (gradient of q only) and its dK / dV kernel alone (of k and v only),
        # each with the forward; the forward alone. ms, not TFLOP/s.
        with_switches("", "", lambda: None)
        parts = {"forward": median_ms(lambda: sdpa(q, k, v, is_causal=causal), reps=5, calls=3),
                 "+ dQ kernel": median_ms(lambda: step(sdpa, wrt=(q,)), reps=5, calls=3),
                 "+ dK/dV kernel": median_ms(lambda: step(sdpa, wrt=(k, v)), reps=5, calls=3),
                 "+ both": times["defaults"]}
        print("  split, ms: " + ", ".join(f"{name} {ms:.3f}" for name, ms in parts.items()),
              flush=True)
    with_switches("", "", lambda: None)


def report(case, flops, times, outs):
    """One line: TFLOP/s per variant, each against the defaults and flash
    against the defaults, and each output's largest difference from flash's
    (a wrong but fast variant must show)."""
    tf = " ".join(f"{label} {flops / ms / 1e9:6.1f}" for label, ms in times.items())
    vs = ", ".join(f"{label} {times[label] / times['defaults']:.2f}x"
                   for label in times if label != "defaults")
    diff = " / ".join(f"{(outs[label].float() - outs['flash'].float()).abs().max().item():.1e}"
                      for label in outs if label != "flash")
    print(f"{case}: TFLOP/s {tf}; time against the defaults: {vs}; max|diff from flash| {diff}",
          flush=True)


if __name__ == "__main__":
    main()
