"""Loads the compiled extension ``pydl._C`` once and says whether it loaded.

``import pydl`` never fails because of the extension: when it is missing,
failed to load, was disabled (``PYDL_DISABLE_EXTENSION=1``) or was built for
another torch, ``loaded()`` is False and ``load_error()`` says why; the ops
then fall back as described in DESIGN.md ("Backends and fallback").
"""

from __future__ import annotations

import importlib
import os

import torch

_state: dict = {"loaded": False, "error": None, "build": {}}


def _parse_build_info(text: str) -> dict:
    info = {}
    for item in text.split(";"):
        key, _, value = item.partition("=")
        info[key] = value
    return info


def _load() -> None:
    _state.update(loaded=False, error=None, build={})
    if os.environ.get("PYDL_DISABLE_EXTENSION") == "1":
        _state["error"] = "disabled by PYDL_DISABLE_EXTENSION=1"
        return
    try:
        importlib.import_module("pydl._C")  # registers torch.ops.pydl.*
    except Exception as exc:  # noqa: BLE001  ImportError, OSError (undefined symbols), ...
        _state["error"] = f"pydl._C failed to load: {exc!s}".strip()
        return
    try:
        build = _parse_build_info(torch.ops.pydl.build_info())
    except Exception as exc:  # noqa: BLE001  any failure means "not usable"
        _state["error"] = f"pydl._C loaded but build_info failed: {exc}"
        return
    _state["build"] = build
    built_for = build.get("torch", "unknown")
    if built_for != torch.__version__:
        _state["error"] = (
            f"pydl._C was built for torch {built_for} but torch {torch.__version__} is running; "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
        return
    _state["loaded"] = True


_load()


def loaded() -> bool:
    """True when the compiled kernels are usable."""
    return _state["loaded"]


def load_error() -> str | None:
    """Why the extension is not in use, or None when it is."""
    return _state["error"]


def built_with_cuda() -> bool:
    return _state["build"].get("cuda") == "1"
