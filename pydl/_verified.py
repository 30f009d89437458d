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


VERIFIED_CUDA: dict[str, Verification] = {}
