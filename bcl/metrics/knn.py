"""k-nearest-neighbour evaluation of learned embeddings (exact cosine search with faiss).

:func:`knn_predict` is a temperature-weighted kNN classifier on embeddings (cosine similarity, exact
search, as in InstDisc / DINO). :func:`knn_metrics` adds its balanced accuracy and a kNN anomaly score
(distance to the nearest *good* training embeddings) for good-vs-defect AUROC.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Sequence, Tuple

import faiss
import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

from bcl._checks import is_int, is_real
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

__all__ = ["knn_predict", "knn_metrics"]

logger = logging.getLogger(__name__)

# Vote totals that differ by less than this relative amount are ties (summation order alone can
# separate mathematically equal totals by a few ulps); ties go to the lowest class index.
_TIE_RTOL = 1e-9


def _check_embeddings(embeddings: Any, arg: str) -> np.ndarray:
    """Validates [N, D] embeddings and returns them L2-normalised as C-contiguous float32 (what faiss needs)."""
    array = as_float_array(embeddings, arg)
    if array.ndim != 2:
        raise ValueError(f"{arg} must have shape [N, D], got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{arg} must not be empty, got shape {tuple(array.shape)}")
    check_finite(array, arg)
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
    labels = check_labels(
        train_labels, num_classes, "train_labels", length=train.shape[0], length_of="train_embeddings"
    )
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
        >>> import torch
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
    predictions, class_scores, _ = _knn_vote(
        train, labels, queries, int(num_classes), k, temperature, bool(exclude_self)
    )
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
    """The kNN accuracy of embeddings and a kNN good-vs-defect AUROC, as a JSON-serialisable dictionary.

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
        present in ``query_labels``), ``knn_k`` (the effective ``k`` after clamping),
        ``knn_good_vs_defect_auroc`` (``None`` when the queries are all good or all defective, or
        the training set has no good embedding) and ``knn_per_class_recall`` (class name -> recall,
        ``None`` for a class absent from the queries).

    Raises:
        ValueError: As :func:`knn_predict`, plus bad ``query_labels``, ``class_names`` or
            ``good_index``.

    Example:
        >>> import torch
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> queries = torch.tensor([[0.8, 0.2], [0.1, 1.0], [1.0, 0.0]])
        >>> m = knn_metrics(train, [0, 0, 1], queries, [0, 1, 1], ["good", "crack"], k=1)
        >>> m["knn_accuracy"], m["knn_balanced_accuracy"], m["knn_k"], m["knn_good_vs_defect_auroc"]
        (0.6666..., 0.75, 1, 0.5)
    """
    names = check_class_names(class_names)
    num_classes = len(names)
    k, temperature = _check_k_temperature(k, temperature)
    good = check_index(good_index, num_classes, "good_index")
    train, labels, queries = _check_knn_inputs(train_embeddings, train_labels, query_embeddings, num_classes)
    true = check_labels(
        query_labels, num_classes, "query_labels", length=queries.shape[0], length_of="query_embeddings"
    )

    predictions, _, k_eff = _knn_vote(train, labels, queries, num_classes, k, temperature, exclude_self=False)
    recall = per_class_recall(_sk_confusion_matrix(true, predictions, labels=list(range(num_classes))))

    good_train = np.ascontiguousarray(train[labels == good])
    auroc = None
    if good_train.shape[0] > 0:
        similarities, _ = _search(good_train, queries, min(k, good_train.shape[0]))
        auroc = auroc_or_none(true != good, 1.0 - similarities.mean(axis=1))
    return {
        "knn_accuracy": float(np.mean(predictions == true)),
        "knn_balanced_accuracy": mean_or_none(recall),
        "knn_k": int(k_eff),
        "knn_good_vs_defect_auroc": auroc,
        "knn_per_class_recall": dict(zip(names, recall)),
    }
