"""Tiny end-to-end runs of both training scripts on CPU, read back from their run folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bcl import engine, training
from bcl.cli import main
from bcl.config import LinearConfig, SupConConfig
from bcl.runs import PORTABLE_RUN_FILES
from bcl.stages import load_stage1_encoder, run_linear, run_supcon

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # every test here trains

# 5 classes, 2 folds; 32 px without the small stem keeps a ResNet-18 step to a fraction of a second.
TINY_DATA = ["data.synthetic_counts=[16,6,6,6,6]", "data.image_size=32", "data.n_folds=2", "data.val_fraction=0.2"]
TINY = TINY_DATA + ["optim.epochs=2", "optim.warmup_epochs=1", "optim.batch_size=8",
                    "eval.knn_k=5", "eval.projector_per_class=3", "eval.thumbnail_size=16", "run.progress=false"]


def supcon(tmp_path, name, *overrides, expect=0):
    argv = [*TINY, "model.proj_dim=16", f"run.output_dir={tmp_path}", f"run.name={name}", *overrides]
    assert main(SupConConfig, run_supcon, "stage 1", argv) == expect
    return tmp_path / name


def linear(tmp_path, name, *overrides, expect=0):
    argv = [*TINY, f"run.output_dir={tmp_path}", f"run.name={name}", *overrides]
    assert main(LinearConfig, run_linear, "stage 2", argv) == expect
    return tmp_path / name


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_run_folder(run, stage, epochs, classifier=True):
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["optim"]["epochs"] == epochs and config["data"]["image_size"] == 32
    assert (run / "environment.json").is_file()
    for name in ("last.pt", "best.pt"):
        checkpoint = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert checkpoint["stage"] == stage and checkpoint["config"]["optim"]["epochs"] == epochs
    log = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in log] == list(range(1, epochs + 1))
    assert all(r["train_loss"] > 0 and r["lr"] >= 0 for r in log) and log[0]["lr"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stage"] == stage and metrics["class_names"][0] == "good"
    assert set(metrics["split_sizes"]) == {"train", "val", "test"}
    test = metrics["test"]
    assert 0 <= test["knn_balanced_accuracy"] <= 1
    if classifier:
        assert 0 <= test["balanced_accuracy"] <= 1 and len(test["confusion_matrix"]) == 5
    # TensorBoard: scalars per epoch, read back from the event file
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, epochs + 1))
    if classifier:
        assert any("confusion_matrix" in tag for tag in events.Tags()["images"])
    # the embedding projector: config, metadata, tensors and sprite, every class present
    projector = (run / "tensorboard" / "projector_config.pbtxt").read_text()
    assert "metadata_path" in projector and "tensor_path" in projector and "sprite" in projector
    metadata_files = list((run / "tensorboard").rglob("metadata.tsv"))
    assert len(metadata_files) == 1
    rows = [line.split("\t") for line in metadata_files[0].read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    assert header[:2] == ["class", "split"] and (("prediction" in header) == classifier)
    assert {r[0] for r in rows} == set(metrics["class_names"]) and {r[1] for r in rows} == {"train", "val", "test"}
    tensors = (metadata_files[0].parent / "tensors.tsv").read_text().splitlines()
    assert len(tensors) == len(rows)
    with Image.open(metadata_files[0].parent / "sprite.png") as sprite:
        assert sprite.size[0] % 16 == 0
    return metrics


def test_stage1_joint_then_linear_probe_leaves_encoder_untouched(tmp_path, capsys):
    stage1 = supcon(tmp_path, "bcl")
    check_run_folder(stage1, "supcon", epochs=2)
    stage2 = linear(tmp_path, "probe", f"model.stage1_checkpoint={stage1 / 'checkpoints' / 'best.pt'}",
                    "loss.name=logit_adjusted")
    metrics = check_run_folder(stage2, "linear", epochs=2)
    out = capsys.readouterr().out
    assert "stage 2 (linear probe, logit_adjusted) test" in out and "tensorboard --logdir" in out
    assert "stage 1 test (own classifier)" in out  # the stage-1 model's own numbers beside the probe's

    # the probed encoder (weights and BatchNorm statistics) is bit-identical to stage 1's
    encoder1 = {k[len("encoder."):]: v for k, v in
                torch.load(stage1 / "checkpoints" / "best.pt", weights_only=True)["model"].items()
                if k.startswith("encoder.")}
    encoder2 = {k[len("encoder."):]: v for k, v in
                torch.load(stage2 / "checkpoints" / "last.pt", weights_only=True)["model"].items()
                if k.startswith("encoder.")}
    assert encoder1.keys() == encoder2.keys() and any("running_mean" in k for k in encoder1)
    assert all(torch.equal(encoder1[k], encoder2[k]) for k in encoder1)
    assert metrics["encoder_frozen"] is True

    (stage1 / "metrics.json").write_text("{damaged")  # the probe still reports, naming the file it cannot read
    linear(tmp_path, "probe2", f"model.stage1_checkpoint={stage1 / 'checkpoints' / 'best.pt'}")
    captured = capsys.readouterr()
    assert f"warning: {stage1 / 'metrics.json'} is not valid JSON" in captured.err
    assert "stage 1 test (own classifier)" not in captured.out and "stage 2 (linear probe" in captured.out


@pytest.mark.parametrize("prototypes, loss", [("learned", "bcl"), ("none", "supcon")])
def test_stage1_contrastive_modes(tmp_path, prototypes, loss):
    run = supcon(tmp_path, f"{loss}-{prototypes}", "loss.mode=contrastive", f"loss.name={loss}",
                 f"model.prototypes={prototypes}", "sampler.kind=class_aware")
    metrics = check_run_folder(run, "supcon", epochs=2, classifier=False)
    assert metrics["selection_metric"] == "knn_balanced_accuracy"


@pytest.mark.parametrize("loss", ["ce", "weighted_ce", "focal"])
def test_finetuned_baselines(tmp_path, loss):
    run = linear(tmp_path, loss, "model.finetune=true", f"loss.name={loss}", "sampler.kind=class_aware")
    metrics = check_run_folder(run, "linear", epochs=2)
    assert metrics["encoder_frozen"] is False


def test_same_seed_gives_identical_metrics(tmp_path):
    first = json.loads((supcon(tmp_path, "a") / "metrics.json").read_text())
    second = json.loads((supcon(tmp_path, "b") / "metrics.json").read_text())
    assert first["test"] == second["test"] and first["val"] == second["val"]


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    overrides = [*TINY, "optim.epochs=3", f"run.output_dir={tmp_path}"]
    script = str(ROOT / "train_supcon.py")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, script, *overrides, "run.name=whole"], check=True, env=env,
                   capture_output=True, cwd=ROOT)

    # the second run is killed (SIGKILL, no clean-up) once its first epoch checkpoint exists
    killed = subprocess.Popen([sys.executable, script, *overrides, "run.name=killed"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and killed.poll() is None:
        assert time.monotonic() < deadline, "the run never finished its first epoch"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()

    subprocess.run([sys.executable, script, "--resume", str(tmp_path / "killed")], check=True, env=env,
                   capture_output=True, cwd=ROOT)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert resumed["test"] == whole["test"] and resumed["val"] == whole["val"]
    assert [r["train_loss"] for r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")][-2:] == \
           [r["train_loss"] for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl")][-2:]


def test_stop_after_epochs_then_resume(tmp_path, capsys):
    run = supcon(tmp_path, "sliced", "run.stop_after_epochs=1")
    assert not (run / "metrics.json").exists()
    assert "--resume" in capsys.readouterr().out
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(run)]) == 0
    assert (run / "metrics.json").exists()


def final_test(run):
    return json.loads((run / "metrics.json").read_text())["test"]


def test_stop_after_minutes_stops_with_its_state_saved_and_resume_sets_a_new_budget(tmp_path, capsys):
    run = supcon(tmp_path, "timed", "optim.epochs=3", "run.stop_after_minutes=0.00001")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1  # one epoch, then out of time
    assert not (run / "metrics.json").exists() and "--resume" in capsys.readouterr().out
    # The resumed session keeps the saved budget unless told otherwise: one more epoch ...
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(run)]) == 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    # ... and with a new budget it finishes.
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(run), "run.stop_after_minutes=60"]) == 0
    assert json.loads((run / "metrics.json").read_text())["selected_epoch"] is not None
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_test_every_logs_learning_curve_points_that_choose_nothing(tmp_path):
    plain = linear(tmp_path, "plain", "model.finetune=true", "optim.epochs=3", "eval.selection=last")
    curve = linear(tmp_path, "curve", "model.finetune=true", "optim.epochs=3", "eval.selection=last",
                   "eval.test_every=2")
    records = read_jsonl(curve / "metrics.jsonl")
    assert ["test_balanced_accuracy" in r for r in records] == [False, True, False]
    assert 0 <= records[1]["test_balanced_accuracy"] <= 1 and "test_knn_balanced_accuracy" in records[1]
    # Evaluating the test part on the way changes neither the training nor the final result.
    assert final_test(curve) == final_test(plain)
    events = EventAccumulator(str(curve / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert 2 in [e.step for e in events.Scalars("test/balanced_accuracy")]


def test_a_run_moved_to_another_machine_resumes_bit_identical(tmp_path):
    """What a results store commits (config, log, environment, last.pt) is all a fresh clone needs."""
    whole = supcon(tmp_path / "a", "whole", "optim.epochs=3")
    sliced = supcon(tmp_path / "a", "sliced", "optim.epochs=3", "run.stop_after_epochs=2")
    moved = tmp_path / "fresh_clone" / "results" / "sliced"
    for name in PORTABLE_RUN_FILES:
        if (sliced / name).exists():
            (moved / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(sliced / name, moved / name)
    shutil.rmtree(sliced)  # nothing of the first machine is left
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(moved), "run.stop_after_epochs=5"]) == 0
    a, b = (torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (whole, moved))
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert final_test(moved) == final_test(whole)


def test_resume_may_change_the_data_place_and_budget_only(tmp_path, capsys):
    run = supcon(tmp_path, "r", "run.stop_after_epochs=1")
    capsys.readouterr()
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(run), "optim.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "override 'optim.lr=0.5'" in err and "data.root, run.stop_after_epochs" in err and "new run" in err
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(run), "run.stop_after_minutes=-1"]) == 2
    assert "run.stop_after_minutes must be > 0" in capsys.readouterr().err
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1  # refused: nothing ran


def test_resume_may_change_the_precision_and_each_epoch_records_its_own(tmp_path, capsys):
    run = supcon(tmp_path, "moved", "optim.epochs=3", "train.amp=bf16", "run.stop_after_epochs=1")
    resumed = ["--resume", str(run), "train.amp=off", "run.stop_after_epochs=5"]
    assert main(SupConConfig, run_supcon, "stage 1", resumed) == 0
    assert [r["precision"] for r in read_jsonl(run / "metrics.jsonl")] == ["bf16", "fp32", "fp32"]
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(run), "train.amp=fp32"]) == 2
    assert "train.amp must be one of ['off', 'auto', 'bf16', 'fp16'], got 'fp32'" in capsys.readouterr().err


@pytest.mark.parametrize("cpu_bf16, expected", [(True, "bf16"), (False, "off")])
def test_amp_auto_is_bf16_only_where_the_cpu_runs_it_fast(monkeypatch, cpu_bf16, expected):
    monkeypatch.setattr(engine, "cpu_has_bf16_kernels", lambda: cpu_bf16)
    cpu = torch.device("cpu")
    assert engine.resolve_precision("auto", cpu) == expected
    assert [engine.resolve_precision(amp, cpu) for amp in ("off", "bf16")] == ["off", "bf16"]  # as asked


def test_bf16_on_a_cpu_without_bf16_kernels_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(training, "cpu_has_bf16_kernels", lambda: False)
    with caplog.at_level("WARNING", logger="bcl.training"):
        supcon(tmp_path, "slow", "optim.epochs=1", "train.amp=bf16")
    assert "train.amp=bf16 on a CPU without bf16 kernels" in caplog.text and "train.amp=auto" in caplog.text


# --- bad input: clear errors, nothing lost --------------------------------------------------------


def test_existing_run_folder_is_refused_and_kept(tmp_path, capsys):
    run = supcon(tmp_path, "taken", "optim.epochs=1")
    before = (run / "metrics.json").read_text()
    supcon(tmp_path, "taken", "optim.epochs=1", expect=2)
    err = capsys.readouterr().err
    assert "taken" in err and "--resume" in err and "run.overwrite=true" in err
    assert (run / "metrics.json").read_text() == before


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(SupConConfig, run_supcon, "stage 1", ["--resume", str(tmp_path / "empty")]) == 2
    assert "last.pt" in capsys.readouterr().err


def test_stage2_refuses_a_checkpoint_that_is_not_stage1(tmp_path, capsys):
    baseline = linear(tmp_path, "ce", "optim.epochs=1", "model.finetune=true")
    linear(tmp_path, "probe", f"model.stage1_checkpoint={baseline / 'checkpoints' / 'last.pt'}", expect=2)
    assert "is not a train_supcon.py (stage-1) checkpoint" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    linear(tmp_path, "probe2", f"model.stage1_checkpoint={garbage}", expect=2)
    assert "could not be loaded" in capsys.readouterr().err


def test_stage2_refuses_a_stage1_encoder_trained_on_another_split_or_normalisation(tmp_path, capsys):
    stage1 = supcon(tmp_path, "s1", "optim.epochs=1")
    linear(tmp_path, "leaky", f"model.stage1_checkpoint={stage1 / 'checkpoints' / 'best.pt'}", "data.split_seed=1",
           expect=2)
    assert "different split" in capsys.readouterr().err
    linear(tmp_path, "renormalised", f"model.stage1_checkpoint={stage1 / 'checkpoints' / 'best.pt'}",
           "data.normalization=cifar10", expect=2)
    assert "normalised with 'imagenet'; set data.normalization=imagenet" in capsys.readouterr().err


def test_missing_dataset_path_fails_before_training(tmp_path, capsys):
    linear(tmp_path, "nodata", "model.finetune=true", "data.dataset=mvtec", f"data.root={tmp_path / 'nowhere'}",
           expect=2)
    assert "nowhere" in capsys.readouterr().err
    linear(tmp_path, "noroot", "model.finetune=true", "data.dataset=mvtec", expect=2)
    assert "data.root" in capsys.readouterr().err


def test_a_class_without_training_images_is_an_error(tmp_path, capsys):
    linear(tmp_path, "tiny", "model.finetune=true", "data.synthetic_counts=[16,6,6,6,0]", expect=2)
    assert "misplaced" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()  # a bad setting leaves no half-made run folder


def test_imagenet_configs_fail_fast_with_downloads_off_and_no_cached_weights(tmp_path, capsys, hub_dir):
    start = time.monotonic()
    argv = ["--config", str(ROOT / "configs" / "coursework_r18_32px_50ep.yaml"), "data.dataset=synthetic",
            f"run.output_dir={tmp_path}", "model.allow_download=false"]  # never the network, even where there is one
    assert main(LinearConfig, run_linear, "stage 2", argv) == 2
    err = capsys.readouterr().err
    assert "ImageNet weights" in err and "resnet18-f37072fd.pth" in err
    assert time.monotonic() - start < 30


def test_print_config_shows_the_resolved_config(capsys):
    argv = ["--config", str(ROOT / "configs" / "main_supcon.yaml"), "optim.epochs=7", "--print-config"]
    assert main(SupConConfig, run_supcon, "stage 1", argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["epochs"] == 7 and printed["loss"]["name"] == "bcl"


def test_non_finite_loss_stops_the_run_naming_step_and_term(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    original = run_supcon.__globals__["BalancedSupCon"].forward

    def poisoned(self, features, labels, prototypes=None):
        calls["n"] += 1
        loss = original(self, features, labels, prototypes)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(run_supcon.__globals__["BalancedSupCon"], "forward", poisoned)
    supcon(tmp_path, "nan", expect=2)
    assert re.search(r"non-finite loss at epoch \d+, step \d+: the 'contrastive' term is nan", capsys.readouterr().err)


def test_stage1_checkpoint_whose_weights_do_not_fit_its_architecture(tmp_path, capsys):
    stage1 = supcon(tmp_path, "s1", "optim.epochs=1")
    checkpoint = torch.load(stage1 / "checkpoints" / "best.pt", weights_only=True)
    checkpoint["encoder"]["name"] = "resnet34"  # claims another architecture
    torch.save(checkpoint, tmp_path / "mislabelled.pt")
    linear(tmp_path, "probe", f"model.stage1_checkpoint={tmp_path / 'mislabelled.pt'}", expect=2)
    assert "do not fit resnet34" in capsys.readouterr().err


def test_a_missing_stage1_checkpoint_is_named_by_its_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.stage1_checkpoint '.*nowhere.pt' does not exist"):
        load_stage1_encoder(str(tmp_path / "nowhere.pt"))


def test_stage1_checkpoint_without_an_encoder_record_takes_its_config(tmp_path, capsys):
    """Checkpoints written before they recorded their encoder still load: the architecture is the config's."""
    stage1 = supcon(tmp_path, "s1", "optim.epochs=1")
    checkpoint = torch.load(stage1 / "checkpoints" / "last.pt", weights_only=True)
    del checkpoint["encoder"]
    torch.save(checkpoint, tmp_path / "older.pt")
    encoder, cfg = load_stage1_encoder(str(tmp_path / "older.pt"))
    assert encoder.name == cfg.model.encoder
    checkpoint["config"]["model"]["encoder"] = "resnet34"
    torch.save(checkpoint, tmp_path / "mislabelled.pt")
    linear(tmp_path, "probe", f"model.stage1_checkpoint={tmp_path / 'mislabelled.pt'}", expect=2)
    assert "do not fit resnet34" in capsys.readouterr().err
