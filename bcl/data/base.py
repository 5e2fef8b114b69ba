"""The surface every bcl image-classification dataset shares.

A dataset holds its images decoded once, at the working resolution, as uint8 ``[3, H, W]`` tensors
in memory; ``ds[i]`` only applies the (optional) transform, so an epoch never decodes a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["Sample", "ImageClassificationDataset"]


@dataclass(frozen=True)
class Sample:
    """One row of a dataset's parsed table.

    Attributes:
        path: Source image file (or a synthetic identifier such as ``"synthetic://good/0003"``).
        split: Where the image came from in the source layout (``"train"`` or ``"test"`` for MVTec AD,
            ``"synthetic"`` for generated images). Not a training split: bcl pools and re-splits.
        class_name: Class of the image (``"good"`` or a defect type).
        class_index: Index of ``class_name`` in the dataset's ``class_names``.
        mask_path: Ground-truth defect mask file, or None (good images, synthetic data).
    """

    path: str
    split: str
    class_name: str
    class_index: int
    mask_path: Optional[str] = None


class ImageClassificationDataset(Dataset):
    """Images decoded once into memory, with labels, class names and the parsed sample table.

    Subclasses fill ``class_names``, ``samples`` and ``images`` (one uint8 ``[3, H, W]`` tensor per
    sample, in the order of ``samples``) and call ``super().__init__``.

    Args:
        class_names: Class names, ``"good"`` first.
        samples: The parsed table, one :class:`Sample` per image.
        images: Decoded images, uint8 ``[3, H, W]``, aligned with ``samples``.
        transform: Optional callable applied to the image in ``__getitem__`` (e.g. a
            :class:`~bcl.data.MultiViewTransform`).

    Attributes:
        targets: ``list[int]``, the class index of every image (what samplers and splitters read).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        samples: Sequence[Sample],
        images: Sequence[torch.Tensor],
        transform: Optional[Callable] = None,
    ) -> None:
        if len(samples) != len(images):
            raise ValueError(f"{len(samples)} samples but {len(images)} images; they must be aligned")
        self.class_names: List[str] = list(class_names)
        self.samples: List[Sample] = list(samples)
        self.images: List[torch.Tensor] = list(images)
        self.targets: List[int] = [s.class_index for s in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[object, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def subset(self, indices: Sequence[int]) -> "ImageClassificationDataset":
        """A view on some of the images (shared, not copied), keeping labels, class names and transform.

        Args:
            indices: Positions into this dataset.
        """
        indices = [int(i) for i in indices]
        for i in indices:
            if not -len(self) <= i < len(self):
                raise IndexError(f"subset index {i} is out of range for a dataset of {len(self)} images")
        return ImageClassificationDataset(
            self.class_names, [self.samples[i] for i in indices], [self.images[i] for i in indices], self.transform
        )
