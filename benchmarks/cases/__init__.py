"""Registry of benchmark families: every module in this package is one family.

A family module defines ``FAMILY`` (the op family name that pydl.info() uses,
e.g. "conv2d") and ``cases(cfg: Config) -> list[Case]``. Adding a family is
adding one file here; nothing else needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

import torch

from benchmarks.harness import Case


@dataclass(frozen=True)
class Config:
    device: str  # "cpu" or "cuda"
    dtype: torch.dtype
    quick: bool
    formats: tuple[str, ...]  # memory formats to cover: "nchw", "nhwc" (families may ignore)


def families() -> dict[str, ModuleType]:
    """{family name: module}, in file-name order."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found[getattr(module, "FAMILY", info.name)] = module
    return found


def collect(cfg: Config, only: str | None = None) -> list[Case]:
    """Every family's cases, filtered by a substring of the case name."""
    cases = [case for module in families().values() for case in module.cases(cfg)]
    return [c for c in cases if only is None or only in c.name]
