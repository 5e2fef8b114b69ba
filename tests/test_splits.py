"""Tests for bcl.data.splits: stratified train/val/test splits and (repeated) stratified k-fold.

Checked on labels shaped like MVTec AD transistor (273 good, 10 per defect type) and on random
long-tailed labels. Expected per-class sizes are computed with exact fractions, not floats.
"""

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import Subset

from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.splits import Fold, stratified_kfold, stratified_split, train_val_split_within

TRANSISTOR_NAMES = ["good", "bent_lead", "cut_lead", "damaged_case", "misplaced"]
TRANSISTOR_COUNTS = [273, 10, 10, 10, 10]
TRANSISTOR = np.random.default_rng(0).permutation(np.repeat(np.arange(5), TRANSISTOR_COUNTS))


def random_labels(seed, min_size=5):
    """Random long-tailed labels with non-contiguous class ids; every class has >= min_size images."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 9))
    sizes = rng.integers(min_size, 80, num_classes)
    sizes[0] = rng.integers(100, 400)
    ids = np.sort(rng.choice(20, num_classes, replace=False))  # gaps in the class ids
    return rng.permutation(np.repeat(ids, sizes))


LABEL_SETS = {"transistor": TRANSISTOR, **{f"random{s}": random_labels(s) for s in range(6)}}


def make_dataset(labels, class_names):
    samples = [Sample(f"fake://{i}", "train", class_names[int(y)], int(y)) for i, y in enumerate(labels)]
    images = [torch.zeros((3, 1, 1), dtype=torch.uint8)] * len(labels)
    return ImageClassificationDataset(class_names, samples, images)


def floor_ceil(fraction, size):
    exact = Fraction(str(fraction)) * size
    return math.floor(exact), math.ceil(exact)


def per_class(labels, indices):
    classes, counts = np.unique(np.asarray(labels)[indices], return_counts=True)
    return dict(zip(classes.tolist(), counts.tolist()))


def assert_index_array(indices):
    assert isinstance(indices, np.ndarray) and indices.dtype == np.int64 and indices.ndim == 1
    assert np.all(np.diff(indices) > 0)  # sorted, no duplicates


def assert_partition(parts, n):
    for part in parts:
        assert_index_array(part)
    joined = np.concatenate(parts)
    assert joined.size == n and np.array_equal(np.sort(joined), np.arange(n))  # disjoint, union = all


# ----------------------------------------------------------------------------------------------------
# stratified_split
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
@pytest.mark.parametrize("val_fraction, test_fraction", [(0.1, 0.2), (0.15, 0.25), (0.0, 0.3), (0.05, 0.1)])
def test_split_is_an_exactly_stratified_partition(name, val_fraction, test_fraction):
    labels = LABEL_SETS[name]
    train, val, test = stratified_split(labels, val_fraction, test_fraction, seed=0)
    assert_partition([train, val, test], labels.size)
    classes, sizes = np.unique(labels, return_counts=True)
    train_counts, val_counts, test_counts = (per_class(labels, part) for part in (train, val, test))
    for c, n in zip(classes.tolist(), sizes.tolist()):
        assert train_counts.get(c, 0) >= 1
        for counts, fraction in ((val_counts, val_fraction), (test_counts, test_fraction)):
            low, high = floor_ceil(fraction, n)
            if fraction > 0:
                low, high = max(low, 1), max(high, 1)  # every class appears in every non-empty part
            assert low <= counts.get(c, 0) <= high, (c, n, fraction, counts.get(c, 0))
    # Largest-remainder rounding keeps each part's total at round(fraction * N).
    assert test.size == math.floor(Fraction(str(test_fraction)) * labels.size + Fraction(1, 2))
    if val_fraction == 0:
        assert val.size == 0


def test_split_on_transistor_counts():
    train, val, test = stratified_split(TRANSISTOR, 0.1, 0.2, seed=0)
    assert [per_class(TRANSISTOR, part) for part in (train, val, test)] == [
        {0: 191, 1: 7, 2: 7, 3: 7, 4: 7},
        {0: 27, 1: 1, 2: 1, 3: 1, 4: 1},
        {0: 55, 1: 2, 2: 2, 3: 2, 4: 2},
    ]


def test_split_seeds():
    first = stratified_split(TRANSISTOR, seed=0)
    again = stratified_split(TRANSISTOR, seed=0)
    other = stratified_split(TRANSISTOR, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(not np.array_equal(a, b) for a, b in zip(first, other))
    # The class sizes do not depend on the seed.
    assert all(per_class(TRANSISTOR, a) == per_class(TRANSISTOR, b) for a, b in zip(first, other))


def test_split_tiny_classes_are_raised_to_one_and_keep_train():
    labels = np.repeat([0, 1, 2], [50, 3, 4])
    train, val, test = stratified_split(labels, 0.1, 0.2, seed=0)
    assert_partition([train, val, test], labels.size)
    for part in (train, val, test):
        assert set(per_class(labels, part)) == {0, 1, 2}
    assert [per_class(labels, part)[1] for part in (train, val, test)] == [1, 1, 1]
    # Large fractions still leave one train image per class.
    train, val, test = stratified_split(labels, 0.45, 0.45, seed=0)
    assert min(per_class(labels, train).values()) >= 1


def test_split_class_too_small_names_class_and_size():
    labels = np.repeat([0, 1, 2], [50, 2, 4])
    with pytest.raises(ValueError, match=r"class 1 has only 2 image\(s\) but needs at least 3"):
        stratified_split(labels, 0.1, 0.2)
    dataset = make_dataset(np.repeat([0, 1, 2, 3, 4], [20, 5, 1, 5, 5]), TRANSISTOR_NAMES)
    with pytest.raises(ValueError, match=r"class 2 \('cut_lead'\) has only 1 image"):
        stratified_split(dataset, 0.0, 0.2)
    # With no validation part, two images are enough.
    train, val, test = stratified_split(labels, 0.0, 0.2)
    assert val.size == 0 and per_class(labels, test)[1] == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(val_fraction=-0.1), "val_fraction"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction=float("nan")), "val_fraction"),
        (dict(test_fraction=True), "test_fraction"),
        (dict(test_fraction="0.2"), "test_fraction"),
        (dict(val_fraction=0.5, test_fraction=0.5), "val_fraction \\+ test_fraction"),
        (dict(seed=-1), "seed"),
        (dict(seed=0.5), "seed"),
    ],
)
def test_split_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        stratified_split(TRANSISTOR, **kwargs)


@pytest.mark.parametrize("labels", [[], [0, -1, 1], [0.0, 1.0], np.zeros((3, 2), dtype=np.int64)])
def test_split_and_kfold_bad_labels(labels):
    with pytest.raises(ValueError, match="labels_or_dataset"):
        stratified_split(labels)
    with pytest.raises(ValueError, match="labels_or_dataset"):
        stratified_kfold(labels)


def test_split_accepts_datasets_and_subsets():
    dataset = make_dataset(TRANSISTOR, TRANSISTOR_NAMES)
    from_dataset = stratified_split(dataset, seed=2)
    from_labels = stratified_split(TRANSISTOR.tolist(), seed=2)
    from_tensor = stratified_split(torch.as_tensor(TRANSISTOR), seed=2)
    for a, b, c in zip(from_dataset, from_labels, from_tensor):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    subset = Subset(dataset, np.arange(0, TRANSISTOR.size, 2))
    train, val, test = stratified_split(subset, 0.1, 0.2)
    assert_partition([train, val, test], len(subset))


# ----------------------------------------------------------------------------------------------------
# stratified_kfold
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_kfold_properties(name, n_splits):
    labels = LABEL_SETS[name]
    repeats = 2
    folds = stratified_kfold(labels, n_splits=n_splits, seed=0, repeats=repeats)
    assert len(folds) == n_splits * repeats
    assert [(f.repeat, f.fold) for f in folds] == [(r, k) for r in range(repeats) for k in range(n_splits)]
    classes, sizes = np.unique(labels, return_counts=True)
    for repeat in range(repeats):
        in_repeat = [f for f in folds if f.repeat == repeat]
        # Test parts: pairwise disjoint and covering every sample exactly once.
        assert_partition([f.test_idx for f in in_repeat], labels.size)
        for fold in in_repeat:
            assert fold.seed == repeat
            # train ∩ test = ∅ and train ∪ test = all samples.
            assert_partition([fold.train_idx, fold.test_idx], labels.size)
            test_counts, train_counts = per_class(labels, fold.test_idx), per_class(labels, fold.train_idx)
            for c, n in zip(classes.tolist(), sizes.tolist()):
                assert n // n_splits <= test_counts.get(c, 0) <= -(-n // n_splits)  # floor / ceil of n_c / k
                assert test_counts.get(c, 0) >= 1 and train_counts.get(c, 0) >= 1
    # Different repeats are different partitions.
    first, second = folds[:n_splits], folds[n_splits:]
    assert {tuple(f.test_idx) for f in first} != {tuple(f.test_idx) for f in second}


def test_kfold_on_transistor_counts():
    folds = stratified_kfold(TRANSISTOR, n_splits=5, seed=0)
    for fold in folds:
        counts = per_class(TRANSISTOR, fold.test_idx)
        assert counts[0] in (54, 55) and all(counts[c] == 2 for c in range(1, 5))
        assert per_class(TRANSISTOR, fold.train_idx)[1] == 8
    assert sum(per_class(TRANSISTOR, f.test_idx)[0] for f in folds) == 273
    # Ten folds leave one image of each defect type per test fold.
    for fold in stratified_kfold(TRANSISTOR, n_splits=10, seed=0):
        assert all(per_class(TRANSISTOR, fold.test_idx)[c] == 1 for c in range(1, 5))


def test_kfold_seeds_and_repeats():
    first = stratified_kfold(TRANSISTOR, 5, seed=0, repeats=3)
    again = stratified_kfold(TRANSISTOR, 5, seed=0, repeats=3)
    for a, b in zip(first, again):
        assert np.array_equal(a.test_idx, b.test_idx) and np.array_equal(a.train_idx, b.train_idx)
    other = stratified_kfold(TRANSISTOR, 5, seed=1)
    assert not any(np.array_equal(a.test_idx, b.test_idx) for a, b in zip(first[:5], other))
    # Fold.seed reproduces its repeat on its own.
    alone = stratified_kfold(TRANSISTOR, 5, seed=first[12].seed)
    assert np.array_equal(alone[first[12].fold].test_idx, first[12].test_idx)
    # The three repeats are three different partitions.
    partitions = {frozenset(tuple(f.test_idx) for f in first if f.repeat == r) for r in range(3)}
    assert len(partitions) == 3


def test_kfold_is_sklearn_stratified_kfold():
    folds = stratified_kfold(TRANSISTOR, 5, seed=7)
    reference = StratifiedKFold(5, shuffle=True, random_state=7).split(np.zeros(TRANSISTOR.size), TRANSISTOR)
    for fold, (train, test) in zip(folds, reference):
        assert np.array_equal(fold.train_idx, np.sort(train)) and np.array_equal(fold.test_idx, np.sort(test))


def test_kfold_too_many_splits_names_the_smallest_class():
    with pytest.raises(ValueError, match=r"n_splits=11 .*class 1 \('bent_lead'\) has 10 image"):
        stratified_kfold(make_dataset(TRANSISTOR, TRANSISTOR_NAMES), n_splits=11)
    labels = np.repeat([0, 4, 9], [30, 6, 3])
    with pytest.raises(ValueError, match=r"n_splits=4 .*class 9 has 3 image"):
        stratified_kfold(labels, n_splits=4)
    assert len(stratified_kfold(labels, n_splits=3)) == 3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_splits=1), "n_splits"),
        (dict(n_splits=0), "n_splits"),
        (dict(n_splits=2.0), "n_splits"),
        (dict(n_splits=True), "n_splits"),
        (dict(repeats=0), "repeats"),
        (dict(repeats=1.5), "repeats"),
        (dict(seed=-3), "seed"),
        (dict(seed=2**32), "seed"),
    ],
)
def test_kfold_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        stratified_kfold(TRANSISTOR, **kwargs)


def test_fold_is_frozen_and_read_only():
    fold = stratified_kfold(TRANSISTOR, 5)[0]
    assert isinstance(fold, Fold) and repr(fold) == "Fold(fold=0, repeat=0, seed=0, train=250, test=63)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fold.fold = 3
    with pytest.raises(ValueError):
        fold.test_idx[0] = 1
    assert_index_array(fold.train_idx)


# ----------------------------------------------------------------------------------------------------
# train_val_split_within
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_within_carves_a_stratified_val_from_the_train_part(name):
    labels = LABEL_SETS[name]
    fold = stratified_kfold(labels, n_splits=3, seed=0)[1]
    train, val = train_val_split_within(fold.train_idx, labels, val_fraction=0.2, seed=0)
    assert_index_array(train)
    assert_index_array(val)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), fold.train_idx)
    assert np.intersect1d(val, fold.test_idx).size == 0  # never select on the test fold
    fold_counts, val_counts, train_counts = (per_class(labels, p) for p in (fold.train_idx, val, train))
    for c, m in fold_counts.items():
        low, high = floor_ceil(0.2, m)
        assert max(low, 1) <= val_counts[c] <= max(high, 1) and train_counts[c] >= 1
    again = train_val_split_within(fold.train_idx, labels, val_fraction=0.2, seed=0)
    other = train_val_split_within(fold.train_idx, labels, val_fraction=0.2, seed=1)
    assert np.array_equal(val, again[1]) and not np.array_equal(val, other[1])


def test_within_zero_fraction_and_errors():
    fold = stratified_kfold(TRANSISTOR, 5)[0]
    train, val = train_val_split_within(fold.train_idx, TRANSISTOR, val_fraction=0.0)
    assert val.size == 0 and np.array_equal(train, fold.train_idx)
    with pytest.raises(ValueError, match="duplicates"):
        train_val_split_within([1, 1, 2], TRANSISTOR)
    with pytest.raises(ValueError, match="train_idx"):
        train_val_split_within([0, TRANSISTOR.size], TRANSISTOR)
    with pytest.raises(ValueError, match="train_idx"):
        train_val_split_within([], TRANSISTOR)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split_within(fold.train_idx, TRANSISTOR, val_fraction=1.0)
    one_defect = np.concatenate([np.flatnonzero(TRANSISTOR == 0), np.flatnonzero(TRANSISTOR == 1)[:1]])
    with pytest.raises(ValueError, match=r"class 1 \('bent_lead'\) has only 1 image"):
        train_val_split_within(one_defect, make_dataset(TRANSISTOR, TRANSISTOR_NAMES), val_fraction=0.1)
