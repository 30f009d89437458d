"""One training API for every model: fit / evaluate / predict, and the History they record.

fit() trains a classifier with cross-entropy on (X, y), shuffling with a seeded
generator, optionally holding out a validation split, augmenting batches,
clipping the gradient norm and recording per-layer gradient norms. Under an
initialized torch.distributed process group (see pydl.models.distributed) it
runs data-parallel with DistributedDataParallel: batch_size is per process,
and every process sees its slice of the same global batch a single process
with batch_size x world_size would see.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pydl.models import distributed
from pydl.models.gradients import layer_grad_tensors

OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "momentum": lambda params, lr, **kw: torch.optim.SGD(params, lr, **{"momentum": 0.9, **kw}),
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}


@dataclass
class History:
    """Per-epoch records of a fit (Keras-like: history["val_accuracy"][-1])."""

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)  # mean total gradient norm (before clipping)
    layer_grad_norms: list = field(default_factory=list)  # per epoch: {layer: mean norm}
    step_loss: list = field(default_factory=list)  # every optimizer step
    step_grad_norm: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    clip_grad_norm: float | None = None
    diverged: bool = False  # the loss became inf/NaN and training stopped

    def __getitem__(self, key):
        return getattr(self, key)

    def as_dict(self) -> dict:
        return asdict(self)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _model_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def as_inputs(model, X) -> torch.Tensor:
    """X as a tensor: floats in the model's dtype, integers (token ids) as int64; shape checked."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a numpy array or a torch tensor, got {type(X).__name__}")
    X = X.long() if not X.is_floating_point() else X.to(_model_dtype(model))
    if X.dim() < 2 or X.shape[0] == 0:
        raise ValueError(f"X must have shape (samples, ...) with at least one sample, got "
                         f"{tuple(X.shape)}")
    check = getattr(_unwrap(model), "check_input", None)
    if check is not None:
        check(X)
    return X


def as_labels(model, X, y) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a numpy array or a torch tensor, got {type(y).__name__}")
    if y.dim() != 1:
        raise ValueError(f"y must be 1-D class labels of shape ({X.shape[0]},), got {tuple(y.shape)}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got {y.dtype}")
    y = y.long()
    classes = getattr(_unwrap(model), "num_classes", None)
    if classes is not None and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"y must hold labels in [0, {classes}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


def make_optimizer(optimizer, params, learning_rate: float, **kwargs) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params, lr=learning_rate, **kwargs)
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()](params, lr=learning_rate, **kwargs)
    raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)}, "
                     "a torch.optim.Optimizer class or instance")


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("fit(progress=True) needs tqdm: pip install 'pydl[toolkit]' "
                          "(or pip install tqdm), or pass progress=False") from e
    return tqdm(total=total, desc="fit", unit="step", leave=False)


def _device_of(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def fit(model: torch.nn.Module, X, y, epochs: int = 10, batch_size: int = 32,
        learning_rate: float = 1e-3, optimizer="adam", *, validation_split: float = 0.0,
        validation_data=None, clip_grad_norm="auto", augment=None, seed: int | None = 0,
        device=None, progress: bool = True, weight_decay: float = 0.0,
        lr_schedule: str | None = None, record_grad_norms: bool = True,
        stop_on_nonfinite: bool = True, optimizer_kwargs: dict | None = None) -> History:
    """Train a classifier on (X, y) with mean cross-entropy; returns a History.

    X: (N, ...) in the model's input form; y: (N,) integer labels.
    optimizer: 'sgd', 'momentum', 'adam', 'adamw', 'rmsprop', a torch.optim class or instance.
    validation_split: fraction of (X, y) held out (seeded random choice) unless
    validation_data=(X_val, y_val) is given. clip_grad_norm: max total gradient norm;
    'auto' uses the model's ``default_clip_norm`` (the recurrent model sets 1.0), None
    disables it. augment: a callable (batch, generator) -> batch applied to training
    batches. seed: makes shuffling, augmentation and dropout reproducible.
    lr_schedule: None or 'cosine' (per step, to zero). device: where to train (default:
    the model's). Under torch.distributed, batch_size is per process.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"lr_schedule must be None or 'cosine', got {lr_schedule!r}")
    if augment is not None and not callable(augment):
        raise ValueError("augment must be a callable (batch, generator) -> batch")

    module = _unwrap(model)
    if device is not None:
        module.to(device)
    device = _device_of(module)
    X = as_inputs(module, X)
    y = as_labels(module, X, y)
    if clip_grad_norm == "auto":
        clip_grad_norm = getattr(module, "default_clip_norm", None)
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be positive or None, got {clip_grad_norm!r}")

    gen = torch.Generator()  # shuffling and the validation split
    aug_gen = torch.Generator()  # augmentation: its own stream, so switching it on or off
    if seed is not None:  # leaves the batch order unchanged
        gen.manual_seed(seed)
        aug_gen.manual_seed(seed + 1)
        torch.manual_seed(seed)  # dropout and anything else on the global generator
    else:
        gen.seed()
        aug_gen.seed()

    if validation_data is not None:
        X_val = as_inputs(module, validation_data[0])
        y_val = as_labels(module, X_val, validation_data[1])
    elif validation_split > 0:
        order = torch.randperm(len(y), generator=gen)
        n_val = max(1, round(len(y) * validation_split))
        if n_val >= len(y):
            raise ValueError(f"validation_split={validation_split} leaves no training samples")
        X_val, y_val = X[order[:n_val]], y[order[:n_val]]
        X, y = X[order[n_val:]], y[order[n_val:]]
    else:
        X_val = y_val = None

    world, rank = distributed.world_size(), distributed.rank()
    net = model
    if world > 1 and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        net = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params, learning_rate, weight_decay=weight_decay,
                         **(optimizer_kwargs or {}))
    global_batch = batch_size * world
    steps_per_epoch = math.ceil(len(y) / global_batch)
    sched = None
    if lr_schedule == "cosine":
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))

    history = History(clip_grad_norm=clip_grad_norm)
    bar = _progress_bar(epochs * steps_per_epoch, progress and rank == 0)
    try:
        for epoch in range(epochs):
            start_time = time.perf_counter()
            net.train()
            order = torch.randperm(len(y), generator=gen)
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
            layer_sums: dict[str, torch.Tensor] = {}
            norm_sum, steps = 0.0, 0
            for start in range(0, len(y), global_batch):
                idx_global = order[start:start + global_batch]
                if world > 1:
                    if len(idx_global) < world:  # a rank would get an empty batch: skip the tail
                        continue
                    idx = torch.tensor_split(idx_global, world)[rank]
                else:
                    idx = idx_global
                xb, yb = X[idx], y[idx]
                if augment is not None:
                    xb = augment(xb, aug_gen)
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                logits = net(xb)
                loss_sum = F.cross_entropy(logits, yb, reduction="sum")
                # DDP averages gradients over processes; scaling by world / global count makes
                # that average the gradient of the global batch's mean loss, even when the
                # processes' slices differ in size.
                loss = loss_sum * (world / len(idx_global))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                layer_norms = layer_grad_tensors(module) if record_grad_norms else {}
                if clip_grad_norm is not None:
                    total_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                else:
                    total_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in params if p.grad is not None])
                if world > 1:  # the global batch's mean loss, the same on every process
                    global_loss = loss.detach().clone()
                    torch.distributed.all_reduce(global_loss)
                    step_loss = global_loss.item() / world
                else:
                    step_loss = loss.item()
                history.step_loss.append(step_loss)
                history.step_grad_norm.append(float(total_norm))
                if stop_on_nonfinite and not math.isfinite(step_loss):
                    history.diverged = True
                    break
                for name, value in layer_norms.items():
                    layer_sums[name] = layer_sums.get(name, 0.0) + value
                opt.step()
                if sched is not None:
                    sched.step()
                with torch.no_grad():
                    sums += torch.stack([loss_sum.detach().double(),
                                         (logits.argmax(1) == yb).sum().double(),
                                         torch.tensor(float(len(idx)), device=device,
                                                      dtype=torch.float64)])
                norm_sum += float(total_norm)
                steps += 1
                if bar is not None:
                    bar.update(1)
            if world > 1:
                torch.distributed.all_reduce(sums)
            loss_sum, correct, count = sums.tolist()
            history.epoch.append(epoch + 1)
            history.loss.append(loss_sum / count if count else math.nan)
            history.accuracy.append(correct / count if count else math.nan)
            history.grad_norm.append(norm_sum / steps if steps else math.nan)
            history.layer_grad_norms.append({k: float(v) / max(steps, 1)
                                             for k, v in layer_sums.items()})
            if X_val is not None:
                metrics = evaluate(module, X_val, y_val, device=device)
                history.val_loss.append(metrics["loss"])
                history.val_accuracy.append(metrics["accuracy"])
            history.seconds.append(time.perf_counter() - start_time)
            if bar is not None:
                shown = {"epoch": epoch + 1, "loss": f"{history.loss[-1]:.4f}",
                         "acc": f"{history.accuracy[-1]:.3f}"}
                if history.val_accuracy:
                    shown["val_acc"] = f"{history.val_accuracy[-1]:.3f}"
                bar.set_postfix(shown)
            if history.diverged:
                break
    finally:
        if bar is not None:
            bar.close()
    return history


@torch.no_grad()
def _batched_logits(model, X, batch_size, device):
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(X[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(X), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model, X, y, batch_size: int = 256, device=None) -> dict:
    """{'loss': mean cross-entropy, 'accuracy': fraction correct} in eval mode."""
    module = _unwrap(model)
    device = torch.device(device) if device is not None else _device_of(module)
    X = as_inputs(module, X)
    y = as_labels(module, X, y)
    logits = _batched_logits(module, X, batch_size, device)
    return {"loss": F.cross_entropy(logits, y).item(),
            "accuracy": (logits.argmax(1) == y).double().mean().item()}


def predict(model, X, batch_size: int = 256, device=None, return_probs: bool = False):
    """Predicted class indices (N,), or class probabilities (N, classes) with return_probs."""
    module = _unwrap(model)
    device = torch.device(device) if device is not None else _device_of(module)
    X = as_inputs(module, X)
    logits = _batched_logits(module, X, batch_size, device)
    return logits.softmax(1) if return_probs else logits.argmax(1)
