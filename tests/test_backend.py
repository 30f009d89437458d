"""Extension loading, pydl.info() and the backend/fallback policy."""

import os
import subprocess
import sys

import pytest
import torch

import pydl
from pydl import _backend, _ext


def test_info_reports_every_family():
    info = pydl.info()
    assert info["torch"] == torch.__version__
    assert "conv2d" in info["backends"]
    backend, reason = info["backends"]["conv2d"]["cpu"]
    assert backend in ("pydl", "torch") and reason
    text = str(info)
    assert "conv2d" in text and "extension:" in text


def test_info_says_whether_mkl_runs_its_tuned_kernels():
    """MKL gives its tuned kernels to Intel processors only; the CPU LSTM then
    keeps its step products off MKL (csrc/common/blas.h). The cpuid check
    must agree with the kernel's vendor string."""
    if not _ext.loaded():
        pytest.skip("extension not loaded")
    try:
        with open("/proc/cpuinfo") as f:
            vendors = {line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")}
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if len(vendors) != 1:
        pytest.skip(f"no single x86 vendor: {vendors}")
    if not torch.backends.mkl.is_available():
        assert pydl.info()["build"]["mkl"] == "none"
        return
    expected = "tuned" if vendors == {"GenuineIntel"} else "generic"
    assert pydl.info()["build"]["mkl"] == expected


def test_strict_mode_raises_on_fallback(monkeypatch):
    monkeypatch.setitem(_ext._state, "loaded", False)
    monkeypatch.setitem(_ext._state, "error", "simulated missing extension")
    monkeypatch.setenv("PYDL_STRICT", "1")
    with pytest.raises(pydl.FallbackError, match="simulated missing extension"):
        pydl.ops.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
    monkeypatch.setenv("PYDL_STRICT", "0")
    out = pydl.ops.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
    assert out.shape == (1, 3, 3, 3)


def test_unverified_cuda_is_opt_in(monkeypatch):
    if not _ext.loaded():
        pytest.skip("extension not loaded")
    monkeypatch.setitem(_ext._state, "build", dict(_ext._state["build"], cuda="1"))
    monkeypatch.delenv("PYDL_EXPERIMENTAL_CUDA", raising=False)
    verified = pydl._verified.VERIFIED_CUDA.get("conv2d")
    if verified is None or not verified.default:
        backend, reason = _backend.explain("conv2d", "cuda", torch.bfloat16)
        assert backend == "torch" and "PYDL_EXPERIMENTAL_CUDA" in reason
    monkeypatch.setenv("PYDL_EXPERIMENTAL_CUDA", "1")
    assert _backend.explain("conv2d", "cuda", torch.bfloat16)[0] == "pydl"


def _cuda_stand_in(dtype=torch.bfloat16, shape=(2, 4, 100, 64)):
    """What the routing reads of a CUDA tensor, on a machine without a GPU."""
    import types

    return types.SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype, is_cuda=True,
                                 shape=torch.Size(shape))


@pytest.mark.parametrize("capability, runs_pydl", [((7, 5), False), ((8, 0), True),
                                                     ((9, 0), True)])
def test_cuda_cards_before_sm80_take_torchs_ops(capability, runs_pydl, monkeypatch):
    # pydl's CUDA kernels need sm_80+ (cp.async, bf16 mma) and the build has
    # no image for older cards: a T4 or V100 gets torch's op (PYDL_STRICT=1
    # says why) instead of "no kernel image is available".
    if not _ext.loaded():
        pytest.skip("extension not loaded")
    monkeypatch.setitem(_ext._state, "build", dict(_ext._state["build"], cuda="1"))
    monkeypatch.setenv("PYDL_EXPERIMENTAL_CUDA", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(_backend, "_CUDA_SUPPORTED", {})
    tensor = _cuda_stand_in()
    monkeypatch.delenv("PYDL_STRICT", raising=False)
    assert _backend.use_pydl("attention", tensor) == runs_pydl
    if not runs_pydl:
        monkeypatch.setenv("PYDL_STRICT", "1")
        with pytest.raises(_backend.FallbackError, match="compute capability 8.0"):
            _backend.use_pydl("attention", tensor)
    # No driver (fake CUDA tensors traced on a CPU-only machine): no query,
    # the fake kernels need no image.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_backend, "_CUDA_SUPPORTED", {})
    monkeypatch.delenv("PYDL_STRICT", raising=False)
    assert _backend.use_pydl("attention", tensor)


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYDL_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_disable_extension_env_falls_back_to_torch():
    result = _run(
        "import torch, pydl\n"
        "info = pydl.info()\n"
        "assert not info['extension_loaded'], info\n"
        "assert 'PYDL_DISABLE_EXTENSION' in info['backends']['conv2d']['cpu'][1]\n"
        "x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)\n"
        "assert torch.allclose(pydl.ops.conv2d(x, w, activation='relu'),"
        " torch.relu(torch.nn.functional.conv2d(x, w)))\n",
        PYDL_DISABLE_EXTENSION="1",
    )
    assert result.returncode == 0, result.stderr


def test_extension_built_for_other_torch_is_reported(monkeypatch):
    """A build for another torch must be reported, not used."""
    if not _ext.loaded():
        pytest.skip("extension not loaded")
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    _ext._load()
    try:
        assert not _ext.loaded()
        assert "built for torch" in _ext.load_error()
    finally:
        monkeypatch.undo()
        _ext._load()
    assert _ext.loaded()


def _first_tensor(out):
    while isinstance(out, tuple):
        out = out[0]
    return out


# torch.func transforms need functorch rules pydl's ops do not have: under a
# transform the modules run torch's ops (and PYDL_STRICT=1 says so), and
# per-parameter gradients by torch.func.grad equal autograd's through pydl.
@pytest.mark.parametrize("make, shape", [
    (lambda: pydl.nn.Conv2d(3, 4, 3), (2, 3, 8, 8)),
    (lambda: pydl.nn.MultiheadAttention(8, 2, batch_first=True), (2, 5, 8)),
    (lambda: pydl.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
     (2, 5, 8)),
    (lambda: pydl.nn.LSTM(3, 4, num_layers=2), (5, 2, 3)),
    (lambda: pydl.nn.LSTMCell(3, 4), (2, 3)),
], ids=["conv2d", "mha", "encoder_layer", "lstm", "lstm_cell"])
def test_torch_func_grad_runs_torchs_ops(make, shape, monkeypatch):
    from torch.func import functional_call, grad
    monkeypatch.setenv("PYDL_STRICT", "0")
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    args = (x, x, x) if isinstance(module, torch.nn.MultiheadAttention) else (x,)
    params = {k: v.detach() for k, v in module.named_parameters()}
    got = grad(lambda p: _first_tensor(functional_call(module, p, args)).square().sum())(params)
    _first_tensor(module(*args)).square().sum().backward()
    for name, p in module.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-10, msg=name)
    if _ext.loaded():
        monkeypatch.setenv("PYDL_STRICT", "1")
        with pytest.raises(pydl.FallbackError, match="torch.func transform"):
            grad(lambda p: _first_tensor(functional_call(module, p, args)).sum())(params)


def test_jit_trace_of_lstm_runs(monkeypatch):
    """torch.jit.trace cannot record pydl::lstm's list of optional weights: a
    traced pydl.nn.LSTM records torch's LSTM, and gives the module's output."""
    monkeypatch.setenv("PYDL_STRICT", "0")
    torch.manual_seed(0)
    module = pydl.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    traced = torch.jit.trace(module, (x,), check_trace=False)
    torch.testing.assert_close(traced(x)[0], module(x)[0])
    if _ext.loaded():
        monkeypatch.setenv("PYDL_STRICT", "1")
        with pytest.raises(pydl.FallbackError, match="jit.trace"):
            torch.jit.trace(module, (x,), check_trace=False)


@pytest.fixture
def cuda_build(monkeypatch):
    """A loaded extension that says it has CUDA kernels; no opt-in, not strict."""
    if not _ext.loaded():
        pytest.skip("extension not loaded")
    monkeypatch.setitem(_ext._state, "build", dict(_ext._state["build"], cuda="1"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no capability query
    monkeypatch.setattr(_backend, "_CUDA_SUPPORTED", {})
    for name in ("PYDL_EXPERIMENTAL_CUDA", "PYDL_STRICT"):
        monkeypatch.delenv(name, raising=False)


def test_verified_cuda_families_follow_their_default(cuda_build):
    for family, verified in pydl._verified.VERIFIED_CUDA.items():
        backend, reason = _backend.explain(family, "cuda", torch.bfloat16)
        assert backend == ("pydl" if verified.default else "torch"), (family, reason)
        assert verified.card in reason


def test_lstm_default_on_cuda_is_pydl_only_where_it_beat_cudnn(cuda_build, monkeypatch):
    from torch.nn.utils.rnn import pack_sequence

    from pydl.nn import rnn
    from pydl.nn.rnn import _cudnn_is_faster

    if not pydl._verified.VERIFIED_CUDA["lstm"].default:
        pytest.skip("pydl's CUDA LSTM is not the default")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setitem(rnn._DEVICE, 0, (9, 0, 132))  # an H100 / H200
    data = _cuda_stand_in()
    model = pydl.nn.LSTM(4, 32)
    for batch, cudnn in ((1, False), (16, False), (17, True)):
        assert _cudnn_is_faster(model, torch.empty(3, batch, 4), data) == cudnn, batch
    assert not _cudnn_is_faster(model, torch.empty(3, 4), data)  # unbatched: batch 1
    batch_first = pydl.nn.LSTM(4, 32, batch_first=True)
    assert _cudnn_is_faster(batch_first, torch.empty(17, 3, 4), data)
    assert not _cudnn_is_faster(batch_first, torch.empty(3, 17, 4), data)
    # packed: the persistent kernel up to 32 rows at hidden <= 256
    packed = pack_sequence([torch.empty(n, 4) for n in [5] * 33])
    assert _cudnn_is_faster(model, packed, data)
    assert not _cudnn_is_faster(model, pack_sequence([torch.empty(5, 4)] * 32), data)
    assert not _cudnn_is_faster(model, pack_sequence([torch.empty(5, 4)] * 3), data)
    assert _cudnn_is_faster(pydl.nn.LSTM(4, 257), pack_sequence([torch.empty(5, 4)] * 17), data)
    assert not _cudnn_is_faster(pydl.nn.LSTM(4, 257), pack_sequence([torch.empty(5, 4)] * 16),
                                data)
    # what the persistent kernel does not serve, or was not measured
    assert _cudnn_is_faster(pydl.nn.LSTM(4, 32, proj_size=8), torch.empty(3, 2, 4), data)
    assert _cudnn_is_faster(model, torch.empty(3, 2, 4), _cuda_stand_in(torch.float64))
    assert _cudnn_is_faster(pydl.nn.LSTM(4, 2048), torch.empty(3, 2, 4), data)
    assert not _cudnn_is_faster(pydl.nn.LSTM(4, 1024), torch.empty(3, 2, 4), data)
    monkeypatch.setitem(rnn._DEVICE, 0, (8, 0, 108))  # an A100: 864 units at most
    assert _cudnn_is_faster(pydl.nn.LSTM(4, 1024), torch.empty(3, 2, 4), data)
    assert not _cudnn_is_faster(pydl.nn.LSTM(4, 864), torch.empty(3, 2, 4), data)
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT", "0")
    assert _cudnn_is_faster(model, torch.empty(3, 2, 4), data)
    monkeypatch.delenv("PYDL_LSTM_PERSISTENT")
    # the op's batch limit lowered: what it sends to the cuBLAS loop goes to cuDNN
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT_MAX_BATCH", "8")
    assert _cudnn_is_faster(model, torch.empty(3, 9, 4), data)
    assert _cudnn_is_faster(model, pack_sequence([torch.empty(5, 4)] * 20), data)
    assert not _cudnn_is_faster(model, torch.empty(3, 8, 4), data)
    monkeypatch.setenv("PYDL_LSTM_PERSISTENT_MAX_BATCH", "64")  # raised: the measured rule stays
    assert _cudnn_is_faster(model, torch.empty(3, 17, 4), data)
    monkeypatch.delenv("PYDL_LSTM_PERSISTENT_MAX_BATCH")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _cudnn_is_faster(model, torch.empty(3, 2, 4), data)
    # traced by torch.compile: no device queries, the measured bound only
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", None)  # must not be called
    monkeypatch.delitem(rnn._DEVICE, 0)
    assert not _cudnn_is_faster(pydl.nn.LSTM(4, 1024), torch.empty(3, 2, 4), data)
    assert _cudnn_is_faster(pydl.nn.LSTM(4, 2048), torch.empty(3, 2, 4), data)
    assert _cudnn_is_faster(model, torch.empty(3, 17, 4), data)
    fp16_persist = pydl.nn.LSTM(128, 256)
    assert _cudnn_is_faster(fp16_persist, torch.empty(3, 8, 128), _cuda_stand_in(torch.float16))
    assert not _cudnn_is_faster(fp16_persist, torch.empty(3, 1, 128),
                                _cuda_stand_in(torch.float16))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    # the CPU, and the opt-in, run pydl's kernel on every call it serves
    assert not _cudnn_is_faster(model, torch.empty(3, 64, 4), torch.empty(0))
    monkeypatch.setenv("PYDL_EXPERIMENTAL_CUDA", "1")
    assert not _cudnn_is_faster(model, torch.empty(3, 64, 4), data)


@pytest.mark.parametrize("dtype, input_size, hidden, batch, layers, bidirectional, cudnn", [
    # cuDNN's small-hidden persistent algorithm (hidden <= 192; float32 / fp16)
    (torch.float32, 64, 64, 1, 1, False, True),
    (torch.float32, 128, 128, 1, 1, True, True),
    (torch.float16, 64, 192, 8, 2, False, True),
    (torch.float32, 64, 193, 1, 1, False, False),
    (torch.bfloat16, 64, 64, 1, 1, False, False),  # cuDNN ran bf16 at 23 us per step
    # fp16 PERSIST_STATIC: one layer, one direction, sizes multiples of 128, batch % 8 == 0
    (torch.float16, 256, 256, 8, 1, False, True),
    (torch.float16, 1024, 1024, 16, 1, False, True),
    (torch.float16, 256, 256, 1, 1, False, False),
    (torch.float16, 256, 256, 12, 1, False, False),
    (torch.float16, 200, 256, 8, 1, False, False),
    (torch.float16, 256, 320, 8, 1, False, False),
    (torch.float16, 256, 256, 8, 2, False, False),
    (torch.float16, 256, 256, 8, 1, True, False),
    (torch.float32, 256, 256, 8, 1, False, False),  # PERSIST_STATIC is fp16 only
])
def test_lstm_default_on_cuda_leaves_cudnns_persistent_algorithms_to_torch(
        cuda_build, monkeypatch, dtype, input_size, hidden, batch, layers, bidirectional, cudnn):
    """Where torch would run one of cuDNN's persistent algorithms (its
    RNN.cpp get_algo), torch's LSTM runs: cuDNN beat pydl's kernel there on
    an H200. Elsewhere at batch <= 16 pydl's persistent kernel runs."""
    from pydl.nn import rnn
    from pydl.nn.rnn import _cudnn_is_faster

    if not pydl._verified.VERIFIED_CUDA["lstm"].default:
        pytest.skip("pydl's CUDA LSTM is not the default")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setitem(rnn._DEVICE, 0, (9, 0, 132))
    model = pydl.nn.LSTM(input_size, hidden, num_layers=layers, bidirectional=bidirectional)
    x = torch.empty(3, batch, input_size)
    assert _cudnn_is_faster(model, x, _cuda_stand_in(dtype)) == cudnn
    # packed input never takes cuDNN's persistent algorithms
    packed = torch.nn.utils.rnn.pack_sequence([torch.empty(3, input_size)] * batch)
    assert not _cudnn_is_faster(model, packed, _cuda_stand_in(dtype))
    if cudnn and dtype == torch.float16 and hidden == 256:
        # the device clause: sm_86 cards and small ones (an A30) run the standard algorithm
        monkeypatch.setitem(rnn._DEVICE, 0, (8, 6, 132))
        assert not _cudnn_is_faster(model, x, _cuda_stand_in(dtype))
        monkeypatch.setitem(rnn._DEVICE, 0, (8, 0, 56))
        assert not _cudnn_is_faster(model, x, _cuda_stand_in(dtype))


def test_attention_on_cuda_uses_the_verified_kernel_only_for_what_sdpa_cannot_do(
        cuda_build, monkeypatch):
    from pydl.ops.attention import _use_kernel

    verified = pydl._verified.VERIFIED_CUDA.get("attention")
    if verified is None or verified.default:
        pytest.skip("pydl's CUDA attention is unverified or the default")
    q, k = _cuda_stand_in(), _cuda_stand_in()
    assert _backend.verified_cuda_serves("attention", q)
    assert _use_kernel(q, k, None, False, "top_left", True)  # return_lse
    assert _use_kernel(_cuda_stand_in(shape=(2, 4, 40, 64)), k, None, True, "bottom_right", False)
    assert _use_kernel(q, k, torch.zeros(100, 100), True, "top_left", False)  # causal + mask
    assert not _use_kernel(q, k, None, True, "top_left", False)  # torch's SDPA
    assert not _use_kernel(q, k, torch.zeros(100, 100), False, "top_left", False)
    # float32: the reference (cuBLAS) rather than the CUDA-core kernel
    assert not _use_kernel(_cuda_stand_in(torch.float32), k, None, False, "top_left", True)
    # not on the CPU path's terms, nor for an unverified family or unbuilt kernels
    assert not _backend.verified_cuda_serves("attention", torch.empty(2, 4, 100, 64))
    monkeypatch.delitem(pydl._verified.VERIFIED_CUDA, "attention")
    assert not _use_kernel(q, k, None, False, "top_left", True)
