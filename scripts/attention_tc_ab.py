"""A/B of the tensor-core attention forward's two layouts on a GPU, in one
process: two m16 tiles per warp (128-row CTAs, 32-key tiles: the forward's
default at head dims 64 / 128; PYDL_ATTENTION_TC_MTILES=2) against one
(64-row CTAs, 64-key tiles: PYDL_ATTENTION_TC_MTILES=1; the switch is read
per call), beside torch's flash backend.
bf16, batch x heads = 16 x 16, sequence 1k and 4k, causal and not, and B2 H8.
Prints one line per case with TFLOP/s (4 b h L S d, causal half) and the
ratios, and each layout's largest difference from flash's output; then
forward + backward for two cases (the switch covers the backward too: the
dQ kernel's two layouts at head dims 64 / 128, and at head dim 64 the dK / dV
kernel's 128-key CTAs of two 16-key m-tiles per warp against 64-key ones;
the backward's default is two at head dim 128, one at 64).
First run (H200, 2026-11-27): forward two/one 1.11-1.20x at head dim 128,
0.98-1.02x at 64; the backward (forward + backward less the forward) two/one
about 1.0x at 128 and 0.77x at 64, hence the backward's default.
Each forward line also times the whole-tile softmax
(PYDL_ATTENTION_TC_WHOLE_TILES=1, two m-tiles; attention_tc_forward.cuh),
opt-in until these lines show it faster. scripts/gpu_check.sh runs it. Timing: CUDA events around 10 back-to-back
calls, median of 10.
"""

import os
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

os.environ.setdefault("PYDL_EXPERIMENTAL_CUDA", "1")
os.environ.setdefault("PYDL_STRICT", "1")  # a fallback must not be timed as pydl
from pydl.nn.functional import scaled_dot_product_attention as sdpa


def median_ms(fn, reps=10, calls=10):
    """Median over reps of the mean of `calls` back-to-back calls: the GPU stays
    busy while the host queues the next call, so the host's per-call work
    (planning, checks, allocation) is not timed unless it is the bottleneck."""
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


def pydl_with(tiles, q, k, v, causal, whole="0"):
    """(ms per call, output) with PYDL_ATTENTION_TC_MTILES=tiles and
    PYDL_ATTENTION_TC_WHOLE_TILES=whole."""
    os.environ["PYDL_ATTENTION_TC_MTILES"] = tiles
    os.environ["PYDL_ATTENTION_TC_WHOLE_TILES"] = whole
    return median_ms(lambda: sdpa(q, k, v, is_causal=causal)), sdpa(q, k, v, is_causal=causal)


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
        two, out_two = pydl_with("2", q, k, v, causal)
        one, out_one = pydl_with("1", q, k, v, causal)
        whole, out_whole = pydl_with("2", q, k, v, causal, whole="1")
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            def run_flash(q=q, k=k, v=v, causal=causal):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            flash, out_flash = median_ms(run_flash), run_flash()
        # A wrong but fast layout must show: each output against flash's.
        diff_two, diff_one, diff_whole = ((out.float() - out_flash.float()).abs().max().item()
                                          for out in (out_two, out_one, out_whole))
        tf_two, tf_one, tf_whole, tf_flash = (flops / ms / 1e9 for ms in (two, one, whole, flash))
        print(f"B{B} H{H} d{d} L{L} {'causal' if causal else 'full  '}: two m-tiles "
              f"{tf_two:6.1f} TFLOP/s, one {tf_one:6.1f}, two + whole-tile {tf_whole:6.1f}, "
              f"flash {tf_flash:6.1f}; two/one {one / two:.2f}x, whole/two {two / whole:.2f}x, "
              f"whole/flash {flash / whole:.2f}x; max|out - flash| {diff_two:.1e} / "
              f"{diff_one:.1e} / {diff_whole:.1e}", flush=True)
    # Forward + backward (the dQ kernel has the same two layouts).
    for B, H, d, L, causal in [(16, 16, 128, 4096, False), (16, 16, 64, 4096, True)]:
        q, k, v = (torch.randn(B, H, L, d, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        grad = torch.randn(B, H, L, d, device="cuda", dtype=torch.bfloat16)
        flops = 3.5 * 4 * B * H * L * L * d / (2 if causal else 1)  # forward + 2.5x backward

        def step(fn, q=q, k=k, v=v, grad=grad, causal=causal):
            # autograd.grad, not backward: no accumulation into q.grad timed
            return torch.autograd.grad(fn(q, k, v, is_causal=causal), (q, k, v), grad)

        # two / one m-tiles everywhere, then the defaults (forward two; the
        # backward two at head dim 128, one at 64) with the whole-tile softmax
        times, dq = {}, {}
        for name, tiles, whole in (("two", "2", "0"), ("one", "1", "0"), ("whole", "", "1"),
                                   ("one_whole", "1", "1")):
            os.environ["PYDL_ATTENTION_TC_MTILES"] = tiles
            os.environ["PYDL_ATTENTION_TC_WHOLE_TILES"] = whole
            times[name] = median_ms(lambda: step(sdpa), reps=5, calls=3)
            dq[name] = step(sdpa)[0]
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            run_flash = lambda: step(F.scaled_dot_product_attention)
            times["flash"], dq["flash"] = median_ms(run_flash, reps=5, calls=3), run_flash()[0]
        tf = {name: flops / ms / 1e9 for name, ms in times.items()}
        diff = {name: (dq[name].float() - dq["flash"].float()).abs().max().item()
                for name in ("two", "one", "whole", "one_whole")}
        print(f"fwd+bwd B{B} H{H} d{d} L{L} {'causal' if causal else 'full  '}: two m-tiles "
              f"{tf['two']:6.1f} TFLOP/s, one {tf['one']:6.1f}, defaults + whole-tile "
              f"{tf['whole']:6.1f}, one + whole-tile {tf['one_whole']:6.1f}, flash "
              f"{tf['flash']:6.1f}; two/one {times['one'] / times['two']:.2f}x; max|dq - flash| "
              + " / ".join(f"{diff[n]:.1e}" for n in ("two", "one", "whole", "one_whole")),
              flush=True)
    os.environ.pop("PYDL_ATTENTION_TC_MTILES")
    os.environ.pop("PYDL_ATTENTION_TC_WHOLE_TILES")


if __name__ == "__main__":
    main()
