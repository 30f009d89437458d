"""A Transformer-encoder classifier over patch or token embeddings.

Tokens (image patches as feature vectors, or integer token ids) are embedded
to d_model, get a positional encoding (sinusoidal or learned), pass through
encoder blocks, and a [CLS] token (or the mean over tokens) is classified.

The encoder block is written here rather than taken from
torch.nn.TransformerEncoderLayer because that layer calls its attention with
need_weights=False: this block owns the MultiheadAttention module
(pydl.nn's when it lands, via pydl.models.layers) and can return the per-head
attention weights for attention maps. The attention is a module held by the
block, not a layer stacked in a Sequential (the write-up's bug): it needs
query, key and value, and returns a tuple.
"""

from __future__ import annotations

import math

import torch

from pydl.models import layers
from pydl.models._config import check_input, check_positive_int, dense_stack


class EncoderBlock(torch.nn.Module):
    """x + attn(norm(x)), then x + ff(norm(x)) (pre-norm: trains stably without warm-up)."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float = 0.1,
                 activation: str = "gelu", norm_first: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.attn = layers.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = torch.nn.LayerNorm(d_model)
        self.norm2 = torch.nn.LayerNorm(d_model)
        self.ff = torch.nn.Sequential(torch.nn.Linear(d_model, ff_dim), layers.activation(activation),
                                      torch.nn.Dropout(dropout), torch.nn.Linear(ff_dim, d_model))
        self.dropout = torch.nn.Dropout(dropout)

    def _attend(self, x, need_weights):
        out, weights = self.attn(x, x, x, need_weights=need_weights, average_attn_weights=False)
        return self.dropout(out), weights

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """(output, per-head weights (batch, heads, L, L) or None)."""
        if self.norm_first:
            a, weights = self._attend(self.norm1(x), need_weights)
            x = x + a
            x = x + self.dropout(self.ff(self.norm2(x)))
        else:
            a, weights = self._attend(x, need_weights)
            x = self.norm1(x + a)
            x = self.norm2(x + self.dropout(self.ff(x)))
        return x, weights


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """Vaswani et al.: sin on even, cos on odd dimensions, wavelengths 2pi..10000*2pi."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe


class TransformerClassifier(torch.nn.Module):
    """num_heads heads of key_dim dimensions each (d_model = num_heads x key_dim; give either),
    num_layers encoder blocks with ff_dim-wide feed-forward layers."""

    def __init__(self, input_dim: int | None = 4, num_classes: int = 10, seq_len: int = 16,
                 num_heads: int = 4, key_dim: int | None = None, d_model: int | None = None,
                 num_layers: int = 2, ff_dim: int = 128, dropout: float = 0.1,
                 activation: str = "gelu", positional: str = "sinusoidal", pooling: str = "cls",
                 vocab_size: int | None = None, dense_layers=(), norm_first: bool = True):
        super().__init__()
        where = "TransformerClassifier"
        self.num_classes = check_positive_int(num_classes, "num_classes", where)
        self.seq_len = check_positive_int(seq_len, "seq_len", where)
        check_positive_int(num_heads, "num_heads", where)
        check_positive_int(num_layers, "num_layers", where)
        check_positive_int(ff_dim, "ff_dim", where)
        layers.check_activation(activation, f"{where}: ")
        if d_model is None:  # default: 16 dimensions per head
            d_model = num_heads * check_positive_int(16 if key_dim is None else key_dim,
                                                     "key_dim", where)
        check_positive_int(d_model, "d_model", where)
        # torch's MultiheadAttention splits d_model evenly: key_dim is d_model / num_heads.
        if d_model % num_heads or (key_dim is not None and key_dim * num_heads != d_model):
            raise ValueError(f"{where}: d_model ({d_model}) must equal num_heads ({num_heads}) x "
                             f"key_dim ({key_dim if key_dim is not None else 'd_model/num_heads'})")
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(f"{where}: positional must be 'sinusoidal' or 'learned', got {positional!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"{where}: pooling must be 'cls' or 'mean', got {pooling!r}")
        self.vocab_size = vocab_size
        if vocab_size is not None:  # token ids (batch, L) -> embeddings
            self.embed = torch.nn.Embedding(check_positive_int(vocab_size, "vocab_size", where), d_model)
            self.input_dim = None
        else:  # patch / feature tokens (batch, L, input_dim) -> embeddings
            self.input_dim = check_positive_int(input_dim, "input_dim", where)
            self.embed = torch.nn.Linear(input_dim, d_model)
        self.pooling = pooling
        self.num_heads = num_heads
        extra = 1 if pooling == "cls" else 0
        if pooling == "cls":
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, d_model))
        if positional == "learned":
            self.pos = torch.nn.Parameter(torch.randn(1, seq_len + extra, d_model) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_encoding(seq_len + extra, d_model)[None],
                                 persistent=False)
        self.dropout = torch.nn.Dropout(dropout)
        self.blocks = torch.nn.ModuleList(
            EncoderBlock(d_model, num_heads, ff_dim, dropout, activation, norm_first)
            for _ in range(num_layers))
        self.norm = torch.nn.LayerNorm(d_model)
        self.classifier = dense_stack(d_model, dense_layers, num_classes, f"{where} dense_layers")

    def check_input(self, X: torch.Tensor) -> None:
        where = "TransformerClassifier"
        if self.vocab_size is not None:
            if X.dim() != 2 or X.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{where}: expected integer token ids of shape (batch, L), got "
                                 f"{X.dtype} {tuple(X.shape)}")
        else:
            check_input(X, (None, self.input_dim), where)
        if X.shape[1] > self.seq_len:
            raise ValueError(f"{where}: sequences of length {X.shape[1]} exceed seq_len={self.seq_len}")

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits; with return_attention, (logits, [per-layer (batch, heads, T, T) weights])
        where T counts the [CLS] token first when pooling='cls'."""
        h = self.embed(x)
        if self.pooling == "cls":
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = self.dropout(h + self.pos[:, : h.shape[1]])
        maps = []
        for block in self.blocks:
            h, weights = block(h, need_weights=return_attention)
            maps.append(weights)
        h = self.norm(h)
        logits = self.classifier(h[:, 0] if self.pooling == "cls" else h.mean(dim=1))
        return (logits, maps) if return_attention else logits
