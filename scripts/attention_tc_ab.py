"""A/B of the tensor-core attention forward's two layouts on a GPU, in one
process: two m16 tiles per warp (128-row CTAs, 32-key tiles: the default at
head dims 64 / 128) against one (64-row CTAs, 64-key tiles:
PYDL_ATTENTION_TC_MTILES=1, read per call), beside torch's flash backend.
bf16, batch x heads = 16 x 16, sequence 1k and 4k, causal and not.
Prints one line per case with TFLOP/s (4 b h L S d, causal half) and the
ratios; scripts/gpu_check.sh runs it. Timing: CUDA events, median of 20.
"""

import os
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

os.environ.setdefault("PYDL_EXPERIMENTAL_CUDA", "1")
os.environ.setdefault("PYDL_STRICT", "1")  # a fallback must not be timed as pydl
from pydl.nn.functional import scaled_dot_product_attention as sdpa  # noqa: E402


def median_ms(fn, reps=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def pydl_with(tiles, q, k, v, causal):
    os.environ["PYDL_ATTENTION_TC_MTILES"] = tiles
    return median_ms(lambda: sdpa(q, k, v, is_causal=causal))


def main():
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, B16 H16")
    for d in (64, 128):
        for L in (1024, 4096):
            for causal in (False, True):
                q, k, v = (torch.randn(16, 16, L, d, device="cuda", dtype=torch.bfloat16)
                           for _ in range(3))
                flops = 4 * 16 * 16 * L * L * d / (2 if causal else 1)
                two = pydl_with("2", q, k, v, causal)
                one = pydl_with("1", q, k, v, causal)
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    flash = median_ms(lambda: F.scaled_dot_product_attention(
                        q, k, v, is_causal=causal))
                tf = lambda ms: flops / ms / 1e9
                print(f"d{d} L{L} {'causal' if causal else 'full  '}: two m-tiles "
                      f"{tf(two):6.1f} TFLOP/s, one {tf(one):6.1f}, flash {tf(flash):6.1f}; "
                      f"two/one {one / two:.2f}x, two/flash {flash / two:.2f}x", flush=True)
    os.environ.pop("PYDL_ATTENTION_TC_MTILES")


if __name__ == "__main__":
    main()
