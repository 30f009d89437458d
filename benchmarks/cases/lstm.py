"""LSTM cases: torch.nn.LSTMCell steps, pydl.nn.LSTMCell vs torch.nn.LSTMCell
with the same weights.

  * one step, inference, at several (batch, hidden) sizes;
  * training: a Python loop of steps, forward then backward through all of
    them (what a custom recurrent model written with LSTMCell does).
FLOPs count the two GEMMs per step (2*B*4H*(I+H)); training counts 3x.
"""

from __future__ import annotations

import torch

from benchmarks.harness import Case
from pydl.nn import LSTMCell

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


def cases(cfg) -> list[Case]:
    elem = torch.empty((), dtype=cfg.dtype).element_size()
    out = []
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
