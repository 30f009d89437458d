"""Layer-list parsing shared by the models: Keras-style specs with clear errors."""

from __future__ import annotations

import torch

from pydl.models.layers import check_activation


def layer_specs(items, fields: tuple[str, ...], defaults: dict, where: str) -> list[dict]:
    """Normalize a layer list to dicts.

    Each item may be a dict (keys from ``fields``), a tuple/list in ``fields``
    order, or a bare int (the first field: filters or units).
    """
    if isinstance(items, (dict, int)) or items is None:
        raise ValueError(f"{where}: expected a list of layers, got {items!r}")
    specs = []
    for k, item in enumerate(items):
        if isinstance(item, bool):
            raise TypeError(f"{where}[{k}]: expected a dict, tuple or int, got {item!r}")
        if isinstance(item, int):
            item = {fields[0]: item}
        elif isinstance(item, (tuple, list)):
            if len(item) > len(fields):
                raise ValueError(f"{where}[{k}]: at most {len(fields)} values {fields}, got {item}")
            item = dict(zip(fields, item))
        elif not isinstance(item, dict):
            raise TypeError(f"{where}[{k}]: expected a dict, tuple or int, got {item!r}")
        unknown = set(item) - set(fields)
        if unknown:
            raise ValueError(f"{where}[{k}]: unknown keys {sorted(unknown)}; allowed {fields}")
        spec = {**defaults, **item}
        missing = [f for f in fields if f not in spec]
        if missing:
            raise ValueError(f"{where}[{k}]: missing {missing}")
        if "activation" in spec:
            spec["activation"] = check_activation(spec["activation"], f"{where}[{k}]: ")
        for key in ("filters", "units", "kernel_size", "pool"):
            if key in spec and (not isinstance(spec[key], int) or spec[key] < (0 if key == "pool" else 1)):
                raise ValueError(f"{where}[{k}]: {key} must be a positive int, got {spec[key]!r}")
        if "dropout" in spec and not 0 <= spec["dropout"] < 1:
            raise ValueError(f"{where}[{k}]: dropout must be in [0, 1), got {spec['dropout']}")
        specs.append(spec)
    return specs


def dense_stack(in_features: int, dense_layers, num_classes: int, where: str) -> torch.nn.Sequential:
    """Hidden dense layers (Linear, activation, dropout) then the output Linear (logits)."""
    from pydl.models.layers import activation

    mods: list[torch.nn.Module] = []
    for spec in layer_specs(dense_layers, ("units", "activation", "dropout"),
                            {"activation": "relu", "dropout": 0.0}, where):
        mods += [torch.nn.Linear(in_features, spec["units"]), activation(spec["activation"])]
        if spec["dropout"]:
            mods.append(torch.nn.Dropout(spec["dropout"]))
        in_features = spec["units"]
    mods.append(torch.nn.Linear(in_features, num_classes))
    return torch.nn.Sequential(*mods)


def check_positive_int(value, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    return value


def check_input(X: torch.Tensor, expected: tuple, where: str) -> None:
    """X must be (batch, *expected); None in expected matches any size."""
    shape = tuple(X.shape[1:])
    if X.dim() != len(expected) + 1 or any(e is not None and e != s for e, s in zip(expected, shape)):
        want = ", ".join("L" if e is None else str(e) for e in expected)
        raise ValueError(f"{where}: expected input of shape (batch, {want}), got {tuple(X.shape)}")
