"""The two training stages as library functions; ``train_supcon.py`` and ``train_linear.py`` call them.

Stage 1 (:func:`run_supcon`) trains an encoder + projection head with BalancedSupCon or SupCon,
either jointly with a logit-adjusted classifier (the paper's recipe) or contrastive-only. Stage 2
(:func:`run_linear`) trains a classifier on an encoder from a stage-1 checkpoint, torchvision weights
or scratch, frozen (linear probe) or fine-tuned (the cross-entropy baselines).

Both evaluate once on the test part at the end: the last epoch of a fixed budget (``eval.selection=last``,
the small-data protocol) or the epoch chosen on a validation part (``eval.selection=val``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from bcl.config import (
    ConfigError,
    LinearConfig,
    SupConConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
)
from bcl.data import ImageClassificationDataset, bcl_train_transform, class_counts, classifier_view
from bcl.engine import (
    DataSplits,
    NonFiniteLossError,
    add_pasted_defects,
    build_dataset,
    build_optimizer,
    build_scheduler,
    check_finite,
    evaluate,
    extract,
    make_splits,
    progress,
    resolve_device,
    train_loader,
)
from bcl.losses import BalancedSupCon, FocalLoss, LogitAdjustedLoss, class_balanced_weights
from bcl.models import BCLModel, Encoder, NormedLinear, build_encoder
from bcl.distributed import (
    all_reduce_sum,
    barrier,
    broadcast_object,
    check_batch_divisible,
    check_same_config,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from bcl.checkpoints import atomic_write_text
from bcl.runs import RunDir, read_jsonl
from bcl.tensorboard import TensorBoardLogger, select_projector_indices

__all__ = ["StageResult", "RunInterrupted", "run_supcon", "run_linear", "LinearProbeModel", "load_stage1_encoder"]

logger = logging.getLogger(__name__)

STAGE1, STAGE2 = "supcon", "linear"
# Which script trains which stage, for messages that tell a user what to run.
_SCRIPTS = {STAGE1: "train_supcon.py", STAGE2: "train_linear.py"}


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


class LinearProbeModel(nn.Module):
    """An encoder plus a classifier; with ``frozen`` the encoder stays in eval mode and gets no gradients."""

    def __init__(self, encoder: Encoder, num_classes: int, classifier: str = "linear", frozen: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.frozen = frozen
        if classifier == "cosine":
            self.classifier: nn.Module = NormedLinear(encoder.feature_dim, num_classes)
        else:
            self.classifier = nn.Linear(encoder.feature_dim, num_classes)
        if frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "LinearProbeModel":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # BatchNorm statistics of a probed encoder must not move
        return self

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.encoder(images)
        return {"features": features, "logits": self.classifier(features)}


def _state_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, to prove a frozen encoder did not change at all."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_stage1_encoder(path: str) -> tuple:
    """Encoder (architecture and weights) and config from a ``train_supcon.py`` checkpoint.

    Raises:
        FileNotFoundError: No such file.
        ConfigError: The file is not a stage-1 checkpoint, or its weights do not fit its architecture.
    """
    path_obj = Path(path)
    if not path_obj.is_file():
        raise FileNotFoundError(f"model.stage1_checkpoint {path!r} does not exist")
    try:
        checkpoint = torch.load(path_obj, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure means it is no checkpoint of ours
        raise ConfigError(f"model.stage1_checkpoint {path!r} could not be loaded as a checkpoint: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("stage") != STAGE1:
        found = checkpoint.get("stage") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConfigError(
            f"model.stage1_checkpoint {path!r} is not a train_supcon.py (stage-1) checkpoint (stage: {found!r})"
        )
    stage1_cfg = config_from_dict(SupConConfig, checkpoint["config"])
    encoder = Encoder(stage1_cfg.model.encoder, small_image_stem=stage1_cfg.model.small_image_stem)
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"model.stage1_checkpoint {path!r}: its encoder weights do not fit {stage1_cfg.model.encoder}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return encoder, stage1_cfg


# ------------------------------------------------------------------------------------------------
# The loop both stages share
# ------------------------------------------------------------------------------------------------


@dataclass
class _Stage:
    name: str
    cfg: Any
    model: nn.Module
    dataset: ImageClassificationDataset
    splits: DataSplits
    train_transform: Callable
    # (model, images, targets, epoch, step) -> (loss, {term: value}, loss to back-propagate)
    loss_fn: Callable
    selection: str  # the validation metric that picks the best epoch
    classifier_metrics: bool
    label: str = ""  # what the console and the results table call it, e.g. "stage 1 (bcl)"
    unused_parameters: bool = False  # DDP must expect parameters without gradients (an idle classifier)
    frozen_encoder: bool = False  # the training part's features never change: extract them once
    reference: Optional[Dict[str, torch.Tensor]] = None  # those features, once extracted
    saved_epoch: int = 0  # the epoch checkpoints/last.pt holds, for the interrupt message


def _open_run(cfg: Any, config_stem: str, resume: Optional[str]) -> RunDir:
    """Opens the run folder; with several processes the main one creates and locks it, the others follow."""
    if resume:
        path = Path(resume)
        return RunDir.open(path.parent, path.name, mode="resume", lock=is_main_process())
    if not is_main_process():
        name, failure = broadcast_object(None)
        if failure:
            raise FileExistsError(f"rank 0 could not open the run folder: {failure}")
        return RunDir(Path(cfg.run.output_dir) / name)
    name = cfg.run.name or f"{config_stem}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    try:
        run = RunDir.open(cfg.run.output_dir, name, mode="overwrite" if cfg.run.overwrite else "new")
    except (OSError, ValueError, RuntimeError) as error:
        broadcast_object((name, str(error)))  # the other ranks stop too instead of waiting for rank 0
        raise
    broadcast_object((name, None))
    return run


def _start(schema: type, cfg: Any, config_stem: str, resume: Optional[str]) -> tuple:
    """Joins the process group and checks the launch; a resumed run takes its saved config.

    Returns ``(cfg, run, checkpoint)``: ``run`` and ``checkpoint`` (its ``last.pt``, read once here and
    handed to :func:`_train`) are None for a new run, whose folder is made only once data and model
    exist, so a bad setting leaves nothing behind.
    """
    init_distributed(cfg.train.dist_timeout_s)
    _check_launch_settings(cfg)
    run = _open_run(cfg, config_stem, resume) if resume else None
    checkpoint = None
    if run is not None:
        checkpoint = run.load_checkpoint("last.pt")
        stage = STAGE1 if schema is SupConConfig else STAGE2
        saved_stage = checkpoint.get("stage") if isinstance(checkpoint, dict) else None
        if saved_stage != stage:
            hint = f": resume it with {_SCRIPTS[saved_stage]}" if saved_stage in _SCRIPTS else ""
            raise ConfigError(f"--resume {run.path}: its checkpoint holds a {saved_stage!r} stage run, not the "
                              f"{stage!r} stage {_SCRIPTS[stage]} trains{hint}")
        cfg = config_from_dict(schema, checkpoint["config"])
        _check_launch_settings(cfg)
    torch.manual_seed(cfg.run.seed)
    return cfg, run, checkpoint


def _encoder(model_cfg: Any) -> Encoder:
    """The encoder a stage's ``model`` section asks for (ImageNet weights downloaded unless told not to)."""
    return build_encoder(model_cfg.encoder, weights=model_cfg.weights, small_image_stem=model_cfg.small_image_stem,
                         allow_download=model_cfg.allow_download, download_timeout_s=model_cfg.download_timeout_s)


def _data(cfg: Any) -> Tuple[ImageClassificationDataset, DataSplits]:
    """The dataset and its parts, as both stages make them: a validation part only under
    ``eval.selection=val``, pasted defects (if asked for) added to the training part."""
    dataset = build_dataset(cfg.data)
    splits = make_splits(dataset, cfg.data, validation=cfg.eval.selection == "val")
    return add_pasted_defects(dataset, splits, cfg.data, cfg.run.seed)


def _check_launch_settings(cfg: Any) -> None:
    """Settings that cannot work on this launch (GPU-only options, an indivisible batch) fail before
    anything is built or written."""
    try:
        check_batch_divisible(cfg.optim.batch_size)
    except ValueError as error:
        raise ConfigError(f"optim.batch_size: {error}") from None
    device = resolve_device(cfg.run.device)
    if cfg.train.sync_batchnorm and device.type != "cuda":
        raise ConfigError("train.sync_batchnorm=true needs CUDA: PyTorch's SyncBatchNorm works only on GPU modules")
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device (it relies on a gradient scaler); use train.amp=bf16 on CPU")


def _autocast(cfg: Any, device: torch.device):
    if cfg.train.amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16)


def _train(stage: _Stage, run: RunDir, checkpoint: Optional[Dict[str, Any]]) -> StageResult:
    """Trains and evaluates one stage in ``run``; Ctrl-C or SIGTERM ends it as :class:`RunInterrupted`.

    An interrupt abandons the current step: every file is written atomically, so the folder keeps the
    last complete checkpoint, and the interrupted write's temporary file is removed on the way out.
    """
    try:
        return _train_loop(stage, run, checkpoint)
    except RunInterrupted:
        raise
    except KeyboardInterrupt as interrupt:
        signal_name = str(interrupt.args[0]) if interrupt.args else "SIGINT"  # the CLI's SIGTERM handler names it
        raise RunInterrupted(run.path, stage.saved_epoch, stage.cfg.optim.epochs, _SCRIPTS[stage.name],
                             signal_name) from None
    finally:
        run.release()


def _train_loop(stage: _Stage, run: RunDir, checkpoint: Optional[Dict[str, Any]]) -> StageResult:
    cfg, model, dataset, splits = stage.cfg, stage.model, stage.dataset, stage.splits
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
    names = dataset.class_names
    train_set = dataset.subset(splits.train)
    train_set.transform = stage.train_transform
    train_counts = class_counts(np.asarray(dataset.targets)[splits.train], num_classes=len(names)).tolist()

    def loader_for(epoch: int):
        return train_loader(train_set, local_batch, cfg.sampler, cfg.run.seed, epoch, cfg.data.num_workers,
                            rank=rank, world_size=world_size)

    steps_per_epoch = len(loader_for(0))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None
    start_epoch, best = 0, {"epoch": None, "value": None, "metric": stage.selection}
    earlier_wall_time = 0.0  # seconds of training before this session, so a resumed run reports its total
    if checkpoint is not None:  # resuming (_start checked that it is this stage's)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, best = checkpoint["epoch"], checkpoint["best"]
        stage.saved_epoch = start_epoch
        earlier_wall_time = float(checkpoint.get("wall_time_s") or 0.0)
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != world_size:
            logger.warning("resuming a run saved by %d process(es) with %d: training continues, but the data "
                           "shards differ, so it will not repeat the original run exactly", saved_world, world_size)
        if main:
            _drop_log_records_after(run, start_epoch)
        logger.info("resuming %s from epoch %d", run.path, start_epoch)
    elif main:
        run.save_config(config_to_yaml(cfg))
        run.write_environment()
    check_same_config(config_to_yaml(cfg))

    # DistributedDataParallel averages gradients; the gathered contrastive loss already carries the
    # global batch's gradient to every rank's features, so its share is scaled back up (see loss_fn).
    trained = model
    if world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=stage.unused_parameters,
        )
    config_dict = config_to_dict(cfg)
    board = TensorBoardLogger(run.tensorboard_dir, enabled=cfg.run.tensorboard and main)
    started = time.perf_counter()
    stop_at = cfg.optim.epochs
    if cfg.run.stop_after_epochs is not None:
        stop_at = min(stop_at, start_epoch + cfg.run.stop_after_epochs)
    validating = cfg.eval.selection == "val"
    for epoch in range(start_epoch, stop_at):
        epoch_started = time.perf_counter()
        trained.train()
        loader = loader_for(epoch)
        sums: Dict[str, torch.Tensor] = {}
        for step, (images, targets) in enumerate(progress(loader, cfg.run, f"epoch {epoch + 1}/{cfg.optim.epochs}")):
            images, targets = images.to(device), targets.to(device)
            if cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images
            with _autocast(cfg, device):
                loss, terms, backward_loss = stage.loss_fn(trained, images, targets, epoch, step)
            check_finite({**terms, "total": loss}, epoch, step)  # name the culprit term first
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(backward_loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                backward_loss.backward()
                optimizer.step()
            scheduler.step()
            for key, value in {"loss": loss, **terms}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
        # Epoch means over every process's steps (the gathered term is already global on each rank).
        record: Dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        for key, total in sums.items():
            record[f"train_{key}"] = float(all_reduce_sum(total.clone()).item()) / (max(len(loader), 1) * world_size)
        if main and validating and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs):
            # The main process evaluates on the whole validation part with the unwrapped model, so
            # metrics cover every image rather than one rank's shard.
            val = _evaluate_split(stage, model, splits.val, train_counts, device)
            record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, (int, float)) or v is None})
            value = val.get(stage.selection)
            if value is not None and (best["value"] is None or value > best["value"]):
                best = {"epoch": epoch + 1, "value": float(value), "metric": stage.selection}
                run.save_checkpoint({"stage": stage.name, "epoch": epoch + 1, "model": model.state_dict(),
                                     "config": config_dict}, "best.pt")
        if main:
            run.append_log(record)
            board.scalars(_scalar_groups(record, constant_lr=cfg.optim.schedule == "constant" and not cfg.optim.warmup_epochs),
                          step=epoch + 1)
            if (epoch + 1) % cfg.run.checkpoint_every == 0 or epoch + 1 == stop_at:
                run.save_checkpoint({
                    "stage": stage.name, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "best": best, "config": config_dict, "world_size": world_size,
                    "wall_time_s": earlier_wall_time + time.perf_counter() - started,
                }, "last.pt")
                stage.saved_epoch = epoch + 1
            session_epochs = epoch + 1 - start_epoch
            elapsed = time.perf_counter() - started
            left = (stop_at - epoch - 1) * elapsed / session_epochs
            shown = f"  val {stage.selection} {record['val_' + stage.selection]:.3f}" if f"val_{stage.selection}" in record else ""
            logger.info("%s epoch %d/%d  loss %.4f%s  %.1f s/epoch  elapsed %s  ETA %s", stage.label, epoch + 1,
                        cfg.optim.epochs, record.get("train_loss", float("nan")), shown,
                        time.perf_counter() - epoch_started, _clock(elapsed), _clock(left))
        barrier()  # every rank sees the epoch's checkpoint before the next epoch starts
    completed = max(stop_at, start_epoch)
    if completed < cfg.optim.epochs or not main:
        board.close()
        if completed < cfg.optim.epochs and main:
            logger.info("stopped after epoch %d of %d (run.stop_after_epochs); continue with --resume %s",
                        completed, cfg.optim.epochs, run.path)
        barrier()
        return StageResult(run.path, None, completed)

    metrics = _finish(stage, run, board, train_counts, best, device)
    metrics["wall_time_s"] = round(earlier_wall_time + time.perf_counter() - started, 2)
    metrics["world_size"] = world_size
    run.write_metrics(metrics)
    board.close()
    barrier()
    return StageResult(run.path, metrics, completed)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


def _scalar_groups(record: Dict[str, Any], constant_lr: bool) -> Dict[str, Dict[str, Any]]:
    """An epoch record as TensorBoard groups: ``train/loss``, ``train/lr``, ``val/balanced_accuracy``..."""
    groups: Dict[str, Dict[str, Any]] = {"train": {}, "val": {}}
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


def _evaluate_split(stage: _Stage, model: nn.Module, positions: np.ndarray, train_counts: List[int],
                    device: torch.device) -> Dict[str, Any]:
    image_size = stage.cfg.data.image_size
    reference = stage.reference
    if reference is None:
        reference = extract(model, stage.dataset.subset(stage.splits.train), image_size, device)
        if stage.frozen_encoder:
            stage.reference = reference
    outputs = extract(model, stage.dataset.subset(positions), image_size, device)
    return evaluate(outputs, reference, stage.dataset.class_names, train_counts, stage.cfg.eval,
                    classifier=stage.classifier_metrics)


def _finish(stage: _Stage, run: RunDir, board: TensorBoardLogger, train_counts: List[int],
            best: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Evaluates the last epoch or the one chosen on validation once on test, logs figures and the projector."""
    model, dataset, splits, cfg = stage.model, stage.dataset, stage.splits, stage.cfg
    if cfg.eval.selection == "last":
        best = {"epoch": cfg.optim.epochs, "value": None, "metric": "last epoch (eval.selection=last)"}
    elif best["epoch"] is not None:
        model.load_state_dict(run.load_checkpoint("best.pt")["model"])
    image_size = cfg.data.image_size
    outputs = {name: extract(model, dataset.subset(positions), image_size, device)
               for name, positions in splits.as_dict().items()}
    for name, out in outputs.items():
        for kind in ("features", "logits"):
            if not bool(torch.isfinite(out[kind]).all()):
                raise NonFiniteLossError(
                    f"after {cfg.optim.epochs} epochs the model's {kind} on the {name} part are NaN or Inf: its "
                    f"weights diverged although every training loss was finite; lower optim.lr (now {cfg.optim.lr})"
                )
    reference = outputs["train"]  # the kNN memory is the training part's features, already extracted
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
        board.confusion_matrix(test["confusion_matrix"], dataset.class_names, step=final_step, tag="test/confusion_matrix")
    board.hparams(config_to_dict(cfg),
                  {f"hparam/test_{k}": test[k] for k in ("balanced_accuracy", "knn_balanced_accuracy") if test.get(k) is not None})
    _log_projector(board, stage, outputs, final_step)
    return metrics


def _log_projector(board: TensorBoardLogger, stage: _Stage, outputs: Dict[str, Dict[str, torch.Tensor]], step: int) -> None:
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


# ------------------------------------------------------------------------------------------------
# Stage 1
# ------------------------------------------------------------------------------------------------


def stage1_objective(out: Dict[str, torch.Tensor], targets: torch.Tensor, contrastive: nn.Module,
                     logit_adjusted: nn.Module, alpha: float, beta: float, joint: bool) -> tuple:
    """Stage 1's loss on one batch: ``alpha · LA-CE(view 0) + beta · contrastive(views 1..)`` (or the
    contrastive term alone on every view when not ``joint``).

    Args:
        out: the model's outputs for ``[B, V, 3, H, W]`` images: ``projections`` ``[B, V, D]``, ``logits``
            ``[B, V, C]`` and ``prototypes`` ``[C, D]`` (or None).
        targets: ``[B]`` labels.
        contrastive: a :class:`~bcl.losses.BalancedSupCon` (with ``gather=True`` under DDP it is already
            scaled for DDP's gradient averaging; the per-process CE mean needs no scaling).

    Returns:
        ``(objective, {"contrastive": ..., "ce": ...})``, the objective ready for ``backward()``.
    """
    terms = {"contrastive": contrastive(out["projections"][:, 1 if joint else 0:], targets, out["prototypes"])}
    if not joint:
        return terms["contrastive"], terms
    terms["ce"] = logit_adjusted(out["logits"][:, 0], targets)
    return alpha * terms["ce"] + beta * terms["contrastive"], terms


def run_supcon(cfg: SupConConfig, config_stem: str = "supcon", resume: Optional[str] = None) -> StageResult:
    """Stage 1: contrastive pre-training (joint with a logit-adjusted classifier, or contrastive only)."""
    cfg, run, checkpoint = _start(SupConConfig, cfg, config_stem, resume)
    dataset, splits = _data(cfg)
    model = BCLModel(
        _encoder(cfg.model), len(dataset.class_names), proj_dim=cfg.model.proj_dim,
        proj_hidden_dim=cfg.model.proj_hidden_dim, classifier=cfg.model.classifier, prototypes=cfg.model.prototypes,
    )
    joint = cfg.loss.mode == "joint"
    views = bcl_train_transform(
        cfg.data.image_size, contrastive_views=cfg.loss.contrastive_views, classifier_view_first=joint,
        crop_scale=tuple(cfg.data.crop_scale), randaugment=cfg.data.randaugment, augment=cfg.data.augment,
    )
    world_size = get_world_size()
    # No input check in the loss: a diverged encoder's NaN features then reach check_finite, whose
    # message names the term, epoch and step and suggests a lower learning rate.
    contrastive = BalancedSupCon(
        temperature=cfg.loss.temperature, class_averaging=cfg.loss.name == "bcl", gather=world_size > 1,
        check_finite=False,
    )
    train_counts = class_counts(np.asarray(dataset.targets)[splits.train], num_classes=len(dataset.class_names))
    logit_adjusted = LogitAdjustedLoss(train_counts.tolist(), tau=cfg.loss.la_tau)

    def loss_fn(model, images, targets, epoch, step):
        objective, terms = stage1_objective(model(images), targets, contrastive, logit_adjusted.to(images.device),
                                            cfg.loss.alpha, cfg.loss.beta, joint)
        return objective, terms, objective

    stage = _Stage(
        STAGE1, cfg, model, dataset, splits, views, loss_fn,
        selection="balanced_accuracy" if joint else "knn_balanced_accuracy", classifier_metrics=joint,
        label=f"stage 1 ({cfg.loss.name}, {cfg.loss.mode})", unused_parameters=not joint,
    )
    return _train(stage, run or _open_run(cfg, config_stem, None), checkpoint)


# ------------------------------------------------------------------------------------------------
# Stage 2
# ------------------------------------------------------------------------------------------------

# Settings that decide which images are in which split: a stage-1 encoder must come from the same ones,
# or its training images could sit in this run's test part.
_SPLIT_KEYS = ("dataset", "root", "category", "layout", "class_names", "imbalance_factor", "synthetic_counts", "synthetic_seed", "synthetic_test_counts",
               "synthetic_test_seed", "split", "n_folds", "fold",
               "inner_folds", "inner_fold", "test_fraction", "val_fraction", "split_seed")


def _check_same_split(cfg: LinearConfig, stage1_cfg: SupConConfig, path: str) -> None:
    differing = [k for k in _SPLIT_KEYS if getattr(cfg.data, k) != getattr(stage1_cfg.data, k)]
    if differing:
        details = ", ".join(f"data.{k}: {getattr(stage1_cfg.data, k)!r} vs {getattr(cfg.data, k)!r}" for k in differing)
        raise ConfigError(
            f"model.stage1_checkpoint {path!r} was trained on a different split ({details}); its training "
            "images could be in this run's test part. Use the stage-1 run's data settings."
        )


def run_linear(cfg: LinearConfig, config_stem: str = "linear", resume: Optional[str] = None) -> StageResult:
    """Stage 2: a classifier on a frozen (linear probe) or fine-tuned encoder."""
    cfg, run, checkpoint = _start(LinearConfig, cfg, config_stem, resume)
    if not (cfg.model.stage1_checkpoint or cfg.model.finetune or cfg.model.weights != "none"
            or cfg.model.random_encoder):
        raise ConfigError(
            "model.stage1_checkpoint is not set: this linear probe (model.finetune=false, model.weights=none) "
            "would train on a frozen, randomly initialised encoder. Pass model.stage1_checkpoint=<stage-1 "
            "run>/checkpoints/last.pt, or model.finetune=true for a trained-from-scratch baseline, or "
            "model.random_encoder=true if a random-feature probe is what you want"
        )
    if cfg.model.stage1_checkpoint:
        encoder, stage1_cfg = load_stage1_encoder(cfg.model.stage1_checkpoint)
        _check_same_split(cfg, stage1_cfg, cfg.model.stage1_checkpoint)
        logger.info("encoder %s (small stem: %s) from %s", encoder.name, encoder.small_image_stem, cfg.model.stage1_checkpoint)
    else:
        encoder = _encoder(cfg.model)
    dataset, splits = _data(cfg)
    frozen = not cfg.model.finetune
    model = LinearProbeModel(encoder, len(dataset.class_names), cfg.model.classifier, frozen=frozen)
    train_counts = class_counts(np.asarray(dataset.targets)[splits.train], num_classes=len(dataset.class_names)).tolist()
    criterion = _classifier_loss(cfg, train_counts)
    encoder_digest = _state_digest(model.encoder) if frozen else None

    def loss_fn(model, images, targets, epoch, step):
        loss = criterion.to(images.device)(model(images)["logits"], targets)
        return loss, {cfg.loss.name: loss}, loss

    view = classifier_view(cfg.data.image_size, tuple(cfg.data.crop_scale), cfg.data.randaugment, cfg.data.augment)
    stage = _Stage(STAGE2, cfg, model, dataset, splits, view, loss_fn, "balanced_accuracy", True,
                   label=f"stage 2 ({'linear probe' if frozen else 'fine-tune'}, {cfg.loss.name})", frozen_encoder=frozen)
    run = run or _open_run(cfg, config_stem, None)
    result = _train(stage, run, checkpoint)
    if frozen and _state_digest(model.encoder) != encoder_digest:
        raise RuntimeError("the frozen encoder changed during the linear probe; this is a bug in bcl")
    if result.metrics is not None:
        result.metrics["encoder_frozen"] = frozen
        if cfg.model.stage1_checkpoint:
            result.metrics["stage1_run"] = str(Path(cfg.model.stage1_checkpoint).resolve().parent.parent)
        result.metrics["encoder_sha256"] = _state_digest(model.encoder)
        run.write_metrics(result.metrics)
    return result


def _classifier_loss(cfg: LinearConfig, train_counts: List[int]) -> nn.Module:
    if cfg.loss.name == "logit_adjusted":
        return LogitAdjustedLoss(train_counts, tau=cfg.loss.la_tau)
    if cfg.loss.name == "focal":
        return FocalLoss(gamma=cfg.loss.focal_gamma)
    weight = class_balanced_weights(train_counts, beta=cfg.loss.cb_beta) if cfg.loss.name == "weighted_ce" else None
    return nn.CrossEntropyLoss(weight=weight)
