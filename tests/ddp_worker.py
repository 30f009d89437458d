"""Run by tests/test_ddp.py under torchrun: fit() on 2 CPU processes (gloo), rank 0 saves."""

import sys

import torch

from pydl.models import CNNClassifier, distributed, fit

SAMPLES, PER_RANK_BATCH, EPOCHS = 37, 8, 2  # the last global batch (5) splits 3 + 2


def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(SAMPLES, 1, 8, 8, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g)


def model():
    torch.manual_seed(0)
    return CNNClassifier(conv_layers=[(4, 3, "relu", 2)], dense_layers=[8])


def train(batch_size):
    X, y = data()
    m = model()
    history = fit(m, X, y, epochs=EPOCHS, batch_size=batch_size, learning_rate=0.2,
                  optimizer="momentum", seed=0, progress=False)
    return m, history


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.init_from_env(backend="gloo")
    m, history = train(PER_RANK_BATCH)
    if distributed.rank() == 0:
        torch.save({"state": m.state_dict(), "history": history.as_dict(),
                    "world": distributed.world_size()}, sys.argv[1])
    distributed.shutdown()
    distributed.exit_process(0)
