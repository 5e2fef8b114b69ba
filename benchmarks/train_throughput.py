"""How much the library's training epoch costs over a plain PyTorch loop: images/second of each, and the ratio.

For each case it builds what ``train_linear.py`` builds from the case's config (dataset and split, encoder and
classifier, cross-entropy objective, optimiser and schedule, resolved precision, ``train.channels_last``) and
times, on one copy of the initial weights each:

* library: :func:`bcl.training.train_one_epoch` over :func:`bcl.engine.train_loader` batches;
* plain: a hand-written loop over a shuffled index of the same in-memory uint8 images, the same classifier
  view per image, ``torch.stack``, autocast when bf16, ``F.cross_entropy``, ``torch.optim.SGD``; no DataLoader.

Cases: ``main`` (``configs/main_ce.yaml``: ResNet-18, 64 px, embedded synthetic data) and ``cifar``
(``configs/cifar10lt_ce.yaml``: ResNet-32, 32 px, batch 128; CIFAR-10-LT from ``BCL_CIFAR10_ROOT``, or the
synthetic data at 32 px when it is unset, as the table says). Each measurement is ``--steps`` optimiser
steps after ``--warmup``; plain and library alternate ``--repeats`` times per thread count and the best of
each is kept. Prints one markdown table: case, threads, precision, batch, plain and library img/s and
library / plain (target: at least 0.9).

Run:  OMP_NUM_THREADS=1 BCL_CIFAR10_ROOT=/path/to/cifar10_jpeg python benchmarks/train_throughput.py \
          [--cases main cifar] [--threads 1 2] [--steps 20] [--warmup 2] [--repeats 2]
A busy machine gives unstable rates; the ratio, measured in one run, is what to read.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import nn

from bcl.config import LinearConfig, load_config
from bcl.data import ImageClassificationDataset, classifier_view
from bcl.engine import (build_optimizer, build_scheduler, resolve_device, resolve_precision, seed_epoch,
                        steps_per_epoch, train_loader)
from bcl.provenance import cpu_name
from bcl.stages import ClassifierObjective, classifier_loss, stage2_model, stage_data, stage_encoder
from bcl.training import train_one_epoch

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CASES = {"main": "main_ce.yaml", "cifar": "cifar10lt_ce.yaml"}
# Without BCL_CIFAR10_ROOT the CIFAR case trains its model, batch and views on the synthetic images.
SYNTHETIC_CIFAR = ["data.dataset=synthetic", "data.root=null", "data.split=generated", "data.imbalance_factor=null"]


@dataclass
class Case:
    """One case's settings and training part, and the two copies of its model with their optimisers."""

    label: str
    cfg: Any
    device: torch.device
    precision: str  # "off", "bf16" or "fp16", as resolve_precision gives it
    batch: int
    train_set: ImageClassificationDataset  # the training part with the library's classifier view
    library: tuple  # (model, objective, optimizer, scheduler)
    plain: tuple  # (model, optimizer)


def build_case(name: str, overrides: List[str]) -> Case:
    """Builds case ``name`` the way :func:`bcl.stages.run_linear` builds stage 2."""
    synthetic = name == "cifar" and not os.environ.get("BCL_CIFAR10_ROOT")
    cfg = load_config(LinearConfig, CONFIGS / CASES[name], (SYNTHETIC_CIFAR if synthetic else []) + overrides)
    if cfg.loss.name != "ce" or cfg.optim.name != "sgd":
        raise SystemExit(f"{name}: the plain loop is cross-entropy with SGD; got loss {cfg.loss.name}, "
                         f"optimiser {cfg.optim.name}")
    dataset, splits = stage_data(cfg)
    torch.manual_seed(cfg.run.seed)
    model = stage2_model(cfg, stage_encoder(cfg.model), len(dataset.class_names))
    plain_model = copy.deepcopy(model)  # the same initial weights, before either trains
    device = resolve_device(cfg.run.device)
    for copy_ in (model, plain_model):
        copy_.to(device)
        if cfg.train.channels_last:
            copy_.to(memory_format=torch.channels_last)
    train_set = dataset.subset(splits.train)
    train_set.transform = classifier_view(cfg.data.image_size, tuple(cfg.data.crop_scale), cfg.data.randaugment,
                                          cfg.data.augment, cfg.data.normalization)
    batch = min(cfg.optim.batch_size, len(train_set))  # as train_loader does
    objective = ClassifierObjective(classifier_loss(cfg, splits.train_counts), cfg.loss.name).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch(train_set, batch, cfg.sampler, cfg.run.seed))
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                      weight_decay=cfg.optim.weight_decay)
    label = f"{name}: {cfg.model.encoder}, {cfg.data.image_size} px, {len(train_set)} train images"
    if synthetic:
        label += " (synthetic data: BCL_CIFAR10_ROOT unset)"
    return Case(label, cfg, device, resolve_precision(cfg.train.amp, device), batch, train_set,
                (model, objective, optimizer, scheduler), (plain_model, plain_optimizer))


class FirstSteps:
    """The first ``steps`` batches of successive epochs' :func:`~bcl.engine.train_loader`, with a ``len``.

    ``train_one_epoch`` divides its loss sums by ``len(loader)``; ``images`` counts what was handed out.
    """

    def __init__(self, case: Case, steps: int) -> None:
        self.case, self.steps, self.images = case, steps, 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        cfg, given, epoch = self.case.cfg, 0, 0
        while True:
            loader = train_loader(self.case.train_set, self.case.batch, cfg.sampler, cfg.run.seed, epoch,
                                  seed_epoch(cfg.run.seed, epoch), cfg.data.num_workers)
            for images, targets in loader:
                if given == self.steps:
                    return
                given, self.images = given + 1, self.images + len(targets)
                yield images, targets
            epoch += 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def library_rate(case: Case, steps: int, warmup: int) -> float:
    """Images/second of ``train_one_epoch`` over ``steps`` batches, after ``warmup`` untimed ones."""
    model, objective, optimizer, scheduler = case.library

    def epoch(loader: FirstSteps) -> None:
        train_one_epoch(model, objective, loader, optimizer, scheduler, None, case.device, 0, case.cfg,
                        case.precision)

    epoch(FirstSteps(case, warmup))
    loader = FirstSteps(case, steps)
    _synchronize(case.device)
    start = time.perf_counter()
    epoch(loader)
    _synchronize(case.device)
    return loader.images / (time.perf_counter() - start)


def plain_steps(case: Case, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> int:
    """``steps`` plain training steps; returns the number of images trained on."""
    images, view = case.train_set.images, case.train_set.transform  # uint8 [3, H, W] tensors, as the dataset holds
    targets = torch.tensor(case.train_set.targets)
    dtype = torch.bfloat16 if case.precision == "bf16" else torch.float16
    order, done = torch.empty(0, dtype=torch.long), 0
    model.train()
    for _ in range(steps):
        if len(order) < case.batch:  # a new epoch; the last partial batch is dropped, as train_loader does
            order = torch.randperm(len(images))
        index, order = order[:case.batch], order[case.batch:]
        x = torch.stack([view(images[i]) for i in index.tolist()]).to(case.device)
        y = targets[index].to(case.device)
        if case.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(case.device.type, dtype=dtype, enabled=case.precision != "off"):
            loss = F.cross_entropy(model(x)["logits"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += len(index)
    return done


def plain_rate(case: Case, steps: int, warmup: int) -> float:
    """Images/second of :func:`plain_steps` over ``steps`` steps, after ``warmup`` untimed ones."""
    model, optimizer = case.plain
    plain_steps(case, model, optimizer, warmup)
    _synchronize(case.device)
    start = time.perf_counter()
    done = plain_steps(case, model, optimizer, steps)
    _synchronize(case.device)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=2, help="plain / library measurement pairs; the best counts")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every case, e.g. train.amp=off")
    args = parser.parse_args()
    out = sys.stdout
    out.write(f"# library epoch vs plain PyTorch loop: torch {torch.__version__}, {cpu_name()}, "
              f"{os.cpu_count()} CPUs, {args.steps} steps after {args.warmup}, best of {args.repeats}\n\n")
    out.write("| case | threads | precision | batch | plain img/s | library img/s | library / plain |\n"
              "|---|---|---|---|---|---|---|\n")
    for name in args.cases:
        case = build_case(name, args.set)
        precision = "fp32" if case.precision == "off" else case.precision
        for threads in args.threads:
            torch.set_num_threads(threads)
            plain, library = 0.0, 0.0
            for _ in range(args.repeats):  # alternate, so a change in machine load hits both alike
                plain = max(plain, plain_rate(case, args.steps, args.warmup))
                library = max(library, library_rate(case, args.steps, args.warmup))
            out.write(f"| {case.label} | {threads} | {precision} | {case.batch} | {plain:.1f} | {library:.1f} "
                      f"| {library / plain:.3f} |\n")
            out.flush()
    out.write("\ntarget: library / plain >= 0.9\n")


if __name__ == "__main__":
    main()
