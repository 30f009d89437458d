"""pydl.ops.attention_with_weights (torch.ops.pydl.attention_with_weights):
attention that also returns its weights, against the float64 reference and
against pydl's flash kernel (same dropout keep pattern for the same seed)."""

import math

import pytest
import torch
from conftest import assert_close_rel, needs_extension, run_with_cpu_isa

import pydl.ops.attention_weights as aw
from pydl import reference
from pydl.ops.attention_weights import attention_with_weights

pytestmark = needs_extension


@pytest.fixture(params=["weights_kernel", "fused_kernel_and_lse"])
def route(request, monkeypatch):
    """attention_with_weights's two pydl routes: the CPU weights kernel
    (float32 / float64 on the CPU), and the one CUDA and CPU bf16 take (the
    fused kernel, then weights_from_lse), forced here in float64."""
    if request.param == "fused_kernel_and_lse":
        monkeypatch.setattr(aw, "kernel_serves", lambda *args, **kwargs: False)
    return request.param


def _inputs(N, H, Hk, L, S, E, Ev, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    q, k, v = make(N, H, L, E), make(N, Hk, S, E), make(N, Hk, S, Ev)
    return [t.requires_grad_() for t in (q, k, v)]


def _mask(kind, N, H, L, S, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "bool":  # broadcast over heads
        return torch.rand(N, 1, L, S, generator=g) > 0.3
    if kind == "float":  # broadcast over batch, differentiable
        return torch.randn(1, H, L, S, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    if kind == "padding":  # (N, 1, 1, S) key padding with -inf
        m = torch.zeros(N, 1, 1, S, dtype=dtype)
        m[..., S // 2:] = -math.inf
        return m
    raise AssertionError(kind)


def _reference(q, k, v, mask, causal, average, dropout_mask=None, p=0.0):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return reference.attention_with_weights(q, k, v, mask, p, causal, dropout_mask=dropout_mask,
                                            average_heads=average)


def _grads(out, weights, inputs, seed=2):
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    gw = torch.randn(weights.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad((out * go).sum() + (weights * gw).sum(), inputs)


CASES = [
    # N, H, Hk, L, S, E, Ev, mask, causal, average
    (2, 4, 4, 37, 53, 16, 8, None, False, True),
    (2, 4, 2, 37, 53, 16, 8, "bool", True, False),
    (1, 3, 1, 70, 70, 8, 8, "float", True, True),
    (2, 2, 2, 1, 1, 4, 4, None, False, False),
    (1, 2, 2, 130, 100, 32, 16, "float", False, False),
    (3, 2, 1, 65, 129, 24, 40, "padding", False, True),
    (1, 2, 2, 40, 3000, 16, 16, "bool", True, True),  # long rows: few rows per block
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_reference_float64(case, route):
    N, H, Hk, L, S, E, Ev, kind, causal, average = case
    q, k, v = _inputs(N, H, Hk, L, S, E, Ev, torch.float64)
    mask = _mask(kind, N, H, L, S, torch.float64)
    out, w = attention_with_weights(q, k, v, mask, 0.0, causal, average_heads=average)
    ref, rw = _reference(q, k, v, mask, causal, average)
    assert w.shape == ((N, L, S) if average else (N, H, L, S))
    assert_close_rel(out, ref, torch.float64, "out")
    assert_close_rel(w, rw, torch.float64, "weights")
    inputs = [q, k, v] + ([mask] if kind == "float" else [])
    for ours, theirs, name in zip(_grads(out, w, inputs), _grads(ref, rw, inputs),
                                  ["dq", "dk", "dv", "dmask"]):
        assert_close_rel(ours, theirs, torch.float64, name)


@pytest.mark.parametrize("average", [True, False])
def test_float32_against_float64_reference(average):
    q, k, v = _inputs(2, 4, 4, 200, 300, 64, 64, torch.float32)
    mask = _mask("bool", 2, 4, 200, 300, torch.float32)
    out, w = attention_with_weights(q, k, v, mask, 0.0, True, average_heads=average)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, rw = _reference(q64, k64, v64, mask, True, average)
    assert_close_rel(out, ref, torch.float32, "out")
    assert_close_rel(w, rw, torch.float32, "weights")
    for ours, theirs, name in zip(_grads(out, w, [q, k, v]), _grads(ref, rw, [q64, k64, v64]),
                                  ["dq", "dk", "dv"]):
        assert_close_rel(ours, theirs, torch.float32, name)


def test_gradient_through_one_output_only(route):
    q, k, v = _inputs(2, 2, 2, 20, 30, 8, 8, torch.float64)
    ref, rw = _reference(q, k, v, None, False, True)
    out, w = attention_with_weights(q, k, v)
    g = torch.autograd.grad(out.sum(), [q, k, v], retain_graph=True)
    r = torch.autograd.grad(ref.sum(), [q, k, v], retain_graph=True)
    for a, b in zip(g, r):
        assert_close_rel(a, b, torch.float64, "grad through out only")
    # the weights do not depend on v
    g = torch.autograd.grad((w * w).sum(), [q, k, v])
    r = torch.autograd.grad((rw * rw).sum(), [q, k])
    for a, b in zip(g, r):
        assert_close_rel(a, b, torch.float64, "grad through the weights only")
    assert torch.equal(g[2], torch.zeros_like(v))


def test_rows_that_see_no_key_give_zeros(route):
    N, H, L, S = 1, 2, 6, 4
    q, k, v = _inputs(N, H, H, L, S, 8, 8, torch.float64)
    mask = torch.ones(N, 1, L, S, dtype=torch.bool)
    mask[:, :, 2] = False  # row 2 sees nothing
    out, w = attention_with_weights(q, k, v, mask, average_heads=False)
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    assert torch.equal(w[:, :, 2], torch.zeros_like(w[:, :, 2]))
    grads = torch.autograd.grad((out.sum() + w.sum()), [q, k, v])
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][:, :, 2], torch.zeros_like(grads[0][:, :, 2]))
    # bottom-right causal with L > S: the first L - S rows see no key
    out, w, lse = torch.ops.pydl.attention_with_weights(q, k, v, None, None, 0.0, True, True,
                                                         0.5, False)
    ref, ref_lse, rw = reference.scaled_dot_product_attention(
        q, k, v, None, 0.0, True, 0.5, causal_alignment="bottom_right", return_lse=True,
        return_weights=True)
    assert torch.equal(w[:, :, : L - S], torch.zeros_like(w[:, :, : L - S]))
    assert torch.isneginf(lse[:, :, : L - S]).all()
    assert_close_rel(out, ref, torch.float64, "bottom-right out")
    assert_close_rel(w, rw, torch.float64, "bottom-right weights")
    assert torch.allclose(lse[:, :, L - S:], ref_lse[:, :, L - S:], rtol=1e-12)


def test_dropout_keeps_what_the_flash_kernel_keeps():
    """Same seed, same keep decisions as torch.ops.pydl.attention; the weights
    are the dropped-out ones, and the gradients match the reference given
    that keep mask."""
    p = 0.4
    N, H, L, S, E = 2, 3, 33, 47, 16
    q, k, v = _inputs(N, H, H, L, S, E, E, torch.float64)
    seed = torch.tensor([12345], dtype=torch.int64)
    out, w, lse = torch.ops.pydl.attention_with_weights(q, k, v, None, seed, p, False, False,
                                                         E ** -0.5, False)
    flash, flash_lse = torch.ops.pydl.attention(q, k, v, None, seed, p, False, False, E ** -0.5)
    assert_close_rel(out, flash, torch.float64, "out vs flash kernel")
    assert_close_rel(lse, flash_lse, torch.float64, "lse vs flash kernel")
    keep = w != 0
    assert 0.45 < keep.double().mean().item() < 0.75
    ref, rw = _reference(q, k, v, None, False, False, dropout_mask=keep, p=p)
    assert_close_rel(out, ref, torch.float64, "out")
    assert_close_rel(w, rw, torch.float64, "weights")
    for a, b, name in zip(_grads(out, w, [q, k, v]), _grads(ref, rw, [q, k, v]),
                          ["dq", "dk", "dv"]):
        assert_close_rel(a, b, torch.float64, name)


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[5]], ids=lambda c: "-".join(map(str, c)))
def test_both_routes_drop_the_same_weights(case, monkeypatch):
    """Dropout 0.3 under the same torch seed: the fused kernel + weights_from_lse
    route gives the weights kernel's output, weights and gradients (float64),
    so the rebuilt weights carry the fused kernel's own dropout decisions."""
    N, H, Hk, L, S, E, Ev, kind, causal, average = case
    q, k, v = _inputs(N, H, Hk, L, S, E, Ev, torch.float64)
    mask = _mask(kind, N, H, L, S, torch.float64)
    inputs = [q, k, v] + ([mask] if kind == "float" else [])
    torch.manual_seed(11)
    out, w = attention_with_weights(q, k, v, mask, 0.3, causal, average_heads=average)
    grads = _grads(out, w, inputs)
    monkeypatch.setattr(aw, "kernel_serves", lambda *args, **kwargs: False)
    torch.manual_seed(11)
    out2, w2 = attention_with_weights(q, k, v, mask, 0.3, causal, average_heads=average)
    assert_close_rel(out2, out, torch.float64, "out")
    assert_close_rel(w2, w, torch.float64, "weights")
    for a, b, name in zip(_grads(out2, w2, inputs), grads, ["dq", "dk", "dv", "dmask"]):
        assert_close_rel(a, b, torch.float64, name)


def test_fused_route_gradcheck(monkeypatch):
    """weights_from_lse's own backward (and the lse gradient it hands to the
    fused op), float64, with a float mask, causal, GQA, dropout, both averaged
    and per-head weights."""
    monkeypatch.setattr(aw, "kernel_serves", lambda *args, **kwargs: False)
    q, k, v = _inputs(1, 4, 2, 5, 6, 3, 2, torch.float64)
    mask = _mask("float", 1, 4, 5, 6, torch.float64)[:, :, :1]  # (1, H, 1, S): broadcast rows
    scalar_mask = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)  # 0-dim

    with torch.random.fork_rng():
        for average, m in ((True, mask), (False, mask), (False, scalar_mask)):
            def fn(q, k, v, m, average=average):
                torch.manual_seed(3)
                return attention_with_weights(q, k, v, m, 0.25, True, 0.7, average_heads=average)

            assert torch.autograd.gradcheck(fn, (q, k, v, m))


def test_weights_from_lse_backward_ignores_autocast(monkeypatch):
    """Its float32 products stay float32 when backward() runs under autocast."""
    monkeypatch.setattr(aw, "kernel_serves", lambda *args, **kwargs: False)
    q, k, v = _inputs(1, 2, 2, 40, 50, 16, 16, torch.float32)
    grads = []
    for autocast in (False, True):
        _, w = attention_with_weights(q, k, v, average_heads=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            grads.append(torch.autograd.grad(w.pow(2).sum(), [q, k]))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_weights_from_lse_needs_the_seed_for_dropout():
    q, k, _ = _inputs(1, 2, 2, 4, 5, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="dropout_seed"):
        aw.weights_from_lse(q, k, None, torch.zeros(1, 2, 4), 0.3, dropout_p=0.1)


def test_dropout_reproducible_under_manual_seed(route):
    q, k, v = _inputs(1, 2, 2, 16, 16, 8, 8, torch.float32)
    torch.manual_seed(7)
    a = attention_with_weights(q, k, v, dropout_p=0.3)
    torch.manual_seed(7)
    b = attention_with_weights(q, k, v, dropout_p=0.3)
    c = attention_with_weights(q, k, v, dropout_p=0.3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_gradcheck():
    q, k, v = _inputs(1, 2, 1, 5, 6, 3, 4, torch.float64)
    mask = _mask("float", 1, 2, 5, 6, torch.float64)
    seed = torch.tensor([99], dtype=torch.int64)

    def fn(q, k, v, mask):
        out, w, _ = torch.ops.pydl.attention_with_weights(q, k, v, mask, seed, 0.25, True, False,
                                                           0.7, True)
        return out, w

    assert torch.autograd.gradcheck(fn, (q, k, v, mask))


def test_opcheck():
    q, k, v = _inputs(2, 2, 1, 7, 9, 8, 4, torch.float32)
    mask = _mask("float", 2, 2, 7, 9, torch.float32)
    seed = torch.tensor([3], dtype=torch.int64)
    for args in ((q, k, v, mask, seed, 0.2, True, False, 0.3, True),
                 (q, k, v, None, None, 0.0, False, False, 0.3, False)):
        torch.library.opcheck(torch.ops.pydl.attention_with_weights.default, args)


def test_compile_fullgraph():
    q, k, v = _inputs(1, 2, 2, 9, 11, 8, 8, torch.float64)
    compiled = torch.compile(attention_with_weights, backend="aot_eager", fullgraph=True)
    out, w = compiled(q, k, v)
    ref, rw = attention_with_weights(q, k, v)
    assert_close_rel(out, ref, torch.float64, "out")
    assert_close_rel(w, rw, torch.float64, "weights")
    (out.sum() + w.sum()).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_bad_input_gives_clear_errors():
    q, k, v = _inputs(1, 2, 2, 4, 5, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="4-D"):
        attention_with_weights(q[0], k, v)
    with pytest.raises(ValueError, match="dropout_p"):
        attention_with_weights(q, k, v, dropout_p=1.5)
    with pytest.raises(RuntimeError, match="dtype"):
        attention_with_weights(q, k.double(), v)
    with pytest.raises(RuntimeError, match="broadcast"):
        attention_with_weights(q, k, v, torch.ones(3, 5, dtype=torch.bool))
    three = lambda t: t[:, :1].expand(1, 3, 5, 8).contiguous()
    with pytest.raises(RuntimeError, match="multiple"):
        attention_with_weights(q, three(k), three(v))


def _philox4x32_10(ctr, key):
    """Philox4x32-10 as Salmon et al. (SC'11) define it, on Python ints."""
    m32 = 0xFFFFFFFF
    (k0, k1) = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * ctr[0], 0xCD9E8D57 * ctr[2]
        ctr = [(p1 >> 32) ^ ctr[1] ^ k0, p1 & m32, (p0 >> 32) ^ ctr[3] ^ k1, p0 & m32]
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return ctr


def test_philox_oracle_known_answers():
    """The written-out generator reproduces the known-answer vectors of the
    Random123 reference implementation, so the rule below is Philox itself."""
    m = 0xFFFFFFFF
    assert _philox4x32_10([0, 0, 0, 0], (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _philox4x32_10([m, m, m, m], (m, m)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
                          (0xA4093822, 0x299F31D0)) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420,
                                                        0x24126EA1]


def _philox_keep(seed, head_row, col, p):
    """The dropout rule written out independently: Philox4x32-10 on counter
    (col // 4 as two words, head_row as two words) under key seed; the
    weight survives when the top 24 bits of word col % 4 are >= p * 2^24."""
    m32, group = 0xFFFFFFFF, col >> 2
    words = _philox4x32_10([group & m32, group >> 32, head_row & m32, head_row >> 32],
                           (seed & m32, seed >> 32))
    return (words[col & 3] >> 8) >= p * 16777216.0


def _philox_mask(seed, N, H, L, S, p):
    """The keep rule over a whole (N, H, L, S) grid, as a '0'/'1' string."""
    return "".join("1" if _philox_keep(seed, (n * H + h) * L + i, j, p) else "0"
                   for n in range(N) for h in range(H) for i in range(L) for j in range(S))


def _bits(keep: torch.Tensor) -> str:
    return "".join("1" if x else "0" for x in keep.flatten().tolist())


@pytest.mark.parametrize("shape, seed, p", [
    ((2, 3, 5, 37), 2**62 - 12345, 0.3),   # rows not a multiple of 4 columns; a 62-bit seed
    ((1, 1, 1, 1), 7, 0.5),
    ((1, 2, 3, 4), 0, 0.9),
    ((3, 1, 2, 70), 123456789, 0.05),      # past one 16-lane AVX-512 Philox batch
])
def test_dropout_keep_op_is_the_philox_rule(shape, seed, p):
    """torch.ops.pydl.attention_dropout_keep (the decisions weights_from_lse
    applies) keeps exactly the weights the written-out rule keeps."""
    keep = torch.ops.pydl.attention_dropout_keep(torch.tensor([seed]), *shape, p)
    assert keep.dtype == torch.bool and keep.shape == shape
    assert _bits(keep) == _philox_mask(seed, *shape, p)


def test_dropout_keep_op_edges_and_bad_input():
    seed = torch.tensor([5])
    assert torch.ops.pydl.attention_dropout_keep(seed, 2, 2, 3, 9, 0.0).all()
    assert not torch.ops.pydl.attention_dropout_keep(seed, 2, 2, 3, 9, 1.0).any()
    assert torch.ops.pydl.attention_dropout_keep(seed, 2, 0, 3, 9, 0.5).shape == (2, 0, 3, 9)
    assert torch.ops.pydl.attention_dropout_keep(seed, 2, 1, 3, 0, 0.5).shape == (2, 1, 3, 0)
    for bad_seed in (torch.tensor([5.0]), torch.tensor([1, 2]), torch.tensor([], dtype=torch.int64)):
        with pytest.raises(RuntimeError, match="one-element int64"):
            torch.ops.pydl.attention_dropout_keep(bad_seed, 1, 1, 2, 2, 0.5)
    with pytest.raises(RuntimeError, match="non-negative"):
        torch.ops.pydl.attention_dropout_keep(seed, 1, -1, 2, 2, 0.5)
    with pytest.raises(RuntimeError, match=r"dropout_p must be in \[0, 1\]"):
        torch.ops.pydl.attention_dropout_keep(seed, 1, 1, 2, 2, 1.5)
    with pytest.raises(RuntimeError, match="int64 can count"):
        torch.ops.pydl.attention_dropout_keep(seed, 2**31, 2**31, 2**31, 2, 0.5)


def test_dropout_keep_op_opcheck():
    torch.library.opcheck(torch.ops.pydl.attention_dropout_keep.default,
                          (torch.tensor([99]), 2, 3, 4, 5, 0.4))


_KEEP_SCRIPT = """
import torch, pydl
N, H, L, S, seed, p = 2, 2, 5, 150, 987654321987, 0.5
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(N, H, n, 8, generator=g, dtype=torch.float64) for n in (L, S, S))
_, w, _ = torch.ops.pydl.attention_with_weights(
    q, k, v, None, torch.tensor([seed]), p, False, False, 0.1, False)
print("".join("1" if x else "0" for x in (w != 0).flatten().tolist()))
keep = torch.ops.pydl.attention_dropout_keep(torch.tensor([seed]), N, H, L, S, p)
print("".join("1" if x else "0" for x in keep.flatten().tolist()))
"""


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_dropout_keep_pattern_is_philox_on_every_isa(isa):
    """Each per-ISA build (scalar, 8-lane AVX2, 16-lane AVX-512 Philox) of
    the weights kernel and of attention_dropout_keep keeps exactly the weights
    the written-out rule keeps."""
    run = run_with_cpu_isa(isa, _KEEP_SCRIPT)
    assert run.returncode == 0, run.stderr
    weights_kernel, keep_op = run.stdout.strip().splitlines()[-2:]
    want = _philox_mask(987654321987, 2, 2, 5, 150, 0.5)
    assert weights_kernel == want
    assert keep_op == want


@pytest.mark.parametrize("seed", range(10))
def test_randomized_configurations(seed):
    """Random sizes (incl. 1 and odd), GQA, masks, causal alignment, head
    averaging and dropout, float64, through the op directly."""
    g = torch.Generator().manual_seed(100 + seed)
    pick = lambda *options: options[torch.randint(len(options), (1,), generator=g).item()]
    Hk = pick(1, 2, 3)
    N, H = pick(1, 2, 3), Hk * pick(1, 2)
    L, S = pick(1, 7, 64, 65, 130), pick(1, 9, 64, 100, 257)
    E, Ev = pick(1, 8, 24), pick(1, 8, 40)
    kind, causal, bottom_right = pick(None, "bool", "float", "padding"), pick(False, True), pick(False, True)
    average, p = pick(False, True), pick(0.0, 0.0, 0.3)
    q, k, v = _inputs(N, H, Hk, L, S, E, Ev, torch.float64, seed=seed)
    mask = _mask(kind, N, H, L, S, torch.float64, seed=seed)
    scale = 0.1 + seed / 10
    dseed = torch.tensor([seed * 7919 + 1], dtype=torch.int64)
    out, w, lse = torch.ops.pydl.attention_with_weights(
        q, k, v, mask, dseed if p else None, p, causal, bottom_right, scale, average)
    dropout_mask = None
    if p:  # the keep pattern, read off per-head weights of the same call
        _, per_head, _ = torch.ops.pydl.attention_with_weights(
            q, k, v, mask, dseed, p, causal, bottom_right, scale, False)
        probs = reference.scaled_dot_product_attention(
            q.detach(), k.detach(), v.detach(), mask, 0.0, causal, scale, enable_gqa=True,
            causal_alignment="bottom_right" if bottom_right else "top_left", return_weights=True)[1]
        dropout_mask = (per_head != 0) | (probs == 0)
    ref, rlse, rw = reference.scaled_dot_product_attention(
        q, k, v, mask, p, causal, scale, enable_gqa=True, dropout_mask=dropout_mask,
        causal_alignment="bottom_right" if bottom_right else "top_left", return_lse=True,
        return_weights=True)
    if average:
        rw = rw.mean(dim=1)
    assert_close_rel(out, ref, torch.float64, "out")
    assert_close_rel(w, rw, torch.float64, "weights")
    finite = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse[finite], rlse[finite], rtol=1e-12, atol=1e-12)
    inputs = [q, k, v] + ([mask] if kind == "float" else [])
    for a, b, name in zip(_grads(out, w, inputs), _grads(ref, rw, inputs),
                          ["dq", "dk", "dv", "dmask"]):
        assert_close_rel(a, b, torch.float64, name)


@pytest.mark.parametrize("heads", [(0, 0), (0, 1), (2, 0)], ids=str)
@pytest.mark.parametrize("average", [True, False])
def test_zero_heads_give_empty_or_zero_results(route, heads, average):
    """No query heads: an empty output and weights per head (averaged over no
    head: zeros); no key/value heads: rows that see no key, zeros. Zero
    gradients of the inputs' shapes; the ops are not called."""
    H, Hk = heads
    q, k, v = _inputs(2, H, Hk, 5, 6, 8, 4, torch.float64)
    mask = _mask("float", 2, H, 5, 6, torch.float64)
    out, weights = attention_with_weights(q, k, v, mask, average_heads=average)
    assert out.shape == (2, H, 5, 4)
    assert weights.shape == ((2, 5, 6) if average else (2, H, 5, 6))
    assert out.dtype == weights.dtype == torch.float64
    assert not out.any() and not weights.any()
    grads = _grads(out, weights, [q, k, v, mask])
    for g, t in zip(grads, (q, k, v, mask)):
        assert g.shape == t.shape and not g.any()
