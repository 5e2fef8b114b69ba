"""Tests for bcl.data.synthetic: the procedural transistor data set (the embedded default).

Images are kept small (32-64 px, a handful per class) so the whole file runs in seconds on one core.
"""

import random

import numpy as np
import pytest
import torch

from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.synthetic import (
    CLASS_NAMES,
    SyntheticTransistor,
    render_synthetic_transistor,
)

DEFECTS = [name for name in CLASS_NAMES if name != "good"]


def _same(a: SyntheticTransistor, b: SyntheticTransistor) -> bool:
    return (
        len(a) == len(b)
        and all(torch.equal(x, y) for x, y in zip(a.images, b.images))
        and all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
    )


@pytest.fixture(scope="module")
def per_class_64():
    """Eight images of every class at 64 px (shared by the mask and placement tests)."""
    return SyntheticTransistor({name: 8 for name in CLASS_NAMES}, image_size=64, seed=7)


# ---------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_images_and_masks():
    counts = [2, 1, 1, 1, 1]
    assert _same(SyntheticTransistor(counts, image_size=32, seed=3), SyntheticTransistor(counts, image_size=32, seed=3))


def test_different_seeds_give_different_images():
    a = SyntheticTransistor([2, 1, 1, 1, 1], image_size=32, seed=0)
    b = SyntheticTransistor([2, 1, 1, 1, 1], image_size=32, seed=1)
    assert all(not torch.equal(x, y) for x, y in zip(a.images, b.images))


def test_independent_of_the_global_rngs():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    a = SyntheticTransistor([1, 1, 1, 1, 1], image_size=32, seed=5)
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    state = torch.get_rng_state()
    b = SyntheticTransistor([1, 1, 1, 1, 1], image_size=32, seed=5)
    assert _same(a, b)
    assert torch.equal(state, torch.get_rng_state()), "generating data must not consume the global torch RNG"


def test_other_classes_counts_do_not_change_a_class():
    small = SyntheticTransistor({"good": 2, "cut_lead": 2}, image_size=32, seed=11)
    large = SyntheticTransistor([5, 3, 4, 1, 2], image_size=32, seed=11)

    def by_path(ds):
        return {s.path: (img, m) for s, img, m in zip(ds.samples, ds.images, ds.masks)}

    small_items, large_items = by_path(small), by_path(large)
    for path, (img, mask) in small_items.items():
        assert torch.equal(img, large_items[path][0]), path
        assert torch.equal(mask, large_items[path][1]), path


def test_dataset_matches_the_single_image_renderer():
    ds = SyntheticTransistor({"misplaced": 2}, image_size=32, seed=4)
    image, mask, variant = render_synthetic_transistor("misplaced", 1, image_size=32, seed=4)
    assert torch.equal(ds.images[1], image) and torch.equal(ds.masks[1], mask) and ds.variants[1] == variant


# ---------------------------------------------------------------------------------------------------
# Counts, labels, table, shapes
# ---------------------------------------------------------------------------------------------------


def test_counts_as_dict_and_list_are_honoured():
    ds = SyntheticTransistor({"good": 3, "bent_lead": 1, "misplaced": 2}, image_size=32)
    assert ds.counts == {"good": 3, "bent_lead": 1, "cut_lead": 0, "damaged_case": 0, "misplaced": 2}
    assert ds.targets == [0, 0, 0, 1, 4, 4]
    ds = SyntheticTransistor([2, 0, 1, 3, 1], image_size=32)
    assert [ds.targets.count(k) for k in range(5)] == [2, 0, 1, 3, 1]
    assert len(ds) == 7


def test_default_counts_are_the_real_long_tail():
    ds = SyntheticTransistor(image_size=32)
    assert [ds.targets.count(k) for k in range(5)] == [273, 10, 10, 10, 10]
    assert ds.image_size == 32 and ds.seed == 0


def test_class_names_targets_and_samples_are_consistent():
    ds = SyntheticTransistor([2, 1, 2, 1, 1], image_size=32, seed=2)
    assert isinstance(ds, ImageClassificationDataset)
    assert ds.class_names == ["good", "bent_lead", "cut_lead", "damaged_case", "misplaced"]
    assert len(ds) == len(ds.samples) == len(ds.images) == len(ds.targets) == len(ds.masks) == len(ds.variants) == 7
    seen = {}
    for k, (sample, target, variant) in enumerate(zip(ds.samples, ds.targets, ds.variants)):
        assert isinstance(sample, Sample)
        i = seen.setdefault(sample.class_name, 0)
        seen[sample.class_name] += 1
        expected = Sample(f"synthetic://{sample.class_name}/{i:04d}", "synthetic", sample.class_name, target, None)
        assert sample == expected
        assert ds.class_names[target] == sample.class_name
        assert variant.split("/")[0] == sample.class_name
        image, label = ds[k]
        assert image is ds.images[k] and label == target
    assert len({s.path for s in ds.samples}) == len(ds)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_images_are_uint8_chw_at_several_sizes(size):
    counts = [1, 1, 0, 0, 1] if size == 128 else [1, 1, 1, 1, 1]
    ds = SyntheticTransistor(counts, image_size=size, seed=0)
    for image, mask in zip(ds.images, ds.masks):
        assert image.dtype == torch.uint8 and image.shape == (3, size, size)
        assert mask.dtype == torch.bool and mask.shape == (size, size)
        assert int(image.max()) - int(image.min()) > 100, "a scene has dark holes and bright leads"


def test_transform_is_applied_on_access():
    ds = SyntheticTransistor([1, 0, 0, 0, 1], image_size=32, transform=lambda im: im.float() / 255)
    image, target = ds[1]
    assert image.dtype == torch.float32 and target == 4
    assert torch.equal(image, ds.images[1].float() / 255)


# ---------------------------------------------------------------------------------------------------
# Defects are where they should be
# ---------------------------------------------------------------------------------------------------


def test_good_images_have_empty_masks(per_class_64):
    for mask, target in zip(per_class_64.masks, per_class_64.targets):
        if target == 0:
            assert not mask.any()


@pytest.mark.parametrize("name", DEFECTS)
def test_defect_masks_are_non_empty_and_small(per_class_64, name):
    c = CLASS_NAMES.index(name)
    fractions = [float(m.float().mean()) for m, t in zip(per_class_64.masks, per_class_64.targets) if t == c]
    assert len(fractions) == 8 and min(fractions) > 0
    if name == "misplaced":
        # The whole part (where it should be and where it is) is marked, as in MVTec AD.
        assert all(0.1 < f < 0.8 for f in fractions), fractions
    else:
        assert max(fractions) < 0.15, fractions


@pytest.mark.parametrize("name", DEFECTS)
def test_defect_image_equals_the_clean_rendering_outside_the_mask(per_class_64, name):
    c = CLASS_NAMES.index(name)
    indices = [k for k, t in enumerate(per_class_64.targets) if t == c][:4]
    for i, k in enumerate(indices):
        clean, clean_mask, _ = render_synthetic_transistor(name, i, image_size=64, seed=7, with_defect=False)
        image, mask = per_class_64.images[k], per_class_64.masks[k]
        assert not clean_mask.any()
        outside = ~mask
        assert torch.equal(image[:, outside], clean[:, outside])
        # ... and inside the mask the defect is a visible change, not noise.
        change = (image.int() - clean.int()).abs().amax(dim=0)[mask].float()
        assert change.max() > 40 and change.mean() > 8, (name, float(change.max()), float(change.mean()))


def _mask_centroid_y(mask: torch.Tensor) -> float:
    ys = torch.nonzero(mask)[:, 0].float()
    return float((ys.mean() + 0.5) / mask.shape[0])


def test_lead_defects_are_on_the_leads_and_case_damage_on_the_package(per_class_64):
    # Canonical layout: the package spans y ~0.14-0.54 of the image, the leads y ~0.52-0.9.
    for mask, target in zip(per_class_64.masks, per_class_64.targets):
        name = CLASS_NAMES[target]
        if name in ("bent_lead", "cut_lead"):
            assert _mask_centroid_y(mask) > 0.5, name
        elif name == "damaged_case":
            assert 0.08 < _mask_centroid_y(mask) < 0.62, name


def test_nuisance_zero_renders_one_canonical_good_scene():
    ds = SyntheticTransistor({"good": 3, "bent_lead": 1}, image_size=32, nuisance=0.0)
    assert torch.equal(ds.images[0], ds.images[1]) and torch.equal(ds.images[0], ds.images[2])
    outside = ~ds.masks[3]
    assert torch.equal(ds.images[3][:, outside], ds.images[0][:, outside])


# ---------------------------------------------------------------------------------------------------
# Not trivially separable
# ---------------------------------------------------------------------------------------------------


def test_mean_intensity_does_not_separate_good_from_any_defect():
    ds = SyntheticTransistor([40, 12, 12, 12, 12], image_size=32, seed=0)
    means = torch.stack([im.float().mean() for im in ds.images])
    targets = torch.tensor(ds.targets)
    good = means[targets == 0]
    for c, name in enumerate(CLASS_NAMES[1:], start=1):
        defect = means[targets == c]
        # The ranges interleave, so no threshold on the mean classifies both classes perfectly.
        assert good.max() > defect.min() and defect.max() > good.min(), name


# ---------------------------------------------------------------------------------------------------
# Settings are checked
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"counts": {"good": 2, "scratch": 1}}, ValueError, r"counts.*'scratch'.*valid names.*bent_lead"),
        ({"counts": {"good": -1, "bent_lead": 2}}, ValueError, r"counts\['good'\].*non-negative"),
        ({"counts": [1, 1, 1, 1]}, ValueError, r"counts.*5"),
        ({"counts": [1, 1, 1, 1.5, 1]}, ValueError, r"counts\['damaged_case'\]"),
        ({"counts": [0, 0, 0, 0, 0]}, ValueError, r"counts"),
        ({"counts": {}}, ValueError, r"counts"),
        ({"counts": "good"}, TypeError, r"counts"),
        ({"counts": [1] * 5, "image_size": 16}, ValueError, r"image_size.*32"),
        ({"counts": [1] * 5, "image_size": 64.0}, TypeError, r"image_size"),
        ({"counts": [1] * 5, "image_size": True}, TypeError, r"image_size"),
        ({"counts": [1] * 5, "seed": "0"}, TypeError, r"seed"),
        ({"counts": [1] * 5, "seed": 1.0}, TypeError, r"seed"),
        ({"counts": [1] * 5, "seed": -3}, ValueError, r"seed"),
        ({"counts": [1] * 5, "nuisance": -0.5}, ValueError, r"nuisance"),
        ({"counts": [1] * 5, "nuisance": 3.0}, ValueError, r"nuisance"),
        ({"counts": [1] * 5, "nuisance": "high"}, TypeError, r"nuisance"),
    ],
)
def test_bad_settings_raise_naming_the_setting(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        SyntheticTransistor(**kwargs)


def test_renderer_checks_its_arguments():
    with pytest.raises(ValueError, match="class_name.*good"):
        render_synthetic_transistor("scratched", 0, image_size=32)
    with pytest.raises(ValueError, match="index"):
        render_synthetic_transistor("good", -1, image_size=32)
