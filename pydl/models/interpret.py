"""Looking inside the models: gradient saliency maps, attention maps, and PNG plots of them.

saliency(): |d logit_target / d input| (Simonyan et al. 2014): which pixels would
change the class score most. attention_maps(): the Transformer's per-head attention
weights, layer by layer, from MultiheadAttention(need_weights=True,
average_attn_weights=False). Plots use matplotlib's object API (no pyplot state)
and are imported only when a PNG is written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pydl.models.training import _device_of, _unwrap, as_inputs


def _targets(logits, target):
    if target is None:
        return logits.argmax(1)
    target = torch.as_tensor(target, device=logits.device).long()
    if target.dim() == 0:
        target = target.expand(logits.shape[0])
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must be an int or have shape ({logits.shape[0]},), got "
                         f"{tuple(target.shape)}")
    if target.min() < 0 or target.max() >= logits.shape[1]:
        raise ValueError(f"target must be a class in [0, {logits.shape[1]})")
    return target


def saliency(model, X, target=None, normalize: bool = True) -> torch.Tensor:
    """Gradient saliency of the target class's logit (default: the predicted class).

    For images (N, C, H, W) the map is the max over channels of |gradient|: (N, H, W);
    for other inputs, |gradient| in the input's shape. With normalize, each sample's
    map sums to 1 (a map of all zeros stays zero).
    """
    module = _unwrap(model)
    x = as_inputs(module, X).to(_device_of(module))
    if not x.is_floating_point():
        raise ValueError("saliency needs real-valued inputs (token ids have no input gradient)")
    was_training = module.training
    module.eval()
    try:
        x = x.detach().requires_grad_(True)
        logits = module(x)
        chosen = logits.gather(1, _targets(logits, target)[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, x)
    finally:
        module.train(was_training)
    sal = grad.abs()
    if sal.dim() == 4:
        sal = sal.amax(dim=1)
    if normalize:
        total = sal.flatten(1).sum(1).clamp_min(torch.finfo(sal.dtype).tiny)
        sal = sal / total.view(-1, *([1] * (sal.dim() - 1)))
    return sal.detach()


@torch.no_grad()
def attention_maps(model, X) -> list[torch.Tensor]:
    """Per-layer attention weights, each (N, heads, T, T); every row sums to 1.

    T is the token count the encoder sees ([CLS] first when the model pools with it).
    """
    module = _unwrap(model)
    if not hasattr(module, "blocks"):
        raise ValueError(f"attention_maps needs a TransformerClassifier, got {type(module).__name__}")
    x = as_inputs(module, X).to(_device_of(module))
    was_training = module.training
    module.eval()
    try:
        _, maps = module(x, return_attention=True)
    finally:
        module.train(was_training)
    return [m.detach() for m in maps]


def cls_attention(maps: list[torch.Tensor], grid: tuple[int, int], layer: int = -1) -> torch.Tensor:
    """How much [CLS] attends to each patch in one layer, averaged over heads: (N, gh, gw),
    renormalized over the patches (the [CLS]-to-[CLS] weight dropped)."""
    weights = maps[layer].mean(dim=1)[:, 0, 1:]
    if weights.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{weights.shape[1]} patches do not form a {grid[0]}x{grid[1]} grid")
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.reshape(-1, *grid)


# ---- PNG output -------------------------------------------------------------------------

def _figure(rows: int, cols: int, size: float = 1.6):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("writing PNGs needs matplotlib: pip install 'pydl[toolkit]' "
                          "(or pip install matplotlib)") from e
    fig = Figure(figsize=(cols * size, rows * size))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def save_saliency_png(images: torch.Tensor, maps: torch.Tensor, path, labels=None) -> Path:
    """Each image (top row) above its saliency map (bottom row)."""
    images, maps = images.detach().cpu(), maps.detach().cpu()
    n = images.shape[0]
    fig = _figure(2, n)
    for i in range(n):
        top, bottom = fig.add_subplot(2, n, i + 1), fig.add_subplot(2, n, n + i + 1)
        top.imshow(images[i].reshape(images.shape[-2:]).numpy(), cmap="gray_r")
        bottom.imshow(maps[i].numpy(), cmap="hot")
        if labels is not None:
            top.set_title(str(labels[i]), fontsize=9)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def save_attention_png(images: torch.Tensor, maps: list[torch.Tensor], grid: tuple[int, int],
                       path, labels=None) -> Path:
    """Per example: the image, the [CLS] attention over its patches (last layer) and the
    full last-layer attention matrix of head 0."""
    images = images.detach().cpu()
    cls_grid = cls_attention([m.cpu() for m in maps], grid)
    full = maps[-1][:, 0].cpu()
    n = images.shape[0]
    fig = _figure(3, n)
    for i in range(n):
        axes = [fig.add_subplot(3, n, r * n + i + 1) for r in range(3)]
        axes[0].imshow(images[i].reshape(images.shape[-2:]).numpy(), cmap="gray_r")
        axes[1].imshow(cls_grid[i].numpy(), cmap="viridis")
        axes[2].imshow(full[i].numpy(), cmap="viridis")
        if labels is not None:
            axes[0].set_title(str(labels[i]), fontsize=9)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def plot_histories(histories: dict, path, title: str = "") -> Path:
    """Loss and accuracy curves (train solid, validation dashed) of several fits."""
    fig = _figure(1, 2, size=3.2)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, h in histories.items():
        line = ax_loss.plot(h.epoch, h.loss, label=f"{name} train")[0]
        ax_acc.plot(h.epoch, h.accuracy, color=line.get_color(), label=f"{name} train")
        if h.val_loss:
            ax_loss.plot(h.epoch, h.val_loss, "--", color=line.get_color(), label=f"{name} val")
            ax_acc.plot(h.epoch, h.val_accuracy, "--", color=line.get_color(), label=f"{name} val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title=title or "loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend(fontsize=7)
    return _save(fig, path)


def plot_gradient_norms(histories: dict, path) -> Path:
    """Per-step total gradient norm of each run (log scale), and each run's per-layer norms
    in its last epoch: vanishing gradients show as layers far below the others."""
    fig = _figure(1, 2, size=3.6)
    ax_steps, ax_layers = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, h in histories.items():
        ax_steps.plot(range(1, len(h.step_grad_norm) + 1), h.step_grad_norm, label=name)
    ax_steps.set(xlabel="step", ylabel="gradient norm (before clipping)", yscale="log")
    ax_steps.legend(fontsize=7)
    runs = [(name, h.layer_grad_norms[-1]) for name, h in histories.items() if h.layer_grad_norms]
    if runs:
        names = list(runs[0][1])
        height = 0.8 / len(runs)
        for k, (run, norms) in enumerate(runs):
            ax_layers.barh([i + k * height for i in range(len(names))],
                           [norms.get(n, 0.0) for n in names], height=height, label=run)
        ax_layers.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names, fontsize=7)
        ax_layers.set(xscale="log", xlabel="mean gradient norm per layer, last epoch")
        ax_layers.legend(fontsize=7)
    return _save(fig, path)
