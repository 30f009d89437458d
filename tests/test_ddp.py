"""fit() under DistributedDataParallel: 2 CPU processes launched with torchrun match one
process training on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
from toolkit_helpers import one_thread_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    out = tmp_path / "rank0.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = torch.load(out)
    assert result["world"] == 2

    # one process, global batch = 2 x the per-process batch
    model, history = ddp_worker.train(2 * ddp_worker.PER_RANK_BATCH)
    ddp = result["history"]
    assert len(ddp["step_loss"]) == len(history.step_loss) == 6  # ceil(37 / 16) steps, 2 epochs
    assert ddp["step_loss"] == pytest.approx(history.step_loss, rel=1e-5)
    assert ddp["loss"] == pytest.approx(history.loss, rel=1e-5)
    assert ddp["accuracy"] == history.accuracy
    for name, value in model.state_dict().items():
        torch.testing.assert_close(result["state"][name], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # and training moved the weights (the comparison is not between two initial states)
    initial = ddp_worker.model().state_dict()
    assert any(not torch.allclose(initial[k], v) for k, v in model.state_dict().items())
