"""Which CUDA kernels have passed the `gpu` tests on a real GPU.

A CUDA kernel family not listed here is opt-in (``PYDL_EXPERIMENTAL_CUDA=1``);
by default its CUDA calls go to torch's own op. A listed family with
``default=False`` passed its tests but is slower than torch's op, so it stays
opt-in too. scripts/gpu_check.sh writes the report a new entry comes from;
the README's "GPU verification" table mirrors this dict.
"""

from typing import NamedTuple


class Verification(NamedTuple):
    card: str
    torch: str
    date: str
    commit: str
    default: bool  # use it by default on CUDA (it beats or matches torch's op)
    note: str


VERIFIED_CUDA: dict[str, Verification] = {
    # 304/308 `gpu` tests passed; the 4 others were bad-input calls that crashed
    # through the GPU image's static libstdc++ (see scripts/gpu_check.sh), on
    # the CPU path as much as the CUDA one. Quick bf16 NHWC batch-32 ResNet /
    # MobileNet layers: 0.46x cuDNN geomean (0.12x-1.39x).
    "conv2d": Verification(
        card="NVIDIA H200",
        torch="2.11.0+cu130",
        date="2026-11-26",
        commit="5a10c99",
        default=False,
        note="0.46x cuDNN (geomean, bf16 NHWC); torch's cuDNN conv stays the default",
    ),
}
