"""Class counts, imbalance factors, long-tail profiles and seeded long-tail subsampling.

Every function takes either labels (a 1-D list, numpy array or integer tensor of non-negative class
ids) or a dataset: any object with a ``targets`` attribute (bcl datasets, torchvision datasets) or a
:class:`torch.utils.data.Subset` of one. Class names are read from ``class_names`` (bcl) or
``classes`` (torchvision) when present and are used in error messages.

Subsampling functions return positions into the labels/dataset as a sorted ``int64`` numpy array, to
be wrapped with ``dataset.subset(indices)`` or :class:`torch.utils.data.Subset`.

The long-tail profiles are those of CIFAR-10/100-LT (Cui et al., CVPR 2019; Cao et al., "LDAM",
NeurIPS 2019): with ``C`` classes, a head count ``n_max`` and an imbalance factor ``IF``,

- ``exp``:  ``n_i = floor(n_max * IF ** (-i / (C - 1)))``,
- ``step``: the first ``floor(C * step_fraction)`` classes keep ``n_max``, the rest get
  ``floor(n_max / IF)``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Subset

from bcl._checks import as_label_array, is_int, is_real

__all__ = [
    "class_counts",
    "imbalance_factor",
    "long_tail_profile",
    "long_tail_subsample",
    "fixed_ratio_subsample",
]

logger = logging.getLogger(__name__)

LabelsLike = Union[Sequence[int], np.ndarray, torch.Tensor]

PROFILE_KINDS = ("exp", "step")

# Salts mixed into every per-class seed so that two functions called with the same ``seed`` draw
# unrelated permutations (otherwise e.g. a long-tail subsample and a test split of the same labels
# would both take the first images of the same per-class shuffle and be strongly correlated).
SALT_LONG_TAIL = 1
SALT_FIXED_RATIO = 2


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by bcl.data.splits)
# --------------------------------------------------------------------------------------------------


def _check_seed(seed: object, name: str = "seed") -> int:
    if not is_int(seed) or seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    return int(seed)


def _class_rng(seed: int, class_id: int, salt: int) -> np.random.Generator:
    """A generator that depends only on ``(seed, class_id, salt)``.

    One stream per class makes a class's draw independent of which other classes exist or how many
    images they have, so e.g. changing the tail of a profile never reshuffles the head.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(class_id), int(salt)]))


def _dataset_class_names(dataset: Any) -> Optional[List[str]]:
    for attribute in ("class_names", "classes"):  # bcl, then torchvision
        names = getattr(dataset, attribute, None)
        if names is not None and not isinstance(names, (str, bytes)):
            try:
                return [str(n) for n in names]
            except TypeError:
                return None
    return None


def _resolve_labels(
    labels_or_dataset: Any, arg: str = "labels_or_dataset"
) -> Tuple[np.ndarray, Optional[List[str]]]:
    """Returns ``(labels [N] int64, class_names or None)`` for labels, a dataset or a Subset of one."""
    obj = labels_or_dataset
    if isinstance(obj, Subset):
        # Subsets (possibly nested) carry no ``targets``; read the parent's and index them.
        parent_labels, names = _resolve_labels(obj.dataset, arg)
        positions = np.asarray(obj.indices, dtype=np.int64).reshape(-1)
        if positions.size == 0:
            raise ValueError(f"{arg} must not be empty (the Subset has no indices)")
        return parent_labels[positions], names
    if isinstance(obj, (np.ndarray, torch.Tensor, list, tuple, range)):
        return as_label_array(obj, arg), None
    if hasattr(obj, "targets"):
        return as_label_array(obj.targets, f"{arg}.targets"), _dataset_class_names(obj)
    return as_label_array(obj, arg), None


def _class_label(class_id: int, class_names: Optional[Sequence[str]]) -> str:
    """``"class 3 ('scratch')"`` when names are known, ``"class 3"`` otherwise (for messages)."""
    if class_names is not None and 0 <= class_id < len(class_names):
        return f"class {class_id} ({class_names[class_id]!r})"
    return f"class {class_id}"


def _counts_from_labels(
    labels: np.ndarray, class_names: Optional[Sequence[str]], num_classes: Optional[int], arg: str
) -> np.ndarray:
    largest = int(labels.max())
    if num_classes is None:
        num_classes = len(class_names) if class_names else largest + 1
        if largest >= num_classes:
            raise ValueError(
                f"{arg} has label {largest} but the dataset declares only {num_classes} class names"
            )
    elif not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    elif largest >= num_classes:
        raise ValueError(f"num_classes={num_classes} is too small for {arg}: it contains label {largest}")
    return np.bincount(labels, minlength=int(num_classes)).astype(np.int64)


def _check_imbalance_factor(value: object) -> float:
    if not is_real(value) or not math.isfinite(float(value)) or float(value) < 1.0:
        raise ValueError(f"imbalance_factor must be a finite number >= 1, got {value!r}")
    return float(value)


def _check_kind(kind: object) -> str:
    if kind not in PROFILE_KINDS:
        raise ValueError(f"kind must be one of {PROFILE_KINDS}, got {kind!r}")
    return str(kind)


def _check_step_fraction(step_fraction: object) -> float:
    if not is_real(step_fraction) or not 0.0 <= float(step_fraction) <= 1.0:  # also rejects NaN
        raise ValueError(f"step_fraction must be a number in [0, 1], got {step_fraction!r}")
    return float(step_fraction)


def _profile_factors(num_classes: int, imbalance: float, kind: str, step_fraction: float) -> np.ndarray:
    """Multipliers ``r_i`` of the head count, so that class rank i gets ``floor(n_max * r_i)``."""
    # Written exactly like the reference CIFAR-LT code (``img_max * (1/IF) ** (i / (C - 1))``) so
    # that the standard benchmarks reproduce their published per-class counts to the image.
    inverse = 1.0 / imbalance
    if kind == "exp":
        if num_classes == 1:
            return np.ones(1)
        return np.array([inverse ** (i / (num_classes - 1.0)) for i in range(num_classes)])
    # The tiny tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 from losing a head class.
    num_head = int(math.floor(num_classes * step_fraction + 1e-9))
    factors = np.full(num_classes, inverse)
    factors[:num_head] = 1.0
    return factors


def _apply_factors(max_count: int, factors: np.ndarray) -> np.ndarray:
    # The relative tolerance only matters when the exact product is an integer that floating point
    # lands a hair below (it changes none of the standard CIFAR-10/100-LT counts).
    return np.floor(max_count * factors * (1.0 + 1e-12)).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def class_counts(labels_or_dataset: Any, num_classes: Optional[int] = None) -> np.ndarray:
    """Number of images of every class.

    Args:
        labels_or_dataset: Labels ``[N]`` (list, numpy array or integer tensor of non-negative class
            ids), or a dataset with ``targets`` (or a ``Subset`` of one).
        num_classes: Length of the result. Defaults to the number of class names of a dataset, or
            ``max(label) + 1`` for plain labels.

    Returns:
        ``int64`` array ``[num_classes]``; classes without images count 0.

    Raises:
        ValueError: If the labels are empty, not 1-D, not integers or negative, or ``num_classes`` is
            not a positive int larger than every label.

    Example:
        >>> class_counts([0, 0, 0, 2]).tolist()
        [3, 0, 1]
        >>> class_counts([0, 1, 1], num_classes=4).tolist()
        [1, 2, 0, 0]
    """
    labels, names = _resolve_labels(labels_or_dataset)
    return _counts_from_labels(labels, names, num_classes, "labels_or_dataset")


def imbalance_factor(
    labels_or_dataset: Any = None,
    *,
    counts: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
) -> float:
    """Largest class count divided by the smallest, ``max_c n_c / min_c n_c``.

    Give either labels/a dataset (positionally) or per-class ``counts`` (keyword only: a 1-D array of
    integers is ambiguous between labels and counts, so counts must be named).

    A class with no images makes the factor undefined (infinite); rather than return ``inf``, which
    silently poisons downstream arithmetic, this raises and names the empty class. Classes are all
    of ``0..num_classes-1`` (see :func:`class_counts`), so a gap in the label ids is an empty class.

    Args:
        labels_or_dataset: Labels ``[N]`` or a dataset with ``targets``.
        counts: Per-class image counts ``[C]`` instead of labels.
        num_classes: Number of classes when labels are given (see :func:`class_counts`).

    Returns:
        The imbalance factor, a float ``>= 1``.

    Raises:
        ValueError: If both or neither of ``labels_or_dataset`` and ``counts`` are given, the input
            is malformed, or a class has no images.

    Example:
        >>> imbalance_factor([0] * 273 + [1] * 10 + [2] * 10)
        27.3
        >>> imbalance_factor(counts=[5000, 2997, 50])
        100.0
    """
    if (labels_or_dataset is None) == (counts is None):
        raise ValueError("give exactly one of labels_or_dataset (positional) and counts (keyword)")
    names: Optional[List[str]] = None
    if counts is not None:
        if num_classes is not None:
            raise ValueError("num_classes only applies to labels_or_dataset, not to counts")
        count_array = np.asarray(counts.detach().cpu() if isinstance(counts, torch.Tensor) else counts)
        if count_array.ndim != 1 or count_array.size == 0:
            raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {tuple(count_array.shape)}")
        if count_array.dtype.kind not in "iu":
            raise ValueError(f"counts must hold integers, got dtype {count_array.dtype}")
        if count_array.min() < 0:
            raise ValueError(f"counts must be non-negative, got minimum {count_array.min()}")
        count_array = count_array.astype(np.int64)
    else:
        labels, names = _resolve_labels(labels_or_dataset)
        count_array = _counts_from_labels(labels, names, num_classes, "labels_or_dataset")
    empty = np.flatnonzero(count_array == 0)
    if empty.size:
        raise ValueError(
            f"{_class_label(int(empty[0]), names)} has no images, so the imbalance factor is undefined "
            f"(infinite); counts: {count_array.tolist()}"
        )
    return float(count_array.max()) / float(count_array.min())


def long_tail_profile(
    max_count: int, num_classes: int, imbalance_factor: float, kind: str = "exp", step_fraction: float = 0.5
) -> np.ndarray:
    """Per-class target counts of a CIFAR-LT style long-tailed profile, head class first.

    - ``kind="exp"``: ``n_i = floor(max_count * imbalance_factor ** (-i / (num_classes - 1)))``.
    - ``kind="step"``: the first ``floor(num_classes * step_fraction)`` classes keep ``max_count``,
      the others get ``floor(max_count / imbalance_factor)``.

    Args:
        max_count: Count of the head class (rank 0), a positive int.
        num_classes: Number of classes ``C``, a positive int.
        imbalance_factor: Head-to-tail ratio, a finite number ``>= 1``.
        kind: ``"exp"`` or ``"step"``.
        step_fraction: Fraction of head classes for ``kind="step"``, in ``[0, 1]``.

    Returns:
        ``int64`` array ``[C]``, non-increasing, ``result[0] == max_count`` (unless ``step_fraction``
        makes no head class).

    Raises:
        ValueError: On a bad argument (named in the message), or if a class would get 0 images.

    Example:
        >>> long_tail_profile(5000, 10, 100).tolist()
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        >>> long_tail_profile(5000, 10, 100, kind="step").tolist()
        [5000, 5000, 5000, 5000, 5000, 50, 50, 50, 50, 50]
        >>> int(long_tail_profile(500, 100, 100).sum())  # CIFAR-100-LT, IF = 100
        10847
    """
    if not is_int(max_count) or max_count < 1:
        raise ValueError(f"max_count must be a positive int, got {max_count!r}")
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    imbalance = _check_imbalance_factor(imbalance_factor)
    kind = _check_kind(kind)
    fraction = _check_step_fraction(step_fraction)
    profile = _apply_factors(int(max_count), _profile_factors(int(num_classes), imbalance, kind, fraction))
    if profile.min() < 1:
        raise ValueError(
            f"max_count={max_count} with imbalance_factor={imbalance_factor} gives class rank "
            f"{int(np.argmin(profile))} 0 images; use a larger max_count or a smaller imbalance_factor"
        )
    return profile


def _check_class_order(class_order: Optional[Sequence[int]], num_classes: int) -> np.ndarray:
    if class_order is None:
        return np.arange(num_classes, dtype=np.int64)
    order = np.asarray(class_order)
    if (
        order.ndim != 1
        or order.dtype.kind not in "iu"
        or order.size != num_classes
        or not np.array_equal(np.sort(order), np.arange(num_classes))
    ):
        raise ValueError(
            f"class_order must be a permutation of the {num_classes} class ids 0..{num_classes - 1}, "
            f"got {np.asarray(class_order).tolist()}"
        )
    return order.astype(np.int64)


def _take_per_class(
    labels: np.ndarray, targets_by_class: np.ndarray, seed: int, salt: int
) -> np.ndarray:
    """Seeded choice of ``targets_by_class[c]`` positions of every class c, returned sorted."""
    chosen = []
    for class_id, target in enumerate(targets_by_class.tolist()):
        if target == 0:
            continue
        positions = np.flatnonzero(labels == class_id)
        # A prefix of one fixed per-class permutation: with the same seed, a smaller target picks
        # a subset of a larger one, so e.g. IF=100 data is nested inside IF=10 data.
        chosen.append(positions[_class_rng(seed, class_id, salt).permutation(positions.size)[:target]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def long_tail_subsample(
    labels_or_dataset: Any,
    imbalance_factor: float,
    kind: str = "exp",
    seed: int = 0,
    class_order: Optional[Sequence[int]] = None,
    *,
    step_fraction: float = 0.5,
    max_count: Optional[int] = None,
) -> np.ndarray:
    """Seeded subsample whose class counts follow :func:`long_tail_profile` exactly.

    Class ``class_order[i]`` gets the profile's i-th count (default order: class 0 is the head, as in
    CIFAR-LT). The head count is:

    - ``max_count`` when given; then every class must hold at least its target, otherwise a
      ValueError names the class, what it has and what it needs;
    - otherwise the **largest head count every class can support**: the largest ``m <= n_head``
      with ``profile(m)[i] <= available[class_order[i]]`` for every i. On balanced data (CIFAR) this
      is the full class size; on already-imbalanced data the tightest class decides, e.g.
      ``(273, 10, 10, 10, 10)`` with IF=10 gives ``(19, 10, 6, 3, 1)``.

    Within a class the chosen images are a prefix of a permutation that depends only on
    ``(seed, class)``, so the result is reproducible and, for one seed, a stronger imbalance keeps a
    subset of the images of a weaker one. The images differ from the reference CIFAR-LT scripts'
    (a different random generator); the counts are identical.

    Args:
        labels_or_dataset: Labels ``[N]`` or a dataset with ``targets``.
        imbalance_factor: Head-to-tail ratio, finite and ``>= 1``.
        kind: ``"exp"`` or ``"step"``.
        seed: Non-negative int.
        class_order: Permutation of all class ids, head first. Pass
            ``np.argsort(-class_counts(labels), kind="stable")`` to rank classes by size.
        step_fraction: Fraction of head classes for ``kind="step"``.
        max_count: Head count; default: the largest that every class supports.

    Returns:
        Sorted ``int64`` positions ``[M]`` into ``labels_or_dataset``.

    Raises:
        ValueError: On a bad argument (named in the message), a class without images, a class with
            fewer images than its target, or a profile that would leave a class with 0 images.

    Example:
        >>> labels = np.repeat(np.arange(10), 100)                 # balanced, 100 per class
        >>> idx = long_tail_subsample(labels, imbalance_factor=10, seed=0)
        >>> class_counts(labels[idx]).tolist()
        [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
        >>> np.array_equal(idx, long_tail_subsample(labels, imbalance_factor=10, seed=0))
        True
    """
    labels, names = _resolve_labels(labels_or_dataset)
    imbalance = _check_imbalance_factor(imbalance_factor)
    kind = _check_kind(kind)
    fraction = _check_step_fraction(step_fraction)
    seed = _check_seed(seed)
    available = _counts_from_labels(labels, names, None, "labels_or_dataset")
    order = _check_class_order(class_order, available.size)
    empty = np.flatnonzero(available == 0)
    if empty.size:
        raise ValueError(
            f"labels_or_dataset: {_class_label(int(empty[0]), names)} has no images to subsample"
        )

    factors = _profile_factors(available.size, imbalance, kind, fraction)
    available_by_rank = available[order]
    if max_count is None:
        # floor(m * r_i) is non-decreasing in m, so the feasible head counts form a prefix [1, m*]:
        # binary-search its end. m = 1 is always feasible since every class has an image.
        # floor(m * r_i) <= a_i implies m < (a_i + 1) / r_i, which bounds the search from above.
        low, high = 1, max(1, int(np.min((available_by_rank + 1) / factors)))
        while low < high:
            middle = (low + high + 1) // 2
            if np.all(_apply_factors(middle, factors) <= available_by_rank):
                low = middle
            else:
                high = middle - 1
        head = low
    else:
        if not is_int(max_count) or max_count < 1:
            raise ValueError(f"max_count must be a positive int or None, got {max_count!r}")
        head = int(max_count)

    targets_by_rank = _apply_factors(head, factors)
    if targets_by_rank.min() < 1:
        rank = int(np.argmin(targets_by_rank))
        raise ValueError(
            f"imbalance_factor={imbalance_factor} is too large for these data: with head count {head} "
            f"{_class_label(int(order[rank]), names)} (rank {rank}) would get 0 images; class counts "
            f"{available.tolist()}"
        )
    short = np.flatnonzero(targets_by_rank > available_by_rank)
    if short.size:
        rank = int(short[0])
        raise ValueError(
            f"max_count={max_count} needs {int(targets_by_rank[rank])} images of "
            f"{_class_label(int(order[rank]), names)} but it has only {int(available_by_rank[rank])}"
        )
    targets = np.empty_like(targets_by_rank)
    targets[order] = targets_by_rank
    logger.debug("long_tail_subsample: head count %d, per-class counts %s", head, targets.tolist())
    return _take_per_class(labels, targets, seed, SALT_LONG_TAIL)


def fixed_ratio_subsample(labels_or_dataset: Any, ratios: Sequence[int], seed: int = 0) -> np.ndarray:
    """Seeded subsample with class counts in a fixed integer ratio, as large as the data allow.

    With ``n_unit = min over classes with ratio_c > 0 of floor(available_c / ratio_c)``, class ``c``
    gets ``ratio_c * n_unit`` images drawn at random. A ratio of 0 drops the class (it may then have
    no images at all). E.g. ratios ``[2, 1, 1, 1, 1]`` (good : each defect) on MVTec transistor
    counts ``(273, 10, 10, 10, 10)`` give ``(20, 10, 10, 10, 10)``.

    Args:
        labels_or_dataset: Labels ``[N]`` or a dataset with ``targets``.
        ratios: One non-negative integer per class (length = number of classes: the dataset's class
            names, or ``max(label) + 1``), not all zero.
        seed: Non-negative int.

    Returns:
        Sorted ``int64`` positions ``[M]`` into ``labels_or_dataset``.

    Raises:
        ValueError: If ``ratios`` has the wrong length, a negative or non-integer entry or is all
            zero, a class with a positive ratio has fewer images than its ratio, or on bad labels.

    Example:
        >>> labels = [0] * 273 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10
        >>> idx = fixed_ratio_subsample(labels, [2, 1, 1, 1, 1], seed=0)
        >>> class_counts(np.asarray(labels)[idx]).tolist()
        [20, 10, 10, 10, 10]
    """
    labels, names = _resolve_labels(labels_or_dataset)
    seed = _check_seed(seed)
    available = _counts_from_labels(labels, names, None, "labels_or_dataset")
    ratio_values = np.asarray(ratios.detach().cpu() if isinstance(ratios, torch.Tensor) else ratios)
    if ratio_values.ndim != 1 or ratio_values.size != available.size:
        raise ValueError(
            f"ratios must have one entry per class ({available.size}), got shape {tuple(ratio_values.shape)}"
        )
    is_float = ratio_values.dtype.kind == "f"
    if is_float and np.all(np.isfinite(ratio_values)) and np.all(ratio_values == np.round(ratio_values)):
        ratio_values = ratio_values.astype(np.int64)  # accept 2.0 for 2, but never 1.5
    if ratio_values.dtype.kind not in "iu":
        raise ValueError(
            f"ratios must be non-negative integers (scale 1.5:1 to 3:2), got {ratio_values.tolist()}"
        )
    if ratio_values.min() < 0:
        raise ValueError(f"ratios must be non-negative, got {ratio_values.tolist()}")
    if not ratio_values.any():
        raise ValueError("ratios must not be all zero")
    ratio_values = ratio_values.astype(np.int64)

    used = np.flatnonzero(ratio_values > 0)
    units = available[used] // ratio_values[used]
    n_unit = int(units.min())
    if n_unit == 0:
        limiting = int(used[np.argmin(units)])
        raise ValueError(
            f"ratios: {_class_label(limiting, names)} has {int(available[limiting])} images, fewer than its "
            f"ratio {int(ratio_values[limiting])}"
        )
    targets = ratio_values * n_unit
    logger.debug("fixed_ratio_subsample: %d units, per-class counts %s", n_unit, targets.tolist())
    return _take_per_class(labels, targets, seed, SALT_FIXED_RATIO)
