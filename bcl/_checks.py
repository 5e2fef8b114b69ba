"""Argument checks shared across bcl (one home, so every module words its errors the same way)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

__all__ = ["InvalidLabelsError", "is_int", "is_real", "as_label_array"]


class InvalidLabelsError(ValueError, TypeError):
    """Labels that are not integer class ids: a wrong value and a wrong type at once, so both catch it."""


def is_int(value: object) -> bool:
    """True for Python and numpy integers, but not bools (True as a count or seed is almost always a bug)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: object) -> bool:
    """True for Python and numpy real numbers, but not bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def as_label_array(labels: Any, arg: str = "labels") -> np.ndarray:
    """Validates class labels and returns them as a 1-D int64 numpy array.

    Args:
        labels: A list, tuple, range, numpy array or integer tensor of non-negative class ids.
        arg: The argument's name, used in error messages.

    Raises:
        InvalidLabelsError: Labels that are not integers (floats, bools, strings).
        ValueError: Empty, not 1-D, ragged or negative labels.

    Example:
        >>> as_label_array(torch.tensor([2, 0, 1], dtype=torch.int32)).tolist()
        [2, 0, 1]
    """
    if isinstance(labels, torch.Tensor):
        # Checked on the torch side because some dtypes (bfloat16) have no numpy equivalent.
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise InvalidLabelsError(f"{arg} must hold integer class ids, got a tensor of dtype {labels.dtype}")
        array = labels.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(labels)
        except ValueError as exc:  # ragged nested sequences
            raise ValueError(f"{arg} must be a 1-D sequence of integer class ids: {exc}") from exc
    if array.ndim != 1:
        raise ValueError(f"{arg} must be 1-D (one class id per item), got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{arg} must not be empty")
    if array.dtype.kind not in "iu":
        raise InvalidLabelsError(f"{arg} must hold integer class ids, got dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"{arg} must be non-negative class ids, got minimum {array.min()}")
    return array.astype(np.int64, copy=False)
