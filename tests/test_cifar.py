"""Image folders, the long-tailed training part, ResNet-32, the CIFAR recipe and a two-epoch CIFAR-LT run.

Everything runs on generated folder trees; the real CIFAR copy is only used by the runs of docs/cifar.md.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcl.choices import NORMALIZATIONS
from bcl.config import ConfigError, LinearConfig, OptimConfig, SupConConfig, load_config
from bcl.metrics import GOOD_CLASS_METRICS
from bcl.data import ImageDecodeError, ImageFolder, ImageFolderError, classifier_view
from bcl.datasets import build_dataset, make_splits
from bcl.engine import build_scheduler
from bcl.models import build_encoder
from bcl.models.resnet_cifar import resnet32
from bcl.stages import run_linear, run_supcon

CLASSES = ("cat", "dog", "frog")


def write_tree(root: Path, counts=(6, 4, 3), test_counts=(2, 2, 2), size=8, ext="png") -> Path:
    """``root/train/<class>/i.<ext>`` and ``root/test/<class>/i.<ext>``; class c's images have red = 80 c."""
    for split, per_class in (("train", counts), ("test", test_counts)):
        for c, (name, n) in enumerate(zip(CLASSES, per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (size, size), (80 * c, 10 * i, 0)).save(folder / f"{i:03d}.{ext}")
    return root


# ------------------------------------------------------------------ the folder reader


def test_train_test_layout_reads_every_image_in_class_order(tmp_path):
    ds = ImageFolder(write_tree(tmp_path), image_size=8)
    assert ds.layout == "train_test" and ds.class_names == list(CLASSES)
    assert [s.split for s in ds.samples].count("train") == 13 and [s.split for s in ds.samples].count("test") == 6
    for sample, image in zip(ds.samples, ds.images):
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 8, 8)
        assert int(image[0, 0, 0]) == 80 * sample.class_index  # the label belongs to the pixels


def test_flat_layout_and_explicit_class_order(tmp_path):
    write_tree(tmp_path)
    ds = ImageFolder(tmp_path / "train", layout="auto", class_names=["frog", "cat", "dog"])
    assert ds.layout == "flat" and ds.class_names == ["frog", "cat", "dog"]
    assert [ds.targets.count(k) for k in range(3)] == [3, 6, 4]
    assert {s.split for s in ds.samples} == {"all"}


@pytest.mark.parametrize("ext", ["jpg", "bmp", "tif", "JPEG"])
def test_any_format_pil_reads(tmp_path, ext):
    ds = ImageFolder(write_tree(tmp_path, ext=ext), image_size=8)
    assert len(ds) == 19


def test_hidden_and_os_files_are_ignored_with_a_log_line(tmp_path, caplog):
    write_tree(tmp_path)
    for litter in ("train/cat/.DS_Store", "train/cat/Thumbs.db", "train/dog/._000.png", "test/desktop.ini"):
        (tmp_path / litter).write_bytes(b"\x00junk")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    with caplog.at_level(logging.INFO, logger="bcl.data.folder"):
        ds = ImageFolder(tmp_path)
    assert len(ds) == 19
    assert any("ignored 5 hidden or OS files" in r.getMessage() for r in caplog.records)


def test_masks_pair_by_the_naming_rule(tmp_path):
    write_tree(tmp_path / "data")
    masks = tmp_path / "masks" / "dog"
    masks.mkdir(parents=True)
    Image.fromarray(np.pad(np.full((2, 2), 255, np.uint8), 3)).save(masks / "001_mask.png")
    ds = ImageFolder(tmp_path / "data", mask_root=tmp_path / "masks")
    paired = [(s.path, m) for s, m in zip(ds.samples, ds.masks) if m is not None]
    assert len(paired) == 2  # train/dog/001 and test/dog/001
    assert all(p.endswith("dog/001.png") and int(m.sum()) == 4 for p, m in paired)


def bad(tmp_path, case):
    write_tree(tmp_path)
    if case == "no classes":
        root = tmp_path / "empty"
        root.mkdir()
        return root, r"has no class subfolders"
    if case == "empty class":
        for f in (tmp_path / "train" / "frog").iterdir():
            f.unlink()
        return tmp_path, r"class folder .*train/frog holds no images"
    if case == "test only":
        (tmp_path / "test" / "bird").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / "bird" / "0.png")
        return tmp_path, r"only in test/: \['bird'\]"
    if case == "train only":
        (tmp_path / "train" / "bird").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "bird" / "0.png")
        return tmp_path, r"only in train/: \['bird'\]"
    if case == "case clash":
        (tmp_path / "train" / "Cat").mkdir()
        return tmp_path, r"class folders \['Cat', 'cat'\] differ only in case"
    if case == "non-image":
        (tmp_path / "train" / "dog" / "notes.txt").write_text("hello")
        return tmp_path, r"train/dog/notes.txt: not an image file"
    if case == "stray file":
        (tmp_path / "train" / "README").write_text("hello")
        return tmp_path, r"train/README: a file where class folders were expected"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no classes", "empty class", "test only", "train only", "case clash", "non-image",
                                  "stray file"])
def test_bad_folders_are_one_error_naming_the_place(tmp_path, case):
    root, message = bad(tmp_path, case)
    with pytest.raises(ImageFolderError, match=message) as info:
        ImageFolder(root)
    assert "\n" not in str(info.value)


def test_an_unreadable_image_is_named(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "train" / "cat" / "003.png").write_bytes(b"not a png")
    with pytest.raises(ImageDecodeError, match=r"train/cat/003.png"):
        ImageFolder(tmp_path)


def test_class_names_that_do_not_match_the_folders_are_named(tmp_path):
    write_tree(tmp_path)
    with pytest.raises(ImageFolderError, match=r"no folder for \['bird'\]; folders not listed: \['frog'\]"):
        ImageFolder(tmp_path, class_names=["cat", "dog", "bird"])


# ------------------------------------------------------------------ config wiring and the long tail


def folder_cfg(root, *extra, schema=LinearConfig):
    return load_config(schema, overrides=[f"data.root={root}", "data.dataset=folder", "data.split=folders",
                                          "data.image_size=16", *extra])


def test_the_long_tailed_training_part_has_the_exact_profile(tmp_path):
    counts = (40, 40, 40)
    cfg = folder_cfg(write_tree(tmp_path, counts=counts), "data.imbalance_factor=10", "eval.selection=last")
    dataset = build_dataset(cfg.data)
    splits = make_splits(dataset, cfg.data, validation=False)
    labels = np.asarray(dataset.targets)
    # n_c = floor(40 * 10^(-c/2)) = 40, 12, 4; the test part keeps all of test/ (balanced).
    assert np.bincount(labels[splits.train], minlength=3).tolist() == [40, 12, 4]
    assert np.bincount(labels[splits.test], minlength=3).tolist() == [2, 2, 2]
    assert {dataset.samples[i].split for i in splits.train} == {"train"}
    again = make_splits(dataset, cfg.data, validation=False)
    assert np.array_equal(again.train, splits.train)  # seeded
    other = make_splits(dataset, load_config(LinearConfig, overrides=[f"data.root={tmp_path}", "data.dataset=folder",
                        "data.split=folders", "data.imbalance_factor=10", "data.split_seed=1"]).data, validation=False)
    assert not np.array_equal(other.train, splits.train)


def test_cifar10_lt_counts_of_the_literature():
    from bcl.data.longtail import long_tail_profile

    assert long_tail_profile(5000, 10, 100).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(long_tail_profile(5000, 10, 100)) == 12406
    assert sum(long_tail_profile(5000, 10, 50)) == 13996 and sum(long_tail_profile(5000, 10, 10)) == 20431


@pytest.mark.parametrize("factor, message", [
    (0.5, r"data.imbalance_factor must be a finite number >= 1"),
    (math.inf, r"data.imbalance_factor must be a finite number, got inf"),
    (math.nan, r"data.imbalance_factor must be a finite number, got nan"),
])
def test_bad_imbalance_factors_are_named(tmp_path, factor, message):
    with pytest.raises(ConfigError, match=message):
        folder_cfg(tmp_path, f"data.imbalance_factor={factor}")


def test_an_imbalance_factor_the_smallest_class_cannot_hold_is_named(tmp_path):
    cfg = folder_cfg(write_tree(tmp_path), "data.imbalance_factor=1000")
    with pytest.raises(ConfigError, match=r"data.imbalance_factor=1000.0: .*would get 0 images"):
        make_splits(build_dataset(cfg.data), cfg.data, validation=False)


@pytest.mark.parametrize("overrides, message", [
    (["data.split=folders"], r"data.split=folders .* needs data.dataset=folder"),
    (["data.class_names=[a,b]"], r"data.class_names applies to data.dataset=folder only"),
    (["data.augment=auto_augment"], r"data.augment must be one of \['crop', 'pad_crop', 'autoaugment', 'cifar'\]"),
    (["data.normalization=cifar"],
     re.escape(f"data.normalization must be one of {list(NORMALIZATIONS)}, got 'cifar'")),
    (["optim.schedule=step"], r"optim.decay_epochs must be increasing epochs"),
    (["optim.schedule=step", "optim.decay_epochs=[20,10]"], r"optim.decay_epochs must be increasing"),
    (["optim.schedule=step", "optim.decay_epochs=[40]"], r"in \[optim.warmup_epochs=2, optim.epochs=30\)"),
    (["optim.decay_epochs=[10]"], r"optim.decay_epochs applies to optim.schedule=step only"),
    (["optim.schedule=step", "optim.decay_epochs=[10]", "optim.decay_factor=1.5"],
     r"optim.decay_factor must be in \(0, 1\)"),
])
def test_bad_cifar_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LinearConfig, overrides=overrides)


def test_split_folders_on_a_flat_folder_is_named(tmp_path):
    write_tree(tmp_path)
    cfg = folder_cfg(tmp_path / "train")
    with pytest.raises(ConfigError, match=r"data.split=folders needs train/ and test/ folders"):
        build_dataset(cfg.data)


def test_step_schedule_decays_at_the_given_epochs():
    cfg = OptimConfig(epochs=10, warmup_epochs=1, schedule="step", decay_epochs=[6, 8], decay_factor=0.1, lr=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=4)
    rates = []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4:24] == pytest.approx([1.0] * 20)
    assert rates[24:32] == pytest.approx([0.1] * 8) and rates[32:] == pytest.approx([0.01] * 8)


# ------------------------------------------------------------------ ResNet-32 and the CIFAR views


def test_resnet32_shapes_and_parameter_count():
    net = resnet32()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
    assert sum(p.numel() for p in net.parameters()) == 463_504  # He et al.'s ResNet-32 (option A): 0.46 M
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31  # + the classifier = 32 weighted layers
    encoder = build_encoder("resnet32")
    assert encoder.feature_dim == 64 and encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 64)


def test_resnet32_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="resnet32 is a 32 px CIFAR network with no ImageNet weights"):
        build_encoder("resnet32", weights="imagenet")
    with pytest.raises(ConfigError, match="model.weights: resnet32 is a 32 px CIFAR network"):
        load_config(LinearConfig, overrides=["model.encoder=resnet32", "model.weights=imagenet"])


def test_cifar_classifier_view_pads_crops_and_cuts_out_a_quarter():
    torch.manual_seed(0)
    view = classifier_view(32, augment="cifar")
    names = [type(t).__name__ for t in view.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "AutoAugment", "ToDtype", "RandomErasing", "Normalize"]
    image = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    black = 0
    for _ in range(20):
        out = view(image)
        assert out.shape == (3, 32, 32)
        black = max(black, int((out[0] < -2.0).sum()))  # black after ImageNet normalisation is about -2.1
    assert black >= 256  # the 16 x 16 Cutout square (plus whatever padding the crop brought in)


def test_autoaugment_view_is_the_cifar_view_without_cutout():
    view = classifier_view(32, augment="autoaugment")
    names = [type(t).__name__ for t in view.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "AutoAugment", "ToDtype", "Normalize"]
    image = torch.randint(1, 255, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with_cutout = classifier_view(32, augment="cifar")
    for seed in range(10):  # the same draws give the same image except inside the Cutout square
        torch.manual_seed(seed)
        plain = view(image)
        torch.manual_seed(seed)
        cut = with_cutout(image)
        differs = (plain != cut).any(dim=0)
        assert 0 < int(differs.sum()) <= 16 * 16


# ------------------------------------------------------------------ a two-epoch CIFAR-LT run


@pytest.mark.slow
def test_two_epoch_cifar_lt_runs_of_ce_and_bcl(tmp_path):
    root = write_tree(tmp_path / "data", counts=(24, 24, 24), test_counts=(4, 4, 4), size=32)
    common = [f"data.root={root}", "data.imbalance_factor=4", "data.image_size=32", "optim.epochs=2",
              "optim.warmup_epochs=0", "optim.decay_epochs=[1]", "optim.batch_size=8", "run.tensorboard=false",
              f"run.output_dir={tmp_path / 'runs'}", "eval.projector_per_class=0", "train.amp=off", "run.device=cpu"]
    repo = Path(__file__).resolve().parents[1] / "configs"
    ce = run_linear(load_config(LinearConfig, repo / "cifar10lt_ce.yaml", common + ["run.name=ce"]))
    bcl = run_supcon(load_config(SupConConfig, repo / "cifar10lt_bcl.yaml", common + ["run.name=bcl"]))
    for result in (ce, bcl):
        assert result.completed_epochs == 2
        assert result.metrics["train_counts"] == [24, 12, 6]  # 24 * 4^(-c/2)
        assert result.metrics["split_sizes"]["test"] == 12
        test = result.metrics["test"]
        assert {"many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy"} <= set(test)
        assert not set(GOOD_CLASS_METRICS) & set(test)  # no good class: no good-vs-defect numbers
        assert test["shot_groups"] == {"many": [], "medium": ["cat"], "few": ["dog", "frog"]}
