"""The pieces the training loop uses.

Device, per-epoch seeding, loaders, optimiser and schedule, the finite-loss check, feature extraction and
evaluation.

Every epoch's randomness (loader order, sampler, augmentations) is a function of (seed, epoch), so a
run resumed from an epoch checkpoint continues exactly as if it had never stopped. The data a config
asks for (dataset, parts, pasted defects) is made in :mod:`bcl.datasets`.
"""

from __future__ import annotations

import logging
import math
import random
import sys
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from bcl.config import ConfigError, EvalConfig, OptimConfig, RunConfig, SamplerConfig
from bcl.data import ImageClassificationDataset, eval_transform, seed_worker
from bcl.distributed import rank_seed
from bcl.metrics import GOOD_CLASS, GOOD_CLASS_METRICS, classification_metrics, knn_metrics
from bcl.samplers import ClassAwareSampler

__all__ = [
    "cpu_has_bf16_kernels",
    "resolve_precision",
    "NonFiniteLossError",
    "resolve_device",
    "seed_for_epoch",
    "seed_epoch",
    "steps_per_epoch",
    "train_loader",
    "eval_loader",
    "build_optimizer",
    "build_scheduler",
    "check_finite",
    "progress",
    "extract",
    "evaluate",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or Inf; the run stops rather than train on garbage."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but no CUDA device is available; use run.device=cpu or auto")
    return torch.device(name)


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (AVX-512 BF16 / AMX class instructions).

    Without them bf16 autocast on a CPU falls back to slow reference code: a ResNet-32 training step of
    128 CIFAR images took 37 s in bf16 against 3 s in float32 on a 2-core AVX2 AMD EPYC (one thread, two
    other jobs running, the same for both).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_precision(amp: str, device: torch.device) -> str:
    """The autocast mode ``train.amp`` means on ``device``: ``off``, ``bf16`` or ``fp16``.

    ``auto`` is bf16 where the hardware runs it fast (a CUDA device with bf16, a CPU with
    :func:`cpu_has_bf16_kernels`) and float32 (``off``) elsewhere; the other values are taken as given.
    """
    if amp != "auto":
        return amp
    fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16_kernels()
    return "bf16" if fast else "off"


def seed_for_epoch(seed: int, epoch: int) -> int:
    """Seeds torch, numpy and ``random`` from (seed, epoch) and returns the derived seed."""
    derived = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)
    return derived


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    """Seeds torch, numpy and ``random`` for one epoch of one process and returns the seed its loader takes.

    The training loop calls it at the start of every epoch, so every draw of the epoch (augmentations,
    loader order, dropout) is a function of (seed, epoch, rank) and a resumed run repeats the
    uninterrupted one. Ranks get distinct streams (:func:`~bcl.distributed.rank_seed`) so they do not
    augment alike.
    """
    return seed_for_epoch(rank_seed(seed, rank), epoch)


def _train_sampler(dataset: ImageClassificationDataset, sampler_cfg: SamplerConfig, seed: int, epoch: int,
                   generator: Optional[torch.Generator], rank: int, world_size: int):
    if sampler_cfg.kind == "class_aware":
        sampler = ClassAwareSampler(dataset.targets, q=sampler_cfg.q, seed=seed, num_replicas=world_size, rank=rank)
        sampler.set_epoch(epoch)
    elif world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return sampler


def steps_per_epoch(dataset: ImageClassificationDataset, batch_size: int, sampler_cfg: SamplerConfig, seed: int = 0,
                    rank: int = 0, world_size: int = 1) -> int:
    """The number of batches :func:`train_loader` gives per epoch (the same for every epoch), drawing nothing."""
    size = len(_train_sampler(dataset, sampler_cfg, seed, 0, None, rank, world_size))
    return size // min(batch_size, size) if size else 0


def train_loader(
    dataset: ImageClassificationDataset,
    batch_size: int,
    sampler_cfg: SamplerConfig,
    seed: int,
    epoch: int,
    epoch_seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A training loader whose order depends only on (seed, epoch) (and the rank's shard).

    Args:
        dataset: The training part, with its training transform.
        batch_size: Per process.
        sampler_cfg: Instance or class-aware sampling.
        seed: The run seed (the samplers' shared order across ranks).
        epoch: The epoch (0-based).
        epoch_seed: What :func:`seed_epoch` returned for this epoch and rank: it seeds shuffling and
            every worker's augmentations.
        num_workers: DataLoader workers.
        rank: This process's rank; with several processes every rank takes a disjoint shard of one
            shared order.
        world_size: The number of processes.
    """
    generator = torch.Generator().manual_seed(epoch_seed)
    sampler = _train_sampler(dataset, sampler_cfg, seed, epoch, generator, rank, world_size)
    # A last batch of one image would break BatchNorm; dropping it costs < batch_size images an epoch.
    batch_size = min(batch_size, len(sampler))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
        worker_init_fn=seed_worker, generator=generator, persistent_workers=False,
    )


def eval_loader(dataset: ImageClassificationDataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A loader over ``dataset`` in order (no shuffling, last partial batch kept), for evaluation."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def build_optimizer(model: Union[nn.Module, Iterable[nn.Parameter]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters of ``model`` (a module, or its parameters).

    With ``cfg.backbone_lr_scale < 1`` the parameters of ``model.encoder`` form a group with learning rate
    ``cfg.lr * backbone_lr_scale`` and all others (the heads) a group with ``cfg.lr``; the schedule of
    :func:`build_scheduler` multiplies each group's own rate, so the ratio holds all along. At 1.0 there
    is one group, as in checkpoints written before the setting existed.

    Raises:
        ValueError: ``backbone_lr_scale < 1`` but ``model`` is not a module with an ``encoder``.
    """
    params = [p for p in (model.parameters() if isinstance(model, nn.Module) else model) if p.requires_grad]
    groups: List[Dict] = [{"params": params}]
    if cfg.backbone_lr_scale != 1.0:
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise ValueError("optim.backbone_lr_scale < 1 needs a model with an .encoder to tell backbone from heads")
        backbone = {id(p) for p in encoder.parameters()}
        groups = [{"params": [p for p in params if id(p) in backbone], "lr": cfg.lr * cfg.backbone_lr_scale},
                  {"params": [p for p in params if id(p) not in backbone], "lr": cfg.lr}]
        groups = [g for g in groups if g["params"]]  # a frozen encoder (linear probe) has none
        logger.info("learning rates: encoder %g, heads %g", cfg.lr * cfg.backbone_lr_scale, cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
    """The per-step schedule: linear warmup, then cosine decay to 0, constant, or step decay at ``decay_epochs``.

    Returns:
        A :class:`~torch.optim.lr_scheduler.LambdaLR` over ``optimizer`` (its state is saved in checkpoints).
    """
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":  # times decay_factor from the first step of each decay epoch on
            return cfg.decay_factor ** sum(step >= epoch * steps_per_epoch for epoch in cfg.decay_epochs)
        progress_done = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress_done, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite(terms: Dict[str, torch.Tensor], epoch: int, step: int) -> None:
    """Stops the run on the first non-finite loss term, saying which term, epoch and step."""
    for name, value in terms.items():
        if not bool(torch.isfinite(value)):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {step + 1}: the '{name}' term is {value.item()}; "
                "lower optim.lr or check the data"
            )


def progress(iterable, run_cfg: RunConfig, description: str, total: Optional[int] = None):
    """Wraps ``iterable`` in a tqdm bar when asked for and stderr is a terminal; the plain iterable otherwise."""
    enabled = run_cfg.progress and sys.stderr.isatty()
    return tqdm(iterable, desc=description, total=total, leave=False, dynamic_ncols=True, disable=not enabled)


@torch.no_grad()
def extract(model: nn.Module, dataset: ImageClassificationDataset, image_size: int, device: torch.device,
            batch_size: int = 64, normalization: str = "imagenet") -> Dict[str, torch.Tensor]:
    """Features and logits of every image (evaluation transform, model in eval mode), on the CPU.

    ``model(images)`` must return a dict with ``features`` and ``logits``; ``normalization`` names the
    (mean, std) pair the model was trained with (``data.normalization``).
    """
    was_training = model.training
    model.eval()
    view = ImageClassificationDataset(dataset.class_names, dataset.samples, dataset.images,
                                        eval_transform(image_size, normalization))
    features, logits = [], []
    for images, _ in eval_loader(view, batch_size):
        out = model(images.to(device))
        features.append(out["features"].float().cpu())
        logits.append(out["logits"].float().cpu())
    model.train(was_training)
    return {"features": torch.cat(features), "logits": torch.cat(logits),
            "labels": torch.as_tensor(dataset.targets, dtype=torch.long)}


def evaluate(
    outputs: Dict[str, torch.Tensor],
    reference: Dict[str, torch.Tensor],
    class_names: List[str],
    train_counts: List[int],
    eval_cfg: EvalConfig,
    classifier: bool = True,
) -> Dict[str, object]:
    """Classifier metrics (argmax of raw logits) and kNN metrics of ``outputs`` against ``reference``.

    ``reference`` holds the training images' features (the kNN memory and the ``good`` embeddings for
    the anomaly AUROC). Returns a JSON-serialisable dict.
    """
    labels = outputs["labels"].numpy()
    metrics: Dict[str, object] = {}
    if classifier:
        probabilities = F.softmax(outputs["logits"], dim=1).numpy()
        metrics.update(classification_metrics(
            labels, outputs["logits"].argmax(1).numpy(), class_names, train_counts=train_counts, scores=probabilities
        ))
    metrics.update(knn_metrics(
        reference["features"].numpy(), reference["labels"].numpy(), outputs["features"].numpy(), labels,
        class_names, k=eval_cfg.knn_k, temperature=eval_cfg.knn_temperature,
    ))
    if class_names[0] != GOOD_CLASS:
        # Head / tail recall and the good-vs-defect AUROC read class 0 as the good class; without one
        # (CIFAR, a user's folders) they would be numbers about "airplane" under a misleading name.
        for key in GOOD_CLASS_METRICS:
            metrics.pop(key, None)
    return metrics
