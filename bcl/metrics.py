"""Evaluation metrics for long-tailed classification and for learned embeddings.

Three groups of functions:

* :func:`classification_metrics`: balanced accuracy (the headline: the mean recall of the classes
  present in the test set), accuracy, macro-F1, per-class recall and support, the confusion matrix,
  many/medium/few-shot and head/tail accuracy, and good-vs-defect AUROC from class probabilities.
  :func:`good_vs_defect_auroc` is the AUROC on its own.
* :func:`knn_predict` and :func:`knn_metrics`: a temperature-weighted k-nearest-neighbour classifier
  on embeddings (cosine similarity, exact search with faiss, as in InstDisc / DINO), and a kNN
  anomaly score (distance to the nearest *good* training embeddings) for good-vs-defect AUROC.
* :func:`format_results_table`: a small markdown table of selected metrics for several runs.

Every returned dictionary is JSON-serialisable as is: plain ``float``/``int``/``list``/``dict``
values, and ``None`` (never NaN) for a metric that is undefined on the given data (a class with no
test images, an AUROC with only one side present).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import faiss
import numpy as np
import torch
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import f1_score, roc_auc_score

from bcl._checks import as_label_array, is_int, is_real

__all__ = [
    "MANY_SHOT_MIN",
    "FEW_SHOT_MAX",
    "DEFAULT_TABLE_COLUMNS",
    "LONG_TAIL_TABLE_COLUMNS",
    "GOOD_CLASS",
    "GOOD_CLASS_METRICS",
    "classification_metrics",
    "good_vs_defect_auroc",
    "knn_predict",
    "knn_metrics",
    "format_results_table",
]

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

#: A class is many-shot with more than this many training images (the convention of Liu et al. 2019).
MANY_SHOT_MIN = 100
#: A class is few-shot with fewer than this many training images; medium-shot is 20..100 inclusive.
FEW_SHOT_MAX = 20

#: The class that the good-vs-defect metrics (and ``head_accuracy`` / ``tail_accuracy``) take as class 0.
GOOD_CLASS = "good"
GOOD_CLASS_METRICS: Tuple[str, ...] = ("head_accuracy", "tail_accuracy", "good_vs_defect_auroc", "knn_good_vs_defect_auroc")

#: The console table for data without a good class (CIFAR-LT, image folders): the shot groups instead.
LONG_TAIL_TABLE_COLUMNS: Tuple[str, ...] = (
    "balanced_accuracy",
    "macro_f1",
    "many_shot_accuracy",
    "medium_shot_accuracy",
    "few_shot_accuracy",
    "knn_balanced_accuracy",
)

DEFAULT_TABLE_COLUMNS: Tuple[str, ...] = (
    "balanced_accuracy",
    "accuracy",
    "macro_f1",
    "head_accuracy",
    "tail_accuracy",
    "good_vs_defect_auroc",
    # a contrastive stage without a classifier has only the kNN metrics
    "knn_balanced_accuracy",
    "knn_good_vs_defect_auroc",
)

# Class probabilities may come from a half-precision softmax; each rounding error is below 1e-3, so
# 1e-2 tolerates them while still rejecting logits (which are almost never all in [0, 1] summing to 1).
_PROBABILITY_ATOL = 1e-2
# Vote totals that differ by less than this relative amount are ties (summation order alone can
# separate mathematically equal totals by a few ulps); ties go to the lowest class index.
_TIE_RTOL = 1e-9


# --------------------------------------------------------------------------------------------------
# argument checks


def _check_class_names(class_names: Any) -> List[str]:
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


def _check_index(value: Any, num_classes: int, arg: str) -> int:
    if not is_int(value) or not 0 <= int(value) < num_classes:
        raise ValueError(f"{arg} must be an int class index in [0, {num_classes}), got {value!r}")
    return int(value)


def _check_labels(labels: Any, num_classes: int, arg: str, length: Optional[int] = None, length_of: str = "") -> np.ndarray:
    array = as_label_array(labels, arg)
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{arg} must have one label per item of {length_of} ({length}), got {array.shape[0]}")
    if array.max() >= num_classes:
        raise ValueError(f"{arg} must lie in [0, {num_classes}) for {num_classes} classes, got maximum {array.max()}")
    return array


def _as_float_array(values: Any, arg: str) -> np.ndarray:
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


def _check_finite(array: np.ndarray, arg: str) -> None:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))
        raise ValueError(f"{arg} contains {len(bad)} non-finite values (NaN or inf), first at index {tuple(bad[0].tolist())}")


def _check_embeddings(embeddings: Any, arg: str) -> np.ndarray:
    """Validates [N, D] embeddings and returns them L2-normalised as C-contiguous float32 (what faiss needs)."""
    array = _as_float_array(embeddings, arg)
    if array.ndim != 2:
        raise ValueError(f"{arg} must have shape [N, D], got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{arg} must not be empty, got shape {tuple(array.shape)}")
    _check_finite(array, arg)
    # Normalised in float64 before the float32 cast; a zero row stays zero (cosine 0 to everything),
    # as with torch.nn.functional.normalize, rather than turning into NaN.
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


def _check_k_temperature(k: Any, temperature: Any) -> Tuple[int, float]:
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return int(k), float(temperature)


def _json_float(value: Any) -> Optional[float]:
    """A plain float, or None for NaN / None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


# --------------------------------------------------------------------------------------------------
# classification metrics


def _per_class_recall(matrix: np.ndarray) -> List[Optional[float]]:
    """Recall per class from a confusion matrix (rows = true); None for classes with no test items."""
    support = matrix.sum(axis=1)
    return [float(matrix[c, c] / support[c]) if support[c] > 0 else None for c in range(matrix.shape[0])]


def _auroc(is_defect: np.ndarray, defect_scores: np.ndarray) -> Optional[float]:
    if is_defect.all() or not is_defect.any():
        return None  # AUROC needs both a good and a defect item
    return float(roc_auc_score(is_defect, defect_scores))


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
    scores = _as_float_array(defect_scores, "defect_scores")
    if scores.shape != labels.shape:
        raise ValueError(f"defect_scores must have shape [N] = [{labels.shape[0]}] to match y_true, got {tuple(scores.shape)}")
    _check_finite(scores, "defect_scores")
    return _auroc(labels != good_index, scores)


def _check_probabilities(scores: Any, num_items: int, num_classes: int) -> np.ndarray:
    probabilities = _as_float_array(scores, "scores")
    if probabilities.shape != (num_items, num_classes):
        raise ValueError(
            f"scores must be class probabilities of shape [N, C] = [{num_items}, {num_classes}], got {tuple(probabilities.shape)}"
        )
    _check_finite(probabilities, "scores")
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
        raise ValueError(f"train_counts must have one count per class, shape [{num_classes}], got {tuple(counts.shape)}")
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
    names = _check_class_names(class_names)
    num_classes = len(names)
    true = _check_labels(y_true, num_classes, "y_true")
    pred = _check_labels(y_pred, num_classes, "y_pred", length=true.shape[0], length_of="y_true")
    good = _check_index(good_index, num_classes, "good_index")

    labels = list(range(num_classes))  # absent classes still get a row and a column
    matrix = _sk_confusion_matrix(true, pred, labels=labels)
    recall = _per_class_recall(matrix)
    support = matrix.sum(axis=1)
    macro_f1 = f1_score(true, pred, labels=labels, average="macro", zero_division=0)

    result: Dict[str, Any] = {
        "balanced_accuracy": _mean_or_none(recall),  # never None: y_true is non-empty
        "accuracy": float(np.mean(true == pred)),
        "macro_f1": _json_float(macro_f1),
        "per_class_recall": dict(zip(names, recall)),
        "per_class_support": {name: int(n) for name, n in zip(names, support)},
        "confusion_matrix": matrix.astype(int).tolist(),
        "num_samples": int(true.shape[0]),
        "head_accuracy": recall[good],
        "tail_accuracy": _mean_or_none([r for c, r in enumerate(recall) if c != good]),
    }

    if train_counts is not None:
        counts = _check_train_counts(train_counts, num_classes)
        groups = {
            "many": [c for c in labels if counts[c] > MANY_SHOT_MIN],
            "medium": [c for c in labels if FEW_SHOT_MAX <= counts[c] <= MANY_SHOT_MIN],
            "few": [c for c in labels if counts[c] < FEW_SHOT_MAX],
        }
        for group, members in groups.items():
            result[f"{group}_shot_accuracy"] = _mean_or_none([recall[c] for c in members])
        result["shot_groups"] = {group: [names[c] for c in members] for group, members in groups.items()}

    if scores is not None:
        probabilities = _check_probabilities(scores, true.shape[0], num_classes)
        result["good_vs_defect_auroc"] = _auroc(true != good, 1.0 - probabilities[:, good])
    return result


# --------------------------------------------------------------------------------------------------
# kNN on embeddings


def _search(database: np.ndarray, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search; returns ([Q, k] similarities, [Q, k] indices), best first."""
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    similarities, indices = index.search(queries, k)
    return similarities.astype(np.float64), indices.astype(np.int64)


def _exact_similarities(train: np.ndarray, queries: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """[Q, k] cosine similarities of the chosen neighbours, recomputed in float64.

    faiss's float32 BLAS products can differ in the last bit for identical training vectors, which
    would break exact vote ties between duplicates (for example a collapsed representation); the same
    vector always gives the same float64 product here. Chunked over queries to bound the [q, k, D]
    temporary at about 32 MB.
    """
    num_queries, k = indices.shape
    out = np.empty((num_queries, k), dtype=np.float64)
    step = max(1, (1 << 22) // (k * train.shape[1]))
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        neighbours = train[indices[start:stop]].astype(np.float64)  # [q, k, D]
        out[start:stop] = (neighbours * queries[start:stop, None, :].astype(np.float64)).sum(axis=2)
    return out


def _knn_vote(
    train: np.ndarray,
    train_labels: np.ndarray,
    queries: np.ndarray,
    num_classes: int,
    k: int,
    temperature: float,
    exclude_self: bool,
) -> Tuple[np.ndarray, np.ndarray, int]:
    """The vote on validated, normalised inputs; returns (predictions, class_scores, effective k)."""
    num_train = train.shape[0]
    if exclude_self:
        k_eff = min(k, num_train - 1)
        # One extra neighbour, then drop the query's own index wherever it landed. With duplicate
        # embeddings the own index may tie with (and be ranked after) its copies, possibly beyond
        # the k + 1 returned; then the copies are legitimate neighbours and the last one is dropped.
        similarities, indices = _search(train, queries, k_eff + 1)
        keep = indices != np.arange(queries.shape[0])[:, None]
        keep[keep.all(axis=1), -1] = False
        similarities = similarities[keep].reshape(-1, k_eff)
        indices = indices[keep].reshape(-1, k_eff)
    else:
        k_eff = min(k, num_train)
        similarities, indices = _search(train, queries, k_eff)
    if k_eff < k:
        logger.debug("kNN: k=%d clamped to %d (train set has %d embeddings)", k, k_eff, num_train)
    similarities = _exact_similarities(train, queries, indices)

    # exp(sim / T) with the row maximum subtracted: the same vote shares without overflow at small T.
    weights = np.exp((similarities - similarities.max(axis=1, keepdims=True)) / temperature)
    rows = np.repeat(np.arange(queries.shape[0]), k_eff)
    flat = rows * num_classes + train_labels[indices].reshape(-1)
    votes = np.bincount(flat, weights=weights.reshape(-1), minlength=queries.shape[0] * num_classes)
    votes = votes.reshape(queries.shape[0], num_classes)
    class_scores = votes / votes.sum(axis=1, keepdims=True)
    best = class_scores.max(axis=1, keepdims=True)
    predictions = np.argmax(class_scores >= best * (1.0 - _TIE_RTOL), axis=1).astype(np.int64)  # first = lowest id
    return predictions, class_scores, k_eff


def _check_knn_inputs(
    train_embeddings: Any, train_labels: Any, query_embeddings: Any, num_classes: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    train = _check_embeddings(train_embeddings, "train_embeddings")
    queries = _check_embeddings(query_embeddings, "query_embeddings")
    if queries.shape[1] != train.shape[1]:
        raise ValueError(
            f"query_embeddings have dimension {queries.shape[1]} but train_embeddings have {train.shape[1]} "
            f"(shapes {tuple(queries.shape)} and {tuple(train.shape)})"
        )
    labels = _check_labels(train_labels, num_classes, "train_labels", length=train.shape[0], length_of="train_embeddings")
    return train, labels, queries


def knn_predict(
    train_embeddings: ArrayLike,
    train_labels: ArrayLike,
    query_embeddings: ArrayLike,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    exclude_self: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted k-nearest-neighbour classification by cosine similarity (InstDisc / DINO vote).

    Embeddings are L2-normalised inside and searched exactly with ``faiss.IndexFlatIP`` (inner
    product of unit float32 vectors = cosine similarity). Each of a query's ``k`` nearest training
    embeddings votes for its class with weight ``exp(cos / temperature)``; the prediction is the
    class with the largest total, ties going to the lowest class id.

    Args:
        train_embeddings: ``[N, D]`` training embeddings (tensor or array, any float dtype, any
            device). A zero row stays zero: cosine 0 to everything.
        train_labels: ``[N]`` class ids in ``[0, num_classes)``.
        query_embeddings: ``[Q, D]`` embeddings to classify.
        num_classes: ``C``, the number of classes (columns of ``class_scores``).
        k: Neighbours per query, ``>= 1``; clamped to ``N`` (``N - 1`` with ``exclude_self``).
        temperature: ``T > 0`` of the vote weights; small ``T`` approaches a plain majority of the
            nearest neighbours, large ``T`` an unweighted majority of all ``k``.
        exclude_self: Leave-one-out on the training set: query ``i`` is training item ``i`` (so
            ``Q = N``, typically the same tensor passed twice) and is never its own neighbour;
            exact copies of it elsewhere in the training set still count.

    Returns:
        ``(predictions, class_scores)``: ``[Q]`` int64 predicted class ids and ``[Q, C]`` float64
        vote shares (each row sums to 1; a class with no neighbour among the ``k`` scores 0).

    Raises:
        ValueError: Embeddings that are not 2-D, empty, non-finite or of different dimensions;
            labels of the wrong length or outside ``[0, C)``; ``num_classes`` or ``k`` below 1;
            ``temperature <= 0``; ``exclude_self`` with ``Q != N`` or ``N < 2`` (the message names
            the argument).

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> predictions, class_scores = knn_predict(train, [0, 0, 1], torch.tensor([[0.2, 1.0], [3.0, 0.5]]),
        ...                                         num_classes=2, k=1)
        >>> predictions.tolist(), class_scores.tolist()
        ([1, 0], [[0.0, 1.0], [1.0, 0.0]])
        >>> knn_predict(train, [0, 0, 1], train, num_classes=2, k=1, exclude_self=True)[0].tolist()
        [0, 0, 0]
    """
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    k, temperature = _check_k_temperature(k, temperature)
    if not isinstance(exclude_self, (bool, np.bool_)):
        raise ValueError(f"exclude_self must be a bool, got {exclude_self!r}")
    train, labels, queries = _check_knn_inputs(train_embeddings, train_labels, query_embeddings, int(num_classes))
    if exclude_self:
        if queries.shape[0] != train.shape[0]:
            raise ValueError(
                f"exclude_self=True needs query_embeddings to be the training items themselves (row i = train item i), "
                f"got {queries.shape[0]} queries for {train.shape[0]} train_embeddings"
            )
        if train.shape[0] < 2:
            raise ValueError("exclude_self=True needs at least 2 train_embeddings (one to leave out, one to vote)")
    predictions, class_scores, _ = _knn_vote(train, labels, queries, int(num_classes), k, temperature, bool(exclude_self))
    return predictions, class_scores


def knn_metrics(
    train_embeddings: ArrayLike,
    train_labels: ArrayLike,
    query_embeddings: ArrayLike,
    query_labels: ArrayLike,
    class_names: Sequence[str],
    k: int = 20,
    temperature: float = 0.07,
    good_index: int = 0,
) -> Dict[str, Any]:
    """kNN accuracy of embeddings and a kNN good-vs-defect AUROC, as a JSON-serialisable dictionary.

    The classifier is :func:`knn_predict`. The anomaly score of a query is
    ``1 - mean cosine similarity to its min(k, #good) nearest good training embeddings`` (a separate
    exact index over the training embeddings of class ``good_index`` only), the usual kNN anomaly
    detector on frozen features; its AUROC separates good from defective queries.

    Args:
        train_embeddings: ``[N, D]`` training embeddings (tensor or array, any float dtype).
        train_labels: ``[N]`` class ids in ``[0, C)``.
        query_embeddings: ``[Q, D]`` embeddings to evaluate.
        query_labels: ``[Q]`` true class ids in ``[0, C)``.
        class_names: ``C`` unique class-name strings.
        k: Neighbours per query, ``>= 1`` (clamped to ``N``).
        temperature: ``T > 0`` of the vote weights ``exp(cos / T)``.
        good_index: The class id of the good class in ``[0, C)``.

    Returns:
        A dictionary with ``knn_accuracy``, ``knn_balanced_accuracy`` (mean recall over the classes
        present in ``query_labels``), ``knn_k`` (the effective ``k`` after clamping) and
        ``knn_good_vs_defect_auroc`` (``None`` when the queries are all good or all defective, or
        the training set has no good embedding).

    Raises:
        ValueError: As :func:`knn_predict`, plus bad ``query_labels``, ``class_names`` or
            ``good_index``.

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> queries = torch.tensor([[0.8, 0.2], [0.1, 1.0], [1.0, 0.0]])
        >>> m = knn_metrics(train, [0, 0, 1], queries, [0, 1, 1], ["good", "crack"], k=1)
        >>> m["knn_accuracy"], m["knn_balanced_accuracy"], m["knn_k"], m["knn_good_vs_defect_auroc"]
        (0.6666..., 0.75, 1, 0.5)
    """
    names = _check_class_names(class_names)
    num_classes = len(names)
    k, temperature = _check_k_temperature(k, temperature)
    good = _check_index(good_index, num_classes, "good_index")
    train, labels, queries = _check_knn_inputs(train_embeddings, train_labels, query_embeddings, num_classes)
    true = _check_labels(query_labels, num_classes, "query_labels", length=queries.shape[0], length_of="query_embeddings")

    predictions, _, k_eff = _knn_vote(train, labels, queries, num_classes, k, temperature, exclude_self=False)
    recall = _per_class_recall(_sk_confusion_matrix(true, predictions, labels=list(range(num_classes))))

    good_train = np.ascontiguousarray(train[labels == good])
    auroc = None
    if good_train.shape[0] > 0:
        similarities, _ = _search(good_train, queries, min(k, good_train.shape[0]))
        auroc = _auroc(true != good, 1.0 - similarities.mean(axis=1))
    return {
        "knn_accuracy": float(np.mean(predictions == true)),
        "knn_balanced_accuracy": _mean_or_none(recall),
        "knn_k": int(k_eff),
        "knn_good_vs_defect_auroc": auroc,
    }


# --------------------------------------------------------------------------------------------------
# results table


def _format_cell(value: Any, run: str, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if is_int(value):  # counts such as num_samples or knn_k
        return str(int(value))
    if is_real(value):
        return "-" if math.isnan(value) else f"{100.0 * float(value):.1f}"
    raise ValueError(f"rows[{run!r}][{column!r}] must be a number, a string or None, got {type(value).__name__}")


def format_results_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = DEFAULT_TABLE_COLUMNS) -> str:
    """A markdown table of selected metrics, one row per run or stage.

    Float metrics are shown as percentages with one decimal, ints (such as ``num_samples`` or
    ``knn_k``) as they are, strings verbatim, and a missing or ``None`` metric as ``-``.

    Args:
        rows: ``{run name: metrics dictionary}`` in display order, for example
            ``{"stage 2 linear probe": classification_metrics(...)}``.
        columns: The metric keys to show, in order (they are also the column headers).

    Returns:
        The table as a string of ``len(rows) + 2`` lines with no trailing newline.

    Raises:
        ValueError: ``rows`` not a mapping of mappings, empty ``columns``, or a selected value that
            is not a number, string or ``None``.

    Example:
        >>> print(format_results_table({"CE": {"balanced_accuracy": 0.5, "accuracy": 0.91234},
        ...                              "BCL": {"balanced_accuracy": 0.875, "accuracy": 0.9}},
        ...                             columns=["balanced_accuracy", "accuracy", "macro_f1"]))
        | run | balanced_accuracy | accuracy | macro_f1 |
        | :-- | ----------------: | -------: | -------: |
        | CE  |              50.0 |     91.2 |        - |
        | BCL |              87.5 |     90.0 |        - |
    """
    if not isinstance(rows, Mapping) or not all(isinstance(metrics, Mapping) for metrics in rows.values()):
        raise ValueError(f"rows must map run names to metric dictionaries, got {type(rows).__name__}")
    if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
        raise ValueError(f"columns must be a non-empty list of metric names, got {columns!r}")
    header = ["run", *[str(column) for column in columns]]
    body = [
        [str(run), *[_format_cell(metrics.get(column), str(run), column) for column in columns]]
        for run, metrics in rows.items()
    ]
    # A "|" inside a run name would split the markdown cell.
    table = [[cell.replace("|", "\\|") for cell in line] for line in [header, *body]]
    widths = [max(3, *(len(line[i]) for line in table)) for i in range(len(header))]

    def render(cells: List[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join([":" + "-" * (widths[0] - 1)] + ["-" * (w - 1) + ":" for w in widths[1:]]) + " |"
    return "\n".join([render(table[0]), rule, *(render(line) for line in table[1:])])
