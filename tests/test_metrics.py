"""Metrics: hand-computed values, sklearn and brute-force references, argument checks, JSON output."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from bcl.metrics import (
    classification_metrics,
    format_results_table,
    good_vs_defect_auroc,
    knn_metrics,
    knn_predict,
    markdown_table,
)

TRANSISTOR = ["good", "bent_lead", "cut_lead", "damaged_case", "misplaced"]


def assert_plain_json(value):
    """Only plain Python types (no numpy scalars), no NaN, anywhere in the structure."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (int, float, str), type(value)
        if type(value) is float:
            assert math.isfinite(value)


# --------------------------------------------------------------------------------------------------
# classification metrics


def test_classification_metrics_hand_computed():
    # class 3 has no test images; classes 2 and 3 are never predicted
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 1, 1]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["per_class_recall"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": 0.0, "d": None}
    assert m["per_class_support"] == {"a": 3, "b": 2, "c": 1, "d": 0}
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1 = 2·TP / (support + predicted): a = 4/5, b = 4/6, c = 0 (never predicted), d = 0 (zero_division=0)
    assert m["macro_f1"] == pytest.approx((4 / 5 + 4 / 6 + 0 + 0) / 4)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert m["num_samples"] == 6
    assert m["head_accuracy"] == pytest.approx(2 / 3)
    assert m["tail_accuracy"] == pytest.approx(0.5)  # mean of b and c; d has no test images
    assert "many_shot_accuracy" not in m and "good_vs_defect_auroc" not in m


def test_head_and_tail_absent():
    m = classification_metrics([1, 2], [1, 1], ["good", "x", "y"])
    assert m["head_accuracy"] is None and m["tail_accuracy"] == 0.5
    m = classification_metrics([1, 1], [1, 0], ["good", "x"], good_index=1)
    assert m["head_accuracy"] == 0.5 and m["tail_accuracy"] is None


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 7))
    n = int(rng.integers(1, 60))
    y_true = rng.integers(0, num_classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, num_classes, n))
    names = [f"class{c}" for c in range(num_classes)]
    m = classification_metrics(torch.from_numpy(y_true), y_pred.tolist(), names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when y_pred holds a class absent from y_true
        expected_ba = balanced_accuracy_score(y_true, y_pred)
    assert m["balanced_accuracy"] == pytest.approx(expected_ba)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    labels = list(range(num_classes))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    assert m["confusion_matrix"] == sk_confusion_matrix(y_true, y_pred, labels=labels).tolist()
    # macro-F1 from first principles, all classes, 0 where undefined
    f1 = []
    for c in labels:
        tp = np.sum((y_true == c) & (y_pred == c))
        denominator = np.sum(y_true == c) + np.sum(y_pred == c)
        f1.append(2 * tp / denominator if denominator else 0.0)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert_plain_json(m)


def test_shot_groups_transistor():
    y_true = [0] * 6 + [1, 1, 2, 2, 3, 3, 4, 4]
    y_pred = [0] * 5 + [1] + [1, 0, 2, 2, 0, 0, 4, 3]
    m = classification_metrics(y_true, y_pred, TRANSISTOR, train_counts=(273, 10, 10, 10, 10))
    assert m["shot_groups"] == {"many": ["good"], "medium": [], "few": TRANSISTOR[1:]}
    assert m["many_shot_accuracy"] == pytest.approx(5 / 6)
    assert m["medium_shot_accuracy"] is None
    assert m["few_shot_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.5) / 4)
    assert m["few_shot_accuracy"] == pytest.approx(m["tail_accuracy"])
    assert m["many_shot_accuracy"] == pytest.approx(m["head_accuracy"])


def test_shot_group_boundaries_and_absent_classes():
    names = ["a", "b", "c", "d", "e"]
    m = classification_metrics([0, 1, 2, 3], [0, 1, 2, 0], names, train_counts=np.array([101, 100, 20, 19, 0]))
    assert m["shot_groups"] == {"many": ["a"], "medium": ["b", "c"], "few": ["d", "e"]}
    assert m["few_shot_accuracy"] == 0.0  # d only: e has no test images
    m = classification_metrics([0, 1], [0, 1], names, train_counts=torch.tensor([101, 100, 20, 19, 0]))
    assert m["few_shot_accuracy"] is None  # no few-shot class in the test set


def test_good_vs_defect_auroc_toy():
    # defects 0.9, 0.3 vs goods 0.2, 0.5: 3 of 4 pairs ordered correctly
    assert good_vs_defect_auroc([1, 0, 2, 0], [0.9, 0.2, 0.3, 0.5]) == pytest.approx(0.75)
    assert good_vs_defect_auroc([1, 0, 2, 0], torch.tensor([0.9, 0.2, 0.3, 0.5])) == pytest.approx(0.75)
    # ties count half
    assert good_vs_defect_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # good_index elsewhere: class 2 is good
    assert good_vs_defect_auroc([2, 0, 1], [0.1, 0.7, 0.8], good_index=2) == 1.0
    assert good_vs_defect_auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert good_vs_defect_auroc([1, 3], [0.1, 0.2]) is None


def test_auroc_from_probabilities():
    y_true = [0, 0, 1, 2, 0]
    probabilities = np.array(
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4], [0.7, 0.1, 0.2], [0.2, 0.4, 0.4]], dtype=np.float32
    )
    m = classification_metrics(
        y_true, probabilities.argmax(1), ["good", "x", "y"], scores=torch.from_numpy(probabilities)
    )
    expected = roc_auc_score([0, 0, 1, 1, 0], 1 - probabilities[:, 0])
    assert m["good_vs_defect_auroc"] == pytest.approx(expected)
    one_side = classification_metrics([0, 0], [0, 1], ["good", "x"], scores=[[0.9, 0.1], [0.4, 0.6]])
    assert one_side["good_vs_defect_auroc"] is None


def test_json_round_trip():
    y_true = np.array([0, 0, 0, 1, 2], dtype=np.int32)
    m = classification_metrics(
        y_true,
        torch.tensor([0, 1, 0, 1, 1]),
        ["good", "x", "y", "never_seen"],
        train_counts=np.array([273, 10, 10, 0], dtype=np.uint16),
        scores=torch.softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), dim=1).half(),
    )
    assert_plain_json(m)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    assert m["per_class_recall"]["never_seen"] is None and m["medium_shot_accuracy"] is None


# --------------------------------------------------------------------------------------------------
# kNN


def reference_knn(train, labels, queries, num_classes, k, temperature, exclude_self=False):
    """Brute force in float64: cosine similarities, the k most similar, exp(sim / T) summed per class."""
    train = np.asarray(train, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    similarities = queries @ train.T
    if exclude_self:
        np.fill_diagonal(similarities, -np.inf)
    k = min(k, train.shape[0] - int(exclude_self))
    votes = np.zeros((queries.shape[0], num_classes))
    for q in range(queries.shape[0]):
        for j in np.argsort(-similarities[q], kind="stable")[:k]:
            votes[q, labels[j]] += math.exp(similarities[q, j] / temperature)
    return votes.argmax(1), votes / votes.sum(1, keepdims=True)


def random_embeddings(rng, n, dim, num_classes):
    # class-dependent means so the vote is not pure noise
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    return centres[labels] + rng.normal(size=(n, dim)), labels


@pytest.mark.parametrize(
    "num_train, num_queries, k",
    [(60, 30, 20), (10, 7, 25), (40, 15, 1), (30, 1, 5), (150, 120, 20), (1, 3, 20)],
    ids=["plain", "k-above-train", "k1", "single-query", "over-100", "one-train-item"],
)
def test_knn_matches_brute_force(num_train, num_queries, k):
    rng = np.random.default_rng(num_train * 1000 + num_queries)
    num_classes = 4
    train, labels = random_embeddings(rng, num_train, 16, num_classes)
    queries, _ = random_embeddings(rng, num_queries, 16, num_classes)
    predictions, scores = knn_predict(train, labels, queries, num_classes, k=k, temperature=0.1)
    expected_predictions, expected_scores = reference_knn(train, labels, queries, num_classes, k, 0.1)
    assert predictions.dtype == np.int64 and predictions.shape == (num_queries,)
    assert scores.shape == (num_queries, num_classes)
    np.testing.assert_array_equal(predictions, expected_predictions)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_knn_accepts_float_tensors(dtype):
    rng = np.random.default_rng(1)
    train, labels = random_embeddings(rng, 50, 8, 3)
    queries, _ = random_embeddings(rng, 20, 8, 3)
    train_t, queries_t = torch.tensor(train, dtype=dtype), torch.tensor(queries, dtype=dtype)
    predictions, scores = knn_predict(train_t, torch.from_numpy(labels), queries_t, 3, k=5, temperature=0.5)
    expected = reference_knn(train_t.double().numpy(), labels, queries_t.double().numpy(), 3, 5, 0.5)
    np.testing.assert_array_equal(predictions, expected[0])
    np.testing.assert_allclose(scores, expected[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 7, 100])
def test_knn_exclude_self_is_leave_one_out(k):
    rng = np.random.default_rng(k)
    train, labels = random_embeddings(rng, 35, 12, 3)
    predictions, scores = knn_predict(train, labels, train, 3, k=k, temperature=0.07, exclude_self=True)
    expected_predictions, expected_scores = reference_knn(train, labels, train, 3, k, 0.07, exclude_self=True)
    np.testing.assert_array_equal(predictions, expected_predictions)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-6)


def test_knn_exclude_self_with_duplicates():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 8))
    # every vector twice with different labels: the own index must go, not the tied copy
    train = np.concatenate([base, base])
    labels = np.array([0] * 10 + [1] * 10)
    predictions, scores = knn_predict(train, labels, train, 2, k=1, exclude_self=True)
    np.testing.assert_array_equal(predictions, 1 - labels)
    np.testing.assert_array_equal(scores.argmax(1), 1 - labels)
    # one vector three times, labels [0, 1, 1]: item 0 sees two 1s; items 1, 2 see a 0 and a 1 at
    # exactly the same similarity, a tie that goes to class 0
    triple = np.concatenate([np.tile(base[:1], (3, 1)), base[1:] * 0.01 + 5.0])
    triple_labels = np.array([0, 1, 1] + [1] * 9)
    predictions, scores = knn_predict(triple, triple_labels, triple, 2, k=2, exclude_self=True)
    assert predictions[:3].tolist() == [1, 0, 0]
    assert scores[1].tolist() == [0.5, 0.5]
    # four copies and k = 1: the search's two hits for an item may both be copies (self ranked
    # beyond them); then a copy is kept, never the item itself (made the only class-0 copy)
    quad = np.concatenate([np.tile(base[:1], (4, 1)), base[1:] * 0.01 + 5.0])
    for own in range(4):
        quad_labels = [1] * 4 + [0] * 9
        quad_labels[own] = 0
        predictions, scores = knn_predict(quad, quad_labels, quad, 2, k=1, exclude_self=True)
        assert predictions[own] == 1 and scores[own].tolist() == [0.0, 1.0]


def test_knn_ties_go_to_lowest_class():
    # the query is exactly between a class-1 and a class-0 item: equal votes
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    query = np.array([[1.0, 1.0]])
    for labels in ([1, 0], [0, 1]):
        predictions, scores = knn_predict(train, labels, query, 3, k=2)
        assert predictions.tolist() == [0] and scores[0, :2].tolist() == [0.5, 0.5]
    predictions, _ = knn_predict(train, [2, 1], query, 3, k=2)
    assert predictions.tolist() == [1]
    # collapsed embeddings: all neighbours identical, the vote is a head count, ties to the lower id
    collapsed = np.ones((6, 4))
    predictions, scores = knn_predict(collapsed, [2, 2, 1, 1, 0, 3], collapsed[:2], 4, k=6)
    assert predictions.tolist() == [1, 1]
    np.testing.assert_allclose(scores[0], [1 / 6, 2 / 6, 2 / 6, 1 / 6])


def test_knn_small_temperature_does_not_overflow():
    rng = np.random.default_rng(3)
    train, labels = random_embeddings(rng, 30, 6, 3)
    predictions, scores = knn_predict(train, labels, train[:5], 3, k=10, temperature=1e-4)
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(predictions, labels[:5])  # the query itself dominates


def reference_anomaly_auroc(train, labels, queries, query_labels, k, good):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    similarities = queries @ train[labels == good].T
    k = min(k, similarities.shape[1])
    top = -np.sort(-similarities, axis=1)[:, :k]
    return roc_auc_score(query_labels != good, 1 - top.mean(1))


@pytest.mark.parametrize("k, good", [(20, 0), (3, 1), (1, 0)])
def test_knn_metrics_match_brute_force(k, good):
    rng = np.random.default_rng(k)
    train, labels = random_embeddings(rng, 80, 10, 5)
    queries, query_labels = random_embeddings(rng, 40, 10, 5)
    m = knn_metrics(torch.tensor(train), labels, torch.tensor(queries), query_labels, TRANSISTOR, k=k, good_index=good)
    predictions, _ = reference_knn(train, labels, queries, 5, k, 0.07)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_ba = balanced_accuracy_score(query_labels, predictions)
    assert m["knn_accuracy"] == pytest.approx(np.mean(predictions == query_labels))
    assert m["knn_balanced_accuracy"] == pytest.approx(expected_ba)
    assert m["knn_k"] == k
    expected_auroc = reference_anomaly_auroc(train, labels, queries, query_labels, k, good)
    assert m["knn_good_vs_defect_auroc"] == pytest.approx(expected_auroc, abs=1e-9)
    assert_plain_json(m)
    json.dumps(m, allow_nan=False)


def test_knn_metrics_edge_cases():
    rng = np.random.default_rng(5)
    train, _ = random_embeddings(rng, 12, 4, 2)
    labels = np.array([0, 0, 0] + [1] * 9)  # 3 good training items < k
    queries, _ = random_embeddings(rng, 6, 4, 2)
    query_labels = np.array([0, 1, 0, 1, 1, 0])
    m = knn_metrics(train, labels, queries, query_labels, ["good", "bad"], k=50)
    assert m["knn_k"] == 12
    expected = reference_anomaly_auroc(train, labels, queries, query_labels, 50, 0)
    assert m["knn_good_vs_defect_auroc"] == pytest.approx(expected)
    # only defects among the queries, or no good training item: no AUROC, not an error
    assert knn_metrics(train, labels, queries, [1] * 6, ["good", "bad"])["knn_good_vs_defect_auroc"] is None
    assert knn_metrics(train, [1] * 12, queries, query_labels, ["good", "bad"])["knn_good_vs_defect_auroc"] is None


# --------------------------------------------------------------------------------------------------
# bad inputs: each raises ValueError naming the argument


NAMES = ["good", "x", "y"]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(y_true=[0, 3], y_pred=[0, 1]), "y_true"),
        (dict(y_true=[0, -1], y_pred=[0, 1]), "y_true"),
        (dict(y_true=[0.0, 1.0], y_pred=[0, 1]), "y_true"),
        (dict(y_true=[], y_pred=[]), "y_true"),
        (dict(y_true=[[0, 1]], y_pred=[0, 1]), "y_true"),
        (dict(y_true=[0, 1], y_pred=[0, 1, 2]), "y_pred"),
        (dict(y_true=[0, 1], y_pred=[0, 5]), "y_pred"),
        (dict(y_true=[0, 1], y_pred=[0, 1], class_names=[]), "class_names"),
        (dict(y_true=[0, 1], y_pred=[0, 1], class_names="gxy"), "class_names"),
        (dict(y_true=[0, 1], y_pred=[0, 1], class_names=["a", "a", "b"]), "class_names"),
        (dict(y_true=[0, 1], y_pred=[0, 1], class_names=[0, 1, 2]), "class_names"),
        (dict(y_true=[0, 1], y_pred=[0, 1], good_index=3), "good_index"),
        (dict(y_true=[0, 1], y_pred=[0, 1], good_index=True), "good_index"),
        (dict(y_true=[0, 1], y_pred=[0, 1], train_counts=[1, 2]), "train_counts"),
        (dict(y_true=[0, 1], y_pred=[0, 1], train_counts=[1, -2, 3]), "train_counts"),
        (dict(y_true=[0, 1], y_pred=[0, 1], train_counts=[1.5, 2, 3]), "train_counts"),
        (dict(y_true=[0, 1], y_pred=[0, 1], scores=[[2.0, -1.0, 0.0], [0.1, 0.2, 0.7]]), "scores"),
        (dict(y_true=[0, 1], y_pred=[0, 1], scores=[[0.2, 0.2, 0.2], [0.1, 0.2, 0.7]]), "scores"),
        (dict(y_true=[0, 1], y_pred=[0, 1], scores=[[0.5, 0.5], [0.5, 0.5]]), "scores"),
        (dict(y_true=[0, 1], y_pred=[0, 1], scores=[[float("nan"), 0.5, 0.5], [0.1, 0.2, 0.7]]), "scores"),
    ],
)
def test_classification_metrics_rejects(kwargs, argument):
    kwargs.setdefault("class_names", NAMES)
    with pytest.raises(ValueError, match=argument):
        classification_metrics(**kwargs)


@pytest.mark.parametrize(
    "args, argument",
    [
        (([0, 1], [0.1]), "defect_scores"),
        (([0, 1], [0.1, float("inf")]), "defect_scores"),
        (([0, 1], [[0.1, 0.2]]), "defect_scores"),
        (([0, 1.5], [0.1, 0.2]), "y_true"),
        (([0, 1], [0.1, 0.2], -1), "good_index"),
    ],
)
def test_auroc_rejects(args, argument):
    with pytest.raises(ValueError, match=argument):
        good_vs_defect_auroc(*args)


GOOD_TRAIN = np.eye(4)[[0, 1, 2, 3, 0, 1]]
GOOD_LABELS = [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(train_embeddings=GOOD_TRAIN[0]), "train_embeddings"),
        (dict(train_embeddings=GOOD_TRAIN[:0], train_labels=[]), "train_embeddings"),
        (dict(train_embeddings=np.where(np.eye(6, 4) > 0, np.nan, 0.0)), "train_embeddings"),
        (dict(train_embeddings=GOOD_TRAIN.astype(bool)), "train_embeddings"),
        (dict(query_embeddings=np.full((2, 4), np.inf)), "query_embeddings"),
        (dict(query_embeddings=np.ones((2, 5))), "query_embeddings"),
        (dict(query_embeddings=np.ones((2, 4, 1))), "query_embeddings"),
        (dict(train_labels=[0, 1, 2]), "train_labels"),
        (dict(train_labels=[0, 1, 2, 3, 0, 1]), "train_labels"),
        (dict(train_labels=[0.0] * 6), "train_labels"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=2.0), "num_classes"),
        (dict(k=0), "k"),
        (dict(k=2.5), "k"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(exclude_self=True), "query_embeddings"),
        (
            dict(exclude_self=True, train_embeddings=GOOD_TRAIN[:1], train_labels=[0], query_embeddings=GOOD_TRAIN[:1]),
            "train_embeddings",
        ),
        (dict(exclude_self="yes"), "exclude_self"),
    ],
)
def test_knn_predict_rejects(kwargs, argument):
    arguments = dict(
        train_embeddings=GOOD_TRAIN, train_labels=GOOD_LABELS, query_embeddings=np.ones((2, 4)), num_classes=3
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        knn_predict(**arguments)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(query_labels=[0]), "query_labels"),
        (dict(query_labels=[0, 3]), "query_labels"),
        (dict(class_names=["good", "x"]), "train_labels"),  # 2 classes but train labels reach 2
        (dict(class_names=["good", "x", "x"]), "class_names"),
        (dict(good_index=5), "good_index"),
        (dict(k=-1), "k"),
        (dict(temperature=0), "temperature"),
        (dict(train_embeddings=torch.full((6, 4), float("nan"))), "train_embeddings"),
    ],
)
def test_knn_metrics_rejects(kwargs, argument):
    arguments = dict(
        train_embeddings=GOOD_TRAIN,
        train_labels=GOOD_LABELS,
        query_embeddings=np.ones((2, 4)),
        query_labels=[0, 1],
        class_names=NAMES,
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        knn_metrics(**arguments)


# --------------------------------------------------------------------------------------------------
# results table


def test_format_results_table():
    stage2 = classification_metrics([0, 0, 1, 2], [0, 1, 1, 2], ["good", "x", "y"], train_counts=[273, 10, 10])
    table = format_results_table(
        {"stage 2 | probe": stage2, "kNN": {"knn_balanced_accuracy": 0.5, "knn_k": 20}},
        columns=["balanced_accuracy", "few_shot_accuracy", "knn_balanced_accuracy", "knn_k", "num_samples"],
    )
    lines = table.splitlines()
    assert len(lines) == 4 and not table.endswith("\n")
    cells = [[cell.strip() for cell in line.strip("| ").split(" | ")] for line in lines]
    assert cells[0] == [
        "run", "balanced_accuracy", "few_shot_accuracy", "knn_balanced_accuracy", "knn_k", "num_samples"
    ]
    assert cells[2] == ["stage 2 \\| probe", "83.3", "100.0", "-", "-", "4"]
    assert cells[3] == ["kNN", "-", "-", "50.0", "20", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned
    # the default columns cover the classification metrics
    assert "balanced_accuracy" in format_results_table({"run": stage2}).splitlines()[0]


def test_format_results_table_rejects():
    with pytest.raises(ValueError, match="rows"):
        format_results_table([("a", {})])
    with pytest.raises(ValueError, match="columns"):
        format_results_table({"a": {}}, columns=[])
    with pytest.raises(ValueError, match="confusion_matrix"):
        format_results_table({"a": {"confusion_matrix": [[1]]}}, columns=["confusion_matrix"])


def test_markdown_table_pads_aligns_and_escapes():
    table = markdown_table(["name", "n"], [["a|b", "7"], ["long name", "12"]])
    assert table.splitlines() == [
        "| name      |   n |",
        "| :-------- | --: |",
        "| a\\|b      |   7 |",
        "| long name |  12 |",
    ]
    assert markdown_table(["x"], []) == "| x   |\n| :-- |"


@pytest.mark.parametrize(
    "header, rows, match",
    [
        ([], [], "header"),
        ("run", [], "header"),
        (["a", "b"], [["1"]], r"rows\[0\] has 1 cells but the header has 2"),
        (["a"], [[1]], "strings"),
    ],
)
def test_markdown_table_rejects(header, rows, match):
    with pytest.raises(ValueError, match=match):
        markdown_table(header, rows)
