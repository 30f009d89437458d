"""Plain-PyTorch oracles for pydl's ops: the definition of "correct".

Every function is written from the math with elementary tensor ops (matmul,
einsum, exp, sigmoid, tanh, padding, slicing) and never calls the op it
defines. Each computes in its input's dtype on its input's device, so tests
pass float64 tensors. Nothing here is fast; it is meant to be obviously right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "activation",
    "conv2d",
    "lstm",
    "lstm_cell",
    "scaled_dot_product_attention",
]

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------


def activation(x: Tensor, name: str) -> Tensor:
    """Apply the pointwise activation ``name`` (one of ``ACTIVATIONS``)."""
    if name == "none":
        return x
    if name == "relu":
        return torch.where(x > 0, x, torch.zeros_like(x))
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))
    if name == "silu":
        return x * torch.sigmoid(x)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


_activation = activation  # conv2d's `activation` argument shadows the name


# --------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------

IntOrPair = int | Sequence[int]


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    try:
        items = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(
            f"conv2d: {name} must be an int or a pair of ints, got {value!r}"
        ) from None
    if len(items) == 1:
        return (items[0], items[0])
    if len(items) != 2:
        raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {value!r}")
    return items  # type: ignore[return-value]


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    activation: str = "none",
    residual: Tensor | None = None,
) -> Tensor:
    """``act(conv2d(input, weight) + bias + residual)`` as a sum over kernel taps.

    input (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,), residual
    broadcastable to the output (N, O, HO, WO). ``padding`` is an int, a pair,
    ``"valid"`` (no padding) or ``"same"`` (stride 1 only; total padding
    ``dilation*(k-1)`` split as left = total // 2, right = total - left, as
    torch does).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"conv2d: unknown activation {activation!r}; expected one of {ACTIVATIONS}"
        )
    if input.dim() != 4:
        raise ValueError(
            f"conv2d: expected a 4-D input (N, C, H, W), got shape {tuple(input.shape)}"
        )
    if weight.dim() != 4:
        raise ValueError(
            f"conv2d: expected a 4-D weight (O, C/groups, KH, KW), got shape {tuple(weight.shape)}"
        )
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if sh < 1 or sw < 1:
        raise ValueError(f"conv2d: stride must be positive, got {(sh, sw)}")
    if dh < 1 or dw < 1:
        raise ValueError(f"conv2d: dilation must be positive, got {(dh, dw)}")

    n, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    if c % groups != 0:
        raise ValueError(f"conv2d: input channels {c} are not divisible by groups={groups}")
    if o % groups != 0:
        raise ValueError(f"conv2d: output channels {o} are not divisible by groups={groups}")
    if cg != c // groups:
        raise ValueError(
            f"conv2d: weight has {cg} input channels per group, expected {c // groups} "
            f"(input channels {c} / groups {groups})"
        )
    if kh < 1 or kw < 1:
        raise ValueError(f"conv2d: kernel size must be positive, got {(kh, kw)}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"conv2d: bias must have shape ({o},), got {tuple(bias.shape)}")
    if weight.dtype != input.dtype:
        raise ValueError(
            f"conv2d: weight dtype {weight.dtype} differs from input dtype {input.dtype}"
        )

    if isinstance(padding, str):
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            if sh != 1 or sw != 1:
                raise ValueError(f"conv2d: padding='same' requires stride 1, got {(sh, sw)}")
            total_h, total_w = dh * (kh - 1), dw * (kw - 1)
            pt, pl = total_h // 2, total_w // 2
            pb, pr = total_h - pt, total_w - pl
        else:
            raise ValueError(f"conv2d: padding string must be 'valid' or 'same', got {padding!r}")
    else:
        ph, pw = _pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise ValueError(f"conv2d: padding must be non-negative, got {(ph, pw)}")
        pt = pb = ph
        pl = pr = pw

    hp, wp = h + pt + pb, w + pl + pr
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"conv2d: output size would be {(ho, wo)} for padded input {(hp, wp)}, "
            f"kernel {(kh, kw)}, dilation {(dh, dw)}, stride {(sh, sw)}"
        )

    xp = input.new_zeros((n, c, hp, wp))
    xp[:, :, pt : pt + h, pl : pl + w] = input
    xp = xp.reshape(n, groups, c // groups, hp, wp)
    wg = weight.reshape(groups, o // groups, cg, kh, kw)

    out = input.new_zeros((n, groups, o // groups, ho, wo))
    for r in range(kh):
        h0 = r * dh
        for s in range(kw):
            w0 = s * dw
            patch = xp[:, :, :, h0 : h0 + sh * (ho - 1) + 1 : sh, w0 : w0 + sw * (wo - 1) + 1 : sw]
            out = out + torch.einsum("ngchw,goc->ngohw", patch, wg[:, :, :, r, s])
    out = out.reshape(n, o, ho, wo)

    if bias is not None:
        out = out + bias.reshape(1, o, 1, 1)
    if residual is not None:
        try:
            shape = torch.broadcast_shapes(tuple(residual.shape), tuple(out.shape))
        except RuntimeError:
            shape = None
        if shape != tuple(out.shape):
            raise ValueError(
                f"conv2d: residual of shape {tuple(residual.shape)} does not broadcast "
                f"to the output shape {tuple(out.shape)}"
            )
        out = out + residual
    return _activation(out, activation)


# --------------------------------------------------------------------------
# scaled dot-product attention
# --------------------------------------------------------------------------


def _check_broadcasts_to(mask: Tensor, full_shape: tuple, name: str) -> None:
    try:
        ok = torch.broadcast_shapes(tuple(mask.shape), full_shape) == full_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"scaled_dot_product_attention: {name} of shape {tuple(mask.shape)} does not "
            f"broadcast to {full_shape}"
        )


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    dropout_mask: Tensor | None = None,
    causal_alignment: str = "top_left",
    return_lse: bool = False,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """``softmax(q k^T * scale + mask) v`` with torch's conventions.

    Layout (batch..., heads, L, E) for query, (batch..., heads_kv, S, E) for
    key and (batch..., heads_kv, S, Ev) for value. ``attn_mask`` is bool
    (True = attend) or additive float, broadcastable to (batch..., heads, L, S).
    ``is_causal`` keeps keys ``j <= i`` ("top_left", torch's) or
    ``j <= i + S - L`` ("bottom_right"); unlike torch it may be combined with
    ``attn_mask`` (both apply). With ``enable_gqa`` each key/value head serves
    a contiguous group of ``heads // heads_kv`` query heads. Dropout is only
    through ``dropout_mask`` (bool, True = keep, kept weights scaled by
    ``1 / (1 - dropout_p)``). A row with no key to attend gives zeros (and
    ``lse = -inf``). ``lse`` is logsumexp of the scaled, masked scores, shape
    (batch..., heads, L), before dropout. Returns ``out``, then ``lse`` if
    ``return_lse``, then the weights (after dropout, (batch..., heads, L, S))
    if ``return_weights``.
    """
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise ValueError(
            "scaled_dot_product_attention: query, key and value need at least 2 dims (L, E)"
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise ValueError(
            "scaled_dot_product_attention: query, key and value must share a dtype, got "
            f"{query.dtype}, {key.dtype}, {value.dtype}"
        )
    if not query.is_floating_point():
        raise ValueError(
            f"scaled_dot_product_attention: expected floating-point inputs, got {query.dtype}"
        )
    if causal_alignment not in ("top_left", "bottom_right"):
        raise ValueError(
            f"scaled_dot_product_attention: causal_alignment must be 'top_left' or 'bottom_right', "
            f"got {causal_alignment!r}"
        )
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(
            f"scaled_dot_product_attention: dropout_p must be in [0, 1], got {dropout_p}"
        )
    if dropout_p > 0.0 and dropout_mask is None:
        raise ValueError(
            "scaled_dot_product_attention: the reference is deterministic; dropout_p > 0 needs an "
            "explicit dropout_mask"
        )
    if dropout_mask is not None and dropout_mask.dtype != torch.bool:
        raise ValueError(
            f"scaled_dot_product_attention: dropout_mask must be bool, got {dropout_mask.dtype}"
        )

    L, E = query.shape[-2], query.shape[-1]
    S = key.shape[-2]
    if key.shape[-1] != E:
        raise ValueError(
            f"scaled_dot_product_attention: key head dim {key.shape[-1]} differs from query head dim {E}"
        )
    if value.shape[-2] != S:
        raise ValueError(
            f"scaled_dot_product_attention: value has {value.shape[-2]} positions, key has {S}"
        )
    if key.shape[:-2] != value.shape[:-2]:
        raise ValueError(
            f"scaled_dot_product_attention: key batch/head dims {tuple(key.shape[:-2])} differ from "
            f"value's {tuple(value.shape[:-2])}"
        )

    if enable_gqa:
        if query.dim() < 3 or key.dim() < 3:
            raise ValueError(
                "scaled_dot_product_attention: enable_gqa needs a heads dim (..., H, L, E)"
            )
        hq, hk = query.shape[-3], key.shape[-3]
        if hk < 1 or hq % hk != 0:
            raise ValueError(
                f"scaled_dot_product_attention: query heads {hq} not divisible by key/value heads {hk}"
            )
        if hq != hk:
            key = key.repeat_interleave(hq // hk, dim=-3)
            value = value.repeat_interleave(hq // hk, dim=-3)

    try:
        batch = torch.broadcast_shapes(tuple(query.shape[:-2]), tuple(key.shape[:-2]))
    except RuntimeError:
        raise ValueError(
            f"scaled_dot_product_attention: query batch/head dims {tuple(query.shape[:-2])} do not "
            f"match key/value's {tuple(key.shape[:-2])} (set enable_gqa=True for grouped heads)"
        ) from None

    if scale is None:
        scale = 1.0 / math.sqrt(E) if E > 0 else 1.0
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale  # (batch..., L, S)
    full_shape = tuple(batch) + (L, S)
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)

    if attn_mask is not None:
        _check_broadcasts_to(attn_mask, full_shape, "attn_mask")
        if attn_mask.dtype == torch.bool:
            scores = torch.where(attn_mask, scores, neg_inf)
        else:
            scores = scores + attn_mask.to(scores.dtype)
    if is_causal:
        i = torch.arange(L, device=scores.device).unsqueeze(-1)
        j = torch.arange(S, device=scores.device).unsqueeze(0)
        offset = 0 if causal_alignment == "top_left" else S - L
        scores = torch.where(j <= i + offset, scores, neg_inf)
    scores = scores.expand(full_shape)

    # softmax written out so that a row with nothing to attend gives zeros
    row_max = (
        scores.amax(dim=-1, keepdim=True)
        if S > 0
        else scores.new_full(full_shape[:-1] + (1,), -math.inf)
    )
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(scores - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    lse = (torch.log(denom) + row_max).squeeze(-1)
    weights = p / torch.where(denom > 0, denom, torch.ones_like(denom))

    if dropout_mask is not None:
        keep_scale = 0.0 if dropout_p >= 1.0 else 1.0 / (1.0 - dropout_p)
        _check_broadcasts_to(dropout_mask, full_shape, "dropout_mask")
        weights = torch.where(dropout_mask, weights * keep_scale, torch.zeros_like(weights))

    out = torch.matmul(weights, value)
    extras = ((lse,) if return_lse else ()) + ((weights,) if return_weights else ())
    return (out, *extras) if extras else out


def attention_with_weights(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    dropout_mask: Tensor | None = None,
    average_heads: bool = True,
) -> tuple[Tensor, Tensor]:
    """(out, weights) of attention over (N, H, L, E) inputs: the weights after
    dropout, averaged over the heads to (N, L, S) when ``average_heads``
    (what torch.nn.MultiheadAttention returns with need_weights=True)."""
    out, weights = scaled_dot_product_attention(
        query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_mask=dropout_mask,
        return_weights=True)
    return out, (weights.mean(dim=-3) if average_heads else weights)


# --------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------


def _lstm_gates(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    i, f, g, o = gates.chunk(4, dim=-1)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    return h_new, c_new


def lstm_cell(
    input: Tensor,
    hx: Tensor | None,
    cx: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step with torch.nn.LSTMCell's layout and gate order (i, f, g, o).

    input (B, I) or (I,), hx/cx (B, H) or (H,) or None (zeros),
    w_ih (4H, I), w_hh (4H, H), b_ih/b_hh (4H,). Returns (h, c).
    """
    if w_ih.dim() != 2 or w_hh.dim() != 2 or w_ih.shape[0] % 4 != 0:
        raise ValueError(
            f"lstm_cell: expected w_ih (4H, I) and w_hh (4H, H), got {tuple(w_ih.shape)} and {tuple(w_hh.shape)}"
        )
    hidden = w_ih.shape[0] // 4
    if tuple(w_hh.shape) != (4 * hidden, hidden):
        raise ValueError(
            f"lstm_cell: w_hh must have shape {(4 * hidden, hidden)}, got {tuple(w_hh.shape)}"
        )
    unbatched = input.dim() == 1
    if unbatched:
        input = input.unsqueeze(0)
        hx = hx.unsqueeze(0) if hx is not None else None
        cx = cx.unsqueeze(0) if cx is not None else None
    if input.dim() != 2 or input.shape[1] != w_ih.shape[1]:
        raise ValueError(
            f"lstm_cell: input must be (B, {w_ih.shape[1]}) or ({w_ih.shape[1]},), got {tuple(input.shape)}"
        )
    batch = input.shape[0]
    if hx is None:
        hx = input.new_zeros((batch, hidden))
    if cx is None:
        cx = input.new_zeros((batch, hidden))
    for name, t in (("hx", hx), ("cx", cx)):
        if tuple(t.shape) != (batch, hidden):
            raise ValueError(
                f"lstm_cell: {name} must have shape {(batch, hidden)}, got {tuple(t.shape)}"
            )
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and tuple(b.shape) != (4 * hidden,):
            raise ValueError(
                f"lstm_cell: {name} must have shape ({4 * hidden},), got {tuple(b.shape)}"
            )

    gates = input @ w_ih.t() + hx @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    h, c = _lstm_gates(gates, cx)
    if unbatched:
        h, c = h.squeeze(0), c.squeeze(0)
    return h, c


def _lstm_direction(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    valid: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one direction of one layer. x (T, B, I); valid (T, B, 1) bool or None."""
    T = x.shape[0]
    xw = x @ w_ih.t()  # (T, B, 4H): input projections for every step at once
    if b_ih is not None:
        xw = xw + b_ih
    if b_hh is not None:
        xw = xw + b_hh
    outputs: list[Tensor] = [x.new_empty(0)] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h_new, c_new = _lstm_gates(xw[t] + h @ w_hh.t(), c)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        if valid is not None:
            v = valid[t]
            # a sequence past its length keeps its state and emits zeros; in reverse the
            # state stays at h0/c0 until step lengths[b]-1, where that sequence starts
            h = torch.where(v, h_new, h)
            c = torch.where(v, c_new, c)
            outputs[t] = torch.where(v, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            outputs[t] = h_new
    if T == 0:
        return x.new_zeros((0, x.shape[1], h.shape[-1])), h, c
    return torch.stack(outputs, 0), h, c


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    params: dict[str, Tensor],
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: Tensor | Sequence[int] | None = None,
    proj_size: int = 0,
    dropout: float = 0.0,
    dropout_masks: Sequence[Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A multi-layer (bi)LSTM with torch.nn.LSTM's semantics and parameter names.

    ``params`` maps torch.nn.LSTM's names (``weight_ih_l{k}``, ``weight_hh_l{k}``,
    optional ``bias_ih_l{k}``/``bias_hh_l{k}``, ``weight_hr_l{k}`` when
    ``proj_size > 0``, each also with the ``_reverse`` suffix) to tensors, so
    ``dict(module.named_parameters())`` works. input is (T, B, I), (B, T, I)
    with ``batch_first``, or unbatched (T, I). hx = (h0, c0) with shapes
    (num_layers*D, B, proj_size or H) and (num_layers*D, B, H), or None (zeros).

    ``lengths`` (one per batch element, 1 <= lengths[b] <= T) runs sequence b
    for lengths[b] steps only: outputs past it are zero, h_n/c_n are its
    states at its last valid step, and the reverse direction starts at step
    lengths[b]-1 -- what torch returns for a PackedSequence padded back.

    Dropout acts on each layer's output before the next layer only, through
    ``dropout_masks``: num_layers-1 bool tensors (True = keep, kept values
    scaled by 1/(1-dropout)), each broadcastable to that layer's output in the
    layout of ``input`` ((T, B, D*H_out), or (B, T, D*H_out) with batch_first).
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"lstm: num_layers must be a positive int, got {num_layers!r}")
    if not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(f"lstm: proj_size must be a non-negative int, got {proj_size!r}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"lstm: dropout must be in [0, 1], got {dropout}")
    D = 2 if bidirectional else 1

    # ---- parameters ------------------------------------------------------
    if "weight_ih_l0" not in params:
        raise ValueError("lstm: params has no 'weight_ih_l0'")
    w0 = params["weight_ih_l0"]
    if w0.dim() != 2 or w0.shape[0] % 4 != 0 or w0.shape[0] == 0:
        raise ValueError(f"lstm: weight_ih_l0 must be (4*hidden, input), got {tuple(w0.shape)}")
    hidden = w0.shape[0] // 4
    if proj_size >= hidden and proj_size > 0:
        raise ValueError(
            f"lstm: proj_size ({proj_size}) must be smaller than hidden_size ({hidden})"
        )
    h_out = proj_size if proj_size > 0 else hidden
    has_bias = "bias_ih_l0" in params
    expected = set()
    for layer in range(num_layers):
        for sfx in ("", "_reverse")[:D]:
            expected |= {f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}"}
            if has_bias:
                expected |= {f"bias_ih_l{layer}{sfx}", f"bias_hh_l{layer}{sfx}"}
            if proj_size > 0:
                expected.add(f"weight_hr_l{layer}{sfx}")
    got = set(params)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise ValueError(
            f"lstm: params do not match num_layers={num_layers}, bidirectional={bidirectional}, "
            f"proj_size={proj_size}, bias={has_bias}: missing {missing}, unexpected {extra}"
        )
    for layer in range(num_layers):
        in_size = w0.shape[1] if layer == 0 else D * h_out
        for sfx in ("", "_reverse")[:D]:
            shapes = {
                f"weight_ih_l{layer}{sfx}": (4 * hidden, in_size),
                f"weight_hh_l{layer}{sfx}": (4 * hidden, h_out),
            }
            if has_bias:
                shapes[f"bias_ih_l{layer}{sfx}"] = (4 * hidden,)
                shapes[f"bias_hh_l{layer}{sfx}"] = (4 * hidden,)
            if proj_size > 0:
                shapes[f"weight_hr_l{layer}{sfx}"] = (proj_size, hidden)
            for name, shape in shapes.items():
                if tuple(params[name].shape) != shape:
                    raise ValueError(
                        f"lstm: {name} must have shape {shape}, got {tuple(params[name].shape)}"
                    )

    # ---- input and state ---------------------------------------------------
    if input.dim() not in (2, 3):
        raise ValueError(
            f"lstm: input must be 3-D (or 2-D unbatched), got shape {tuple(input.shape)}"
        )
    unbatched = input.dim() == 2
    x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if batch_first else input)
    T, B, I = x.shape
    if I != w0.shape[1]:
        raise ValueError(f"lstm: input feature size {I} differs from weight_ih_l0's {w0.shape[1]}")

    if hx is None:
        h0 = x.new_zeros((num_layers * D, B, h_out))
        c0 = x.new_zeros((num_layers * D, B, hidden))
    else:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError("lstm: hx must be a pair (h0, c0) or None")
        h0, c0 = hx
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if tuple(h0.shape) != (num_layers * D, B, h_out):
            raise ValueError(
                f"lstm: h0 must have shape {(num_layers * D, B, h_out)}, got {tuple(h0.shape)}"
            )
        if tuple(c0.shape) != (num_layers * D, B, hidden):
            raise ValueError(
                f"lstm: c0 must have shape {(num_layers * D, B, hidden)}, got {tuple(c0.shape)}"
            )

    valid = None
    if lengths is not None:
        lens = torch.as_tensor(lengths).to(device=x.device, dtype=torch.long)
        if unbatched and lens.dim() == 0:
            lens = lens.reshape(1)
        if lens.dim() != 1 or lens.shape[0] != B:
            raise ValueError(
                f"lstm: lengths must be 1-D with {B} entries, got shape {tuple(lens.shape)}"
            )
        if B > 0 and (int(lens.min()) < 1 or int(lens.max()) > T):
            raise ValueError(f"lstm: lengths must lie in [1, {T}], got {lens.tolist()}")
        valid = (torch.arange(T, device=x.device).unsqueeze(1) < lens.unsqueeze(0)).unsqueeze(-1)

    if num_layers > 1:
        if dropout_masks is None:
            if dropout > 0.0:
                raise ValueError(
                    "lstm: the reference is deterministic; dropout > 0 between layers needs explicit dropout_masks"
                )
        elif len(dropout_masks) != num_layers - 1:
            raise ValueError(
                f"lstm: expected {num_layers - 1} dropout_masks, got {len(dropout_masks)}"
            )
    keep_scale = 0.0 if dropout >= 1.0 else 1.0 / (1.0 - dropout)

    # ---- layers --------------------------------------------------------------
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d, sfx in enumerate(("", "_reverse")[:D]):
            idx = layer * D + d
            out, h, c = _lstm_direction(
                layer_in,
                h0[idx],
                c0[idx],
                params[f"weight_ih_l{layer}{sfx}"],
                params[f"weight_hh_l{layer}{sfx}"],
                params.get(f"bias_ih_l{layer}{sfx}"),
                params.get(f"bias_hh_l{layer}{sfx}"),
                params.get(f"weight_hr_l{layer}{sfx}"),
                valid,
                reverse=d == 1,
            )
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_out = torch.cat(outs, dim=-1) if D == 2 else outs[0]
        if layer < num_layers - 1 and dropout_masks is not None:
            mask = dropout_masks[layer]
            if mask.dtype != torch.bool:
                raise ValueError(f"lstm: dropout_masks[{layer}] must be bool, got {mask.dtype}")
            user_layout = (
                layer_out.squeeze(1)
                if unbatched
                else (layer_out.transpose(0, 1) if batch_first else layer_out)
            )
            try:
                ok = torch.broadcast_shapes(tuple(mask.shape), tuple(user_layout.shape)) == tuple(
                    user_layout.shape
                )
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"lstm: dropout_masks[{layer}] of shape {tuple(mask.shape)} does not broadcast to "
                    f"{tuple(user_layout.shape)}"
                )
            user_layout = torch.where(mask, user_layout * keep_scale, torch.zeros_like(user_layout))
            layer_out = (
                user_layout.unsqueeze(1)
                if unbatched
                else (user_layout.transpose(0, 1) if batch_first else user_layout)
            )
        layer_in = layer_out

    output = layer_in
    h_n_t = torch.stack(h_n, 0)
    c_n_t = torch.stack(c_n, 0)
    if unbatched:
        return output.squeeze(1), (h_n_t.squeeze(1), c_n_t.squeeze(1))
    if batch_first:
        output = output.transpose(0, 1)
    return output, (h_n_t, c_n_t)
