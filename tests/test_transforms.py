"""Training views, evaluation transform, multi-view stacking and reproducibility through DataLoader workers."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DataLoader

from bcl.choices import NORMALIZATIONS
from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiViewTransform,
    bcl_train_transform,
    classifier_view,
    contrastive_view,
    eval_transform,
    seed_worker,
)


def tiny_dataset(n=12, size=40, transform=None):
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator) for _ in range(n)]
    samples = [Sample(f"mem://{i}", "synthetic", "good" if i % 3 else "defect", int(i % 3 == 0)) for i in range(n)]
    return ImageClassificationDataset(["good", "defect"], samples, images, transform)


def collect(loader):
    return [(images.clone(), targets.clone()) for images, targets in loader]


def test_views_give_normalised_float_images_of_the_requested_size():
    image = torch.randint(0, 256, (3, 50, 50), dtype=torch.uint8)
    views = (classifier_view(32), contrastive_view(32), contrastive_view(32, randaugment=True), eval_transform(32))
    for transform in views:
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    white = eval_transform(16)(torch.full((3, 16, 16), 255, dtype=torch.uint8))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(white[:, 0, 0], expected)


def test_named_normalisation_reaches_every_view():
    cifar_mean, cifar_std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    expected = (1 - cifar_mean) / cifar_std
    torch.testing.assert_close(eval_transform(32, "cifar10")(white)[:, 5, 5], expected)
    # A white image padded with black and flipped: the centre pixel is white whatever the crop offset.
    padded = classifier_view(32, augment="pad_crop", normalization="cifar10")(white)
    torch.testing.assert_close(padded[:, 16, 16], expected)
    contrastive = bcl_train_transform(32, augment="pad_crop", normalization="cifar10", contrastive_views=1)
    assert contrastive(white).shape == (2, 3, 32, 32)


def test_pad_crop_shifts_by_at_most_four_pixels_and_adds_nothing_else():
    torch.manual_seed(0)
    image = torch.arange(32 * 32, dtype=torch.int64).reshape(1, 32, 32).repeat(3, 1, 1)
    image = (image % 251).to(torch.uint8)
    view = classifier_view(32, augment="pad_crop", normalization="cifar10")
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    for _ in range(5):
        out = view(image)
        pixels = ((out * std[:, None, None] + mean[:, None, None]) * 255).round().to(torch.uint8)
        centre = pixels[0, 4:28, 4:28]  # never padding: a shifted (maybe mirrored) window of the original
        found = any(
            torch.equal(centre, candidate[0, 4 + dy:28 + dy, 4 + dx:28 + dx])
            for candidate in (image, image.flip(-1)) for dy in range(-4, 5) for dx in range(-4, 5)
        )
        assert found


def test_eval_transform_is_deterministic_and_training_views_are_not():
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    torch.testing.assert_close(eval_transform(32)(image), eval_transform(32)(image))
    view = contrastive_view(32)
    assert not torch.equal(view(image), view(image))


def test_bcl_views_batch_as_b_v_c_h_w():
    dataset = tiny_dataset(transform=bcl_train_transform(24))
    images, targets = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 3, 24, 24) and targets.shape == (4,)
    assert len(bcl_train_transform(24, contrastive_views=2, classifier_view_first=False)) == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_same_batches_through_dataloader_workers(num_workers):
    def run(seed):
        torch.manual_seed(seed)  # with num_workers=0 the views draw from the main process's RNG
        dataset = tiny_dataset(transform=bcl_train_transform(24))
        loader = DataLoader(
            dataset, batch_size=4, shuffle=True, num_workers=num_workers,
            worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed),
        )
        return collect(loader)

    first, again, other = run(7), run(7), run(8)
    for (a_images, a_targets), (b_images, b_targets) in zip(first, again):
        assert torch.equal(a_images, b_images) and torch.equal(a_targets, b_targets)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_subset_keeps_labels_names_and_transform():
    dataset = tiny_dataset(transform=eval_transform(16))
    part = dataset.subset([0, 3, 4])
    assert part.targets == [1, 1, 0] and part.class_names == ["good", "defect"]
    assert part[1][0].shape == (3, 16, 16) and part.images[0] is dataset.images[0]
    with pytest.raises(IndexError, match="subset index 12 is out of range for a dataset of 12 images"):
        dataset.subset([12])


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: classifier_view(4), "image_size must be an int >= 8"),
        (lambda: eval_transform(32.0), "image_size must be an int >= 8"),
        (lambda: contrastive_view(32, crop_scale=(0.0, 1.0)), "crop_scale"),
        (lambda: contrastive_view(32, crop_scale=(0.9, 0.5)), "crop_scale"),
        (lambda: contrastive_view(32, grayscale_p=1.5), "grayscale_p"),
        (lambda: contrastive_view(32, color_jitter=-1), "color_jitter"),
        (lambda: MultiViewTransform([]), "views must be a non-empty sequence"),
        (lambda: bcl_train_transform(32, contrastive_views=0), "contrastive_views must be an int >= 1"),
        (lambda: eval_transform(32, "cifar"),
             re.escape(f"normalization must be one of {list(NORMALIZATIONS)}, got 'cifar'")),
        (lambda: classifier_view(32, augment="padcrop"), "augment must be one of"),
    ],
)
def test_bad_settings(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_views_of_different_sizes_cannot_be_stacked():
    views = MultiViewTransform([eval_transform(16), eval_transform(24)])
    with pytest.raises(ValueError, match="same shape"):
        views(torch.zeros(3, 32, 32, dtype=torch.uint8))
