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
