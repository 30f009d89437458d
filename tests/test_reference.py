"""pydl.reference against torch's own ops, in float64 on small awkward shapes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pydl import reference as ref

DT = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10, **kw)


def torch_act(x, name):
    return {
        "none": lambda t: t,
        "relu": F.relu,
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "silu": F.silu,
    }[name](x)


def torch_sdpa(*args, **kwargs):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kwargs)


# ---------------------------------------------------------------------------
# activation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ref.ACTIVATIONS)
def test_activation_matches_torch(name):
    x = torch.cat(
        [torch.randn(200, dtype=DT) * 4, torch.tensor([0.0, -30.0, 30.0, 1e-8], dtype=DT)]
    )
    out = ref.activation(x, name)
    assert out.dtype == DT
    close(out, torch_act(x, name))


def test_activation_unknown_name():
    with pytest.raises(ValueError, match="unknown activation"):
        ref.activation(torch.zeros(3), "tanh")


def test_activation_keeps_dtype():
    x = torch.randn(10, dtype=torch.float32)
    for name in ref.ACTIVATIONS:
        assert ref.activation(x, name).dtype == torch.float32


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------

# (N, C, H, W, O, kernel, stride, padding, dilation, groups, bias, activation, residual)
CONV_CASES = [
    (2, 3, 7, 9, 5, (3, 3), 1, 1, 1, 1, True, "none", False),
    (1, 3, 8, 7, 4, (3, 2), 2, (1, 0), 1, 1, True, "relu", True),
    (2, 2, 9, 8, 3, (3, 3), (1, 2), 2, (2, 1), 1, False, "gelu", False),
    (2, 4, 6, 5, 6, (3, 3), 1, 1, 1, 2, True, "silu", True),
    (3, 5, 7, 6, 5, (3, 3), 2, 1, 1, 5, True, "gelu_tanh", False),  # depthwise, stride 2
    (2, 6, 5, 5, 12, (3, 3), 1, 0, 1, 6, False, "none", False),  # depthwise multiplier 2
    (2, 7, 4, 6, 3, (1, 1), 1, 0, 1, 1, True, "relu", True),  # 1x1
    (1, 3, 3, 5, 2, (1, 1), 2, 0, 1, 1, False, "none", False),  # strided 1x1
    (2, 3, 6, 7, 4, (4, 2), 1, "same", (2, 3), 1, True, "silu", True),  # asymmetric same
    (1, 4, 7, 7, 4, (2, 4), 1, "same", 1, 2, True, "relu", False),
    (2, 3, 6, 7, 4, (3, 3), 1, "valid", 1, 1, True, "gelu", True),
    (1, 2, 1, 6, 3, (1, 3), (1, 2), (0, 1), 1, 1, True, "none", False),  # H = 1
    (1, 3, 5, 4, 2, (5, 4), 1, 0, 1, 1, True, "none", True),  # kernel = input: 1x1 output
    (2, 6, 11, 10, 9, (3, 5), (3, 2), (2, 1), (2, 2), 3, True, "relu", True),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"c{i}" for i in range(len(CONV_CASES))])
def test_conv2d_matches_torch(case):
    n, c, h, w, o, (kh, kw), stride, padding, dilation, groups, has_bias, act, has_res = case
    x = torch.randn(n, c, h, w, dtype=DT)
    wt = torch.randn(o, c // groups, kh, kw, dtype=DT)
    b = torch.randn(o, dtype=DT) if has_bias else None
    expected = F.conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    res = torch.randn_like(expected) if has_res else None
    if res is not None:
        expected = expected + res
    expected = torch_act(expected, act)
    out = ref.conv2d(x, wt, b, stride, padding, dilation, groups, activation=act, residual=res)
    assert out.shape == expected.shape and out.dtype == DT
    close(out, expected)


def test_conv2d_noncontiguous_and_broadcast_residual():
    base = torch.randn(2, 9, 10, 6, dtype=DT)
    x = base.permute(0, 3, 1, 2)[:, :, ::2, 1:]  # (2, 6, 5, 8), channels-last strides, sliced
    assert not x.is_contiguous()
    wt = torch.randn(8, 3, 3, 3, dtype=DT).transpose(2, 3)  # non-contiguous weight
    b = torch.randn(8, dtype=DT)
    res = torch.randn(1, 8, 1, 1, dtype=DT)  # broadcasts over batch and space
    out = ref.conv2d(x, wt, b, stride=(1, 2), padding=1, groups=2, activation="relu", residual=res)
    expected = F.relu(F.conv2d(x, wt, b, stride=(1, 2), padding=1, groups=2) + res)
    close(out, expected)


def test_conv2d_float32_stays_float32():
    x = torch.randn(1, 2, 5, 5)
    wt = torch.randn(3, 2, 3, 3)
    out = ref.conv2d(x, wt, padding=1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.conv2d(x, wt, padding=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs, match",
    [
        ((2, 3, 5, 5), (4, 3, 3, 3), {"groups": 2}, "divisible"),
        ((2, 4, 5, 5), (3, 2, 3, 3), {"groups": 2}, "divisible"),
        ((2, 4, 5, 5), (4, 4, 3, 3), {"groups": 2}, "per group"),
        ((3, 5, 5), (4, 3, 3, 3), {}, "4-D input"),
        ((1, 3, 5, 5), (4, 3, 3), {}, "4-D weight"),
        ((1, 3, 2, 5), (4, 3, 3, 3), {}, "output size"),
        ((1, 3, 5, 5), (4, 3, 3, 3), {"dilation": 3}, "output size"),
        ((1, 3, 5, 5), (4, 3, 3, 3), {"padding": "same", "stride": 2}, "stride 1"),
        ((1, 3, 5, 5), (4, 3, 3, 3), {"padding": "full"}, "'valid' or 'same'"),
        ((1, 3, 5, 5), (4, 3, 3, 3), {"stride": 0}, "stride"),
        ((1, 3, 5, 5), (4, 3, 3, 3), {"activation": "tanh"}, "unknown activation"),
        ((1, 3, 5, 5), (4, 3, 3, 3), {"residual": torch.zeros(1, 4, 2, 2)}, "residual"),
        ((1, 3, 5, 5), (4, 3, 3, 3), {"bias": torch.zeros(3)}, "bias"),
    ],
)
def test_conv2d_bad_input(x_shape, w_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ref.conv2d(torch.zeros(x_shape), torch.zeros(w_shape), **kwargs)


# ---------------------------------------------------------------------------
# scaled dot-product attention
# ---------------------------------------------------------------------------


def qkv(batch, hq, hk, L, S, E, Ev):
    q = torch.randn(*batch, hq, L, E, dtype=DT)
    k = torch.randn(*batch, hk, S, E, dtype=DT)
    v = torch.randn(*batch, hk, S, Ev, dtype=DT)
    return q, k, v


def random_bool_mask(shape):
    m = torch.rand(shape) < 0.6
    m[..., 0] = True  # every row attends to something
    return m


@pytest.mark.parametrize(
    "batch, hq, L, S, E, Ev",
    [((2,), 3, 5, 7, 4, 6), ((), 1, 1, 1, 3, 3), ((2, 3), 2, 6, 4, 5, 2), ((1,), 4, 9, 9, 8, 8)],
)
def test_sdpa_plain_matches_torch(batch, hq, L, S, E, Ev):
    q, k, v = qkv(batch, hq, hq, L, S, E, Ev)
    close(ref.scaled_dot_product_attention(q, k, v), torch_sdpa(q, k, v))


def test_sdpa_unbatched_2d_and_noncontiguous():
    q = torch.randn(6, 5, dtype=DT)
    k = torch.randn(4, 5, dtype=DT)
    v = torch.randn(4, 3, dtype=DT)
    close(ref.scaled_dot_product_attention(q, k, v), torch_sdpa(q, k, v))
    # (B, L, H, E) storage transposed to (B, H, L, E)
    q = torch.randn(2, 5, 3, 4, dtype=DT).transpose(1, 2)
    k = torch.randn(2, 7, 3, 4, dtype=DT).transpose(1, 2)
    v = torch.randn(2, 7, 3, 6, dtype=DT).transpose(1, 2)
    close(ref.scaled_dot_product_attention(q, k, v), torch_sdpa(q, k, v))


@pytest.mark.parametrize(
    "mask_shape", [(5, 7), (1, 3, 5, 7), (2, 1, 1, 7), (2, 3, 5, 7), (3, 1, 7)]
)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_masks_broadcast(mask_shape, kind):
    q, k, v = qkv((2,), 3, 3, 5, 7, 4, 6)
    if kind == "bool":
        mask = random_bool_mask(mask_shape)
    else:
        mask = torch.randn(mask_shape, dtype=DT) * 2
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    close(out, torch_sdpa(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("L, S", [(5, 5), (3, 8), (8, 3), (1, 6)])
def test_sdpa_causal_top_left_matches_torch(L, S):
    q, k, v = qkv((2,), 2, 2, L, S, 4, 3)
    out = ref.scaled_dot_product_attention(q, k, v, is_causal=True)
    close(out, torch_sdpa(q, k, v, is_causal=True))
    # and against an explicit mask j <= i
    explicit = torch.ones(L, S, dtype=torch.bool).tril()
    close(out, torch_sdpa(q, k, v, attn_mask=explicit))


@pytest.mark.parametrize("L, S", [(5, 5), (3, 8), (1, 6), (7, 4)])
def test_sdpa_causal_bottom_right_matches_explicit_mask(L, S):
    q, k, v = qkv((2,), 2, 2, L, S, 4, 3)
    explicit = torch.ones(L, S, dtype=torch.bool).tril(diagonal=S - L)  # j <= i + S - L
    out, lse = ref.scaled_dot_product_attention(
        q, k, v, is_causal=True, causal_alignment="bottom_right", return_lse=True
    )
    expected = torch_sdpa(q, k, v, attn_mask=explicit)
    dead = ~explicit.any(-1)  # rows with nothing to attend (only when L > S)
    expected[..., dead, :] = 0.0
    close(out, expected)
    assert torch.all(out[..., dead, :] == 0)
    assert torch.all(lse[..., dead] == -math.inf)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(4)
    expected_lse = torch.logsumexp(scores.masked_fill(~explicit, -math.inf), dim=-1)
    close(lse, expected_lse)


def test_sdpa_scale_and_value_dim():
    q, k, v = qkv((3,), 2, 2, 4, 6, 5, 9)
    out = ref.scaled_dot_product_attention(q, k, v, scale=0.37)
    assert out.shape == (3, 2, 4, 9)
    close(out, torch_sdpa(q, k, v, scale=0.37))


@pytest.mark.parametrize("hq, hk", [(6, 2), (4, 1), (3, 3), (8, 4)])
def test_sdpa_gqa_matches_torch(hq, hk):
    q, k, v = qkv((2,), hq, hk, 5, 6, 4, 3)
    mask = random_bool_mask((2, 1, 5, 6))
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    close(out, torch_sdpa(q, k, v, attn_mask=mask, enable_gqa=True))
    out = ref.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=0.5)
    close(out, torch_sdpa(q, k, v, is_causal=True, enable_gqa=True, scale=0.5))
    # contiguous groups: query head h uses key/value head h // (hq // hk)
    for h in range(hq):
        g = h // (hq // hk)
        close(out[:, h], torch_sdpa(q[:, h], k[:, g], v[:, g], is_causal=True, scale=0.5))


@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal"])
def test_sdpa_lse_matches_logsumexp(kind):
    q, k, v = qkv((2,), 3, 3, 5, 7, 4, 6)
    mask, kwargs = None, {}
    if kind == "bool":
        mask = random_bool_mask((3, 5, 7))
        kwargs = {"attn_mask": mask}
        add = torch.zeros(3, 5, 7, dtype=DT).masked_fill(~mask, -math.inf)
    elif kind == "float":
        mask = torch.randn(5, 7, dtype=DT)
        kwargs = {"attn_mask": mask}
        add = mask
    elif kind == "causal":
        kwargs = {"is_causal": True}
        add = torch.zeros(5, 7, dtype=DT).masked_fill(
            ~torch.ones(5, 7, dtype=torch.bool).tril(), -math.inf
        )
    else:
        add = 0.0
    out, lse = ref.scaled_dot_product_attention(q, k, v, scale=0.3, return_lse=True, **kwargs)
    assert lse.shape == (2, 3, 5)
    close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.3 + add, dim=-1))
    close(out, torch_sdpa(q, k, v, scale=0.3, **kwargs))


def test_sdpa_fully_masked_rows_are_zero():
    q, k, v = qkv((2,), 2, 2, 4, 5, 3, 3)
    bmask = random_bool_mask((2, 2, 4, 5))
    bmask[0, 1, 2] = False
    bmask[1, :, 0] = False
    fmask = torch.zeros(2, 2, 4, 5, dtype=DT).masked_fill(~bmask, -math.inf)
    dead = ~bmask.any(-1)
    for mask in (bmask, fmask):
        out, lse = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_lse=True)
        assert not torch.isnan(out).any() and not torch.isnan(lse).any()
        assert torch.all(out[dead] == 0)
        assert torch.all(lse[dead] == -math.inf)
        expected = torch_sdpa(
            q, k, v, attn_mask=bmask.clone().masked_fill_(dead.unsqueeze(-1), True)
        )
        close(out[~dead], expected[~dead])
    # every key masked everywhere
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    assert torch.all(out == 0)


def test_sdpa_dropout_with_explicit_mask():
    q, k, v = qkv((2,), 3, 3, 5, 7, 4, 6)
    attn = torch.randn(5, 7, dtype=DT)
    keep = torch.rand(2, 3, 5, 7) > 0.3
    p = 0.3
    out, lse = ref.scaled_dot_product_attention(
        q, k, v, attn_mask=attn, dropout_p=p, dropout_mask=keep, return_lse=True
    )
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + attn, dim=-1)
    close(out, (weights * keep / (1 - p)) @ v)
    close(lse, torch.logsumexp(q @ k.transpose(-1, -2) / 2.0 + attn, dim=-1))
    # a broadcast mask (one per head, shared over batch)
    keep_h = torch.rand(3, 5, 7) > 0.5
    out = ref.scaled_dot_product_attention(q, k, v, dropout_p=0.5, dropout_mask=keep_h)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    close(out, (weights * keep_h * 2.0) @ v)


def test_sdpa_float32_stays_float32():
    q, k, v = (t.float() for t in qkv((2,), 2, 2, 3, 4, 5, 5))
    out = ref.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch_sdpa(q, k, v, is_causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 6)), {"dropout_p": 0.1}, "dropout_mask"),
        (((2, 4, 3, 8), (2, 4, 5, 7), (2, 4, 5, 6)), {}, "head dim"),
        (((2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 6, 6)), {}, "positions"),
        (((2, 4, 3, 8), (2, 3, 5, 8), (2, 3, 5, 6)), {"enable_gqa": True}, "divisible"),
        (((2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6)), {}, "enable_gqa"),
        (
            ((2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 6)),
            {"causal_alignment": "left"},
            "causal_alignment",
        ),
        (
            ((2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 6)),
            {"attn_mask": torch.ones(3, 4, dtype=torch.bool)},
            "attn_mask",
        ),
        (
            ((2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 6)),
            {"dropout_p": 0.1, "dropout_mask": torch.ones(3, 5)},
            "bool",
        ),
        (((8,), (5, 8), (5, 6)), {}, "2 dims"),
    ],
)
def test_sdpa_bad_input(shapes, kwargs, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        ref.scaled_dot_product_attention(q, k, v, **kwargs)


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_lstm_cell_matches_torch(bias, batched):
    cell = torch.nn.LSTMCell(5, 7, bias=bias).double()
    x = torch.randn(3, 5, dtype=DT) if batched else torch.randn(5, dtype=DT)
    h0 = torch.randn(3, 7, dtype=DT) if batched else torch.randn(7, dtype=DT)
    c0 = torch.randn_like(h0)
    with torch.no_grad():
        h_exp, c_exp = cell(x, (h0, c0))
        h, c = ref.lstm_cell(x, h0, c0, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        close(h, h_exp)
        close(c, c_exp)
        h, c = ref.lstm_cell(
            x, None, None, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
        )
        h_exp, c_exp = cell(x)
        close(h, h_exp)
        close(c, c_exp)


def test_lstm_cell_bad_input():
    w_ih, w_hh = torch.zeros(28, 5), torch.zeros(28, 7)
    with pytest.raises(ValueError, match="input"):
        ref.lstm_cell(torch.zeros(3, 4), None, None, w_ih, w_hh)
    with pytest.raises(ValueError, match="hx"):
        ref.lstm_cell(torch.zeros(3, 5), torch.zeros(2, 7), None, w_ih, w_hh)
    with pytest.raises(ValueError, match="w_hh"):
        ref.lstm_cell(torch.zeros(3, 5), None, None, w_ih, torch.zeros(28, 6))


def make_lstm(input_size, hidden, **kw):
    torch.manual_seed(1)
    return torch.nn.LSTM(input_size, hidden, **kw).double()


def lstm_kwargs(m):
    return {
        "num_layers": m.num_layers,
        "bidirectional": m.bidirectional,
        "batch_first": m.batch_first,
        "proj_size": m.proj_size,
    }


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("proj_size", [0, 3])
def test_lstm_matches_torch(num_layers, bidirectional, batch_first, proj_size):
    m = make_lstm(
        4,
        5,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        proj_size=proj_size,
    )
    T, B = 6, 3
    D = 2 if bidirectional else 1
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4), dtype=DT)
    h0 = torch.randn(num_layers * D, B, proj_size or 5, dtype=DT)
    c0 = torch.randn(num_layers * D, B, 5, dtype=DT)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for hx in ((h0, c0), None):
            out_e, (h_e, c_e) = m(x, hx)
            out, (h, c) = ref.lstm(x, hx, params, **lstm_kwargs(m))
            close(out, out_e)
            close(h, h_e)
            close(c, c_e)


def test_lstm_no_bias_and_unbatched():
    m = make_lstm(3, 4, num_layers=2, bias=False, bidirectional=True)
    x = torch.randn(5, 3, dtype=DT)  # unbatched (T, I)
    h0, c0 = torch.randn(4, 4, dtype=DT), torch.randn(4, 4, dtype=DT)
    with torch.no_grad():
        out_e, (h_e, c_e) = m(x, (h0, c0))
    out, (h, c) = ref.lstm(
        x, (h0, c0), dict(m.named_parameters()), num_layers=2, bidirectional=True
    )
    close(out, out_e)
    close(h, h_e)
    close(c, c_e)


@pytest.mark.parametrize(
    "num_layers, bidirectional, batch_first, proj_size",
    [
        (1, False, False, 0),
        (1, True, True, 0),
        (2, True, False, 3),
        (2, False, True, 0),
        (2, True, True, 2),
    ],
)
def test_lstm_lengths_match_packed_sequence(num_layers, bidirectional, batch_first, proj_size):
    m = make_lstm(
        4,
        5,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        proj_size=proj_size,
    )
    T = 6
    lengths = torch.tensor([4, 6, 1, 3, 6])
    B = len(lengths)
    D = 2 if bidirectional else 1
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4), dtype=DT)
    h0 = torch.randn(num_layers * D, B, proj_size or 5, dtype=DT)
    c0 = torch.randn(num_layers * D, B, 5, dtype=DT)
    with torch.no_grad():
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out_p, (h_e, c_e) = m(packed, (h0, c0))
        out_e, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
    out, (h, c) = ref.lstm(
        x, (h0, c0), dict(m.named_parameters()), lengths=lengths, **lstm_kwargs(m)
    )
    close(out, out_e)
    close(h, h_e)
    close(c, c_e)


def test_lstm_dropout_masks_between_layers():
    torch.manual_seed(2)
    m0 = torch.nn.LSTM(4, 5, bidirectional=True, batch_first=True).double()
    m1 = torch.nn.LSTM(10, 5, bidirectional=True, batch_first=True).double()
    params = {k: v for k, v in m0.named_parameters()}
    params.update({k.replace("_l0", "_l1"): v for k, v in m1.named_parameters()})
    x = torch.randn(3, 6, 4, dtype=DT)
    keep = torch.rand(3, 6, 10) > 0.4
    p = 0.4
    with torch.no_grad():
        mid, (h_a, c_a) = m0(x)
        out_e, (h_b, c_b) = m1(mid * keep / (1 - p))
    out, (h, c) = ref.lstm(
        x,
        None,
        params,
        num_layers=2,
        bidirectional=True,
        batch_first=True,
        dropout=p,
        dropout_masks=[keep],
    )
    close(out, out_e)
    close(h, torch.cat([h_a, h_b]))
    close(c, torch.cat([c_a, c_b]))


def test_lstm_float32_stays_float32():
    m = torch.nn.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        out_e, _ = m(x)
    out, (h, c) = ref.lstm(x, None, dict(m.named_parameters()), num_layers=2)
    assert out.dtype == h.dtype == c.dtype == torch.float32
    torch.testing.assert_close(out, out_e, rtol=1e-5, atol=1e-5)


def test_lstm_bad_input():
    m = make_lstm(4, 5, num_layers=2)
    params = dict(m.named_parameters())
    x = torch.randn(6, 3, 4, dtype=DT)
    with pytest.raises(ValueError, match="dropout_masks"):
        ref.lstm(x, None, params, num_layers=2, dropout=0.5)
    with pytest.raises(ValueError, match="expected 1 dropout_masks"):
        ref.lstm(x, None, params, num_layers=2, dropout_masks=[])
    with pytest.raises(ValueError, match="missing"):
        ref.lstm(x, None, params, num_layers=3)
    with pytest.raises(ValueError, match="unexpected"):
        ref.lstm(x, None, params, num_layers=1)
    with pytest.raises(ValueError, match="missing"):
        ref.lstm(x, None, params, num_layers=2, proj_size=2)
    with pytest.raises(ValueError, match="feature size"):
        ref.lstm(torch.randn(6, 3, 5, dtype=DT), None, params, num_layers=2)
    with pytest.raises(ValueError, match="h0"):
        ref.lstm(
            x,
            (torch.zeros(2, 2, 5, dtype=DT), torch.zeros(2, 3, 5, dtype=DT)),
            params,
            num_layers=2,
        )
    with pytest.raises(ValueError, match="lengths"):
        ref.lstm(x, None, params, num_layers=2, lengths=[6, 0, 2])
    with pytest.raises(ValueError, match="lengths"):
        ref.lstm(x, None, params, num_layers=2, lengths=[6, 7, 2])
    with pytest.raises(ValueError, match="lengths"):
        ref.lstm(x, None, params, num_layers=2, lengths=[6, 2])
    with pytest.raises(ValueError, match="3-D"):
        ref.lstm(torch.randn(2, 6, 3, 4, dtype=DT), None, params, num_layers=2)
