"""Tests for bcl.tensorboard: what is written is read back with TensorBoard's own readers."""

import math
import sys

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from bcl.tensorboard import TensorBoardLogger, confusion_matrix_figure, flatten_hparams, select_projector_indices

CLASSES = ["good", "bent_lead", "cut_lead", "damaged_case", "misplaced"]


def accumulate(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def read_projector_config(folder):
    config = ProjectorConfig()
    text_format.Parse((folder / "projector_config.pbtxt").read_text(), config)
    return config


def test_scalars_read_back(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        for step in range(3):
            tb.scalars({"loss": 1.0 / (step + 1), "acc": np.float32(0.25 * step), "skip": None,
                        "loss_parts": {"ce": torch.tensor(0.5), "scl": 2.0}, "improved": step == 2},
                       step=step, prefix="train")
    events = accumulate(tmp_path)
    assert sorted(events.Tags()["scalars"]) == ["train/acc", "train/improved", "train/loss",
                                                "train/loss_parts/ce", "train/loss_parts/scl"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1.0 / 3.0])
    assert [e.value for e in events.Scalars("train/acc")] == [0.0, 0.25, 0.5]
    assert [e.value for e in events.Scalars("train/loss_parts/ce")] == [0.5, 0.5, 0.5]
    assert [e.value for e in events.Scalars("train/improved")] == [0.0, 0.0, 1.0]  # bools as 0/1


def test_scalars_reject_non_numbers(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        with pytest.raises(TypeError, match="'val/name'"):
            tb.scalars({"name": "resnet"}, step=0, prefix="val")
        with pytest.raises(TypeError, match="single number"):
            tb.scalars({"vec": torch.ones(2)}, step=0)


def test_hparams_read_back(tmp_path):
    config = {"model": {"arch": "resnet18", "dims": [512, 128]}, "optim": {"lr": 0.1, "nesterov": True},
              "ema": None}
    with TensorBoardLogger(tmp_path) as tb:
        tb.hparams(config, {"final/balanced_accuracy": 0.875, "final/skipped": None}, step=5)
    events = accumulate(tmp_path)
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.arch"].string_value == "resnet18"
    assert start.hparams["model.dims"].string_value == "[512, 128]"
    assert start.hparams["optim.lr"].number_value == 0.1
    assert start.hparams["ema"].string_value == "None"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["final/balanced_accuracy"]
    [value] = events.Scalars("final/balanced_accuracy")
    assert (value.step, value.value) == (5, 0.875)


def test_flatten_hparams():
    flat = flatten_hparams({"a": {"b": {"c": np.int64(3)}}, "t": (1, 2), "s": "x", "f": True})
    assert flat == {"a.b.c": 3, "t": "(1, 2)", "s": "x", "f": True}
    assert type(flat["a.b.c"]) is int


def test_confusion_matrix_read_back(tmp_path):
    matrix = np.array([[50, 1, 0, 0, 1], [1, 9, 0, 0, 0], [0, 0, 10, 0, 0], [2, 0, 0, 8, 0], [0, 0, 0, 0, 0]])
    with TensorBoardLogger(tmp_path) as tb:
        tb.confusion_matrix(matrix, CLASSES, step=3, tag="val/confusion_matrix")
    events = accumulate(tmp_path)
    assert "val/confusion_matrix" in events.Tags()["images"]
    [image] = events.Images("val/confusion_matrix")
    assert image.step == 3 and image.width > 200 and image.height > 200
    with pytest.raises(ValueError, match="5 class names for a 4x4"):
        confusion_matrix_figure(np.eye(4), CLASSES)


def test_confusion_matrix_figure_leaves_pyplot_alone():
    imported = "matplotlib.pyplot" in sys.modules
    fig = confusion_matrix_figure([[3, 1], [0, 2]], ["a", "b"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["3", "1", "0", "2"]
    assert ("matplotlib.pyplot" in sys.modules) == imported


def embedding_inputs(count=10, dim=5, size=40):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(count, dim, generator=generator)
    labels = [i % len(CLASSES) for i in range(count)]
    predictions = [(label + (i % 3 == 0)) % len(CLASSES) for i, label in enumerate(labels)]
    metadata = [
        {"class": CLASSES[t], "split": "test", "prediction": CLASSES[p], "correct": t == p}
        for t, p in zip(labels, predictions)
    ]
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return features, metadata, images


def test_embeddings_projector_files(tmp_path):
    features, metadata, images = embedding_inputs(count=10, dim=5, size=40)
    with TensorBoardLogger(tmp_path) as tb:
        folder = tb.embeddings(features, metadata, images, step=7, tag="test/features", thumbnail_size=32)

    [entry] = read_projector_config(tmp_path).embeddings
    assert folder == tmp_path / entry.tensor_path.rsplit("/", 1)[0]
    for path in (entry.tensor_path, entry.metadata_path, entry.sprite.image_path):
        assert (tmp_path / path).is_file(), path
    assert entry.tensor_name == "test/features:000007"
    assert list(entry.tensor_shape) == [10, 5]
    assert list(entry.sprite.single_image_dim) == [32, 32]

    rows = (tmp_path / entry.metadata_path).read_text().splitlines()
    assert rows[0].split("\t") == ["class", "split", "prediction", "correct"]
    assert len(rows) == 1 + 10
    for row, meta in zip(rows[1:], metadata):
        assert row.split("\t") == [meta["class"], "test", meta["prediction"], str(meta["correct"])]

    tensors = np.loadtxt(tmp_path / entry.tensor_path, delimiter="\t", dtype=np.float32)
    assert tensors.shape == (10, 5)
    assert np.array_equal(tensors, features.numpy())  # exact: float32 written with 9 digits

    sprite = Image.open(tmp_path / entry.sprite.image_path)
    side = math.ceil(math.sqrt(10)) * 32  # 4 x 4 grid of 32-px thumbnails
    assert sprite.size == (side, side) and sprite.mode == "RGB"
    # The first thumbnail is the first image, shrunk: its mean colour is kept.
    first = np.asarray(sprite)[:32, :32].astype(float)
    assert first.mean() == pytest.approx(images[0].float().mean().item(), abs=2.0)
    assert np.asarray(sprite)[-32:, -32:].max() == 0  # unused grid cells stay empty


def test_embeddings_accumulate_across_writers_and_replace_same_step(tmp_path):
    features, metadata, _ = embedding_inputs(count=6)
    with TensorBoardLogger(tmp_path) as tb:
        tb.embeddings(features, metadata, step=1)
    with TensorBoardLogger(tmp_path) as tb:  # e.g. after resuming
        tb.embeddings(features, metadata, step=2)
        tb.embeddings(features * 2, metadata, step=2)  # same tag and step: replaced, not duplicated
    names = [e.tensor_name for e in read_projector_config(tmp_path).embeddings]
    assert names == ["embeddings:000001", "embeddings:000002"]
    entry = read_projector_config(tmp_path).embeddings[1]
    assert np.allclose(np.loadtxt(tmp_path / entry.tensor_path, dtype=np.float32), features.numpy() * 2)
    assert not entry.sprite.image_path


def test_single_column_metadata_has_no_header(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        folder = tb.embeddings(np.eye(3), [{"class": "a"}, {"class": "b\tc"}, {"class": "d"}])
    assert (folder / "metadata.tsv").read_text() == "a\nb c\nd\n"


def test_embeddings_check_inputs_before_writing(tmp_path):
    features, metadata, images = embedding_inputs(count=4)
    with TensorBoardLogger(tmp_path) as tb:
        with pytest.raises(ValueError, match="3 metadata rows for 4 points"):
            tb.embeddings(features, metadata[:3])
        with pytest.raises(ValueError, match="metadata row 1 has keys"):
            tb.embeddings(features, [metadata[0], {"class": "x"}] + metadata[2:])
        with pytest.raises(ValueError, match=r"images must be \[N, 3, H, W\]"):
            tb.embeddings(features, metadata, images[:2])
    assert not (tmp_path / "projector").exists() and not (tmp_path / "projector_config.pbtxt").exists()


def test_disabled_logger_writes_nothing(tmp_path):
    features, metadata, images = embedding_inputs(count=4)
    with TensorBoardLogger(tmp_path / "tb", enabled=False) as tb:
        tb.scalars({"loss": 1.0}, step=0)
        tb.hparams({"lr": 0.1}, {"acc": 1.0})
        tb.confusion_matrix(np.eye(2), ["a", "b"], step=0)
        assert tb.embeddings(features, metadata, images) is None
        tb.flush()
        assert tb.writer is None
    assert not (tmp_path / "tb").exists()


def test_select_projector_indices_keeps_every_class():
    labels = np.repeat(np.arange(5), [300, 10, 10, 10, 2])
    labels = np.random.default_rng(0).permutation(labels)
    chosen = select_projector_indices(labels, per_class=20, seed=3)
    assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0)
    assert np.bincount(labels[chosen]).tolist() == [20, 10, 10, 10, 2]  # tails complete
    assert np.array_equal(chosen, select_projector_indices(labels.tolist(), per_class=20, seed=3))
    assert not np.array_equal(chosen, select_projector_indices(labels, per_class=20, seed=4))
    assert np.array_equal(select_projector_indices(labels, per_class=1000), np.arange(len(labels)))
    with pytest.raises(ValueError, match="per_class"):
        select_projector_indices(labels, per_class=0)
