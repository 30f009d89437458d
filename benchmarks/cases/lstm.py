"""LSTM cases: pydl.nn.LSTM vs torch.nn.LSTM (oneDNN on the CPU, cuDNN on
GPUs) and pydl.nn.LSTMCell vs torch.nn.LSTMCell, with the same weights.

  * whole sequences: inference (under torch.no_grad()) at batch 1, 8, 64;
    training (forward + backward) at larger batches; packed batches with lengths uniform in
    [T/4, T]; a bidirectional 2-layer model;
  * LSTMCell: one step, and a Python loop of steps trained end to end (what a
    custom recurrent model written with LSTMCell does).
FLOPs count the GEMMs of the useful steps: 2*B*4H*(I+H) per step, layer and
direction (packed: the real lengths); training counts 3x.
"""

from __future__ import annotations

import os

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from benchmarks.harness import Case
from pydl.nn import LSTM, LSTMCell

FAMILY = "lstm"

# (batch, hidden); input_size = hidden.
STEP_SIZES = [(1, 128), (8, 128), (8, 256), (64, 512)]
LOOP_SIZES = [(8, 128), (64, 256)]
LOOP_STEPS = 20


def _cells(hidden, cfg):
    opts = {"device": cfg.device, "dtype": cfg.dtype}
    theirs = torch.nn.LSTMCell(hidden, hidden, **opts)
    ours = LSTMCell(hidden, hidden, **opts)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _step_case(batch, hidden, cfg):
    def make_providers():
        ours, theirs = _cells(hidden, cfg)
        opts = {"device": cfg.device, "dtype": cfg.dtype}
        x = torch.randn(batch, hidden, **opts)
        hx = (torch.randn(batch, hidden, **opts), torch.randn(batch, hidden, **opts))
        return {"pydl": lambda: ours(x, hx)[0], "torch": lambda: theirs(x, hx)[0]}

    return make_providers


def _loop_case(batch, hidden, cfg):
    def make_providers():
        ours, theirs = _cells(hidden, cfg)
        xs = torch.randn(LOOP_STEPS, batch, hidden, device=cfg.device, dtype=cfg.dtype)

        def run(cell):
            state = None
            outs = []
            for t in range(LOOP_STEPS):
                state = cell(xs[t], state)
                outs.append(state[0])
            loss = torch.stack(outs).sum()
            loss.backward()
            return state[0].detach()

        return {"pydl": lambda: run(ours), "torch": lambda: run(theirs)}

    return make_providers


# The persistent kernels' default batch limit (csrc/lstm/lstm_cuda.cu,
# kPersistentMaxBatch): up to it the "pydl loop" row times the cuBLAS loop
# beside them, past it the "pydl persistent" row times them.
PERSISTENT_DEFAULT_MAX_BATCH = 32

# Whole sequences: (batch, hidden, steps, train, packed, layers, bidirectional);
# input_size = hidden.
SEQUENCES_QUICK = [
    (1, 64, 100, False, False, 1, False),
    (1, 128, 100, False, False, 1, False),
    (1, 256, 100, False, False, 1, False),
    (8, 256, 100, False, False, 1, False),
    (64, 512, 50, False, False, 1, False),
    (32, 256, 100, False, True, 1, False),
    (32, 256, 100, True, True, 1, False),
    (64, 256, 50, True, False, 1, False),
    (16, 256, 50, True, False, 2, True),
    (1, 128, 100, False, False, 1, True),
    (16, 1024, 50, False, False, 1, False),  # GPU: the persistent kernel at its largest hidden
]
SEQUENCES_FULL = SEQUENCES_QUICK + [
    (1, 128, 500, False, False, 1, False),
    (8, 128, 200, False, False, 2, True),
    (128, 512, 50, True, False, 1, False),
    (256, 1024, 50, True, False, 1, False),
    (64, 512, 200, True, True, 1, False),
]


def _lengths(batch, steps):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(max(1, steps // 4), steps + 1, (batch,), generator=g)
    lengths[0] = steps
    return lengths


def _sequence_case(batch, hidden, steps, train, packed, layers, bidirectional, cfg):
    def make_providers():
        opts = {"device": cfg.device, "dtype": cfg.dtype}
        kw = dict(num_layers=layers, bidirectional=bidirectional, **opts)
        theirs = torch.nn.LSTM(hidden, hidden, **kw)
        ours = LSTM(hidden, hidden, **kw)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(steps, batch, hidden, **opts)
        if packed:
            x = pack_padded_sequence(x, _lengths(batch, steps), enforce_sorted=False)

        def run(module):
            if not train:  # inference: no graph recorded, for either side
                with torch.no_grad():
                    out = module(x)[0]
                return out.data if packed else out
            out = module(x)[0]
            out = out.data if packed else out
            out.sum().backward()
            return out.detach()

        providers = {"pydl": lambda: run(ours), "torch": lambda: run(theirs)}
        if cfg.device == "cuda" and batch <= PERSISTENT_DEFAULT_MAX_BATCH:
            # The same layer without the persistent kernel: cuBLAS + pointwise per step.
            providers["pydl loop"] = lambda: _with_env("PYDL_LSTM_PERSISTENT", "0",
                                                       lambda: run(ours))
        elif cfg.device == "cuda" and _persistent_fits(batch, hidden, cfg.device):
            # The persistent kernels past their default batch limit: the A/B
            # for that limit. pydl.nn.LSTM sends such batches to cuDNN unless
            # PYDL_EXPERIMENTAL_CUDA=1 (as scripts/gpu_check.sh runs).
            providers["pydl persistent"] = lambda: _with_env(
                "PYDL_LSTM_PERSISTENT_MAX_BATCH", str(batch), lambda: run(ours))
        return providers

    return make_providers


def _persistent_fits(batch, hidden, device):
    """Whether the persistent forward's shared memory (B x H floats of h, plus
    partial sums) can hold the batch, and pydl runs past the default limit at all:
    otherwise its row would time the cuBLAS loop or cuDNN under that name."""
    if os.environ.get("PYDL_EXPERIMENTAL_CUDA") != "1":
        return False
    props = torch.cuda.get_device_properties(torch.device(device))
    # A block may opt in to its SM's shared memory less 1 KB (227 of 228 KB on Hopper).
    smem = getattr(props, "shared_memory_per_multiprocessor", 0) - 1024
    return batch * hidden * 4 * 1.25 <= smem


def _with_env(name, value, fn):
    """fn() with environment variable `name` set to `value` (pydl reads its
    LSTM switches per call)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def _sequence_cases(cfg) -> list[Case]:
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    out = []
    for batch, hidden, steps, train, packed, layers, bidir in (
            SEQUENCES_QUICK if cfg.quick else SEQUENCES_FULL):
        useful_steps = int(_lengths(batch, steps).sum()) if packed else batch * steps
        directions = 2 if bidir else 1
        per_row = sum(2 * 4 * hidden * ((hidden if l == 0 else directions * hidden) + hidden)
                      for l in range(layers)) * directions
        flops = useful_steps * per_row * (3 if train else 1)
        kind = ("train" if train else "infer") + ("_packed" if packed else "")
        arch = f"_l{layers}{'_bidir' if bidir else ''}" if layers > 1 or bidir else ""
        out.append(Case(
            name=f"lstm/seq_{kind}{arch}/b{batch}_h{hidden}_t{steps}",
            family=FAMILY,
            shape=f"T{steps} B{batch} I{hidden} H{hidden}" + (f" L{layers}" if layers > 1 else "")
                  + (" bidir" if bidir else "") + (" packed" if packed else ""),
            flops=flops,
            bytes=elem * (layers * directions * 4 * hidden * 2 * hidden
                          + useful_steps * (hidden + directions * hidden)),
            make_providers=_sequence_case(batch, hidden, steps, train, packed, layers, bidir, cfg),
            tags={"batch": batch, "hidden": hidden, "train": train},
        ))
    return out


def cases(cfg) -> list[Case]:
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    out = _sequence_cases(cfg)
    for batch, hidden in STEP_SIZES:
        flops = 2 * batch * 4 * hidden * 2 * hidden
        out.append(Case(
            name=f"lstm/cell_step/b{batch}_h{hidden}",
            family=FAMILY,
            shape=f"B{batch} I{hidden} H{hidden}",
            flops=flops,
            bytes=elem * (4 * hidden * 2 * hidden + 6 * batch * hidden),
            make_providers=_step_case(batch, hidden, cfg),
            tags={"batch": batch, "hidden": hidden},
        ))
    for batch, hidden in LOOP_SIZES:
        flops = 3 * LOOP_STEPS * 2 * batch * 4 * hidden * 2 * hidden
        out.append(Case(
            name=f"lstm/cell_loop{LOOP_STEPS}_train/b{batch}_h{hidden}",
            family=FAMILY,
            shape=f"T{LOOP_STEPS} B{batch} I{hidden} H{hidden}",
            flops=flops,
            bytes=elem * LOOP_STEPS * (4 * hidden * 2 * hidden + 6 * batch * hidden),
            make_providers=_loop_case(batch, hidden, cfg),
            tags={"batch": batch, "hidden": hidden, "train": True},
        ))
    return out
