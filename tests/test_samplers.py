"""Tests for bcl.samplers.ClassAwareSampler.

Draws are collected through a real DataLoader, as in training. Statistical checks use fixed seeds, so
they are deterministic; their thresholds are chosen so that a correct sampler would fail them for only
about one seed in a thousand, while a sampler with the wrong class distribution fails by a wide margin.
"""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bcl.samplers import ClassAwareSampler

NUM_CLASSES = 10
# Upper 0.1% point of the chi-square distribution with NUM_CLASSES - 1 = 9 degrees of freedom
# (standard tables: 27.877).
CHI2_CRITICAL_9_DOF = 27.877
# Per-class |z| bound: P(|Z| > 4.5) ≈ 7e-6, so even over 10 classes a false alarm is ~1e-4.
MAX_ABS_Z = 4.5


def long_tailed_counts(imbalance: float = 100.0, head: int = 1000) -> np.ndarray:
    """Exponential profile from `head` images down to `head / imbalance` (1000 ... 10)."""
    exponents = np.arange(NUM_CLASSES) / (NUM_CLASSES - 1)
    return np.round(head * imbalance ** -exponents).astype(np.int64)


def long_tailed_labels() -> np.ndarray:
    labels = np.repeat(np.arange(NUM_CLASSES), long_tailed_counts())
    # Shuffled so a class's indices are not a contiguous range (a sampler must not rely on that).
    return np.random.default_rng(1234).permutation(labels)


LABELS = long_tailed_labels()


def draw(sampler, labels=LABELS, num_workers=0, batch_size=500):
    """Indices the sampler makes a DataLoader yield over a dataset of (index, label) pairs."""
    dataset = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    drawn = []
    for index, label in loader:
        assert len(index) <= batch_size
        assert torch.equal(label, torch.as_tensor(labels)[index])
        drawn.append(index.numpy())
    return np.concatenate(drawn)


def assert_class_frequencies(drawn_labels, probabilities):
    """Goodness of fit of drawn class ids 0..K-1 to `probabilities`: chi-square plus per-class z."""
    observed = np.bincount(drawn_labels, minlength=len(probabilities))
    expected = observed.sum() * probabilities
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < CHI2_CRITICAL_9_DOF, (chi2, observed, expected)
    z = (observed - expected) / np.sqrt(expected * (1 - probabilities))
    assert np.abs(z).max() < MAX_ABS_Z, (z, observed, expected)
    return observed, expected


def chi2_statistic(drawn_labels, probabilities):
    observed = np.bincount(drawn_labels, minlength=len(probabilities))
    expected = observed.sum() * probabilities
    return ((observed - expected) ** 2 / expected).sum()


# ---------------------------------------------------------------------------------------------------
# Class distribution
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_class_frequencies_follow_counts_to_the_power_q(q):
    weights = long_tailed_counts().astype(np.float64) ** q
    probabilities = weights / weights.sum()
    sampler = ClassAwareSampler(LABELS, q=q, num_samples=40_000, seed=7)
    np.testing.assert_allclose(sampler.class_probabilities, probabilities)

    drawn = draw(sampler)
    assert len(drawn) == 40_000
    assert_class_frequencies(LABELS[drawn], probabilities)


def test_class_balanced_is_uniform_and_distinguishable_from_instance_sampling():
    sampler = ClassAwareSampler(LABELS, q=0.0, num_samples=40_000, seed=3)
    drawn_labels = LABELS[draw(sampler, num_workers=2)]
    observed, expected = assert_class_frequencies(drawn_labels, np.full(NUM_CLASSES, 1 / NUM_CLASSES))
    # 4000 draws per class: one standard deviation is ~1.5%, so 6% is a 4-sigma margin.
    assert np.abs(observed / expected - 1).max() < 0.06
    # The test has power: the same draws are far from the instance (label) distribution.
    instance = long_tailed_counts() / long_tailed_counts().sum()
    assert chi2_statistic(drawn_labels, instance) > 100 * CHI2_CRITICAL_9_DOF


def test_only_present_classes_are_drawn_with_non_contiguous_ids():
    labels = [3] * 5 + [7] * 20 + [42] * 1
    sampler = ClassAwareSampler(labels, q=0.0, num_samples=300, seed=0)
    np.testing.assert_array_equal(sampler.classes, [3, 7, 42])
    np.testing.assert_array_equal(sampler.class_counts, [5, 20, 1])
    np.testing.assert_allclose(sampler.class_probabilities, [1 / 3] * 3)
    drawn_labels = np.asarray(labels)[draw(sampler, labels=np.asarray(labels), batch_size=32)]
    assert set(drawn_labels.tolist()) == {3, 7, 42}
    # The properties are copies: editing them cannot corrupt the sampler.
    sampler.class_counts[0] = 1000
    np.testing.assert_array_equal(sampler.class_counts, [5, 20, 1])


# ---------------------------------------------------------------------------------------------------
# Per-class cycles
# ---------------------------------------------------------------------------------------------------


def test_every_image_of_a_class_is_drawn_before_any_repeats():
    # At q = 0 the 10-image tail class gets ~2500 draws (~250 cycles), the head class ~2.5 cycles.
    sampler = ClassAwareSampler(LABELS, q=0.0, num_samples=25_000, seed=11)
    drawn = draw(sampler)
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(LABELS == c)
        sequence = drawn[LABELS[drawn] == c]
        n = len(members)
        full_blocks = len(sequence) // n
        assert full_blocks >= 2, "the test needs every class to cycle at least twice"
        blocks = sequence[: full_blocks * n].reshape(full_blocks, n)
        for block in blocks:
            np.testing.assert_array_equal(np.sort(block), members)
        remainder = sequence[full_blocks * n :]
        assert len(np.unique(remainder)) == len(remainder)
        # An exhausted cycle is reshuffled, not replayed in the same order.
        assert len({tuple(block) for block in blocks}) > 1


# ---------------------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------------------


def test_same_seed_and_epoch_give_the_same_order_through_dataloader_workers():
    first = ClassAwareSampler(LABELS, q=0.5, seed=5)
    second = ClassAwareSampler(LABELS, q=0.5, seed=5)
    np.testing.assert_array_equal(draw(first), draw(second, num_workers=2))
    # Iterating again without changing the epoch replays the same order.
    np.testing.assert_array_equal(draw(first), list(first))


def test_set_epoch_changes_the_order_reproducibly():
    sampler = ClassAwareSampler(LABELS, seed=5)
    assert sampler.epoch == 0
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert sampler.epoch == 1
    epoch1 = list(sampler)
    assert epoch1 != epoch0

    other = ClassAwareSampler(LABELS, seed=5)
    other.set_epoch(1)
    assert list(other) == epoch1
    sampler.set_epoch(0)
    assert list(sampler) == epoch0


def test_different_seeds_give_different_orders():
    assert list(ClassAwareSampler(LABELS, seed=0)) != list(ClassAwareSampler(LABELS, seed=1))


# ---------------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------------


def test_shards_are_equal_disjoint_slices_of_the_unsharded_sequence():
    num_samples, replicas = 1000, 3  # 1000 is not a multiple of 3: padded to 1002
    padded = math.ceil(num_samples / replicas) * replicas
    shards = [
        draw(
            ClassAwareSampler(LABELS, num_samples=num_samples, seed=9, num_replicas=replicas, rank=rank),
            batch_size=64,
        )
        for rank in range(replicas)
    ]
    assert [len(s) for s in shards] == [padded // replicas] * replicas
    assert len(ClassAwareSampler(LABELS, num_samples=num_samples, num_replicas=replicas, rank=0)) == 334

    # Rank r owns positions r, r + 3, ...: writing each shard back into its own positions (which
    # are disjoint and cover 0..padded-1) must rebuild the single-process sequence.
    interleaved = np.empty(padded, dtype=np.int64)
    for rank, shard in enumerate(shards):
        interleaved[rank::replicas] = shard
    unsharded = list(ClassAwareSampler(LABELS, num_samples=padded, seed=9))
    np.testing.assert_array_equal(interleaved, unsharded)
    # Padding continues the draw: the unpadded sequence is a prefix of the padded one.
    np.testing.assert_array_equal(
        interleaved[:num_samples], list(ClassAwareSampler(LABELS, num_samples=num_samples, seed=9))
    )


def test_each_shard_is_class_balanced():
    replicas = 3
    uniform = np.full(NUM_CLASSES, 1 / NUM_CLASSES)
    for rank in range(replicas):
        sampler = ClassAwareSampler(
            LABELS, q=0.0, num_samples=30_001, seed=2, num_replicas=replicas, rank=rank
        )
        assert len(sampler) == 10_001
        assert_class_frequencies(LABELS[draw(sampler)], uniform)


def test_defaults_to_a_single_process_without_torch_distributed():
    sampler = ClassAwareSampler(LABELS)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


def test_num_samples_defaults_to_dataset_size():
    sampler = ClassAwareSampler(LABELS)
    assert sampler.num_samples == len(LABELS) == len(sampler)
    assert len(draw(sampler)) == len(LABELS)


@pytest.mark.parametrize("num_samples", [1, 7, 5000])
def test_explicit_num_samples(num_samples):
    sampler = ClassAwareSampler(LABELS, num_samples=num_samples)
    assert len(sampler) == num_samples
    assert len(draw(sampler, batch_size=4)) == num_samples


@pytest.mark.parametrize(
    "as_type",
    [
        list,
        tuple,
        lambda x: np.asarray(x, dtype=np.int64),
        lambda x: np.asarray(x, dtype=np.int32),
        lambda x: np.asarray(x, dtype=np.uint8),
        lambda x: torch.as_tensor(x, dtype=torch.int64),
        lambda x: torch.as_tensor(x, dtype=torch.int32),
    ],
    ids=["list", "tuple", "np.int64", "np.int32", "np.uint8", "torch.int64", "torch.int32"],
)
def test_label_containers_give_identical_samplers(as_type):
    reference = ClassAwareSampler(LABELS, q=0.5, seed=4)
    sampler = ClassAwareSampler(as_type(LABELS.tolist()), q=0.5, seed=4)
    np.testing.assert_array_equal(sampler.class_counts, long_tailed_counts())
    assert list(sampler) == list(reference)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        # q
        (dict(q=-0.1), ValueError, r"^q must be in \[0, 1\]"),
        (dict(q=1.5), ValueError, r"^q must be in \[0, 1\]"),
        (dict(q=float("nan")), ValueError, r"^q must be in \[0, 1\]"),
        (dict(q="0.5"), TypeError, r"^q must be a real number"),
        (dict(q=None), TypeError, r"^q must be a real number"),
        (dict(q=True), TypeError, r"^q must be a real number"),
        # labels
        (dict(labels=[]), ValueError, r"^labels must not be empty"),
        (dict(labels=np.array([], dtype=np.int64)), ValueError, r"^labels must not be empty"),
        (dict(labels=[[0, 1], [1, 0]]), ValueError, r"^labels must be 1-D"),
        (dict(labels=np.int64(3)), ValueError, r"^labels must be 1-D"),
        (dict(labels=[[0], [1, 2]]), ValueError, r"^labels must be a 1-D sequence"),
        (dict(labels=[0.0, 1.0]), TypeError, r"^labels must hold integer class ids"),
        (dict(labels=np.array([0.5, 1.0])), TypeError, r"^labels must hold integer class ids"),
        (dict(labels=torch.tensor([0.0, 1.0])), TypeError, r"^labels must hold integer class ids"),
        (dict(labels=["a", "b"]), TypeError, r"^labels must hold integer class ids"),
        (dict(labels=[True, False]), TypeError, r"^labels must hold integer class ids"),
        (dict(labels=torch.tensor([True, False])), TypeError, r"^labels must hold integer class ids"),
        (dict(labels=[0, -1, 2]), ValueError, r"^labels must be non-negative"),
        (dict(labels=torch.tensor([-3, 0])), ValueError, r"^labels must be non-negative"),
        # num_samples
        (dict(num_samples=0), ValueError, r"^num_samples must be a positive int"),
        (dict(num_samples=-5), ValueError, r"^num_samples must be a positive int"),
        (dict(num_samples=2.5), TypeError, r"^num_samples must be a positive int"),
        (dict(num_samples="10"), TypeError, r"^num_samples must be a positive int"),
        (dict(num_samples=True), TypeError, r"^num_samples must be a positive int"),
        # seed
        (dict(seed=1.5), TypeError, r"^seed must be a non-negative int"),
        (dict(seed="0"), TypeError, r"^seed must be a non-negative int"),
        (dict(seed=None), TypeError, r"^seed must be a non-negative int"),
        (dict(seed=-1), ValueError, r"^seed must be a non-negative int"),
        # num_replicas / rank
        (dict(num_replicas=0, rank=0), ValueError, r"^num_replicas must be a positive int"),
        (dict(num_replicas=2.0, rank=0), TypeError, r"^num_replicas must be a positive int"),
        (dict(num_replicas=3, rank=3), ValueError, r"^rank must be in \[0, num_replicas=3\)"),
        (dict(num_replicas=3, rank=-1), ValueError, r"^rank must be in \[0, num_replicas=3\)"),
        (dict(num_replicas=3, rank=1.0), TypeError, r"^rank must be an int"),
        (dict(num_replicas=2), ValueError, r"^num_replicas and rank must be given together"),
        (dict(rank=0), ValueError, r"^num_replicas and rank must be given together"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match):
    kwargs = {"labels": [0, 0, 1], **kwargs}
    with pytest.raises(error, match=match):
        ClassAwareSampler(**kwargs)


@pytest.mark.parametrize(
    "epoch, error", [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (None, TypeError)]
)
def test_bad_epoch_raises(epoch, error):
    sampler = ClassAwareSampler([0, 1])
    with pytest.raises(error, match=r"^epoch must be a non-negative int"):
        sampler.set_epoch(epoch)
    assert sampler.epoch == 0


def test_numpy_integer_arguments_are_accepted():
    sampler = ClassAwareSampler(
        LABELS,
        q=np.float32(0.5),
        num_samples=np.int64(99),
        seed=np.int64(1),
        num_replicas=np.int32(2),
        rank=np.int64(1),
    )
    assert len(sampler) == 50
    assert isinstance(next(iter(sampler)), int)
