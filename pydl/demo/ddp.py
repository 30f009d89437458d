"""Data-parallel training of the digits CNN with DistributedDataParallel.

    torchrun --nproc_per_node=2 --standalone -m pydl.demo.ddp      # 2 CPU processes (gloo)
    torchrun --nproc_per_node=N --standalone -m pydl.demo.ddp      # N GPUs (nccl)

Each process trains on its share of every global batch (--batch-size per process);
gradients are averaged across processes after every backward pass, so the run
follows the single-process run with a batch of N x --batch-size.
"""

from __future__ import annotations

import argparse
import time

import torch

from pydl import datasets
from pydl.models import CNNClassifier, distributed, evaluate, fit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="torchrun ... -m pydl.demo.ddp",
                                     description="Train the digits CNN with DDP.")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = distributed.init_from_env()
    try:
        X_train, X_test, y_train, y_test = datasets.load_digits("images")
        torch.manual_seed(0)  # the same start everywhere (DDP also broadcasts rank 0's weights)
        model = CNNClassifier().to(device)
        start = time.perf_counter()
        # The global batch grows with the process count: scale the step by its square root.
        history = fit(model, X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=2e-3 * distributed.world_size() ** 0.5, lr_schedule="cosine",
                      progress=distributed.rank() == 0)
        if distributed.rank() == 0:
            acc = evaluate(model, X_test, y_test)["accuracy"]
            print(f"{distributed.world_size()} processes on {device.type}: final train loss "
                  f"{history.loss[-1]:.4f}, test accuracy {acc:.4f}, "
                  f"{time.perf_counter() - start:.1f} s")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
    distributed.exit_process(0)
