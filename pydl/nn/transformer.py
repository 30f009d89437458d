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
        # README's table). ReLU's backward needs only its output. Only where
        # self.activation is provably that function; anything else (another
        # function, a subclass, a hooked module) is called, as torch does.
        hidden = self.linear1(x)
        kind, approximate = _in_place_activation(self.activation)
        if self.linear1._forward_hooks or torch.nn.modules.module._global_forward_hooks:
            kind = None  # a hook may hold linear1's output: leave it as it was
        if kind == "relu":
            hidden = hidden.relu_()
        elif kind == "gelu" and not (torch.is_grad_enabled() and hidden.requires_grad):
            hidden = torch.ops.aten.gelu_(hidden, approximate=approximate)
        else:
            hidden = self.activation(hidden)
        return self.dropout2(self.linear2(self.dropout(hidden)))


def _in_place_activation(activation) -> tuple[str | None, str]:
    """("relu" | "gelu", GELU's approximate) where calling ``activation`` is
    exactly ReLU / GELU: F.relu, F.gelu (its default approximate='none'), or a
    module of exactly type nn.ReLU / nn.GELU whose call runs just its own
    forward (no hooks of its own or global ones, no instance-level forward);
    (None, "none") for anything else."""
    if activation is F.relu:
        return "relu", "none"
    if activation is F.gelu:
        return "gelu", "none"
    kind = type(activation)
    if kind is not torch.nn.ReLU and kind is not torch.nn.GELU:
        return None, "none"
    module = torch.nn.modules.module
    if ("forward" in vars(activation)
            or activation._forward_hooks or activation._forward_pre_hooks
            or activation._backward_hooks or activation._backward_pre_hooks
            or module._global_forward_hooks or module._global_forward_pre_hooks
            or module._global_backward_hooks or module._global_backward_pre_hooks):
        return None, "none"
    if kind is torch.nn.ReLU:
        return "relu", "none"
    return "gelu", activation.approximate  # nn.GELU.forward: F.gelu(x, approximate)


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
