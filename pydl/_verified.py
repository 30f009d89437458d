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
    # 78/78 `gpu` tests passed at 2f7e4aa (2026-11-28, with the routing's
    # review fixes: a lowered PYDL_LSTM_PERSISTENT_MAX_BATCH, fp16's device
    # clause) and at 5b199f4 (persistent forward / backward up to
    # 32 rows, cuBLAS loop, cell, packed, bidirectional, proj_size, streams,
    # CUDA graphs, the default routing per dtype); 67/67 at b3a232e. Quick
    # benchmarks against cuDNN (2026-11-28, 8066e86): bf16 sequence inference
    # at batch 1-8 4.5-6.4x, batch 16 hidden 1024 1.21x, 2-layer bidirectional
    # training at batch 16 2.31x; float32 / fp16 1.2-5.6x where cuDNN runs its
    # standard algorithm, 0.16-0.6x where torch picks a cuDNN persistent one;
    # packed batch 32 hidden 256 (persistent kernel) 1.8-2.3x in all three
    # dtypes; batch 64 (cuBLAS loop) bf16 0.96-1.01x, float32 0.69-0.72x; one
    # cell step 0.5-2.7x. So by default pydl.nn.LSTM runs pydl's kernel where
    # the persistent kernel serves and wins (pydl/nn/rnn.py: batch <= 16, or
    # packed <= 32 at hidden <= 256; no projection, not float64, hidden <=
    # min(1024, 8 x SMs); not where torch runs cuDNN's persistent algorithms)
    # and torch's LSTM otherwise; LSTMCell runs torch's (pydl/ops/lstm.py).
    "lstm": Verification(
        card="NVIDIA H200",
        torch="2.11.0+cu130",
        date="2026-11-28",
        commit="2f7e4aa",
        default=True,
        note="pydl.nn.LSTM at batch <= 16 and packed <= 32 where cuDNN has no persistent "
             "algorithm (1.2-6.4x cuDNN); other calls and LSTMCell run torch's",
    ),
    # 219/219 `gpu` tests passed at 2f7e4aa (2026-11-28: the dK / dV kernel's
    # staged lse / delta, the atomic dQ's vector reductions, the forward's
    # one m-tile at head dim 64); 205/205 at 5b199f4 with the whole-tile softmax and
    # one m-tile in the backward as defaults (tensor-core fp16/bf16 and
    # CUDA-core kernels, both m-tile layouts, masks and their gradients,
    # causal both alignments, GQA, dropout equal to the CPU kernel's, CUDA
    # graphs, opcheck, torch.compile); 184/184 at 257995b. After 2f7e4aa, run
    # on the CPU emulator only: the score loops' dropout / whole-tile tests
    # made at compile time (same arithmetic), and the head-dim-64 one-m-tile
    # kernels capped at 168 registers (the forward and dQ kernel then keep 16
    # / 32 bytes of stack). scripts/attention_tc_ab.py at 2f7e4aa
    # (2026-11-28), bf16, B16 H16: forward 0.54-0.63x torch's flash backend,
    # forward + backward 0.46x (d128) / 0.49x (causal d64); float32
    # 0.06-0.21x torch's efficient backend (2026-11-27).
    # torch's SDPA stays the default; fp16 / bf16 calls it cannot express
    # (return_lse, bottom-right causal, causal + mask) run pydl's kernel
    # instead of the O(L x S) reference (pydl/ops/attention.py).
    "attention": Verification(
        card="NVIDIA H200",
        torch="2.11.0+cu130",
        date="2026-11-28",
        commit="2f7e4aa",
        default=False,
        note="0.54-0.63x torch's flash forward, 0.46-0.49x forward + backward (bf16); torch's "
             "SDPA stays the default except for fp16 / bf16 calls it cannot express",
    ),
}
