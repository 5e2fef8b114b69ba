"""Classification metrics for long-tailed data and the good-vs-defect AUROC from class scores.

:func:`classification_metrics` gives balanced accuracy (the headline: the mean recall of the classes
present in the test set), accuracy, macro-F1, per-class recall and support, the confusion matrix,
many/medium/few-shot and head/tail accuracy, and good-vs-defect AUROC from class probabilities.
:func:`good_vs_defect_auroc` is the AUROC on its own, for any defect score.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import f1_score

from bcl._checks import as_label_array, is_int
from bcl.metrics._common import (
    ArrayLike,
    as_float_array,
    auroc_or_none,
    check_class_names,
    check_finite,
    check_index,
    check_labels,
    mean_or_none,
    per_class_recall,
)

__all__ = [
    "MANY_SHOT_MIN",
    "FEW_SHOT_MAX",
    "GOOD_CLASS",
    "GOOD_CLASS_METRICS",
    "classification_metrics",
    "good_vs_defect_auroc",
]

#: A class is many-shot with more than this many training images (the convention of Liu et al. 2019).
MANY_SHOT_MIN = 100
#: A class is few-shot with fewer than this many training images; medium-shot is 20..100 inclusive.
FEW_SHOT_MAX = 20

#: The class that the good-vs-defect metrics (and ``head_accuracy`` / ``tail_accuracy``) take as class 0.
GOOD_CLASS = "good"
#: The metrics (of this module and of :mod:`bcl.metrics.knn`) that only mean something with a good class.
GOOD_CLASS_METRICS: Tuple[str, ...] = (
    "head_accuracy",
    "tail_accuracy",
    "good_vs_defect_auroc",
    "knn_good_vs_defect_auroc",
)

# Class probabilities may come from a half-precision softmax; each rounding error is below 1e-3, so
# 1e-2 tolerates them while still rejecting logits (which are almost never all in [0, 1] summing to 1).
_PROBABILITY_ATOL = 1e-2


def _json_float(value: Any) -> Optional[float]:
    """A plain float, or None for NaN / None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def good_vs_defect_auroc(y_true: ArrayLike, defect_scores: ArrayLike, good_index: int = 0) -> Optional[float]:
    """AUROC of a defect score for telling defective items (any class but ``good_index``) from good ones.

    Args:
        y_true: ``[N]`` non-negative integer class ids.
        defect_scores: ``[N]`` real scores, higher meaning "more likely defective" (for example
            ``1 - p_good`` or a kNN anomaly score).
        good_index: The class id of the good (non-defective) class; every other class is a defect.

    Returns:
        The AUROC in ``[0, 1]`` (0.5 is chance; ties count half), or ``None`` when ``y_true`` holds
        only good or only defective items, where the AUROC is undefined.

    Raises:
        ValueError: Bad labels, ``defect_scores`` not ``[N]`` or not finite, ``good_index`` not a
            non-negative int.

    Example:
        >>> good_vs_defect_auroc([0, 0, 1, 2], [0.1, 0.4, 0.35, 0.8])  # one good item outranks a defect
        0.75
        >>> good_vs_defect_auroc([0, 0], [0.1, 0.4]) is None
        True
    """
    labels = as_label_array(y_true, "y_true")
    if not is_int(good_index) or good_index < 0:
        raise ValueError(f"good_index must be a non-negative int class index, got {good_index!r}")
    scores = as_float_array(defect_scores, "defect_scores")
    if scores.shape != labels.shape:
        raise ValueError(
            f"defect_scores must have shape [N] = [{labels.shape[0]}] to match y_true, got {tuple(scores.shape)}"
        )
    check_finite(scores, "defect_scores")
    return auroc_or_none(labels != good_index, scores)


def _check_probabilities(scores: Any, num_items: int, num_classes: int) -> np.ndarray:
    probabilities = as_float_array(scores, "scores")
    if probabilities.shape != (num_items, num_classes):
        raise ValueError(
            f"scores must be class probabilities of shape [N, C] = [{num_items}, {num_classes}], "
            f"got {tuple(probabilities.shape)}"
        )
    check_finite(probabilities, "scores")
    row_sums = probabilities.sum(axis=1)
    if probabilities.min() < -_PROBABILITY_ATOL or probabilities.max() > 1 + _PROBABILITY_ATOL or not np.allclose(
        row_sums, 1.0, rtol=0.0, atol=_PROBABILITY_ATOL
    ):
        raise ValueError(
            "scores must be class probabilities (each row in [0, 1], summing to 1); these look like logits "
            f"(values in [{probabilities.min():.3g}, {probabilities.max():.3g}], row sums in "
            f"[{row_sums.min():.3g}, {row_sums.max():.3g}]): pass scores.softmax(dim=1)"
        )
    return probabilities


def _check_train_counts(train_counts: Any, num_classes: int) -> np.ndarray:
    if isinstance(train_counts, torch.Tensor):
        train_counts = train_counts.detach().cpu().numpy()
    try:
        counts = np.asarray(train_counts)
    except ValueError as exc:
        raise ValueError(f"train_counts must be a 1-D sequence of per-class image counts: {exc}") from exc
    if counts.shape != (num_classes,):
        raise ValueError(
            f"train_counts must have one count per class, shape [{num_classes}], got {tuple(counts.shape)}"
        )
    if counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"train_counts must be non-negative integer image counts, got {counts.tolist()}")
    return counts.astype(np.int64)


def classification_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    class_names: Sequence[str],
    train_counts: Optional[ArrayLike] = None,
    scores: Optional[ArrayLike] = None,
    good_index: int = 0,
) -> Dict[str, Any]:
    """Classification metrics for long-tailed data, as a JSON-serialisable dictionary.

    Recall-based metrics average only over classes that have test items (a class absent from
    ``y_true`` has no recall); macro-F1 averages over *all* ``C`` classes with sklearn's
    ``zero_division=0``, so a class that is neither present nor predicted scores F1 = 0 and pulls
    the mean down, and a class that is present but never predicted also scores 0.

    Args:
        y_true: ``[N]`` true class ids in ``[0, C)`` (list, numpy array or integer tensor).
        y_pred: ``[N]`` predicted class ids in ``[0, C)``.
        class_names: ``C`` unique class-name strings; their order defines the class ids.
        train_counts: Optional ``[C]`` training images per class. Adds the shot groups: many
            (``> 100`` images), medium (20 to 100) and few (``< 20``).
        scores: Optional ``[N, C]`` class *probabilities* (rows in ``[0, 1]`` summing to 1; apply
            softmax to logits first). Adds ``good_vs_defect_auroc`` with defect score
            ``1 - scores[:, good_index]``.
        good_index: The class id of the good / head class in ``[0, C)``, used by ``head_accuracy``,
            ``tail_accuracy`` and the AUROC.

    Returns:
        A dictionary with

        * ``balanced_accuracy``: mean recall over the classes present in ``y_true``.
        * ``accuracy``: fraction of correct predictions.
        * ``macro_f1``: unweighted mean F1 over all ``C`` classes (``zero_division=0``).
        * ``per_class_recall``: ``{class_name: recall}``, ``None`` for a class with no test items.
        * ``per_class_support``: ``{class_name: number of test items}``.
        * ``confusion_matrix``: ``C`` lists of ``C`` ints, rows = true class, columns = predicted.
        * ``num_samples``: ``N``.
        * ``head_accuracy``: recall of class ``good_index`` (``None`` if it has no test items).
        * ``tail_accuracy``: mean recall of the other classes present (``None`` if none is).
        * with ``train_counts``: ``many_shot_accuracy``, ``medium_shot_accuracy``,
          ``few_shot_accuracy`` (mean recall of the group's classes present in ``y_true``; ``None``
          when there are none) and ``shot_groups`` ``{"many"|"medium"|"few": [class names]}``.
        * with ``scores``: ``good_vs_defect_auroc`` (``None`` when ``y_true`` is all good or all
          defects).

    Raises:
        ValueError: Labels that are not ``[N]`` integer ids in ``[0, C)`` or of different lengths,
            bad ``class_names``, ``train_counts``, ``scores`` or ``good_index`` (the message names
            the argument).

    Example:
        >>> m = classification_metrics([0, 0, 0, 1, 2], [0, 0, 1, 1, 0], ["good", "crack", "cut"],
        ...                            train_counts=[150, 30, 5])
        >>> m["balanced_accuracy"], m["accuracy"], m["per_class_recall"]
        (0.5555..., 0.6, {'good': 0.6666..., 'crack': 1.0, 'cut': 0.0})
        >>> m["confusion_matrix"], m["shot_groups"]
        ([[2, 1, 0], [0, 1, 0], [1, 0, 0]], {'many': ['good'], 'medium': ['crack'], 'few': ['cut']})
        >>> m["head_accuracy"], m["tail_accuracy"], m["few_shot_accuracy"]
        (0.6666..., 0.5, 0.0)
    """
    names = check_class_names(class_names)
    num_classes = len(names)
    true = check_labels(y_true, num_classes, "y_true")
    pred = check_labels(y_pred, num_classes, "y_pred", length=true.shape[0], length_of="y_true")
    good = check_index(good_index, num_classes, "good_index")

    labels = list(range(num_classes))  # absent classes still get a row and a column
    matrix = _sk_confusion_matrix(true, pred, labels=labels)
    recall = per_class_recall(matrix)
    support = matrix.sum(axis=1)
    macro_f1 = f1_score(true, pred, labels=labels, average="macro", zero_division=0)

    result: Dict[str, Any] = {
        "balanced_accuracy": mean_or_none(recall),  # never None: y_true is non-empty
        "accuracy": float(np.mean(true == pred)),
        "macro_f1": _json_float(macro_f1),
        "per_class_recall": dict(zip(names, recall)),
        "per_class_support": {name: int(n) for name, n in zip(names, support)},
        "confusion_matrix": matrix.astype(int).tolist(),
        "num_samples": int(true.shape[0]),
        "head_accuracy": recall[good],
        "tail_accuracy": mean_or_none([r for c, r in enumerate(recall) if c != good]),
    }

    if train_counts is not None:
        counts = _check_train_counts(train_counts, num_classes)
        groups = {
            "many": [c for c in labels if counts[c] > MANY_SHOT_MIN],
            "medium": [c for c in labels if FEW_SHOT_MAX <= counts[c] <= MANY_SHOT_MIN],
            "few": [c for c in labels if counts[c] < FEW_SHOT_MAX],
        }
        for group, members in groups.items():
            result[f"{group}_shot_accuracy"] = mean_or_none([recall[c] for c in members])
        result["shot_groups"] = {group: [names[c] for c in members] for group, members in groups.items()}

    if scores is not None:
        probabilities = _check_probabilities(scores, true.shape[0], num_classes)
        result["good_vs_defect_auroc"] = auroc_or_none(true != good, 1.0 - probabilities[:, good])
    return result
