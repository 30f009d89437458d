"""A bidirectional-LSTM sequence classifier.

Stacked LSTM layers (one module per layer, so each can have its own width),
each reading the sequence both ways; the classifier sees the last layer's
final forward and backward states ("last") or the mean over time ("mean").
The LSTM is pydl.nn.LSTM once it exists, torch.nn.LSTM until then
(pydl.models.layers). Recurrent nets are where gradients explode, so fit()
clips the gradient norm to ``default_clip_norm`` unless told otherwise.
"""

from __future__ import annotations

import torch

from pydl.models import layers
from pydl.models._config import check_input, check_positive_int, dense_stack, layer_specs


class BiLSTMClassifier(torch.nn.Module):
    default_clip_norm = 1.0

    def __init__(self, input_size: int = 8, num_classes: int = 10, lstm_layers=(64,),
                 bidirectional: bool = True, dropout: float = 0.0, pooling: str = "last",
                 dense_layers=(), seq_len: int | None = None):
        super().__init__()
        where = "BiLSTMClassifier"
        self.input_size = check_positive_int(input_size, "input_size", where)
        self.num_classes = check_positive_int(num_classes, "num_classes", where)
        self.seq_len = None if seq_len is None else check_positive_int(seq_len, "seq_len", where)
        if pooling not in ("last", "mean"):
            raise ValueError(f"{where}: pooling must be 'last' or 'mean', got {pooling!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout}")
        specs = layer_specs(lstm_layers, ("units",), {}, f"{where} lstm_layers")
        if not specs:
            raise ValueError(f"{where}: lstm_layers must list at least one layer")
        self.pooling = pooling
        directions = 2 if bidirectional else 1
        self.rnns = torch.nn.ModuleList()
        features = input_size
        for spec in specs:
            self.rnns.append(layers.LSTM(features, spec["units"], batch_first=True,
                                         bidirectional=bidirectional))
            features = directions * spec["units"]
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = dense_stack(features, dense_layers, num_classes, f"{where} dense_layers")

    def check_input(self, X: torch.Tensor) -> None:
        check_input(X, (self.seq_len, self.input_size), "BiLSTMClassifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, rnn in enumerate(self.rnns):
            if k:
                x = self.dropout(x)
            x, (h_n, _) = rnn(x)
        if self.pooling == "mean":
            summary = x.mean(dim=1)
        else:
            # h_n: (directions, batch, units): the forward pass's state after the last step
            # and the backward pass's state after reading back to the first step.
            summary = torch.cat(list(h_n), dim=-1)
        return self.classifier(self.dropout(summary))
