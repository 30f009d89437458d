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
    # 67/67 `gpu` tests passed (persistent forward / backward, cuBLAS loop,
    # cell, packed, bidirectional, proj_size, streams, CUDA graphs). Quick bf16
    # benchmarks against cuDNN: sequence inference at batch 1-8 3.1-6.0x, batch
    # 16 hidden 1024 1.41x, 2-layer bidirectional training at batch 16 2.05x;
    # batch 32-64 0.51-0.67x; one cell step 0.72-3.2x. So by default
    # pydl.nn.LSTM runs pydl's kernel where the persistent kernel serves
    # (batch <= 16, no projection, not float64, hidden <= min(1024, 8 x SMs):
    # pydl/nn/rnn.py) and torch's LSTM otherwise; LSTMCell runs torch's
    # (pydl/ops/lstm.py).
    "lstm": Verification(
        card="NVIDIA H200",
        torch="2.11.0+cu130",
        date="2026-11-27",
        commit="b3a232e",
        default=True,
        note="pydl.nn.LSTM at batch <= 16 (1.4-6x cuDNN); larger batches and LSTMCell run torch's",
    ),
    # 184/184 `gpu` tests passed (tensor-core fp16/bf16 and CUDA-core kernels,
    # masks and their gradients, causal both alignments, GQA, dropout equal to
    # the CPU kernel's, CUDA graphs, opcheck, torch.compile). Quick benchmarks,
    # bf16 / fp16: forward 0.30-0.43x torch's flash backend, forward + backward
    # 0.22-0.42x; float32 0.06-0.21x torch's efficient backend. torch's SDPA
    # stays the default; fp16 / bf16 calls it cannot express (return_lse,
    # bottom-right causal, causal + mask) run pydl's kernel instead of the
    # O(L x S) reference (pydl/ops/attention.py).
    "attention": Verification(
        card="NVIDIA H200",
        torch="2.11.0+cu130",
        date="2026-11-27",
        commit="257995b",
        default=False,
        note="0.30-0.43x torch's flash forward (bf16/fp16); torch's SDPA stays the default "
             "except for fp16 / bf16 calls it cannot express",
    ),
}
