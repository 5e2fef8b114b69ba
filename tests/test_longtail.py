"""Tests for bcl.data.longtail (counts, imbalance factor, profiles, subsampling) and bcl.data.cifar_lt.

The CIFAR wrappers are tested on a tiny fake ``cifar-10-batches-py`` / ``cifar-100-python`` folder
written in torchvision's pickled format; nothing is ever downloaded.
"""

import math
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import Subset

from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.cifar_lt import CIFAR10LT, CIFAR100LT
from bcl.data.longtail import (
    class_counts,
    fixed_ratio_subsample,
    imbalance_factor,
    long_tail_profile,
    long_tail_subsample,
)

TRANSISTOR_NAMES = ["good", "bent_lead", "cut_lead", "damaged_case", "misplaced"]
TRANSISTOR_COUNTS = [273, 10, 10, 10, 10]


def transistor_labels(shuffle_seed=None):
    labels = np.repeat(np.arange(5), TRANSISTOR_COUNTS)
    if shuffle_seed is not None:
        labels = np.random.default_rng(shuffle_seed).permutation(labels)
    return labels


def make_dataset(labels, class_names):
    """A bcl dataset with 1x1 images, enough for everything that only reads labels."""
    samples = [Sample(f"fake://{i}", "train", class_names[int(y)], int(y)) for i, y in enumerate(labels)]
    images = [torch.full((3, 1, 1), i % 256, dtype=torch.uint8) for i in range(len(labels))]
    return ImageClassificationDataset(class_names, samples, images)


def counts_of(labels, indices, num_classes):
    return np.bincount(np.asarray(labels)[indices], minlength=num_classes).tolist()


# ----------------------------------------------------------------------------------------------------
# class_counts / imbalance_factor
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor", "tuple"])
def test_class_counts_on_label_types(kind):
    labels = [2, 0, 2, 2, 1, 0, 4]
    converted = {
        "list": labels,
        "numpy": np.asarray(labels, dtype=np.int32),
        "tensor": torch.tensor(labels),
        "tuple": tuple(labels),
    }[kind]
    counts = class_counts(converted)
    assert counts.dtype == np.int64
    assert counts.tolist() == [2, 1, 3, 0, 1]
    assert class_counts(converted, num_classes=7).tolist() == [2, 1, 3, 0, 1, 0, 0]


def test_class_counts_on_datasets_and_subsets():
    labels = transistor_labels(shuffle_seed=0)
    dataset = make_dataset(labels, TRANSISTOR_NAMES)
    assert class_counts(dataset).tolist() == TRANSISTOR_COUNTS
    # A declared class with no images still gets its 0 (length = number of class names).
    only_good = make_dataset([0, 0, 0], TRANSISTOR_NAMES)
    assert class_counts(only_good).tolist() == [3, 0, 0, 0, 0]
    defects = np.flatnonzero(labels > 0)
    assert class_counts(Subset(dataset, defects)).tolist() == [0, 10, 10, 10, 10]
    assert class_counts(dataset.subset(defects[:7])).tolist() == counts_of(labels, defects[:7], 5)


def test_class_counts_num_classes_too_small():
    with pytest.raises(ValueError, match="num_classes"):
        class_counts([0, 1, 5], num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        class_counts([0, 1], num_classes=0)


def test_imbalance_factor_known_values():
    assert imbalance_factor(transistor_labels()) == pytest.approx(27.3)
    assert imbalance_factor(make_dataset(transistor_labels(), TRANSISTOR_NAMES)) == pytest.approx(27.3)
    assert imbalance_factor([2, 0, 1]) == 1.0
    assert imbalance_factor(counts=[3, 3, 3]) == 1.0
    assert imbalance_factor(counts=[5000, 2997, 50]) == 100.0
    assert imbalance_factor(counts=np.array([40, 10])) == 4.0
    assert imbalance_factor(counts=torch.tensor([6, 2, 3])) == 3.0
    assert isinstance(imbalance_factor([0, 1, 1]), float)


def test_imbalance_factor_empty_class_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"class 1 has no images"):
        imbalance_factor([0, 0, 2])
    with pytest.raises(ValueError, match=r"class 1 \('bent_lead'\) has no images"):
        imbalance_factor(make_dataset([0, 0, 2, 3, 4], TRANSISTOR_NAMES))
    with pytest.raises(ValueError, match=r"class 2 has no images"):
        imbalance_factor(counts=[5, 3, 0])
    with pytest.raises(ValueError, match=r"class 3 has no images"):
        imbalance_factor([0, 1, 2], num_classes=4)


def test_imbalance_factor_argument_errors():
    with pytest.raises(ValueError, match="exactly one"):
        imbalance_factor()
    with pytest.raises(ValueError, match="exactly one"):
        imbalance_factor([0, 1], counts=[1, 1])
    with pytest.raises(ValueError, match="counts"):
        imbalance_factor(counts=[3, -1])
    with pytest.raises(ValueError, match="counts"):
        imbalance_factor(counts=[1.5, 2.0])
    with pytest.raises(ValueError, match="counts"):
        imbalance_factor(counts=[])


# ----------------------------------------------------------------------------------------------------
# long_tail_profile
# ----------------------------------------------------------------------------------------------------


def test_profile_cifar10_lt_if100():
    profile = long_tail_profile(5000, 10, 100)
    assert profile.dtype == np.int64
    assert profile.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize(
    "max_count, num_classes, factor, total",
    [  # training-set sizes published for CIFAR-10/100-LT (Cao et al. 2019 and follow-ups)
        (5000, 10, 100, 12406),
        (5000, 10, 50, 13996),
        (5000, 10, 10, 20431),
        (500, 100, 100, 10847),
        (500, 100, 50, 12608),
        (500, 100, 10, 19573),
    ],
)
def test_profile_published_cifar_lt_sizes(max_count, num_classes, factor, total):
    assert int(long_tail_profile(max_count, num_classes, factor).sum()) == total


@pytest.mark.parametrize("seed", range(5))
def test_exp_profile_matches_formula(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 30))
    factor = float(rng.uniform(1.0, 50.0))
    max_count = int(rng.integers(int(math.ceil(factor)) + 1, 3000))
    profile = long_tail_profile(max_count, num_classes, factor)
    expected = [math.floor(max_count * factor ** (-i / (num_classes - 1))) for i in range(num_classes)]
    assert profile.tolist() == expected
    assert profile[0] == max_count and profile[-1] == math.floor(max_count / factor)
    assert np.all(np.diff(profile) <= 0)


@pytest.mark.parametrize(
    "num_classes, fraction, num_head", [(10, 0.5, 5), (7, 0.5, 3), (100, 0.29, 29), (4, 1.0, 4)]
)
def test_step_profile_matches_formula(num_classes, fraction, num_head):
    profile = long_tail_profile(1000, num_classes, 10, kind="step", step_fraction=fraction)
    assert profile.tolist() == [1000] * num_head + [100] * (num_classes - num_head)


def test_profile_edge_cases():
    assert long_tail_profile(37, 1, 10).tolist() == [37]
    assert long_tail_profile(37, 4, 1).tolist() == [37, 37, 37, 37]
    assert long_tail_profile(100, 3, 100).tolist() == [100, 10, 1]
    with pytest.raises(ValueError, match="0 images"):
        long_tail_profile(50, 10, 100)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(max_count=0), "max_count"),
        (dict(max_count=10.0), "max_count"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=True), "num_classes"),
        (dict(imbalance_factor=0.5), "imbalance_factor"),
        (dict(imbalance_factor=float("nan")), "imbalance_factor"),
        (dict(imbalance_factor=float("inf")), "imbalance_factor"),
        (dict(imbalance_factor="10"), "imbalance_factor"),
        (dict(kind="linear"), "kind"),
        (dict(kind="step", step_fraction=1.5), "step_fraction"),
        (dict(kind="step", step_fraction=float("nan")), "step_fraction"),
    ],
)
def test_profile_bad_arguments(kwargs, name):
    arguments = dict(max_count=5000, num_classes=10, imbalance_factor=100)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        long_tail_profile(**arguments)


# ----------------------------------------------------------------------------------------------------
# long_tail_subsample
# ----------------------------------------------------------------------------------------------------

BALANCED = np.random.default_rng(7).permutation(np.repeat(np.arange(10), 200))


@pytest.mark.parametrize("kind", ["exp", "step"])
@pytest.mark.parametrize("factor", [1, 10, 100, 37.5])
def test_subsample_hits_profile_exactly(kind, factor):
    indices = long_tail_subsample(BALANCED, factor, kind=kind, seed=3)
    assert indices.dtype == np.int64
    assert np.all(np.diff(indices) > 0)  # sorted and distinct
    assert counts_of(BALANCED, indices, 10) == long_tail_profile(200, 10, factor, kind=kind).tolist()


def test_subsample_is_seeded():
    first = long_tail_subsample(BALANCED, 10, seed=0)
    assert np.array_equal(first, long_tail_subsample(BALANCED, 10, seed=0))
    assert not np.array_equal(first, long_tail_subsample(BALANCED, 10, seed=1))
    # Same counts whatever the seed.
    other = long_tail_subsample(BALANCED, 10, seed=1)
    assert counts_of(BALANCED, first, 10) == counts_of(BALANCED, other, 10)


def test_subsample_stronger_imbalance_is_nested():
    mild = long_tail_subsample(BALANCED, 10, seed=4)
    strong = long_tail_subsample(BALANCED, 100, seed=4)
    assert np.isin(strong, mild).all()


def test_subsample_class_order():
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    indices = long_tail_subsample(BALANCED, 100, class_order=order, seed=0)
    assert counts_of(BALANCED, indices, 10) == long_tail_profile(200, 10, 100).tolist()[::-1]
    with pytest.raises(ValueError, match="class_order"):
        long_tail_subsample(BALANCED, 100, class_order=[0, 1, 2])
    with pytest.raises(ValueError, match="class_order"):
        long_tail_subsample(BALANCED, 100, class_order=[0] * 10)


def test_subsample_largest_supported_head_on_transistor_counts():
    labels = transistor_labels(shuffle_seed=1)
    indices = long_tail_subsample(labels, 10, seed=0)
    counts = counts_of(labels, indices, 5)
    assert counts == [19, 10, 6, 3, 1] == long_tail_profile(19, 5, 10).tolist()
    # Maximal: one more head image would need more images of class 1 than exist.
    assert long_tail_profile(20, 5, 10)[1] > 10


def test_subsample_explicit_max_count():
    indices = long_tail_subsample(BALANCED, 10, max_count=150, seed=0)
    assert counts_of(BALANCED, indices, 10) == long_tail_profile(150, 10, 10).tolist()
    with pytest.raises(ValueError, match=r"needs 201 images of class 0 but it has only 200"):
        long_tail_subsample(BALANCED, 10, max_count=201)
    with pytest.raises(ValueError, match="max_count"):
        long_tail_subsample(BALANCED, 10, max_count=0)


def test_subsample_errors_on_data():
    with pytest.raises(ValueError, match="too large"):
        long_tail_subsample(transistor_labels(), 100)  # the tail would get 0 images
    with pytest.raises(ValueError, match=r"class 2 \('cut_lead'\) has no images"):
        long_tail_subsample(make_dataset([0, 0, 1, 3, 4], TRANSISTOR_NAMES), 2)


def test_subsample_on_dataset_returns_usable_indices():
    dataset = make_dataset(transistor_labels(shuffle_seed=2), TRANSISTOR_NAMES)
    indices = long_tail_subsample(dataset, 5, kind="step", seed=0)
    subset = dataset.subset(indices)
    expected = long_tail_profile(10, 5, 5, kind="step").tolist()
    assert class_counts(subset).tolist() == expected == [10, 10, 2, 2, 2]


# ----------------------------------------------------------------------------------------------------
# fixed_ratio_subsample
# ----------------------------------------------------------------------------------------------------


def test_fixed_ratio_on_transistor_counts():
    labels = transistor_labels(shuffle_seed=3)
    indices = fixed_ratio_subsample(labels, [2, 1, 1, 1, 1], seed=0)
    assert indices.dtype == np.int64 and np.all(np.diff(indices) > 0)
    assert counts_of(labels, indices, 5) == [20, 10, 10, 10, 10]
    assert np.array_equal(indices, fixed_ratio_subsample(labels, [2, 1, 1, 1, 1], seed=0))
    assert not np.array_equal(indices, fixed_ratio_subsample(labels, [2, 1, 1, 1, 1], seed=1))
    assert counts_of(labels, fixed_ratio_subsample(labels, (5, 2, 2, 2, 2)), 5) == [25, 10, 10, 10, 10]
    float_ratios = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    assert counts_of(labels, fixed_ratio_subsample(labels, float_ratios), 5) == [10] * 5


def test_fixed_ratio_zero_drops_a_class():
    labels = transistor_labels()
    indices = fixed_ratio_subsample(labels, [3, 1, 0, 1, 1], seed=0)
    assert counts_of(labels, indices, 5) == [30, 10, 0, 10, 10]
    # A dropped class may even be empty.
    dataset = make_dataset([0] * 8 + [1] * 4 + [3] * 4, ["a", "b", "c", "d"])
    assert class_counts(dataset.subset(fixed_ratio_subsample(dataset, [2, 1, 0, 1]))).tolist() == [8, 4, 0, 4]


@pytest.mark.parametrize(
    "ratios, message",
    [
        ([2, 1, 1, 1], "one entry per class"),
        ([2, 1, 1, 1, 1, 1], "one entry per class"),
        ([[2, 1, 1, 1, 1]], "one entry per class"),
        ([2, -1, 1, 1, 1], "non-negative"),
        ([0, 0, 0, 0, 0], "all zero"),
        ([1.5, 1, 1, 1, 1], "integers"),
        (["2", "1", "1", "1", "1"], "integers"),
        ([11, 11, 11, 11, 11], r"class 1 \('bent_lead'\) has 10 images, fewer than its ratio 11"),
    ],
)
def test_fixed_ratio_bad_ratios(ratios, message):
    dataset = make_dataset(transistor_labels(), TRANSISTOR_NAMES)
    with pytest.raises(ValueError, match=r"ratios") as info:
        fixed_ratio_subsample(dataset, ratios)
    assert info.match(message)


# ----------------------------------------------------------------------------------------------------
# Bad labels and seeds, for every function
# ----------------------------------------------------------------------------------------------------

CALLS = {
    "class_counts": lambda labels: class_counts(labels),
    "imbalance_factor": lambda labels: imbalance_factor(labels),
    "long_tail_subsample": lambda labels: long_tail_subsample(labels, 2),
    "fixed_ratio_subsample": lambda labels: fixed_ratio_subsample(labels, [1, 1]),
}
BAD_LABELS = {
    "empty": ([], "must not be empty"),
    "negative": ([0, 1, -1], "non-negative"),
    "float list": ([0.0, 1.0], "integer class ids"),
    "float tensor": (torch.tensor([0.0, 1.0]), "integer class ids"),
    "bool": (np.array([True, False]), "integer class ids"),
    "strings": (["good", "bad"], "integer class ids"),
    "2-D": (np.zeros((2, 2), dtype=np.int64), "1-D"),
}


@pytest.mark.parametrize("function", sorted(CALLS))
@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_raise_naming_the_argument(function, case):
    labels, message = BAD_LABELS[case]
    with pytest.raises(ValueError, match="labels_or_dataset") as info:
        CALLS[function](labels)
    assert info.match(message)


def test_bad_dataset_targets_name_the_attribute():
    class Holder:
        targets = [0.5, 1.5]

    with pytest.raises(ValueError, match=r"labels_or_dataset\.targets must hold integer"):
        class_counts(Holder())


@pytest.mark.parametrize("factor", [0.99, 0, -3, float("nan"), float("inf"), True, None])
def test_subsample_bad_imbalance_factor(factor):
    with pytest.raises(ValueError, match="imbalance_factor"):
        long_tail_subsample(BALANCED, factor)


@pytest.mark.parametrize("seed", [-1, 1.0, "0", True, None])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        long_tail_subsample(BALANCED, 10, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        fixed_ratio_subsample(BALANCED, [1] * 10, seed=seed)


def test_subsample_bad_kind_and_step_fraction():
    with pytest.raises(ValueError, match="kind"):
        long_tail_subsample(BALANCED, 10, kind="linear")
    with pytest.raises(ValueError, match="step_fraction"):
        long_tail_subsample(BALANCED, 10, kind="step", step_fraction=-0.1)


# ----------------------------------------------------------------------------------------------------
# CIFAR-LT on a fake torchvision folder
# ----------------------------------------------------------------------------------------------------

FAKE_PER_CLASS = 20  # CIFAR-10 fake: 20 training images per class over 5 batches, 3 test images per class


def _fake_images(start, count):
    # Image k is filled with (start + k) % 256 in channel 0 and its class-independent position in
    # channels 1-2, so tests can tell which source image a dataset item came from.
    data = np.zeros((count, 3, 32, 32), dtype=np.uint8)
    ids = np.arange(start, start + count)
    data[:, 0] = (ids % 256)[:, None, None]
    data[:, 1] = (ids // 256)[:, None, None]
    return data.reshape(count, -1)


def _dump(path, entry):
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), FAKE_PER_CLASS)).tolist()
    per_batch = len(labels) // 5
    for b in range(5):
        chunk = labels[b * per_batch : (b + 1) * per_batch]
        entry = {"data": _fake_images(b * per_batch, per_batch), "labels": chunk}
        _dump(folder / f"data_batch_{b + 1}", entry)
    _dump(folder / "test_batch", {"data": _fake_images(1000, 30), "labels": list(range(10)) * 3})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names})
    # The fake files cannot match torchvision's md5 sums; everything else is the real code path.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    return tmp_path, np.asarray(labels), names


def test_cifar10_lt_train_split(fake_cifar10):
    root, labels, names = fake_cifar10
    dataset = CIFAR10LT(root, imbalance_factor=10, seed=0)
    expected = long_tail_profile(FAKE_PER_CLASS, 10, 10).tolist()
    assert dataset.class_names == names
    assert class_counts(dataset).tolist() == expected == dataset.get_cls_num_list()
    assert dataset.targets == labels[dataset.source_indices].tolist()
    image, target = dataset[3]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 32, 32)
    source = int(dataset.source_indices[3])
    assert target == labels[source]
    assert int(image[0, 0, 0]) == source % 256 and int(image[1, 0, 0]) == source // 256
    assert np.array_equal(dataset.source_indices, CIFAR10LT(root, imbalance_factor=10, seed=0).source_indices)
    reseeded = CIFAR10LT(root, imbalance_factor=10, seed=1)
    assert not np.array_equal(dataset.source_indices, reseeded.source_indices)
    # The bcl dataset surface: subset and transform.
    assert len(dataset.subset([0, 1])) == 2
    transformed = CIFAR10LT(root, imbalance_factor=10, transform=lambda x: x.float() / 255)
    assert transformed[0][0].dtype == torch.float32


def test_cifar10_lt_test_split_is_balanced(fake_cifar10):
    root, _, _ = fake_cifar10
    dataset = CIFAR10LT(root, imbalance_factor=100, train=False)
    assert class_counts(dataset).tolist() == [3] * 10
    assert len(dataset) == 30 and dataset.imbalance_factor == 1.0


def test_cifar100_lt(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    labels = np.repeat(np.arange(100), 10).tolist()
    train_entry = {"data": _fake_images(0, 1000), "fine_labels": labels, "coarse_labels": [0] * 1000}
    _dump(folder / "train", train_entry)
    test_entry = {"data": _fake_images(0, 100), "fine_labels": list(range(100)), "coarse_labels": [0] * 100}
    _dump(folder / "test", test_entry)
    _dump(folder / "meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)]})
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    dataset = CIFAR100LT(tmp_path, imbalance_factor=10, seed=0)
    assert class_counts(dataset).tolist() == long_tail_profile(10, 100, 10).tolist()
    assert dataset.class_names[42] == "class42"
    assert len(CIFAR100LT(tmp_path, train=False)) == 100


def test_cifar_missing_without_download_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        CIFAR10LT(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFAR100LT(tmp_path / "nowhere")
    assert os.listdir(tmp_path) == []  # nothing was fetched or created


def test_cifar_corrupted_folder_is_a_clear_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but empty: fails torchvision's checksums
    with pytest.raises(RuntimeError, match="corrupted.*download=True"):
        CIFAR10LT(tmp_path)


def test_cifar_bad_arguments_fail_before_reading(tmp_path):
    with pytest.raises(ValueError, match="imbalance_factor"):
        CIFAR10LT(tmp_path, imbalance_factor=0.5)
    with pytest.raises(ValueError, match="kind"):
        CIFAR10LT(tmp_path, kind="linear")
