"""pydl.convert(model): swap torch.nn layers for pydl's drop-ins, and back.

Each op family registers its drop-in with ``register_drop_in``. A swap keeps
the module's state (parameters, buffers, hooks, training flag) by moving its
__dict__ into an instance of the other class, so optimizers that hold the
parameters keep working and state_dict keys are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# torch class -> (pydl class, reason a module of that class cannot go back to torch, or None)
_DROP_INS: dict[type, type] = {}
_BACK_BLOCKERS: dict[type, Callable[[torch.nn.Module], str | None]] = {}


def register_drop_in(torch_cls: type, pydl_cls: type,
                     cannot_go_back: Callable[[torch.nn.Module], str | None] = lambda m: None):
    """Declare pydl_cls a drop-in for torch_cls (pydl_cls subclasses torch_cls)."""
    _DROP_INS[torch_cls] = pydl_cls
    _BACK_BLOCKERS[pydl_cls] = cannot_go_back


@dataclass
class ConversionReport:
    direction: str
    swapped: list = field(default_factory=list)  # (qualified name, from class, to class)
    left: list = field(default_factory=list)  # (qualified name, class, reason)

    def __str__(self) -> str:
        lines = [f"pydl.convert(to={self.direction!r}): swapped {len(self.swapped)}, left {len(self.left)}"]
        lines += [f"  swapped {name or '<root>'}: {a} -> {b}" for name, a, b in self.swapped]
        lines += [f"  left    {name or '<root>'}: {cls} ({why})" for name, cls, why in self.left]
        return "\n".join(lines)


def _qualname(cls: type) -> str:
    """torch.nn.Conv2d / pydl.nn.Conv2d rather than the defining submodule."""
    for package in ("torch.nn", "pydl.nn"):
        if cls.__module__.startswith(package + "."):
            return f"{package}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _swap_class(module: torch.nn.Module, new_cls: type, extra: dict) -> torch.nn.Module:
    new = new_cls.__new__(new_cls)
    new.__dict__.update(module.__dict__)
    new.__dict__.update(extra)
    return new


def _convert_one(module, direction):
    """(new module or None, reason it was left or None)."""
    cls = type(module)
    if direction == "pydl":
        pydl_cls = _DROP_INS.get(cls)
        if pydl_cls is None:
            return None, None
        extra = {"activation": "none"} if issubclass(pydl_cls, torch.nn.Conv2d) else {}
        return _swap_class(module, pydl_cls, extra), None
    for torch_cls, pydl_cls in _DROP_INS.items():
        if cls is pydl_cls:
            blocker = _BACK_BLOCKERS[pydl_cls](module)
            if blocker:
                return None, blocker
            new = _swap_class(module, torch_cls, {})
            new.__dict__.pop("activation", None)
            return new, None
    return None, None


def convert(model: torch.nn.Module, to: str = "pydl", verbose: bool = False) -> torch.nn.Module:
    """Swap every layer that has a pydl drop-in (to="pydl") or swap pydl layers
    back to torch's (to="torch"), in place. Returns the model (a new object
    only when the root itself was swapped); the report of what was swapped and
    what was left is ``model.pydl_conversion_report`` (printed if verbose)."""
    if to not in ("pydl", "torch"):
        raise ValueError(f"pydl.convert: to must be 'pydl' or 'torch', got {to!r}")
    report = ConversionReport(direction=to)
    known = set(_DROP_INS) | set(_DROP_INS.values())

    def visit(module, name, inside_drop_in=False):
        new, reason = _convert_one(module, to)
        if new is not None:
            report.swapped.append((name, _qualname(type(module)), _qualname(type(new))))
            # A drop-in's children are converted too (a TransformerEncoder's
            # layers, their attention); its plain parts are not reported as left.
            module, inside_drop_in = new, True
        elif reason:
            report.left.append((name, _qualname(type(module)), reason))
        elif not inside_drop_in and not module._modules and type(module) not in known:
            report.left.append((name, _qualname(type(module)), "no pydl drop-in"))
        for child_name, child in list(module._modules.items()):
            if child is None:
                continue
            replacement = visit(child, f"{name}.{child_name}" if name else child_name,
                                inside_drop_in)
            if replacement is not child:
                module._modules[child_name] = replacement
        return module

    result = visit(model, "")
    result.pydl_conversion_report = report
    if verbose:
        print(report)
    return result


def _conv2d_cannot_go_back(module) -> str | None:
    if getattr(module, "activation", "none") != "none":
        return f"fused activation={module.activation!r} has no torch.nn.Conv2d equivalent"
    return None


def _register_builtin() -> None:
    from pydl.nn.attention import MultiheadAttention
    from pydl.nn.conv import Conv2d
    from pydl.nn.rnn import LSTM, LSTMCell
    from pydl.nn.transformer import TransformerEncoder, TransformerEncoderLayer

    register_drop_in(torch.nn.Conv2d, Conv2d, _conv2d_cannot_go_back)
    register_drop_in(torch.nn.LSTMCell, LSTMCell)
    register_drop_in(torch.nn.LSTM, LSTM)
    register_drop_in(torch.nn.MultiheadAttention, MultiheadAttention)
    register_drop_in(torch.nn.TransformerEncoderLayer, TransformerEncoderLayer)
    register_drop_in(torch.nn.TransformerEncoder, TransformerEncoder)


_register_builtin()
