"""The training loop both stages share, shaped like DINO's.

Its pieces are :func:`train_one_epoch`, :func:`evaluate_part`, a :class:`Checkpointer`, and :func:`fit`, which
runs them for a :class:`Stage` in a run folder.

A stage (:mod:`bcl.stages`) decides *what* is trained: the model, the data, the augmentation and the
objective. This module decides *how*: device and DDP placement, per-epoch seeding, mixed precision,
the schedule, checkpoints, logs and the single evaluation on the test part at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from bcl.checkpoints import atomic_write_text
from bcl.config import config_to_dict, config_to_yaml
from bcl.data import ImageClassificationDataset
from bcl.distributed import all_reduce_sum, barrier, check_same_config, get_rank, get_world_size, is_main_process
from bcl.datasets import DataSplits
from bcl.engine import (
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    check_finite,
    cpu_has_bf16_kernels,
    evaluate,
    extract,
    progress,
    resolve_device,
    resolve_precision,
    seed_epoch,
    steps_per_epoch,
    train_loader,
)
from bcl.runs import RunDir, read_jsonl
from bcl.tensorboard import TensorBoardLogger, select_projector_indices

__all__ = ["Stage", "StageResult", "RunInterrupted", "Checkpointer", "train_one_epoch", "evaluate_part", "fit"]

logger = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM; the run folder holds its last complete epoch.

    Attributes: ``run_dir`` (the folder), ``saved_epoch`` (the epoch ``checkpoints/last.pt`` holds, 0 if
    none), ``epochs`` (the budget) and ``script`` (what resumes it); ``args[0]`` names the signal
    (``SIGINT`` or ``SIGTERM``).
    """

    def __init__(self, run_dir: Path, saved_epoch: int, epochs: int, script: str, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.run_dir, self.saved_epoch, self.epochs, self.script = run_dir, saved_epoch, epochs, script


@dataclass
class StageResult:
    """What a finished (or paused) stage leaves behind."""

    run_dir: Path
    metrics: Optional[Dict[str, Any]]  # None when the session stopped early (run.stop_after_epochs)
    completed_epochs: int


@dataclass
class Stage:
    """What a stage hands the loop.

    ``objective`` maps the model's outputs and the ``[B]`` targets of one batch to ``(loss, {term: value})``;
    the loop moves it to the device once. ``selection`` is the validation metric that picks the best epoch
    under ``eval.selection=val``.
    """

    name: str  # the checkpoint's "stage" key
    script: str  # what trains and resumes it, for messages
    label: str  # what the console and the results table call it, e.g. "stage 1 (bcl, joint)"
    cfg: Any
    model: nn.Module
    dataset: ImageClassificationDataset
    splits: DataSplits
    train_transform: Callable
    objective: nn.Module
    selection: str
    classifier_metrics: bool
    unused_parameters: bool = False  # DDP must expect parameters without gradients (an idle classifier)
    frozen_encoder: bool = False  # the training part's features never change: extract them once


def encoder_architecture(model: nn.Module) -> Dict[str, Any]:
    """What a checkpoint records of ``model.encoder`` so its weights can be rebuilt without the config."""
    return {"name": model.encoder.name, "small_image_stem": model.encoder.small_image_stem}


class Checkpointer:
    """The run's ``last.pt`` (everything a resume needs) and ``best.pt`` (the weights chosen on validation).

    Only the main process writes. ``saved_epoch`` is the epoch ``last.pt`` holds (0 before the first),
    for the message of an interrupted run.
    """

    def __init__(self, run: RunDir, stage: Stage, world_size: int) -> None:
        self.run, self.stage_name, self.world_size = run, stage.name, world_size
        self.config = config_to_dict(stage.cfg)
        self.saved_epoch = 0

    def restore(self, checkpoint: Dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, scaler: Optional[torch.amp.GradScaler]) -> Tuple[int, Dict[str, Any], float]:
        """Loads a ``last.pt`` into the training state; returns ``(epoch, best, wall time before it in s)``."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        self.saved_epoch = checkpoint["epoch"]
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != self.world_size:
            logger.warning("resuming a run saved by %d process(es) with %d: training continues, but the data "
                           "shards differ, so it will not repeat the original run exactly",
                           saved_world, self.world_size)
        return checkpoint["epoch"], checkpoint["best"], float(checkpoint.get("wall_time_s") or 0.0)

    def save(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             scaler: Optional[torch.amp.GradScaler], best: Dict[str, Any], wall_time_s: float) -> None:
        """Writes ``last.pt`` after ``epoch`` (1-based) epochs."""
        self.run.save_checkpoint({
            "stage": self.stage_name, "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "best": best, "config": self.config, "world_size": self.world_size, "wall_time_s": wall_time_s,
            "encoder": encoder_architecture(model),
        }, "last.pt")
        self.saved_epoch = epoch

    def save_best(self, epoch: int, model: nn.Module) -> None:
        """Writes ``best.pt``: the weights of the epoch validation chose."""
        self.run.save_checkpoint({"stage": self.stage_name, "epoch": epoch, "model": model.state_dict(),
                                  "config": self.config, "encoder": encoder_architecture(model)}, "best.pt")

    def load_best(self, model: nn.Module) -> None:
        """Loads ``best.pt``'s weights into ``model``."""
        model.load_state_dict(self.run.load_checkpoint("best.pt")["model"])


def _autocast(precision: str, device: torch.device):
    """Autocast for a resolved ``precision`` (:func:`bcl.engine.resolve_precision`)."""
    if precision == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def train_one_epoch(model: nn.Module, objective: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Optional[torch.amp.GradScaler], device: torch.device, epoch: int,
                    cfg: Any, precision: str = "off") -> Dict[str, float]:
    """One pass over ``loader``, one optimiser and schedule step per batch, under autocast ``precision``.

    Returns:
        ``{"train_loss": ..., "train_<term>": ...}``: epoch means over every process's steps (a gathered
        contrastive term is already global on each rank).

    Raises:
        NonFiniteLossError: A loss term is NaN or Inf (naming the term, epoch and step).
    """
    model.train()
    sums: Dict[str, torch.Tensor] = {}
    for step, (images, targets) in enumerate(progress(loader, cfg.run, f"epoch {epoch + 1}/{cfg.optim.epochs}")):
        images, targets = images.to(device), targets.to(device)
        if cfg.train.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(precision, device):
            loss, terms = objective(model(images), targets)
        check_finite({**terms, "total": loss}, epoch, step)  # name the culprit term first
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        for key, value in {"loss": loss, **terms}.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
    steps = max(len(loader), 1) * get_world_size()
    return {f"train_{key}": float(all_reduce_sum(total.clone()).item()) / steps for key, total in sums.items()}


def evaluate_part(
    stage: Stage, model: nn.Module, positions: Any, device: torch.device,
    reference: Optional[Dict[str, torch.Tensor]] = None,
) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """Metrics of the images at ``positions`` (classifier and kNN against the training part's features).

    Returns ``(metrics, reference)``: pass ``reference`` back in while the encoder cannot change (a linear
    probe), so the training part is not re-extracted every epoch.
    """
    image_size, normalization = stage.cfg.data.image_size, stage.cfg.data.normalization
    if reference is None:
        reference = extract(model, stage.dataset.subset(stage.splits.train), image_size, device,
                            normalization=normalization)
    outputs = extract(model, stage.dataset.subset(positions), image_size, device, normalization=normalization)
    return evaluate(outputs, reference, stage.dataset.class_names, list(stage.splits.train_counts), stage.cfg.eval,
                    classifier=stage.classifier_metrics), reference


def fit(stage: Stage, run: RunDir, checkpoint: Optional[Dict[str, Any]]) -> StageResult:
    """Trains and evaluates ``stage`` in ``run`` (resuming from ``checkpoint``, its ``last.pt``, if given).

    Ctrl-C or SIGTERM ends it as :class:`RunInterrupted`. An interrupt abandons the current step: every
    file is written atomically, so the folder keeps the last complete checkpoint, and the interrupted
    write's temporary file is removed on the way out.
    """
    checkpointer = Checkpointer(run, stage, get_world_size())
    try:
        return _fit(stage, run, checkpoint, checkpointer)
    except RunInterrupted:
        raise
    except KeyboardInterrupt as interrupt:
        signal_name = str(interrupt.args[0]) if interrupt.args else "SIGINT"  # the CLI's SIGTERM handler names it
        raise RunInterrupted(run.path, checkpointer.saved_epoch, stage.cfg.optim.epochs, stage.script,
                             signal_name) from None
    finally:
        run.release()


def _fit(stage: Stage, run: RunDir, checkpoint: Optional[Dict[str, Any]], checkpointer: Checkpointer) -> StageResult:
    cfg, model, splits = stage.cfg, stage.model, stage.splits
    rank, world_size, main = get_rank(), get_world_size(), is_main_process()
    device = resolve_device(cfg.run.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    local_batch = cfg.optim.batch_size // world_size
    if world_size > 1 and cfg.train.sync_batchnorm:
        model = stage.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    objective = stage.objective.to(device)
    train_set = stage.dataset.subset(splits.train)
    train_set.transform = stage.train_transform

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch(train_set, local_batch, cfg.sampler, cfg.run.seed,
                                                                      rank, world_size))
    precision = resolve_precision(cfg.train.amp, device)
    if main:
        _log_precision(cfg.train.amp, precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    start_epoch, best = 0, {"epoch": None, "value": None, "metric": stage.selection}
    earlier_wall_time = 0.0  # seconds of training before this session, so a resumed run reports its total
    if checkpoint is not None:  # resuming (the stage checked that it is its own)
        start_epoch, best, earlier_wall_time = checkpointer.restore(checkpoint, model, optimizer, scheduler, scaler)
        if main:
            _drop_log_records_after(run, start_epoch)
        logger.info("resuming %s from epoch %d", run.path, start_epoch)
    elif main:
        run.save_config(config_to_yaml(cfg))
        run.write_environment()
    check_same_config(config_to_yaml(cfg))

    # DistributedDataParallel averages gradients; a gathered contrastive loss is scaled for that itself.
    trained = model
    if world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=stage.unused_parameters,
        )
    board = TensorBoardLogger(run.tensorboard_dir, enabled=cfg.run.tensorboard and main)
    started = time.perf_counter()
    stop_at = cfg.optim.epochs
    if cfg.run.stop_after_epochs is not None:
        stop_at = min(stop_at, start_epoch + cfg.run.stop_after_epochs)
    validating = cfg.eval.selection == "val"
    constant_lr = cfg.optim.schedule == "constant" and not cfg.optim.warmup_epochs
    reference = None  # the training part's features, kept while the encoder is frozen
    for epoch in range(start_epoch, stop_at):
        epoch_started = time.perf_counter()
        loader = train_loader(train_set, local_batch, cfg.sampler, cfg.run.seed, epoch,
                              seed_epoch(cfg.run.seed, epoch, rank), cfg.data.num_workers, rank=rank,
                              world_size=world_size)
        means = train_one_epoch(trained, objective, loader, optimizer, scheduler, scaler, device, epoch, cfg, precision)
        record: Dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **means,
                                  "precision": "fp32" if precision == "off" else precision}
        epoch_reference = reference  # the training part's features after this epoch, once extracted
        if main and validating and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs):
            # The main process evaluates on the whole validation part with the unwrapped model, so
            # metrics cover every image rather than one rank's shard.
            val, epoch_reference = evaluate_part(stage, model, splits.val, device, epoch_reference)
            record.update(_numbers("val", val))
            value = val.get(stage.selection)
            if value is not None and (best["value"] is None or value > best["value"]):
                best = {"epoch": epoch + 1, "value": float(value), "metric": stage.selection}
                checkpointer.save_best(epoch + 1, model)
        if main and cfg.eval.test_every and (epoch + 1) % cfg.eval.test_every == 0:
            # A learning curve only: nothing reads these numbers back, so the test part chooses nothing.
            test, epoch_reference = evaluate_part(stage, model, splits.test, device, epoch_reference)
            record.update(_numbers("test", test))
        reference = epoch_reference if stage.frozen_encoder else None
        if (cfg.run.stop_after_minutes is not None and epoch + 1 < stop_at
                and _next_epoch_would_overrun(time.perf_counter() - started, epoch + 1 - start_epoch,
                                              cfg.run.stop_after_minutes)):
            stop_at = epoch + 1  # saved below like any session's last epoch
        if main:
            run.append_log(record)
            board.scalars(_scalar_groups(record, constant_lr), step=epoch + 1)
            if (epoch + 1) % cfg.run.checkpoint_every == 0 or epoch + 1 == stop_at:
                checkpointer.save(epoch + 1, model, optimizer, scheduler, scaler, best,
                                  earlier_wall_time + time.perf_counter() - started)
            elapsed = time.perf_counter() - started
            left = (stop_at - epoch - 1) * elapsed / (epoch + 1 - start_epoch)
            shown = (f"  val {stage.selection} {record['val_' + stage.selection]:.3f}"
                     if f"val_{stage.selection}" in record else "")
            logger.info("%s epoch %d/%d  loss %.4f%s  %.1f s/epoch  elapsed %s  ETA %s", stage.label, epoch + 1,
                        cfg.optim.epochs, record.get("train_loss", float("nan")), shown,
                        time.perf_counter() - epoch_started, _clock(elapsed), _clock(left))
        barrier()  # every rank sees the epoch's checkpoint before the next epoch starts
        if epoch + 1 == stop_at:
            break
    completed = max(stop_at, start_epoch)
    if completed < cfg.optim.epochs or not main:
        board.close()
        if completed < cfg.optim.epochs and main:
            logger.info("stopped after epoch %d of %d (this session's budget: run.stop_after_epochs / "
                        "run.stop_after_minutes); continue with --resume %s", completed, cfg.optim.epochs, run.path)
        barrier()
        return StageResult(run.path, None, completed)

    metrics = _final_evaluation(stage, checkpointer, board, best, device)
    metrics["wall_time_s"] = round(earlier_wall_time + time.perf_counter() - started, 2)
    metrics["world_size"] = world_size
    run.write_metrics(metrics)
    board.close()
    barrier()
    return StageResult(run.path, metrics, completed)


def _log_precision(amp: str, precision: str, device: torch.device) -> None:
    """Says which precision ``train.amp`` gave, and warns when bf16 was asked of a CPU that runs it slowly."""
    if amp == "auto":
        logger.info("train.amp=auto: %s on this %s", "bf16 autocast" if precision == "bf16" else "float32",
                    "CPU" if device.type == "cpu" else device.type)
    elif amp == "bf16" and device.type == "cpu" and not cpu_has_bf16_kernels():
        logger.warning("train.amp=bf16 on a CPU without bf16 kernels (%s): expect training many times slower than "
                       "float32; train.amp=auto picks float32 here", torch.backends.cpu.get_cpu_capability())


def _numbers(part: str, metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The scalar metrics of one part as ``{part}_{name}`` entries of an epoch record."""
    return {f"{part}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}


def _next_epoch_would_overrun(elapsed_s: float, epochs_done: int, budget_minutes: float) -> bool:
    """True when one more epoch, as long as this session's average so far, would end past the budget."""
    return elapsed_s + elapsed_s / max(epochs_done, 1) > budget_minutes * 60


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


def _scalar_groups(record: Dict[str, Any], constant_lr: bool) -> Dict[str, Dict[str, Any]]:
    """An epoch record as TensorBoard groups: ``train/loss``, ``train/lr``, ``val/balanced_accuracy``..."""
    groups: Dict[str, Dict[str, Any]] = {"train": {}, "val": {}, "test": {}}
    for key, value in record.items():
        part, _, name = key.partition("_")
        if part in groups:
            groups[part][name] = value
    if not constant_lr:  # a constant is not a curve
        groups["train"]["lr"] = record["lr"]
    return groups


def _drop_log_records_after(run: RunDir, epoch: int) -> None:
    """A run killed after logging an epoch but before checkpointing it redoes that epoch: drop its record."""
    if run.log_path.exists():
        kept = [record for record in read_jsonl(run.log_path) if record.get("epoch", 0) <= epoch]
        atomic_write_text(run.log_path, "".join(json.dumps(record) + "\n" for record in kept))


def _final_evaluation(stage: Stage, checkpointer: Checkpointer, board: TensorBoardLogger, best: Dict[str, Any],
                      device: torch.device) -> Dict[str, Any]:
    """Evaluates the last epoch or the one chosen on validation once on test, logs figures and the projector."""
    model, dataset, splits, cfg = stage.model, stage.dataset, stage.splits, stage.cfg
    if cfg.eval.selection == "last":
        best = {"epoch": cfg.optim.epochs, "value": None, "metric": "last epoch (eval.selection=last)"}
    elif best["epoch"] is not None:
        checkpointer.load_best(model)
    image_size = cfg.data.image_size
    outputs = {name: extract(model, dataset.subset(positions), image_size, device,
                             normalization=cfg.data.normalization)
               for name, positions in splits.as_dict().items()}
    for name, out in outputs.items():
        for kind in ("features", "logits"):
            if not bool(torch.isfinite(out[kind]).all()):
                raise NonFiniteLossError(
                    f"after {cfg.optim.epochs} epochs the model's {kind} on the {name} part are NaN or Inf: its "
                    f"weights diverged although every training loss was finite; lower optim.lr (now {cfg.optim.lr})"
                )
    reference = outputs["train"]  # the kNN memory is the training part's features, already extracted
    train_counts = list(splits.train_counts)
    val = (evaluate(outputs["val"], reference, dataset.class_names, train_counts, cfg.eval, stage.classifier_metrics)
           if "val" in outputs else None)
    test = evaluate(outputs["test"], reference, dataset.class_names, train_counts, cfg.eval, stage.classifier_metrics)
    metrics: Dict[str, Any] = {
        "stage": stage.name, "label": stage.label, "selected_epoch": best["epoch"], "selection_metric": best["metric"],
        "class_names": dataset.class_names, "train_counts": train_counts,
        "split_sizes": {name: int(len(positions)) for name, positions in splits.as_dict().items()},
        "val": val, "test": test,
    }
    final_step = cfg.optim.epochs
    board.scalars({k: v for k, v in test.items() if isinstance(v, (int, float))}, step=final_step, prefix="test")
    if "confusion_matrix" in test:
        board.confusion_matrix(test["confusion_matrix"], dataset.class_names, step=final_step,
                               tag="test/confusion_matrix")
    board.hparams(config_to_dict(cfg),
                  {f"hparam/test_{k}": test[k] for k in ("balanced_accuracy", "knn_balanced_accuracy")
                   if test.get(k) is not None})
    _log_projector(board, stage, outputs, final_step)
    return metrics


def _log_projector(board: TensorBoardLogger, stage: Stage, outputs: Dict[str, Dict[str, torch.Tensor]],
                   step: int) -> None:
    """Class-stratified embeddings of every split, with class / split / prediction / correct and thumbnails."""
    per_class = stage.cfg.eval.projector_per_class
    if per_class == 0:
        return
    dataset, names = stage.dataset, stage.dataset.class_names
    features, metadata, images = [], [], []
    for split, positions in stage.splits.as_dict().items():
        out = outputs[split]
        chosen = select_projector_indices(out["labels"].numpy(), per_class, seed=stage.cfg.run.seed)
        predictions = out["logits"].argmax(1)
        for i in chosen:
            label = int(out["labels"][i])
            row = {"class": names[label], "split": split}
            if stage.classifier_metrics:
                row.update(prediction=names[int(predictions[i])], correct=str(bool(predictions[i] == label)))
            metadata.append(row)
            features.append(out["features"][i])
            images.append(dataset.images[int(positions[i])])
    board.embeddings(torch.stack(features), metadata, torch.stack(images), step=step, tag=f"{stage.name}_features",
                     thumbnail_size=stage.cfg.eval.thumbnail_size)
