"""pydl.nn.TransformerEncoderLayer and TransformerEncoder: torch's modules on
pydl's fused attention.

Subclasses of torch's: same constructor arguments (d_model, nhead,
dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
norm_first, bias), parameter names, initialization and state_dict. The
self-attention is a pydl.nn.MultiheadAttention. The layer always runs the
composed path (attention block, feed-forward block, the norms in torch's
order): torch's inference fast path would bypass the attention module, and
the encoder never packs padded batches into nested tensors (pydl's layers
take dense tensors), so padded positions are computed rather than zeroed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pydl.nn.attention import MultiheadAttention


class TransformerEncoderLayer(torch.nn.TransformerEncoderLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The same parameters, pydl's forward (torch.nn.MultiheadAttention's subclass).
        self.self_attn.__class__ = MultiheadAttention

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        # Masks in torch's canonical (additive float) form, as torch's layer does.
        src_key_padding_mask = F._canonical_mask(
            mask=src_key_padding_mask, mask_name="src_key_padding_mask",
            other_type=F._none_or_dtype(src_mask), other_name="src_mask",
            target_type=src.dtype)
        src_mask = F._canonical_mask(
            mask=src_mask, mask_name="src_mask", other_type=None, other_name="",
            target_type=src.dtype, check_other=False)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask,
                                   is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask,
                                              is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        # As torch's, but ReLU in place (GELU too when no graph is recorded:
        # its backward needs the input): an out-of-place activation allocates
        # a fresh (tokens, dim_feedforward) buffer each call, and its page
        # faults cost 1.7 ms of a 23 ms B8 L128 E512 layer (0.92x -> see the
        # README's table). ReLU's backward needs only its output.
        hidden = self.linear1(x)
        kind = getattr(self, "activation_relu_or_gelu", 0)  # torch's: 1 relu, 2 gelu
        if self.linear1._forward_hooks or torch.nn.modules.module._global_forward_hooks:
            kind = 0  # a hook may hold linear1's output: leave it as it was
        if kind == 1:
            hidden = hidden.relu_()
        elif kind == 2 and not (torch.is_grad_enabled() and hidden.requires_grad):
            approximate = getattr(self.activation, "approximate", "none")  # nn.GELU's, or F.gelu
            hidden = torch.ops.aten.gelu_(hidden, approximate=approximate)
        else:
            hidden = self.activation(hidden)
        return self.dropout2(self.linear2(self.dropout(hidden)))


class TransformerEncoder(torch.nn.TransformerEncoder):
    """torch.nn.TransformerEncoder whose layers are pydl's (a torch
    TransformerEncoderLayer passed in is converted, keeping its weights)."""

    def __init__(self, encoder_layer, num_layers, *args, **kwargs):
        super().__init__(encoder_layer, num_layers, *args, **kwargs)
        for layer in self.layers:
            if type(layer) is torch.nn.TransformerEncoderLayer:
                layer.__class__ = TransformerEncoderLayer
            if type(layer.self_attn) is torch.nn.MultiheadAttention:
                layer.self_attn.__class__ = MultiheadAttention

    # torch's inference fast path packs padded batches into nested tensors:
    # never here (torch's __init__ assigns this attribute; the setter ignores it).
    @property
    def use_nested_tensor(self) -> bool:
        return False

    @use_nested_tensor.setter
    def use_nested_tensor(self, value: bool) -> None:
        pass
