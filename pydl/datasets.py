"""A small real dataset with no download: the 8x8 handwritten digits shipped in scikit-learn.

1797 grey-level images of the digits 0-9 (UCI optdigits test set), pixel
values 0..16 scaled to [0, 1]. The same images come in the three forms the
toolkit's models read:
  * "images":    (N, 1, 8, 8) for the CNN;
  * "sequences": (N, 8, 8), one row of 8 pixels per time step, for the LSTM;
  * "patches":   (N, (8/p)^2, p*p) patch tokens in raster order, for the Transformer;
  * "flat":      (N, 64), for the NumPy MLP.
"""

from __future__ import annotations

import torch

FORMS = ("images", "sequences", "patches", "flat")


def _sklearn():
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as e:  # an optional extra: the kernel library does not need it
        raise ImportError("pydl.datasets needs scikit-learn: pip install 'pydl[toolkit]' "
                          "(or pip install scikit-learn)") from e
    return sklearn


def images_to_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, (H/p)*(W/p), C*p*p), patches in raster order (row by row)."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    p = patch_size
    if p < 1 or h % p or w % p:
        raise ValueError(f"patch_size {p} must divide the image size {h}x{w}")
    x = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def patches_to_images(patches: torch.Tensor, image_size: tuple[int, int], channels: int = 1
                      ) -> torch.Tensor:
    """The inverse of images_to_patches."""
    n, count, dim = patches.shape
    h, w = image_size
    p = round((dim / channels) ** 0.5)
    if p * p * channels != dim or (h // p) * (w // p) != count:
        raise ValueError(f"patches of shape {tuple(patches.shape)} do not tile a "
                         f"{channels}x{h}x{w} image")
    x = patches.reshape(n, h // p, w // p, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, channels, h, w)


def to_form(images: torch.Tensor, form: str, patch_size: int = 2) -> torch.Tensor:
    """Recast (N, 1, H, W) images into one of FORMS."""
    if form == "images":
        return images
    if form == "sequences":
        return images[:, 0]  # each row of the image is one time step
    if form == "patches":
        return images_to_patches(images, patch_size)
    if form == "flat":
        return images.reshape(images.shape[0], -1)
    raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")


def load_digits(form: str = "images", test_size: float = 0.25, seed: int = 0,
                patch_size: int = 2):
    """(X_train, X_test, y_train, y_test) as float32 / int64 tensors; a stratified split."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    sk = _sklearn()
    data = sk.datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    train_idx, test_idx = sk.model_selection.train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_size, random_state=seed,
        stratify=labels.numpy())
    X = to_form(images, form, patch_size)
    return X[train_idx], X[test_idx], labels[train_idx], labels[test_idx]
