"""Data augmentation for images, sequences and patch tokens: more data from the data you have.

Each augmenter is a callable ``aug(batch, generator) -> batch`` for fit(augment=...),
draws all its randomness from the given torch.Generator (so a seed reproduces it
exactly), and can be switched off with ``enabled=False``. Random numbers are drawn
on the CPU and moved to the batch's device, so the same seed gives the same batch
everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pydl.datasets import images_to_patches, patches_to_images


def _randint(n, bound, generator):
    """n ints uniform in [-bound, bound]."""
    return torch.randint(-bound, bound + 1, (n,), generator=generator)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image (N, C, H, W) by its own (dy, dx) pixels, filling with zeros.

    out[n, :, i, j] = x[n, :, i - dy[n], j - dx[n]]; equivalently a random crop of the
    zero-padded image.
    """
    n, _, h, w = x.shape
    sy, sx = int(dy.abs().max()), int(dx.abs().max())
    padded = F.pad(x, (sx, sx, sy, sy))
    dy, dx = dy.to(x.device), dx.to(x.device)
    rows = (sy - dy)[:, None] + torch.arange(h, device=x.device)
    cols = (sx - dx)[:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _check_nonneg(where, **values):
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{where}: {name} must be >= 0, got {value}")


class ImageAugment:
    """Random shifts (crops of the padded image) by up to ``shift`` pixels, optional
    horizontal flips (off by default: a mirrored digit is not a digit), Gaussian noise."""

    def __init__(self, shift: int = 1, flip: bool = False, noise: float = 0.0,
                 enabled: bool = True):
        _check_nonneg("ImageAugment", shift=shift, noise=noise)
        self.shift, self.flip, self.noise, self.enabled = int(shift), flip, float(noise), enabled

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ImageAugment: expected images (N, C, H, W), got {tuple(x.shape)}")
        if not self.enabled:
            return x
        n = x.shape[0]
        if self.shift:
            x = translate(x, _randint(n, self.shift, generator), _randint(n, self.shift, generator))
        if self.flip:
            mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x


class SequenceAugment:
    """For (N, L, F) sequences: shifts in time (and, for rows of an image, along the
    features) by up to ``time_shift`` / ``feature_shift`` steps, random amplitude
    scaling by 1 +- ``scale``, masking a random span of up to ``time_mask`` steps, noise."""

    def __init__(self, time_shift: int = 1, feature_shift: int = 0, scale: float = 0.0,
                 time_mask: int = 0, noise: float = 0.0, enabled: bool = True):
        _check_nonneg("SequenceAugment", time_shift=time_shift, feature_shift=feature_shift,
                      scale=scale, time_mask=time_mask, noise=noise)
        self.time_shift, self.feature_shift = int(time_shift), int(feature_shift)
        self.scale, self.time_mask, self.noise = float(scale), int(time_mask), float(noise)
        self.enabled = enabled

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"SequenceAugment: expected sequences (N, L, F), got {tuple(x.shape)}")
        if not self.enabled:
            return x
        n, length, _ = x.shape
        if self.time_shift or self.feature_shift:
            x = translate(x[:, None], _randint(n, self.time_shift, generator),
                          _randint(n, self.feature_shift, generator))[:, 0]
        if self.scale:
            factor = 1 + self.scale * (2 * torch.rand(n, generator=generator) - 1)
            x = x * factor.to(x.device, x.dtype)[:, None, None]
        if self.time_mask:
            span = torch.randint(0, self.time_mask + 1, (n,), generator=generator)
            first = (torch.rand(n, generator=generator) * (length - span + 1)).long()
            t = torch.arange(length)
            masked = (t[None] >= first[:, None]) & (t[None] < (first + span)[:, None])
            x = x.masked_fill(masked.to(x.device)[:, :, None], 0.0)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x


class PatchAugment:
    """Augments patch tokens as the images they tile: patches -> image -> ImageAugment -> patches."""

    def __init__(self, image_size=(8, 8), channels: int = 1, image_augment: ImageAugment | None = None,
                 enabled: bool = True):
        self.image_size, self.channels = tuple(image_size), channels
        self.image_augment = image_augment or ImageAugment()
        self.enabled = enabled

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"PatchAugment: expected patch tokens (N, L, D), got {tuple(x.shape)}")
        if not self.enabled:
            return x
        images = patches_to_images(x, self.image_size, self.channels)
        patch = round((x.shape[2] / self.channels) ** 0.5)
        return images_to_patches(self.image_augment(images, generator), patch)
