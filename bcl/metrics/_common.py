"""What the classification and the kNN metrics share: argument checks, per-class recall, the AUROC.

Both report a balanced accuracy and a good-vs-defect AUROC, so both compute them here, the same way.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bcl._checks import as_label_array, is_int

__all__ = [
    "ArrayLike",
    "as_float_array",
    "auroc_or_none",
    "check_class_names",
    "check_finite",
    "check_index",
    "check_labels",
    "mean_or_none",
    "per_class_recall",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


def check_class_names(class_names: Any) -> List[str]:
    """``class_names`` as a list of ``C`` unique strings (they become JSON keys), or a ValueError."""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise ValueError(f"class_names must be a list of class-name strings, got {type(class_names).__name__}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names must not be empty")
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"class_names must all be strings (they become JSON keys), got {names!r}")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"class_names must be unique, {duplicates} appear more than once")
    return names


def check_index(value: Any, num_classes: int, arg: str) -> int:
    """``value`` as an int class index in ``[0, num_classes)``, or a ValueError naming ``arg``."""
    if not is_int(value) or not 0 <= int(value) < num_classes:
        raise ValueError(f"{arg} must be an int class index in [0, {num_classes}), got {value!r}")
    return int(value)


def check_labels(
    labels: Any, num_classes: int, arg: str, length: Optional[int] = None, length_of: str = ""
) -> np.ndarray:
    """``[N]`` int64 class ids in ``[0, num_classes)``; with ``length``, also ``N == length`` (of ``length_of``)."""
    array = as_label_array(labels, arg)
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{arg} must have one label per item of {length_of} ({length}), got {array.shape[0]}")
    if array.max() >= num_classes:
        raise ValueError(f"{arg} must lie in [0, {num_classes}) for {num_classes} classes, got maximum {array.max()}")
    return array


def as_float_array(values: Any, arg: str) -> np.ndarray:
    """Any float tensor or array-like as float64 numpy (bfloat16 has no numpy dtype, so cast in torch)."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.dtype.is_complex:
            raise ValueError(f"{arg} must hold real numbers, got a tensor of dtype {values.dtype}")
        return values.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(values)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{arg} must be a numeric array: {exc}") from exc
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{arg} must hold real numbers, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def check_finite(array: np.ndarray, arg: str) -> None:
    """A ValueError naming ``arg`` and the first bad index if ``array`` holds NaN or inf."""
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))
        raise ValueError(
            f"{arg} contains {len(bad)} non-finite values (NaN or inf), first at index {tuple(bad[0].tolist())}"
        )


def mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean of the values that are not None, or None if there are none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def per_class_recall(matrix: np.ndarray) -> List[Optional[float]]:
    """Recall per class from a ``[C, C]`` confusion matrix (rows = true); None for classes with no test items."""
    support = matrix.sum(axis=1)
    return [float(matrix[c, c] / support[c]) if support[c] > 0 else None for c in range(matrix.shape[0])]


def auroc_or_none(is_defect: np.ndarray, defect_scores: np.ndarray) -> Optional[float]:
    """AUROC of ``[N]`` scores for the ``[N]`` bool ``is_defect``; None unless both sides are present."""
    if is_defect.all() or not is_defect.any():
        return None  # AUROC needs both a good and a defect item
    return float(roc_auc_score(is_defect, defect_scores))
