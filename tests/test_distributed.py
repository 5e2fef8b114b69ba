"""Two processes on Gloo give the single-process answer on the combined batch; torchrun runs both scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from bcl.losses import BalancedSupCon, LogitAdjustedLoss, SupConLoss
from bcl.stages import stage1_objective
from process_launch import free_port, launch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
WORLD = 2


def start(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)


def global_batch():
    """8 images x 2 views; rank 0 holds classes {0, 1, 3}, rank 1 holds {1, 2}.

    So class 3 is only on rank 0, class 2 only on rank 1, and the per-rank class counts differ.
    """
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, 2, 6, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 0, 1, 3, 1, 2, 2, 2])
    prototypes = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    return features, labels, prototypes


def losses():
    return {
        "bcl": lambda f, y, p, gather: BalancedSupCon(0.5, gather=gather)(f, y, p),
        "supcon": lambda f, y, p, gather: SupConLoss(0.5, gather=gather)(f, y),
        "simclr": lambda f, y, p, gather: SupConLoss(0.5, gather=gather)(f),
    }


def gathered_loss_worker(rank: int, port: int, out: str) -> None:
    start(rank, port)
    features, labels, prototypes = global_batch()
    half = slice(4 * rank, 4 * rank + 4)
    results = {}
    for name, loss_fn in losses().items():
        local = features[half].clone().requires_grad_(True)
        protos = prototypes.clone().requires_grad_(True)
        loss = loss_fn(local, labels[half], protos, True)
        loss.backward()
        proto_grad = protos.grad if protos.grad is not None else torch.zeros_like(protos)
        results[name] = {"loss": loss.detach(), "grad": local.grad, "proto_grad": proto_grad}
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_the_single_process_combined_batch(tmp_path):
    launch(gathered_loss_worker, (free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    features, labels, prototypes = global_batch()
    for name, loss_fn in losses().items():
        full = features.clone().requires_grad_(True)
        protos = prototypes.clone().requires_grad_(True)
        expected = loss_fn(full, labels, protos, False)
        expected.backward()
        # Each rank's gradient is WORLD times the global loss's, so DDP's mean over ranks is exactly it.
        for rank, result in enumerate(ranks):
            torch.testing.assert_close(result[name]["loss"], expected.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(result[name]["grad"] / WORLD, full.grad[4 * rank: 4 * rank + 4],
                                       rtol=1e-10, atol=1e-12)
        # prototypes are appended once and identical on every rank: the mean of their gradients is the global one
        proto_grad = protos.grad if protos.grad is not None else torch.zeros_like(protos)
        torch.testing.assert_close((ranks[0][name]["proto_grad"] + ranks[1][name]["proto_grad"]) / WORLD, proto_grad,
                                   rtol=1e-10, atol=1e-12)


class TinyJointModel(nn.Module):
    """Encoder, projection head, classifier and learned prototypes, without BatchNorm.

    Per-rank batch statistics would differ from the combined batch's unless SyncBatchNorm is used.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.projection = nn.Linear(16, 8)
        self.classifier = nn.Linear(16, 4)
        self.prototypes = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):  # the outputs BCLModel gives the stage objective
        h = self.encoder(x)
        return {"projections": self.projection(h), "logits": self.classifier(h), "prototypes": self.prototypes}


def joint_step_loss(model, x, y, gather):
    """The library's own stage-1 objective, unscaled: the loss itself is DDP-correct."""
    objective, _ = stage1_objective(model(x), y, BalancedSupCon(0.5, gather=gather),
                                    LogitAdjustedLoss([2, 2, 3, 1]), alpha=1.0, beta=0.5, joint=True)
    return objective


def ddp_worker(rank: int, port: int, out: str) -> None:
    start(rank, port)
    model = nn.parallel.DistributedDataParallel(TinyJointModel().double())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    features, labels, _ = global_batch()
    for step in range(3):
        x = features[4 * rank: 4 * rank + 4] + 0.1 * step
        optimizer.zero_grad()
        joint_step_loss(model, x, labels[4 * rank: 4 * rank + 4], True).backward()
        optimizer.step()
    torch.save(model.module.state_dict(), f"{out}/ddp{rank}.pt")
    dist.destroy_process_group()


def test_ddp_parameters_after_steps_equal_a_single_process_run(tmp_path):
    launch(ddp_worker, (free_port(), str(tmp_path)), nprocs=WORLD)
    model = TinyJointModel().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    features, labels, _ = global_batch()
    for step in range(3):
        optimizer.zero_grad()
        joint_step_loss(model, features + 0.1 * step, labels, False).backward()
        optimizer.step()
    for rank in range(WORLD):
        trained = torch.load(tmp_path / f"ddp{rank}.pt")
        for key, value in model.state_dict().items():
            torch.testing.assert_close(trained[key], value, rtol=1e-10, atol=1e-12)


# --- torchrun end to end on CPU ----------------------------------------------------------------------

TINY = ["data.synthetic_counts=[16,6,6,6,6]", "data.image_size=32", "data.n_folds=2", "data.val_fraction=0.2",
        "optim.epochs=2", "optim.warmup_epochs=1", "optim.batch_size=8", "eval.knn_k=5",
        "eval.projector_per_class=2", "eval.thumbnail_size=16", "run.progress=false"]


def torchrun(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
               str(ROOT / script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_torchrun_two_processes_runs_both_scripts(tmp_path):
    stage1 = torchrun("train_supcon.py", *TINY, "model.proj_dim=16", f"run.output_dir={tmp_path}", "run.name=s1")
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    metrics = json.loads((tmp_path / "s1" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and 0 <= metrics["test"]["balanced_accuracy"] <= 1
    assert stage1.stdout.count("stage 1 (bcl, joint) test") == 1  # only rank 0 reports

    stage2 = torchrun("train_linear.py", *TINY, f"run.output_dir={tmp_path}", "run.name=probe",
                      f"model.stage1_checkpoint={tmp_path / 's1' / 'checkpoints' / 'best.pt'}")
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["encoder_frozen"] is True


def test_torchrun_refuses_a_batch_the_world_size_does_not_divide(tmp_path):
    result = torchrun("train_supcon.py", *TINY, "optim.batch_size=7", "model.proj_dim=16", f"run.output_dir={tmp_path}")
    assert result.returncode != 0
    assert "7" in result.stderr and "world size" in result.stderr.lower()
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


def test_checkpoint_of_two_processes_resumes_in_one(tmp_path):
    first = torchrun("train_supcon.py", *TINY, "model.proj_dim=16", "run.stop_after_epochs=1",
                     f"run.output_dir={tmp_path}", "run.name=n2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "n2" / "metrics.json").exists()
    resumed = subprocess.run([sys.executable, str(ROOT / "train_supcon.py"), "--resume", str(tmp_path / "n2")],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "saved by 2 process(es) with 1" in resumed.stderr
    assert json.loads((tmp_path / "n2" / "metrics.json").read_text())["world_size"] == 1


@pytest.mark.parametrize("script, extra", [
    ("train_supcon.py", ["model.proj_dim=16"]),
    ("train_linear.py", ["model.finetune=true", "train.channels_last=true"]),
])
def test_bf16_autocast_on_cpu_trains_with_finite_losses(tmp_path, script, extra):
    result = subprocess.run([sys.executable, str(ROOT / script), *TINY, *extra, "train.amp=bf16",
                             f"run.output_dir={tmp_path}", "run.name=bf16"], capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(record["train_loss"])) for record in log)


@pytest.mark.parametrize("setting, message", [
    ("train.sync_batchnorm=true", "SyncBatchNorm works only on GPU"),
    ("train.amp=fp16", "train.amp=fp16 needs a CUDA device"),
])
def test_gpu_only_settings_fail_clearly_on_cpu(tmp_path, setting, message):
    result = subprocess.run([sys.executable, str(ROOT / "train_linear.py"), *TINY, setting, "run.device=cpu",
                             f"run.output_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 2 and message in result.stderr
    assert not any(tmp_path.iterdir())  # refused before any run folder was made
