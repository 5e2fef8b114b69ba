"""``python -m bcl.evaluate``: a checkpoint's test metrics recomputed from its weights match what its run recorded."""

from __future__ import annotations

import json

import pytest
import torch

from bcl.cli import main as train
from bcl.config import LinearConfig, SupConConfig
from bcl.evaluate import evaluate_checkpoint, main
from bcl.stages import run_linear, run_supcon

pytestmark = pytest.mark.slow  # trains two tiny runs

TINY = ["data.synthetic_counts=[16,6,6,6,6]", "data.image_size=32", "data.n_folds=2", "optim.epochs=2",
        "optim.warmup_epochs=1", "optim.batch_size=8", "eval.knn_k=5", "eval.projector_per_class=3",
        "eval.thumbnail_size=16", "run.progress=false"]
COMPARED = ("balanced_accuracy", "accuracy", "macro_f1", "head_accuracy", "tail_accuracy", "good_vs_defect_auroc",
            "knn_balanced_accuracy", "per_class_recall")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    common = [*TINY, f"run.output_dir={out}"]
    assert train(SupConConfig, run_supcon, "stage 1",
                 [*common, "run.name=bcl", "model.proj_dim=16", "data.val_fraction=0.2"]) == 0
    assert train(LinearConfig, run_linear, "stage 2",
                 [*common, "run.name=ce", "model.finetune=true", "eval.selection=last"]) == 0
    return out


def recorded(run):
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("run, checkpoint", [("bcl", "best.pt"), ("ce", "last.pt")])
def test_recomputed_test_metrics_equal_the_recorded_ones(runs, run, checkpoint):
    result = evaluate_checkpoint(str(runs / run / "checkpoints" / checkpoint))
    saved = recorded(runs / run)
    assert result["epoch"] == saved["selected_epoch"]
    for key in COMPARED:
        assert result["test"][key] == pytest.approx(saved["test"][key], abs=1e-6), key
    assert result["test"]["confusion_matrix"] == saved["test"]["confusion_matrix"]


def test_command_prints_both_rows_and_the_gap(runs, capsys, tmp_path):
    out = tmp_path / "recomputed.json"
    assert main([str(runs / "ce" / "checkpoints" / "last.pt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recomputed (epoch 2)" in printed and "recorded in metrics.json" in printed
    assert "largest difference from the recorded run: 0.00 points" in printed
    written = json.loads(out.read_text())["test"]
    assert written["balanced_accuracy"] == recorded(runs / "ce")["test"]["balanced_accuracy"]


def test_a_checkpoint_of_another_epoch_is_not_compared_with_the_recorded_run(runs, capsys):
    checkpoint = torch.load(runs / "ce" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    checkpoint["epoch"] = 1
    earlier = runs / "ce" / "checkpoints" / "epoch1.pt"
    torch.save(checkpoint, earlier)
    assert main([str(earlier)]) == 0
    printed = capsys.readouterr().out
    assert "recomputed (epoch 1)" in printed and "recorded in metrics.json" not in printed


def test_bad_input_is_named(runs, capsys, tmp_path):
    assert main([str(tmp_path / "missing.pt")]) == 2
    assert f"checkpoint {str(tmp_path / 'missing.pt')!r} does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main([str(garbage)]) == 2
    assert "could not be loaded as a checkpoint" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    assert main([str(foreign)]) == 2
    assert "is not a train_supcon.py (stage-1) or train_linear.py (stage-2) checkpoint" in capsys.readouterr().err
    checkpoint = torch.load(runs / "ce" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if not k.startswith("classifier")}
    headless = tmp_path / "headless.pt"
    torch.save(checkpoint, headless)
    assert main([str(headless)]) == 2
    assert "its weights do not fit the network its config describes" in capsys.readouterr().err
