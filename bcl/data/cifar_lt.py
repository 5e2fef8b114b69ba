"""CIFAR-10-LT and CIFAR-100-LT: torchvision's CIFAR with a long-tailed training split.

The training split is subsampled with :func:`bcl.data.longtail.long_tail_subsample` to the standard
exponential profile of Cui et al. (CVPR 2019) and Cao et al. ("LDAM", NeurIPS 2019): class ``i`` keeps
``floor(n_max * IF ** (-i / (C - 1)))`` images (``n_max`` = 5000 for CIFAR-10, 500 for CIFAR-100), so
e.g. CIFAR-10-LT with IF=100 has 12406 training images and CIFAR-100-LT 10847. The per-class counts
equal the reference scripts'; the chosen images differ (another random generator) but are fixed by
``seed``. The test split stays balanced (10000 images).

Images are held in memory as uint8 ``[3, 32, 32]`` tensors like every bcl dataset, so the bcl
transforms (which take uint8 tensors) apply unchanged and ``subset`` works.

Nothing is downloaded unless ``download=True`` is passed.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, List, Optional, Union

import numpy as np
import torch
import torchvision

from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.longtail import (
    _check_imbalance_factor,
    _check_kind,
    _check_seed,
    class_counts,
    long_tail_subsample,
)

__all__ = ["CIFAR10LT", "CIFAR100LT"]

logger = logging.getLogger(__name__)


class _CIFARLT(ImageClassificationDataset):
    """Shared implementation; subclasses name the torchvision class."""

    _torchvision_class: Any = None
    _display_name = ""
    _scheme = ""

    def __init__(
        self,
        root: Union[str, os.PathLike],
        imbalance_factor: float = 100,
        train: bool = True,
        download: bool = False,
        seed: int = 0,
        transform: Optional[Callable] = None,
        kind: str = "exp",
    ) -> None:
        # Checked up front so a bad argument fails before any file is read, whatever the split.
        imbalance = _check_imbalance_factor(imbalance_factor)
        kind = _check_kind(kind)
        seed = _check_seed(seed)
        root = os.fspath(root)
        folder = os.path.join(root, self._torchvision_class.base_folder)
        if not download and not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{self._display_name} not found: expected the extracted python version in {folder}. "
                f"Pass download=True to fetch it from {self._torchvision_class.url}, or extract "
                f"{self._torchvision_class.filename} into {root}"
            )
        try:
            base = self._torchvision_class(root, train=bool(train), download=bool(download))
        except RuntimeError as exc:  # torchvision's checksum check failed
            raise RuntimeError(
                f"{self._display_name} in {folder} is incomplete or corrupted ({exc}); "
                f"delete that folder and pass download=True to fetch a fresh copy"
            ) from exc

        labels = np.asarray(base.targets, dtype=np.int64)
        split = "train" if train else "test"
        if train:
            indices = long_tail_subsample(labels, imbalance, kind=kind, seed=seed)
        else:
            indices = np.arange(labels.size, dtype=np.int64)  # the test split stays balanced
        # One contiguous [M, 3, 32, 32] block; the per-image tensors are views into it.
        block = torch.from_numpy(np.ascontiguousarray(base.data[indices].transpose(0, 3, 1, 2)))
        class_names: List[str] = list(base.classes)
        samples = [
            Sample(
                path=f"{self._scheme}://{split}/{int(i):05d}",
                split=split,
                class_name=class_names[int(labels[i])],
                class_index=int(labels[i]),
            )
            for i in indices
        ]
        super().__init__(class_names, samples, list(block.unbind(0)), transform)
        self.train = bool(train)
        self.imbalance_factor = imbalance if train else 1.0
        #: Positions of the kept images in torchvision's split, ``int64 [M]``.
        self.source_indices = indices
        logger.debug(
            "%s %s: %d images, class counts %s", self._display_name, split, len(self), self.get_cls_num_list()
        )

    def get_cls_num_list(self) -> List[int]:
        """Images per class, the list LDAM/BCL-style code feeds to logit adjustment."""
        return class_counts(self.targets, num_classes=len(self.class_names)).tolist()


class CIFAR10LT(_CIFARLT):
    """CIFAR-10 with a long-tailed training split (CIFAR-10-LT).

    Args:
        root: Folder holding (or to receive) ``cifar-10-batches-py``.
        imbalance_factor: Head-to-tail ratio of the training split (finite, ``>= 1``; 1 keeps all
            50000 images). Ignored for the test split.
        train: Training (long-tailed) or test (balanced) split.
        download: Download CIFAR-10 if it is missing; never done otherwise.
        seed: Seed of the long-tail subsample.
        transform: Optional callable applied to the uint8 ``[3, 32, 32]`` image in ``__getitem__``.
        kind: Long-tail profile, ``"exp"`` (the standard) or ``"step"``.

    Attributes:
        targets: ``list[int]`` class of every kept image.
        class_names: The 10 CIFAR-10 class names.
        source_indices: Positions of the kept images in torchvision's split.

    Raises:
        FileNotFoundError: If the data are missing and ``download`` is False (the message says how to
            get them).
        RuntimeError: If the data folder exists but fails torchvision's checksum check.
        ValueError: On a bad ``imbalance_factor``, ``kind`` or ``seed``.

    Example:
        >>> CIFAR10LT("/nonexistent/cifar")
        Traceback (most recent call last):
        ...
        FileNotFoundError: CIFAR-10 not found: ... Pass download=True ...
    """

    _torchvision_class = torchvision.datasets.CIFAR10
    _display_name = "CIFAR-10"
    _scheme = "cifar10"


class CIFAR100LT(_CIFARLT):
    """CIFAR-100 with a long-tailed training split (CIFAR-100-LT, 100 fine classes).

    Args:
        root: Folder holding (or to receive) ``cifar-100-python``.
        imbalance_factor: Head-to-tail ratio of the training split (finite, ``>= 1``). Ignored for the
            test split.
        train: Training (long-tailed) or test (balanced) split.
        download: Download CIFAR-100 if it is missing; never done otherwise.
        seed: Seed of the long-tail subsample.
        transform: Optional callable applied to the uint8 ``[3, 32, 32]`` image in ``__getitem__``.
        kind: Long-tail profile, ``"exp"`` or ``"step"``.

    Raises:
        FileNotFoundError: If the data are missing and ``download`` is False.
        RuntimeError: If the data folder exists but fails torchvision's checksum check.
        ValueError: On a bad ``imbalance_factor``, ``kind`` or ``seed``.

    Example:
        >>> CIFAR100LT("/nonexistent/cifar", imbalance_factor=50)
        Traceback (most recent call last):
        ...
        FileNotFoundError: CIFAR-100 not found: ... Pass download=True ...
    """

    _torchvision_class = torchvision.datasets.CIFAR100
    _display_name = "CIFAR-100"
    _scheme = "cifar100"
