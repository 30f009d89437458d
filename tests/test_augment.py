"""pydl.models.augment and pydl.datasets: determinism under a seed, what each transform does."""

import pytest
import torch
from toolkit_helpers import digits_fixture, one_thread_fixture  # noqa: F401

from pydl.datasets import images_to_patches, patches_to_images, to_form
from pydl.models import ImageAugment, PatchAugment, SequenceAugment
from pydl.models.augment import translate


def _images(n=6, c=1, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("aug,x", [
    (ImageAugment(shift=2, flip=True, noise=0.1), _images()),
    (SequenceAugment(time_shift=2, feature_shift=1, scale=0.2, time_mask=3, noise=0.1),
     _images()[:, 0]),
    (PatchAugment(image_augment=ImageAugment(shift=1, noise=0.05)), images_to_patches(_images(), 2)),
])
def test_augmentation_is_deterministic_under_a_seed(aug, x):
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    aug.enabled = False
    assert aug(x, torch.Generator().manual_seed(7)) is x  # switched off: untouched


def test_translate_moves_pixels_and_fills_zeros():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5) + 1
    out = translate(x, torch.tensor([1, -2]), torch.tensor([0, 1]))
    # sample 0: down by one row
    assert torch.equal(out[0, 0, 1:], x[0, 0, :-1]) and torch.all(out[0, 0, 0] == 0)
    # sample 1: up by two rows, right by one column
    assert torch.equal(out[1, 0, :2, 1:], x[1, 0, 2:, :-1])
    assert torch.all(out[1, 0, 2:] == 0) and torch.all(out[1, 0, :, 0] == 0)


def test_image_flip_and_noise():
    x = _images(n=200)
    flipped = ImageAugment(shift=0, flip=True)(x, torch.Generator().manual_seed(0))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored) and 60 < mirrored.sum() < 140
    noisy = ImageAugment(shift=0, noise=0.2)(x, torch.Generator().manual_seed(0))
    assert (noisy - x).std().item() == pytest.approx(0.2, rel=0.05)


def test_sequence_time_mask_and_scale():
    x = torch.ones(50, 10, 3)
    masked = SequenceAugment(time_shift=0, time_mask=4)(x, torch.Generator().manual_seed(0))
    zero_steps = (masked == 0).all(-1).sum(1)
    assert zero_steps.max() <= 4 and zero_steps.sum() > 0
    scaled = SequenceAugment(time_shift=0, scale=0.3)(x, torch.Generator().manual_seed(0))
    factors = scaled[:, 0, 0]
    assert torch.all((factors >= 0.7) & (factors <= 1.3)) and factors.std() > 0.05
    assert torch.equal(scaled, factors[:, None, None].expand_as(scaled))


def test_patch_augment_is_image_augment_on_the_tiled_image():
    images = _images()
    image_aug = ImageAugment(shift=1, noise=0.05)
    via_patches = PatchAugment((8, 8), image_augment=image_aug)(
        images_to_patches(images, 2), torch.Generator().manual_seed(3))
    direct = image_aug(images, torch.Generator().manual_seed(3))
    assert torch.equal(via_patches, images_to_patches(direct, 2))


def test_patches_round_trip_and_order():
    images = _images(c=3)
    patches = images_to_patches(images, 4)
    assert patches.shape == (6, 4, 48)
    # second patch in raster order: rows 0-3, columns 4-7
    assert torch.equal(patches[:, 1].reshape(6, 3, 4, 4), images[:, :, :4, 4:])
    assert torch.equal(patches_to_images(patches, (8, 8), channels=3), images)
    with pytest.raises(ValueError, match="patch_size 3 must divide"):
        images_to_patches(images, 3)
    with pytest.raises(ValueError, match="unknown form"):
        to_form(images, "graphs")


def test_bad_augment_arguments():
    with pytest.raises(ValueError, match="shift must be >= 0"):
        ImageAugment(shift=-1)
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\)"):
        ImageAugment()(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"expected sequences \(N, L, F\)"):
        SequenceAugment()(torch.zeros(3, 8))


def test_digits_forms(digits):
    X_img, X_img_test, y, _ = digits["images"]
    assert X_img.shape[1:] == (1, 8, 8) and len(X_img) + len(X_img_test) == 1797
    assert X_img.dtype == torch.float32 and 0 <= X_img.min() and X_img.max() <= 1
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    X_seq, X_patch = digits["sequences"][0], digits["patches"][0]
    assert torch.equal(X_seq, X_img[:, 0])  # rows as time steps, the same split
    assert X_patch.shape[1:] == (16, 4)
    assert torch.equal(patches_to_images(X_patch, (8, 8)), X_img)
    assert torch.equal(digits["sequences"][2], y)
