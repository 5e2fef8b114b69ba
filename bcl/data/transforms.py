"""Image pipelines (torchvision ``transforms.v2``): training views, evaluation, multi-view, seeding.

Datasets hold uint8 ``[3, H, W]`` tensors at the working resolution, so every transform here starts
from a tensor and ends with a normalised float32 tensor; nothing decodes a file.

BCL trains on three views of each image (paper §4): one *classifier view* for the logit-adjusted
cross-entropy and two *contrastive views* for the BCL term. :func:`bcl_train_transform` builds them.
"""

from __future__ import annotations

import random
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from torchvision.transforms import v2

from bcl._checks import is_int
from bcl.choices import AUGMENTS, NORMALIZATIONS

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiViewTransform",
    "classifier_view",
    "contrastive_view",
    "eval_transform",
    "bcl_train_transform",
    "seed_worker",
]

IMAGENET_MEAN, IMAGENET_STD = NORMALIZATIONS["imagenet"]

# Defects are small: a crop much under half the image often cuts the defect out and silently turns
# a defect image into a "good" one, so crops keep at least this share of the area by default.
DEFAULT_CROP_SCALE = (0.5, 1.0)


def _check_size(image_size: int) -> int:
    if not is_int(image_size) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 (pixels), got {image_size!r}")
    return image_size


def _check_crop_scale(crop_scale: Tuple[float, float]) -> Tuple[float, float]:
    low, high = crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {tuple(crop_scale)}")
    return float(low), float(high)


def _normalize(normalization: str) -> v2.Normalize:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    return v2.Normalize(*NORMALIZATIONS[normalization])


def _to_normalised_float(normalization: str) -> List[Callable]:
    return [v2.ToDtype(torch.float32, scale=True), _normalize(normalization)]


# Cutout (DeVries & Taylor 2017) for CIFAR is one 16 x 16 square: a quarter of a 32 px image's area.
CUTOUT_AREA = 0.25


def classifier_view(
    image_size: int, crop_scale: Tuple[float, float] = DEFAULT_CROP_SCALE, randaugment: bool = False,
    augment: str = "crop", normalization: str = "imagenet",
) -> v2.Compose:
    """The classifier (cross-entropy) view.

    ``augment="crop"``: random resized crop (``crop_scale``), horizontal flip, optional RandAugment.
    ``augment="pad_crop"``: the standard CIFAR view of He et al. and LDAM-DRW's cross-entropy runs — a 4 px
    zero-padded random crop and a horizontal flip. ``augment="autoaugment"``: that crop and flip, then
    AutoAugment with its CIFAR-10 policy (the classifier view of the public BCL-lineage CIFAR script,
    ConCutMix's ``uncutout`` view). ``augment="cifar"``: that, then Cutout of one square of a quarter of the
    area set to black (torchvision's ``RandomErasing`` with ``p=1``; unlike the original Cutout the square
    always lies wholly inside the image). ``crop_scale`` is not used by the CIFAR views.

    Args:
        image_size: Output side in pixels.
        crop_scale: Range of the crop's share of the image area.
        randaugment: Add ``RandAugment`` (the paper uses it on ImageNet-LT / iNaturalist).
        augment: One of ``bcl.choices.AUGMENTS``.
        normalization: The (mean, std) pair, by name (``bcl.choices.NORMALIZATIONS``).

    Returns:
        A transform: uint8 ``[3, H, W]`` → float32 ``[3, image_size, image_size]``, normalised.

    Example:
        >>> import torch
        >>> classifier_view(32)(torch.zeros(3, 40, 40, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {list(AUGMENTS)}, got {augment!r}")
    normalize = _normalize(normalization)
    if augment in ("pad_crop", "autoaugment", "cifar"):
        size = _check_size(image_size)
        steps: List[Callable] = [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
        if augment != "pad_crop":
            steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if augment == "cifar":
            steps.append(v2.RandomErasing(p=1.0, scale=(CUTOUT_AREA, CUTOUT_AREA), ratio=(1.0, 1.0), value=0.0))
        return v2.Compose(steps + [normalize])
    steps = [
        v2.RandomResizedCrop(_check_size(image_size), scale=_check_crop_scale(crop_scale), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if randaugment:
        steps.append(v2.RandAugment())
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), normalize])


def contrastive_view(
    image_size: int,
    crop_scale: Tuple[float, float] = DEFAULT_CROP_SCALE,
    color_jitter: float = 0.4,
    grayscale_p: float = 0.2,
    randaugment: bool = False,
    normalization: str = "imagenet",
) -> v2.Compose:
    """A SimCLR/SupCon-style contrastive view: crop, flip, colour jitter (p = 0.8), grayscale.

    Args:
        image_size: Output side in pixels.
        crop_scale: Range of the crop's share of the image area.
        color_jitter: Strength s of ``ColorJitter(s, s, s, s / 4)``; 0 turns it off.
        grayscale_p: Probability of converting to grayscale (kept 3-channel).
        randaugment: Add ``RandAugment`` after the colour steps.
        normalization: The (mean, std) pair, by name (``bcl.choices.NORMALIZATIONS``).

    Returns:
        A transform: uint8 ``[3, H, W]`` → float32 ``[3, image_size, image_size]``, normalised.

    Example:
        >>> import torch
        >>> contrastive_view(32)(torch.zeros(3, 64, 64, dtype=torch.uint8)).dtype
        torch.float32
    """
    if not 0 <= color_jitter:
        raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
    if not 0 <= grayscale_p <= 1:
        raise ValueError(f"grayscale_p must be a probability in [0, 1], got {grayscale_p}")
    steps: List[Callable] = [
        v2.RandomResizedCrop(_check_size(image_size), scale=_check_crop_scale(crop_scale), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if color_jitter > 0:
        jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(color_jitter / 4, 0.5))
        steps.append(v2.RandomApply([jitter], p=0.8))
    if grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=grayscale_p))
    if randaugment:
        steps.append(v2.RandAugment())
    return v2.Compose(steps + _to_normalised_float(normalization))


def eval_transform(image_size: int, normalization: str = "imagenet") -> v2.Compose:
    """Evaluation: resize to ``image_size`` (no crop, so a defect near the border is never cut off).

    Example:
        >>> import torch
        >>> eval_transform(32)(torch.zeros(3, 64, 64, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    size = _check_size(image_size)
    return v2.Compose([v2.Resize((size, size), antialias=True)] + _to_normalised_float(normalization))


class MultiViewTransform:
    """Applies one pipeline per view and stacks the results.

    With a DataLoader's default collation a batch then has shape ``[B, V, 3, H, W]``, which
    :class:`~bcl.models.BCLModel` takes as is and whose projections ``[B, V, D]`` go straight into
    :class:`~bcl.losses.BalancedSupCon`.

    Args:
        views: One transform per view (V ≥ 1), each mapping an image to a ``[3, H, W]`` tensor of the
            same shape as the others.

    Example:
        >>> import torch
        >>> views = MultiViewTransform([classifier_view(32), contrastive_view(32), contrastive_view(32)])
        >>> views(torch.zeros(3, 48, 48, dtype=torch.uint8)).shape
        torch.Size([3, 3, 32, 32])
    """

    def __init__(self, views: Sequence[Callable]) -> None:
        views = list(views)
        if not views or not all(callable(view) for view in views):
            raise ValueError(f"views must be a non-empty sequence of callables, got {views!r}")
        self.views = views

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Applies every view to ``image`` (``[3, H, W]``); returns the views stacked, ``[V, 3, h, w]``."""
        outputs = [view(image) for view in self.views]
        shapes = {tuple(out.shape) for out in outputs}
        if len(shapes) != 1:
            raise ValueError(f"every view must give the same shape to be stacked, got {sorted(shapes)}")
        return torch.stack(outputs)

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {view!r}".replace("\n", "\n  ") for i, view in enumerate(self.views))
        return f"MultiViewTransform(\n{inner}\n)"


def bcl_train_transform(
    image_size: int,
    contrastive_views: int = 2,
    classifier_view_first: bool = True,
    crop_scale: Tuple[float, float] = DEFAULT_CROP_SCALE,
    randaugment: bool = False,
    augment: str = "crop",
    normalization: str = "imagenet",
) -> MultiViewTransform:
    """The paper's training views: a classifier view followed by ``contrastive_views`` contrastive views.

    Args:
        image_size: Output side in pixels.
        contrastive_views: Number of contrastive views (≥ 1; the paper uses 2).
        classifier_view_first: Put the classifier view at index 0 (the joint objective reads the
            logits of view 0 and contrasts views 1..V−1). False gives contrastive views only
            (pure contrastive pre-training).
        crop_scale: Crop area range for every view.
        randaugment: Add RandAugment to every view.
        augment: The classifier view's recipe (see :func:`classifier_view`); the contrastive views are
            SimCLR-style either way, with ``crop_scale``.
        normalization: The (mean, std) pair of every view, by name (``bcl.choices.NORMALIZATIONS``).

    Example:
        >>> import torch
        >>> bcl_train_transform(32)(torch.zeros(3, 32, 32, dtype=torch.uint8)).shape
        torch.Size([3, 3, 32, 32])
    """
    if not is_int(contrastive_views) or contrastive_views < 1:
        raise ValueError(f"contrastive_views must be an int >= 1, got {contrastive_views!r}")
    views: List[Callable] = []
    if classifier_view_first:
        views.append(classifier_view(image_size, crop_scale, randaugment, augment, normalization))
    views += [contrastive_view(image_size, crop_scale, randaugment=randaugment, normalization=normalization)
              for _ in range(contrastive_views)]
    return MultiViewTransform(views)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seeds ``random`` and numpy from the worker's torch seed.

    torch already gives each worker a distinct seed derived from the loader's generator; libraries
    that draw from Python's or numpy's RNG would otherwise repeat the same numbers in every worker.
    The loader's generator itself (per run seed, rank and epoch) is made by :func:`bcl.engine.train_loader`.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
