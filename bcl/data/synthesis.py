"""Mask-guided defect synthesis: new tail images made from the training part's own defects.

MVTec AD (and the embedded :class:`~bcl.data.SyntheticTransistor`) ship a pixel mask for every defect
image, and their photos are aligned (a fixed camera), so a defect's masked pixels can be copied onto a
*good* image at the same place: ``new = where(mask, defect_image, good_image)``. The result keeps the
defect's class and position -- which is what makes ``misplaced`` a class -- on another good image's
board, lighting and noise. Only training images are ever used, on both sides of the paste; the caller
passes the training positions and nothing else is read.

Example:
    >>> import torch
    >>> from bcl.data import SyntheticTransistor
    >>> ds = SyntheticTransistor(counts=[4, 2, 0, 0, 0], image_size=32, seed=0)
    >>> pasted = paste_defects(ds, range(len(ds)), per_class=3, seed=0)
    >>> len(pasted), pasted.targets, pasted.samples[0].split
    (3, [1, 1, 1], 'pasted')
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from bcl._checks import is_int
from bcl.data.base import ImageClassificationDataset, Sample

__all__ = ["paste_defects", "PASTED"]

#: ``Sample.split`` of a synthesised image (its ``path`` names the good and the defect image it came from).
PASTED = "pasted"


def _mask(dataset: ImageClassificationDataset, position: int) -> Optional[torch.Tensor]:
    masks = getattr(dataset, "masks", None)
    if masks is None:
        return None
    mask = masks[position]
    return None if mask is None or not bool(mask.any()) else mask.bool()


def paste_defects(
    dataset: ImageClassificationDataset,
    train_positions: Sequence[int],
    per_class: int,
    seed: int,
    good_class: int = 0,
) -> ImageClassificationDataset:
    """``per_class`` new images for every defect class, pasted from training defects onto training good images.

    Image ``k`` of class ``c`` takes a defect image of ``c`` (a seeded cycle over the class's training
    images, so each is used about equally often) and a good image drawn at random (seeded) from the
    training part, and copies the defect's masked pixels onto the good image at the same place.

    Args:
        dataset: A dataset with ``masks`` (bool ``[H, W]`` per image, ``None`` or empty for good ones),
            e.g. :class:`~bcl.data.MVTecAD` or :class:`~bcl.data.SyntheticTransistor`.
        train_positions: Positions of the training part; nothing else is read.
        per_class: New images per defect class (int >= 1).
        seed: Int >= 0; the same seed gives the same images.
        good_class: Label of the defect-free class.

    Returns:
        A dataset of the new images only (``Sample.split == "pasted"``), with the masks they carry in
        ``masks`` and ``dataset``'s class names and transform.

    Raises:
        ValueError: ``per_class`` or ``seed`` out of range, a dataset without masks, no good training
            image, a defect class whose training images have no mask, or images and masks of
            different sizes (each named).
    """
    if not is_int(per_class) or per_class < 1:
        raise ValueError(f"per_class must be an int >= 1, got {per_class!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if getattr(dataset, "masks", None) is None:
        raise ValueError(f"{type(dataset).__name__} carries no defect masks, so defects cannot be pasted")
    positions = np.asarray(list(train_positions), dtype=np.int64)
    labels = np.asarray(dataset.targets)[positions]
    goods = positions[labels == good_class]
    if len(goods) == 0:
        raise ValueError(f"the training part has no {dataset.class_names[good_class]!r} image to paste defects onto")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0x9A57E,)))
    samples: List[Sample] = []
    images: List[torch.Tensor] = []
    masks: List[torch.Tensor] = []
    for label, name in enumerate(dataset.class_names):
        if label == good_class:
            continue
        found = {int(p): _mask(dataset, int(p)) for p in positions[labels == label]}
        source_masks = {p: mask for p, mask in found.items() if mask is not None}
        sources = list(source_masks)
        if not sources:
            if (labels == label).any():
                raise ValueError(f"class {name!r} has training images but none with a defect mask to paste")
            continue  # a class absent from the training part gets no pasted images either
        order: List[int] = []
        for k in range(per_class):
            if not order:
                order = list(rng.permutation(sources))
            source = int(order.pop())
            target = int(rng.choice(goods))
            mask, defect, good = source_masks[source], dataset.images[source], dataset.images[target]
            if defect.shape != good.shape or tuple(mask.shape) != tuple(good.shape[-2:]):
                raise ValueError(
                    f"cannot paste {dataset.samples[source].path} (image {tuple(defect.shape)}, mask "
                    f"{tuple(mask.shape)}) onto {dataset.samples[target].path} (image {tuple(good.shape)})"
                )
            images.append(torch.where(mask, defect, good))
            masks.append(mask)
            samples.append(Sample(f"pasted://{name}/{k:04d}?defect={dataset.samples[source].path}"
                                  f"&good={dataset.samples[target].path}", PASTED, name, label, None))
    pasted = ImageClassificationDataset(dataset.class_names, samples, images, dataset.transform)
    pasted.masks = masks
    return pasted
