"""Seeded stratified train/val/test splits and stratified k-fold cross-validation.

Small long-tailed data (MVTec AD transistor: 273 good vs 10 per defect type) are evaluated with
stratified k-fold cross-validation over repeated seeds, reporting mean ± std, and the model is never
selected on the test fold (DESIGN §3): carve a validation set out of each fold's train part with
:func:`train_val_split_within`.

Every function takes labels (1-D list, numpy array or integer tensor of non-negative class ids) or a
dataset with ``targets`` (or a ``Subset`` of one), and returns positions as sorted ``int64`` numpy
arrays, to be wrapped with ``dataset.subset(indices)`` or :class:`torch.utils.data.Subset`. Classes
are those that occur in the labels; a declared class without images is simply absent everywhere.

Per-class sizes are exact. A part that takes a fraction ``f`` of the data gets ``floor(f * n_c)`` or
``ceil(f * n_c)`` images of class ``c`` (largest-remainder rounding, so the part's total is
``round(f * N)``), except where a class must be raised to one image to appear in that part.
scikit-learn's ``train_test_split(stratify=...)`` is not used for the train/val/test split because
it sizes classes from ``ceil(f * N) * n_c / N`` and needs two nested calls for three parts, which
can miss these bounds (e.g. val_fraction 0.05 of 379 good images gave 20 instead of 18 or 19), and
it refuses test sets smaller than the number of classes. The k-fold splits are scikit-learn's
:class:`~sklearn.model_selection.StratifiedKFold`, whose per-fold class sizes are already exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from sklearn.model_selection import StratifiedKFold

from bcl._checks import is_int, is_real
from bcl.data.longtail import _check_seed, _class_label, _class_rng, _resolve_labels

__all__ = ["Fold", "stratified_split", "stratified_kfold", "train_val_split_within"]

logger = logging.getLogger(__name__)

# Mixed into the per-class seeds so these splits are unrelated to bcl.data.longtail's subsamples
# drawn with the same seed (see bcl.data.longtail.SALT_LONG_TAIL).
SALT_SPLIT = 3
SALT_WITHIN = 4

# Slack for floating-point products such as 0.1 * 30 = 3.0000000000000004 (must still floor to 3).
_EPS = 1e-9


@dataclass(frozen=True, eq=False, repr=False)
class Fold:
    """One train/test split of a (repeated) stratified k-fold cross-validation.

    Compared by identity (``==`` on index arrays would be element-wise); compare ``train_idx`` and
    ``test_idx`` with ``np.array_equal``.

    Attributes:
        fold: Index of the fold within its repeat, ``0 .. n_splits - 1``.
        repeat: Index of the repeat, ``0 .. repeats - 1``.
        seed: Seed of this repeat (``seed + repeat``): ``stratified_kfold(labels, n_splits, seed=fold.seed)``
            reproduces this repeat alone.
        train_idx: Sorted ``int64`` positions ``[N_train]`` (read-only).
        test_idx: Sorted ``int64`` positions ``[N_test]`` (read-only).
    """

    fold: int
    repeat: int
    seed: int
    train_idx: np.ndarray
    test_idx: np.ndarray

    def __repr__(self) -> str:
        return (
            f"Fold(fold={self.fold}, repeat={self.repeat}, seed={self.seed}, "
            f"train={self.train_idx.size}, test={self.test_idx.size})"
        )


def _frozen(indices: np.ndarray) -> np.ndarray:
    out = np.sort(np.asarray(indices, dtype=np.int64))
    out.setflags(write=False)  # a frozen Fold should not hide mutable index arrays
    return out


def _check_fraction(value: object, name: str) -> float:
    if not is_real(value) or not 0.0 <= float(value) < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _largest_remainder(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Integer part sizes ``floor`` or ``ceil`` of ``fraction * sizes`` summing to ``round(fraction * N)``.

    Extras go to the largest fractional parts; ties go to the larger class, then the smaller id, so the
    allocation is deterministic and independent of the seed.
    """
    quotas = fraction * sizes.astype(np.float64)
    floors = np.floor(quotas + _EPS).astype(np.int64)
    remainders = np.where(quotas - floors > _EPS, quotas - floors, 0.0)
    total = int(math.floor(fraction * float(sizes.sum()) + 0.5 + _EPS))
    extras = min(max(total - int(floors.sum()), 0), int(np.count_nonzero(remainders)))
    order = np.lexsort((np.arange(sizes.size), -sizes, -remainders))  # last key is the primary one
    result = floors.copy()
    result[order[:extras]] += 1
    return result


def _allocate(
    classes: np.ndarray,
    sizes: np.ndarray,
    fractions: Sequence[float],
    part_names: Sequence[str],
    names: Optional[Sequence[str]],
) -> List[np.ndarray]:
    """Per-class sizes of the held-out parts; the remainder of each class is the train part.

    Every class keeps at least one train image and gets at least one image in every part whose
    fraction is positive (a class missing from the test part has no recall, which breaks balanced
    accuracy; a class missing from validation cannot steer model selection).
    """
    required = 1 + sum(1 for f in fractions if f > 0)
    too_small = np.flatnonzero(sizes < required)
    if too_small.size:
        c = int(too_small[np.argmin(sizes[too_small])])
        wanted = ["train"] + [p for p, f in zip(part_names, fractions) if f > 0]
        raise ValueError(
            f"{_class_label(int(classes[c]), names)} has only {int(sizes[c])} image(s) but needs at least "
            f"{required}, one in each of {', '.join(wanted)}; lower or zero the held-out fractions or "
            f"drop the class"
        )
    parts = [
        np.maximum(_largest_remainder(sizes, f), 1) if f > 0 else np.zeros_like(sizes) for f in fractions
    ]
    # Raising tiny classes to 1 (or big fractions) can leave no train image: give back from the
    # largest held-out part that can spare one. ``required <= size`` guarantees this terminates.
    for c in range(sizes.size):
        while sizes[c] - sum(int(p[c]) for p in parts) < 1:
            donor = max(range(len(parts)), key=lambda j: int(parts[j][c]))
            parts[donor][c] -= 1
    return parts


def _split_positions(
    labels: np.ndarray,
    fractions: Sequence[float],
    part_names: Sequence[str],
    names: Optional[Sequence[str]],
    seed: int,
    salt: int,
) -> List[np.ndarray]:
    """Returns ``[train, *held_out_parts]`` as sorted int64 positions into ``labels``."""
    classes, sizes = np.unique(labels, return_counts=True)
    part_sizes = _allocate(classes, sizes, fractions, part_names, names)
    outputs: List[List[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c, class_id in enumerate(classes.tolist()):
        positions = np.flatnonzero(labels == class_id)
        shuffled = positions[_class_rng(seed, class_id, salt).permutation(positions.size)]
        start = 0
        for j, part in enumerate(part_sizes):
            outputs[j + 1].append(shuffled[start : start + int(part[c])])
            start += int(part[c])
        outputs[0].append(shuffled[start:])
    return [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in outputs]


def stratified_split(
    labels_or_dataset: Any, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified train/validation/test split with exact per-class sizes.

    Class ``c`` with ``n_c`` images gets ``floor`` or ``ceil`` of ``test_fraction * n_c`` test and of
    ``val_fraction * n_c`` validation images (each part's total is ``round(fraction * N)``); the rest
    is train. Every class keeps at least one train image and has at least one image in every part
    whose fraction is positive, raised from 0 if needed (and taken back from the held-out parts when
    they would leave no train image). Which images go where is a seeded shuffle per class.

    Args:
        labels_or_dataset: Labels ``[N]`` or a dataset with ``targets``.
        val_fraction: Fraction in ``[0, 1)`` for validation; 0 gives an empty validation set.
        test_fraction: Fraction in ``[0, 1)`` for test; 0 gives an empty test set.
        seed: Non-negative int; the same seed gives identical indices.

    Returns:
        ``(train_idx, val_idx, test_idx)``: disjoint sorted ``int64`` position arrays covering
        ``0 .. N-1``.

    Raises:
        ValueError: On bad labels or fractions (named in the message), fractions summing to 1 or more,
            or a class with too few images to appear in every required part (the message names the
            class and its size).

    Example:
        >>> labels = [0] * 273 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10   # MVTec transistor
        >>> train, val, test = stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
        >>> y = np.asarray(labels)
        >>> [np.bincount(y[part]).tolist() for part in (train, val, test)]
        [[191, 7, 7, 7, 7], [27, 1, 1, 1, 1], [55, 2, 2, 2, 2]]
    """
    labels, names = _resolve_labels(labels_or_dataset)
    val = _check_fraction(val_fraction, "val_fraction")
    test = _check_fraction(test_fraction, "test_fraction")
    if val + test >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave a train part, "
            f"got {val_fraction} + {test_fraction}"
        )
    seed = _check_seed(seed)
    train_idx, val_idx, test_idx = _split_positions(
        labels, (val, test), ("validation", "test"), names, seed, SALT_SPLIT
    )
    logger.debug("stratified_split: %d train, %d val, %d test", train_idx.size, val_idx.size, test_idx.size)
    return train_idx, val_idx, test_idx


def stratified_kfold(
    labels_or_dataset: Any, n_splits: int = 5, seed: int = 0, repeats: int = 1
) -> List[Fold]:
    """(Repeated) stratified k-fold cross-validation, built on scikit-learn's ``StratifiedKFold``.

    Within a repeat the test parts are disjoint and cover every sample exactly once; class ``c`` has
    ``floor(n_c / n_splits)`` or ``ceil(n_c / n_splits)`` images in each test part. Because
    ``n_splits`` may not exceed the smallest class, every class appears in every fold's test part and
    (with ``n_splits >= 2``) in every train part. Repeat ``r`` shuffles with ``random_state = seed + r``
    (recorded as :attr:`Fold.seed`), so repeats differ and each can be reproduced on its own.

    Args:
        labels_or_dataset: Labels ``[N]`` or a dataset with ``targets``.
        n_splits: Number of folds, an int in ``[2, smallest class size]``.
        seed: Non-negative int, the random state of repeat 0.
        repeats: Number of independent k-fold partitions, a positive int.

    Returns:
        ``repeats * n_splits`` :class:`Fold` objects, ordered by repeat then fold.

    Raises:
        ValueError: If ``n_splits < 2``, ``n_splits`` exceeds the smallest class (the message names
            that class and its size), or on bad labels, ``seed`` or ``repeats``.

    Example:
        >>> labels = [0] * 273 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10
        >>> folds = stratified_kfold(labels, n_splits=5, seed=0, repeats=2)
        >>> len(folds), folds[0]
        (10, Fold(fold=0, repeat=0, seed=0, train=250, test=63))
        >>> np.bincount(np.asarray(labels)[folds[0].test_idx]).tolist()
        [55, 2, 2, 2, 2]
    """
    labels, names = _resolve_labels(labels_or_dataset)
    if not is_int(n_splits) or n_splits < 2:
        raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}")
    seed = _check_seed(seed)
    if not is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if seed + repeats - 1 > 2**32 - 1:  # scikit-learn random states are uint32
        raise ValueError(f"seed + repeats - 1 must fit in 32 bits, got seed={seed}, repeats={repeats}")
    classes, sizes = np.unique(labels, return_counts=True)
    smallest = int(np.argmin(sizes))
    if n_splits > sizes[smallest]:
        # scikit-learn only warns here and then leaves the class out of some test folds.
        raise ValueError(
            f"n_splits={n_splits} is larger than the smallest class: "
            f"{_class_label(int(classes[smallest]), names)} has {int(sizes[smallest])} image(s); "
            f"use n_splits <= {int(sizes[smallest])}"
        )
    placeholder = np.zeros((labels.size, 1))  # StratifiedKFold only looks at y
    folds: List[Fold] = []
    for repeat in range(int(repeats)):
        repeat_seed = seed + repeat
        splitter = StratifiedKFold(n_splits=int(n_splits), shuffle=True, random_state=repeat_seed)
        for fold, (train_idx, test_idx) in enumerate(splitter.split(placeholder, labels)):
            folds.append(Fold(fold, repeat, repeat_seed, _frozen(train_idx), _frozen(test_idx)))
    return folds


def train_val_split_within(
    train_idx: Sequence[int], labels_or_dataset: Any, val_fraction: float = 0.1, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Carves a stratified validation set out of a fold's train part, for model selection.

    Same per-class rule as :func:`stratified_split`, applied to the classes of ``train_idx``: class
    ``c`` (with ``m_c`` images in the train part) gives ``floor`` or ``ceil`` of
    ``val_fraction * m_c`` images, at least 1 when ``val_fraction > 0``, and keeps at least 1.

    Args:
        train_idx: Positions ``[M]`` into ``labels_or_dataset`` (e.g. ``fold.train_idx``), distinct.
        labels_or_dataset: Labels ``[N]`` or a dataset with ``targets`` (the whole data set, not the
            fold).
        val_fraction: Fraction in ``[0, 1)`` of each class to move to validation.
        seed: Non-negative int.

    Returns:
        ``(train_idx, val_idx)``: disjoint sorted ``int64`` positions into ``labels_or_dataset``
        whose union is the given ``train_idx``.

    Raises:
        ValueError: If ``train_idx`` is empty, not 1-D integers, out of range or has duplicates, on a
            bad ``val_fraction`` or ``seed``, or if a class has too few images to keep one on each side.

    Example:
        >>> labels = [0] * 273 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10
        >>> fold = stratified_kfold(labels, n_splits=5, seed=0)[0]
        >>> train, val = train_val_split_within(fold.train_idx, labels, val_fraction=0.25, seed=0)
        >>> np.bincount(np.asarray(labels)[val]).tolist(), len(np.intersect1d(val, fold.test_idx))
        ([55, 2, 2, 2, 2], 0)
    """
    labels, names = _resolve_labels(labels_or_dataset)
    positions = np.asarray(train_idx)
    if positions.ndim != 1 or positions.size == 0 or positions.dtype.kind not in "iu":
        raise ValueError(
            f"train_idx must be a non-empty 1-D array of integer positions, "
            f"got shape {tuple(positions.shape)} and dtype {positions.dtype}"
        )
    positions = positions.astype(np.int64)
    if positions.min() < 0 or positions.max() >= labels.size:
        raise ValueError(
            f"train_idx must lie in [0, {labels.size}), got range [{positions.min()}, {positions.max()}]"
        )
    if np.unique(positions).size != positions.size:
        raise ValueError("train_idx must not contain duplicates")
    val = _check_fraction(val_fraction, "val_fraction")
    seed = _check_seed(seed)
    inner_train, inner_val = _split_positions(
        labels[positions], (val,), ("validation",), names, seed, SALT_WITHIN
    )
    return np.sort(positions[inner_train]), np.sort(positions[inner_val])
