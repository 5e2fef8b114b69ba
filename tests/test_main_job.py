"""The main job's pieces, and a tiny embedded run that must learn (beat chance by a clear margin).

The pieces: the generated balanced test set, fixed-budget evaluation, defect pasting, the comparison table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bcl.compare import comparison_rows, main as compare_main
from bcl.config import ConfigError, DataConfig, LinearConfig, SupConConfig, load_config
from bcl.data import PASTED, SyntheticTransistor, paste_defects
from bcl.datasets import add_pasted_defects, build_dataset, make_splits
from bcl.stages import run_linear

GENERATED = ["data.split=generated", "data.image_size=32", "eval.selection=last"]


def _data(*overrides) -> DataConfig:
    return load_config(SupConConfig, overrides=overrides).data


def test_generated_split_trains_on_the_long_tail_and_tests_on_a_disjoint_balanced_set():
    cfg = _data("data.split=generated", "data.image_size=32", "data.synthetic_counts=[20,3,3,3,3]",
                "data.synthetic_test_counts=[4,4,4,4,4]")
    dataset = build_dataset(cfg)
    splits = make_splits(dataset, cfg, validation=False)
    labels = np.asarray(dataset.targets)
    assert np.bincount(labels[splits.train]).tolist() == [20, 3, 3, 3, 3]
    assert np.bincount(labels[splits.test]).tolist() == [4, 4, 4, 4, 4]
    assert len(splits.val) == 0 and set(splits.as_dict()) == {"train", "test"}
    # the test images are the ones a different seed generates, none equal to a training image
    alone = SyntheticTransistor(counts=[4, 4, 4, 4, 4], image_size=32, seed=cfg.synthetic_test_seed)
    assert all(torch.equal(dataset.images[p], alone.images[i]) for i, p in enumerate(splits.test))
    train_images = {dataset.images[p].numpy().tobytes() for p in splits.train}
    assert not any(dataset.images[p].numpy().tobytes() in train_images for p in splits.test)
    assert len({dataset.samples[p].path for p in range(len(dataset))}) == len(dataset)
    # with selection on validation, the validation part comes out of the training set only
    carved = make_splits(dataset, cfg, validation=True)
    assert set(carved.train) | set(carved.val) == set(splits.train) and np.array_equal(carved.test, splits.test)


@pytest.mark.parametrize("overrides, message", [
    (["data.split=generated", "data.dataset=mvtec"], "data.split=generated needs data.dataset=synthetic"),
    (["data.split=generated", "data.synthetic_test_seed=0"], "must differ from data.synthetic_seed"),
    (["data.split=generated", "data.subsample_ratios=[2,1,1,1,1]"], "subsample_ratios does not apply"),
    (["data.paste_per_class=-1"], "data.paste_per_class must be >= 0"),
])
def test_bad_generated_and_paste_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _data(*overrides)


def test_bad_selection_is_named():
    with pytest.raises(ConfigError, match="eval.selection must be one of"):
        load_config(SupConConfig, overrides=["eval.selection=best"])


def test_bad_generated_test_counts_are_named():
    cfg = _data("data.split=generated", "data.synthetic_test_counts=[1,2]")
    with pytest.raises(ConfigError, match="data.synthetic_test_counts"):
        build_dataset(cfg)


def test_pasted_defects_come_from_training_images_only_and_keep_their_place():
    dataset = SyntheticTransistor(counts=[12, 4, 4, 4, 4], image_size=32, seed=3)
    labels = np.asarray(dataset.targets)
    train = np.concatenate([np.flatnonzero(labels == c)[:-1] for c in range(5)])  # last of each class = "test"
    held_out = {dataset.samples[p].path for p in set(range(len(dataset))) - set(train)}
    pasted = paste_defects(dataset, train, per_class=6, seed=0)
    assert np.bincount(pasted.targets, minlength=5).tolist() == [0, 6, 6, 6, 6]
    by_path = {s.path: p for p, s in enumerate(dataset.samples)}
    used_defects = {c: set() for c in range(1, 5)}
    for image, mask, sample in zip(pasted.images, pasted.masks, pasted.samples):
        assert sample.split == PASTED
        defect_path, good_path = sample.path.split("?defect=")[1].split("&good=")
        assert defect_path not in held_out and good_path not in held_out
        defect, good = by_path[defect_path], by_path[good_path]
        assert dataset.targets[defect] == sample.class_index and dataset.targets[good] == 0
        assert torch.equal(mask, dataset.masks[defect]) and mask.any()
        assert torch.equal(image[:, mask], dataset.images[defect][:, mask])     # the defect, in place
        assert torch.equal(image[:, ~mask], dataset.images[good][:, ~mask])     # the good image elsewhere
        used_defects[sample.class_index].add(defect)
    assert all(len(used) == 3 for used in used_defects.values())  # 6 pastes cycle over the 3 training defects
    again = paste_defects(dataset, train, per_class=6, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(pasted.images, again.images))


def test_paste_refuses_what_it_cannot_do():
    dataset = SyntheticTransistor(counts=[4, 2, 0, 0, 0], image_size=32, seed=0)
    with pytest.raises(ValueError, match="per_class must be an int >= 1"):
        paste_defects(dataset, range(6), per_class=0, seed=0)
    with pytest.raises(ValueError, match="no 'good' image"):
        paste_defects(dataset, [4, 5], per_class=1, seed=0)
    without_masks = dataset.subset(range(6))
    with pytest.raises(ValueError, match="carries no defect masks"):
        paste_defects(without_masks, range(6), per_class=1, seed=0)


def test_add_pasted_defects_extends_only_the_training_part():
    cfg = _data(*GENERATED[:2], "data.synthetic_counts=[10,2,2,2,2]", "data.synthetic_test_counts=[2,2,2,2,2]",
                "data.paste_per_class=5")
    dataset = build_dataset(cfg)
    splits = make_splits(dataset, cfg, validation=False)
    combined, extended = add_pasted_defects(dataset, splits, cfg, seed=0)
    assert len(combined) == len(dataset) + 20 and np.array_equal(extended.test, splits.test)
    assert np.bincount(np.asarray(combined.targets)[extended.train]).tolist() == [10, 7, 7, 7, 7]


def _metrics(balanced, recall, support=None):
    names = ["good", "bent_lead"]
    return {"class_names": names, "train_counts": [9, 1],
            "test": {"balanced_accuracy": balanced, "good_vs_defect_auroc": 0.75, "per_class_recall": recall,
                     "per_class_support": support or {"good": 2, "bent_lead": 2}}}


def test_comparison_rows_put_chance_last_and_refuse_different_test_parts():
    rows = comparison_rows({"A": _metrics(0.75, {"good": 1.0, "bent_lead": 0.5}),
                            "B": _metrics(0.5, {"good": 0.5, "bent_lead": 0.5})})
    assert list(rows) == ["A", "B", "chance"]
    assert rows["A"] == {"balanced_accuracy": 0.75, "good": 1.0, "bent_lead": 0.5, "good_vs_defect_auroc": 0.75}
    assert rows["chance"] == {"balanced_accuracy": 0.5, "good": 0.5, "bent_lead": 0.5, "good_vs_defect_auroc": 0.5}
    with pytest.raises(ValueError, match="tested on other images"):
        comparison_rows({"A": _metrics(0.75, {}), "B": _metrics(0.5, {}, {"good": 3, "bent_lead": 2})})


def test_compare_command_names_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.json").write_text(json.dumps(_metrics(0.75, {"good": 1.0, "bent_lead": 0.5})))
    assert compare_main([f"A={tmp_path / 'done'}"]) == 0
    out = capsys.readouterr().out
    assert "| chance |" in out and "75.0" in out and "tensorboard" in out and "Color by" in out
    assert "trained on 9:1 images per class" in out
    other = _metrics(0.5, {"good": 0.5, "bent_lead": 0.5})
    other["train_counts"] = [9, 3]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text(json.dumps(other))
    assert compare_main([f"A={tmp_path / 'done'}", f"B={tmp_path / 'other'}"]) == 0
    assert "trained on 9:1 (A), 9:3 (B) images per class" in capsys.readouterr().out
    assert compare_main([f"A={tmp_path / 'done'}", f"B={tmp_path / 'missing'}"]) == 2
    assert "missing/metrics.json does not exist" in capsys.readouterr().err
    assert compare_main(["no-label"]) == 2
    assert "must look like LABEL=RUN_DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_embedded_run_learns(tmp_path):
    """Breaks if a change silently stops training from learning: a few seconds of CE must beat chance clearly."""
    cfg = load_config(LinearConfig, overrides=[
        *GENERATED, "data.synthetic_counts=[40,8,8,8,8]", "data.synthetic_test_counts=[20,20,20,20,20]",
        "data.paste_per_class=24", "data.crop_scale=[0.8,1.0]", "model.finetune=true", "optim.name=adam",
        "optim.lr=0.001", "optim.weight_decay=0", "optim.epochs=16", "optim.warmup_epochs=1",
        "optim.batch_size=32", "train.amp=bf16", "train.channels_last=true", "eval.projector_per_class=0",
        "run.tensorboard=true", "run.progress=false", f"run.output_dir={tmp_path}", "run.name=tiny",
    ])
    result = run_linear(cfg)
    test = result.metrics["test"]
    assert result.metrics["selected_epoch"] == 16 and result.metrics["val"] is None
    assert not (tmp_path / "tiny" / "checkpoints" / "best.pt").exists()
    assert test["balanced_accuracy"] >= 0.4, test["per_class_recall"]  # chance is 0.2 (± 0.04 on 100 images)
    events = EventAccumulator(str(tmp_path / "tiny" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "train/lr" in tags and "test/balanced_accuracy" in tags
    assert not any(tag.startswith("val/") for tag in tags)
    log = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 17)) and not any(k.startswith("val_") for k in log[0])
