"""Which CUDA kernels have passed the `gpu` tests on a real GPU.

A CUDA kernel family not listed here is opt-in (``PYDL_EXPERIMENTAL_CUDA=1``);
by default its CUDA calls go to torch's own op. scripts/gpu_check.sh prints
the line to add after a passing run. The README's "GPU verification" table
mirrors this dict.
"""

# family -> (card, torch version, date, commit)
VERIFIED_CUDA: dict[str, tuple[str, str, str, str]] = {}
