"""Tests for bcl.runs: run folders, atomic checkpoints, logs, metrics and the environment record."""

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import bcl.checkpoints as checkpoints
from bcl.checkpoints import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    check_checkpoint_safe,
    checkpoint_safe,
)
from bcl.provenance import environment_info, git_info
from bcl.runs import PORTABLE_RUN_FILES, RunDir, RunExistsError, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def state(epoch=1):
    torch.manual_seed(epoch)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": "a: 1\n"}


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


# Run folders ----------------------------------------------------------------------------------------


def test_new_run_creates_the_layout(tmp_path):
    run = RunDir.open(tmp_path / "out", "r1")
    assert run.path == tmp_path / "out" / "r1"
    assert run.checkpoint_dir == run.path / "checkpoints" and run.checkpoint_dir.is_dir()
    assert run.tensorboard_dir == run.path / "tensorboard" and run.tensorboard_dir.is_dir()
    assert run.log_path == run.path / "metrics.jsonl"
    assert run.metrics_path == run.path / "metrics.json"
    assert run.config_path == run.path / "config.yaml"
    run.save_config("model:\n  arch: resnet18\n")
    assert run.config_path.read_text() == "model:\n  arch: resnet18\n"


def test_new_run_accepts_an_existing_empty_folder(tmp_path):
    (tmp_path / "r1").mkdir()
    assert RunDir.open(tmp_path, "r1").checkpoint_dir.is_dir()


def test_existing_run_is_refused_with_both_ways_out(tmp_path):
    run = RunDir.open(tmp_path, "r1")
    run.save_config("a: 1\n")
    with pytest.raises(RunExistsError) as info:
        RunDir.open(tmp_path, "r1")
    message = str(info.value)
    assert str(run.path) in message and "--resume" in message and "run.overwrite=true" in message
    assert isinstance(info.value, FileExistsError)
    assert run.config_path.read_text() == "a: 1\n"  # untouched


def test_resume_needs_the_folder_and_last_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        RunDir.open(tmp_path, "missing", mode="resume")
    run = RunDir.open(tmp_path, "r1")
    with pytest.raises(FileNotFoundError) as info:
        RunDir.open(tmp_path, "r1", mode="resume")
    assert str(run.checkpoint_dir / "last.pt") in str(info.value)
    run.save_checkpoint({"epoch": 3})
    assert RunDir.open(tmp_path, "r1", mode="resume").load_checkpoint()["epoch"] == 3


def test_overwrite_moves_the_old_run_aside(tmp_path, caplog):
    run = RunDir.open(tmp_path, "r1")
    run.save_checkpoint({"epoch": 7})
    run.append_log({"epoch": 7})
    with caplog.at_level(logging.WARNING, logger="bcl.runs"):
        fresh = RunDir.open(tmp_path, "r1", mode="overwrite")
    assert fresh.path == run.path and not fresh.checkpoint_path().exists() and not fresh.log_path.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r1.replaced-")]
    assert len(aside) == 1 and re.fullmatch(r"r1\.replaced-\d{8}T\d{6}Z", aside[0].name)
    old = RunDir(aside[0])
    assert old.load_checkpoint()["epoch"] == 7 and old.read_log() == [{"epoch": 7}]
    assert str(aside[0]) in caplog.text
    # A second replacement within the same second gets its own name; nothing is lost.
    fresh.save_checkpoint({"epoch": 8})
    RunDir.open(tmp_path, "r1", mode="overwrite")
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("r1.replaced-")]) == 2


def test_overwrite_of_a_missing_run_just_creates_it(tmp_path):
    assert RunDir.open(tmp_path, "r1", mode="overwrite").path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_bad_names_and_modes(tmp_path, name):
    with pytest.raises(ValueError, match="one non-empty path component"):
        RunDir.open(tmp_path, name)
    with pytest.raises(ValueError, match="'new', 'resume', 'overwrite'"):
        RunDir.open(tmp_path, "r1", mode="continue")


# Checkpoints ----------------------------------------------------------------------------------------


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    run = RunDir.open(tmp_path, "r1")
    saved = state()
    path = run.save_checkpoint(saved)
    assert path == run.checkpoint_dir / "last.pt"
    assert_same(saved, torch.load(path, weights_only=True))
    assert_same(saved, run.load_checkpoint())
    run.save_checkpoint(saved, "best.pt")
    assert_same(saved, run.load_checkpoint("best.pt"))
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["best.pt", "last.pt"]


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunDir.open(tmp_path, "r1")
    first = state(epoch=1)
    run.save_checkpoint(first)
    before = (run.checkpoint_dir / "last.pt").read_bytes()
    real_save = torch.save

    def dies_half_way(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip archive")  # some bytes reach the disk ...
        raise KeyboardInterrupt  # ... then the run is killed

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint(state(epoch=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in run.checkpoint_dir.iterdir()] == ["last.pt"]  # no temp file left
    assert (run.checkpoint_dir / "last.pt").read_bytes() == before
    assert_same(first, run.load_checkpoint())


def test_interrupted_text_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "config.yaml", "old\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    run = RunDir.open(tmp_path, "r1")
    with pytest.raises(FileNotFoundError, match=re.escape(str(run.checkpoint_dir / "best.pt"))):
        run.load_checkpoint("best.pt")
    run.save_checkpoint(state())
    path = run.checkpoint_dir / "last.pt"
    data = path.read_bytes()
    for bad in (data[: len(data) // 2], b"", b"not a checkpoint at all"):
        path.write_bytes(bad)
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*(unreadable or corrupt)"):
            run.load_checkpoint()


def test_unsafe_contents_are_refused_at_save_time(tmp_path):
    run = RunDir.open(tmp_path, "r1")
    with pytest.raises(TypeError, match=r"state\['sampler'\]\['counts'\] is a numpy.ndarray"):
        run.save_checkpoint({"epoch": 1, "sampler": {"counts": np.array([3, 1])}})
    with pytest.raises(TypeError, match=r"state\['lr'\] is a numpy.float64"):
        run.save_checkpoint({"lr": np.float64(0.1)})
    with pytest.raises(TypeError, match=r"state\['fn'\]"):
        run.save_checkpoint({"fn": len})
    assert not run.checkpoint_path().exists()
    # checkpoint_safe converts such values, and the result round-trips with weights_only.
    converted = checkpoint_safe({"sampler": {"counts": np.array([3, 1])}, "lr": np.float64(0.1), "p": Path("x")})
    check_checkpoint_safe(converted)
    run.save_checkpoint(converted)
    loaded = run.load_checkpoint()
    assert loaded["sampler"]["counts"].tolist() == [3, 1] and loaded["lr"] == 0.1 and loaded["p"] == "x"


def test_shared_values_are_saved_and_only_a_true_cycle_is_refused(tmp_path):
    # two param groups (optim.backbone_lr_scale < 1) share the optimiser's one `betas` tuple
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.Adam([{"params": model[0].parameters(), "lr": 1e-4}, {"params": model[1].parameters()}])
    groups = optimizer.state_dict()["param_groups"]
    assert groups[0]["betas"] is groups[1]["betas"]
    run = RunDir.open(tmp_path, "r1")
    run.save_checkpoint({"optimizer": optimizer.state_dict()})
    assert run.load_checkpoint()["optimizer"]["param_groups"][1]["betas"] == (0.9, 0.999)
    cycle = {"a": [1]}
    cycle["a"].append(cycle)
    with pytest.raises(TypeError, match=r"state\['a'\]\[1\] contains itself"):
        check_checkpoint_safe(cycle)


def test_a_checkpoint_with_objects_names_the_allowed_contents(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"counts": np.array([1, 2])}, path)  # written without bcl's check
    with pytest.raises(CheckpointError, match="weights_only=True.*refuses.*tensors, None, bool"):
        checkpoints.load_checkpoint_file(path)


def test_atomic_torch_save_helper(tmp_path):
    path = atomic_torch_save({"x": torch.arange(3)}, tmp_path / "sub" / "a.pt")
    assert torch.load(path, weights_only=True)["x"].tolist() == [0, 1, 2]


# Random number generator states ---------------------------------------------------------------------


# Logs and metrics -----------------------------------------------------------------------------------


def test_jsonl_log_append_and_read_back(tmp_path, caplog):
    run = RunDir.open(tmp_path, "r1")
    assert run.read_log() == []
    run.append_log({"epoch": 0, "loss": 1.5, "acc": np.float32(0.25), "per_class": torch.tensor([1, 2])})
    # Flushed at once: visible to another reader before anything else happens.
    assert json.loads(run.log_path.read_text().splitlines()[0])["acc"] == 0.25
    with caplog.at_level(logging.WARNING, logger="bcl.runs"):
        run.append_log({"epoch": 1, "loss": float("nan"), "note": "ünïcode"})
    assert "record['loss']" in caplog.text
    assert run.read_log() == [
        {"epoch": 0, "loss": 1.5, "acc": 0.25, "per_class": [1, 2]},
        {"epoch": 1, "loss": None, "note": "ünïcode"},
    ]
    with pytest.raises(TypeError, match=r"record\['bad'\]"):
        run.append_log({"bad": object()})


def test_jsonl_recovers_from_a_partial_last_line(tmp_path):
    run = RunDir.open(tmp_path, "r1")
    run.append_log({"epoch": 0})
    with open(run.log_path, "a") as handle:
        handle.write('{"epoch": 1, "lo')  # killed mid-write
    assert run.read_log() == [{"epoch": 0}]
    run.append_log({"epoch": 1})  # after resuming: starts on a fresh line
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_jsonl(run.log_path)  # the partial line is now in the middle: an error, not silence


def test_metrics_json(tmp_path):
    run = RunDir.open(tmp_path, "r1")
    metrics = {"test": {"balanced_accuracy": np.float64(0.75), "per_class": np.array([1.0, 0.5])}, "a": 1}
    run.write_metrics(metrics)
    text = run.metrics_path.read_text()
    assert json.loads(text) == {"a": 1, "test": {"balanced_accuracy": 0.75, "per_class": [1.0, 0.5]}}
    assert text.index('"a"') < text.index('"test"') and "\n  " in text  # sorted, indented


# Environment ----------------------------------------------------------------------------------------


def test_environment_json(tmp_path):
    run = RunDir.open(tmp_path, "r1")
    info = run.write_environment()
    on_disk = json.loads((run.path / "environment.json").read_text())
    assert on_disk == json.loads(json.dumps(info))
    for key in ("start_time_utc", "hostname", "platform", "python", "versions", "git", "argv"):
        assert key in on_disk
    versions = on_disk["versions"]
    assert versions["torch"] == torch.__version__ and versions["numpy"] == np.__version__
    assert set(versions) >= {"bcl", "torch", "torchvision", "numpy", "faiss", "scikit-learn"}
    assert on_disk["start_time_utc"].endswith("+00:00")


def test_git_info_outside_and_inside_a_checkout(tmp_path):
    assert git_info(tmp_path) == {"commit": None, "dirty": None, "root": None}
    assert environment_info(tmp_path)["git"]["commit"] is None
    inside = git_info(REPO / "bcl")
    if inside["commit"] is None:
        pytest.skip("the code is not a git checkout here")
    assert re.fullmatch(r"[0-9a-f]{40}", inside["commit"]) and isinstance(inside["dirty"], bool)
    assert Path(inside["root"]).resolve() == REPO


def test_atomic_files_and_run_folders_get_the_permissions_plain_open_and_mkdir_give(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "note.txt", "x")
        run = RunDir.open(tmp_path, "r")
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        assert run.path.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    finally:
        os.umask(umask)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_results_store_commits_exactly_what_a_run_needs_to_move():
    """``.gitignore`` keeps a long run's portable files under ``results/cifar10lt/`` and nothing else of it."""
    root = Path(__file__).resolve().parents[1]

    def ignored(path):
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root)
        assert done.returncode in (0, 1), f"git check-ignore failed on {path}"
        return done.returncode == 0

    run = "results/cifar10lt/some-run"
    assert not any(ignored(f"{run}/{name}") for name in PORTABLE_RUN_FILES)
    left_behind = [".lock", "tensorboard/events.out.tfevents.1.host", "tensorboard/projector_config.pbtxt",
                   "checkpoints/last.pt.tmp", "features.npz"]
    assert all(ignored(f"{run}/{name}") for name in left_behind)
    assert ignored("results/mvtec/cell/metrics.json")  # other results stay out of git
