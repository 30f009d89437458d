"""torch.distributed helpers for fit(): launch with torchrun, one process per device.

    torchrun --nproc_per_node=2 --standalone my_script.py
    # in my_script.py:
    device = pydl.models.distributed.init_from_env()   # gloo on CPU, nccl on GPU
    history = pydl.models.fit(model.to(device), X, y, batch_size=32, ...)  # 32 per process

Under an initialized process group, fit() wraps the model in
DistributedDataParallel and gives each process its share of every global
batch of world_size x batch_size samples.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def init_from_env(backend: str | None = None) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR ...).

    backend: 'nccl' when CUDA is available, else 'gloo'. Returns this process's device.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("init_from_env: RANK/WORLD_SIZE not set; launch with torchrun "
                           "(python -m torch.distributed.run --nproc_per_node=N script.py)")
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if use_cuda else "gloo")
    device = torch.device("cpu")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not is_initialized():
        dist.init_process_group(backend=backend)
    return device


def shutdown() -> None:
    if is_initialized():
        dist.barrier()  # no rank tears the group down while another still works
        dist.destroy_process_group()


def exit_process(code: int = 0) -> None:
    """End a torchrun worker without running C++ static destructors.

    With torch 2.14, about 1 in 20 gloo workers aborted at interpreter exit
    ("terminate called without an active exception"), after their work and
    destroy_process_group had finished, with or without pydl's extension
    loaded; torchrun then reports the whole job failed. Flush, then _exit.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
