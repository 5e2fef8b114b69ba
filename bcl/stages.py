"""The two training stages as library functions; ``train_supcon.py`` and ``train_linear.py`` call them.

Stage 1 (:func:`run_supcon`) trains an encoder + projection head with BalancedSupCon or SupCon,
either jointly with a logit-adjusted classifier (the paper's recipe) or contrastive-only. Stage 2
(:func:`run_linear`) trains a classifier on an encoder from a stage-1 checkpoint, torchvision weights
or scratch, frozen (linear probe) or fine-tuned (the cross-entropy baselines).

A stage decides what is trained (model, data, augmentation, objective); :func:`bcl.training.fit` trains
it and evaluates once on the test part at the end: the last epoch of a fixed budget
(``eval.selection=last``, the small-data protocol) or the epoch chosen on a validation part
(``eval.selection=val``).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from bcl.checkpoints import CheckpointError, load_checkpoint_file
from bcl.config import ConfigError, LinearConfig, SupConConfig, config_from_dict
from bcl.data import ImageClassificationDataset, bcl_train_transform, classifier_view
from bcl.distributed import (
    broadcast_object,
    check_batch_divisible,
    get_world_size,
    init_distributed,
    is_main_process,
)
from bcl.datasets import DataSplits, add_pasted_defects, build_dataset, make_splits
from bcl.engine import resolve_device
from bcl.losses import BalancedSupCon, FocalLoss, LogitAdjustedLoss, class_balanced_weights
from bcl.models import BCLModel, Encoder, LinearProbeModel, build_encoder
from bcl.runs import RunDir
from bcl.training import RunInterrupted, Stage, StageResult, fit

__all__ = ["StageResult", "RunInterrupted", "run_supcon", "run_linear", "LinearProbeModel", "load_stage1_encoder",
           "load_trained_encoder", "read_trained_checkpoint", "stage_data", "stage_encoder", "stage1_model",
           "stage2_model", "classifier_loss", "stage1_objective", "Stage1Objective", "ClassifierObjective"]

logger = logging.getLogger(__name__)

STAGE1, STAGE2 = "supcon", "linear"
# Which script trains which stage, for messages that tell a user what to run.
_SCRIPTS = {STAGE1: "train_supcon.py", STAGE2: "train_linear.py"}


def _state_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, to prove a frozen encoder did not change at all."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_trained_checkpoint(path: str, setting: str = "checkpoint", stages: Sequence[str] = (STAGE1, STAGE2),
                            overrides: Sequence[str] = ()) -> Tuple[Dict[str, Any], Any, Encoder]:
    """A run's checkpoint (``last.pt`` or ``best.pt``), its config and its encoder's architecture, unweighted.

    The one place that reads a bcl checkpoint for what it trained: :func:`load_trained_encoder` and
    :mod:`bcl.evaluate` build on it.

    Args:
        path: The checkpoint file.
        setting: What the caller calls it, for messages (e.g. ``model.stage1_checkpoint``).
        stages: The stages whose checkpoints are accepted.
        overrides: ``key=value`` changes to the saved config (:data:`bcl.config.RESUME_OVERRIDES` only,
            e.g. ``data.root`` on another machine).

    Returns:
        ``(checkpoint, cfg, encoder)``; ``encoder`` has the recorded architecture and random weights.

    Raises:
        FileNotFoundError: No such file.
        ConfigError: Not a checkpoint of one of ``stages``, or a bad override.
    """
    try:
        checkpoint = load_checkpoint_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{setting} {path!r} does not exist") from None
    except CheckpointError as error:
        raise ConfigError(f"{setting} {path!r} could not be loaded as a checkpoint: {error}") from None
    found = checkpoint.get("stage") if isinstance(checkpoint, dict) else type(checkpoint).__name__
    if found not in stages:
        wanted = " or ".join(f"{_SCRIPTS[s]} ({'stage-1' if s == STAGE1 else 'stage-2'})" for s in stages)
        raise ConfigError(f"{setting} {path!r} is not a {wanted} checkpoint (stage: {found!r})")
    cfg = config_from_dict(SupConConfig if found == STAGE1 else LinearConfig, checkpoint["config"], overrides)
    # Checkpoints record their encoder's architecture; older stage-1 ones only have it in their config.
    architecture = checkpoint.get("encoder") or {"name": cfg.model.encoder,
                                                 "small_image_stem": cfg.model.small_image_stem}
    return checkpoint, cfg, Encoder(architecture["name"], small_image_stem=architecture["small_image_stem"])


def load_trained_encoder(path: str, setting: str = "model.stage1_checkpoint",
                         stages: Sequence[str] = (STAGE1, STAGE2)) -> Tuple[Encoder, Any]:
    """The encoder (architecture and weights) and the config of a run's checkpoint (``last.pt`` or ``best.pt``).

    The linear probe reads stage 1's, the results suite reads either stage's for its embedding map.

    Raises:
        FileNotFoundError: No such file.
        ConfigError: Not a checkpoint of one of ``stages``, or its weights do not fit its architecture.
    """
    checkpoint, cfg, encoder = read_trained_checkpoint(path, setting, stages)
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"{setting} {path!r}: its encoder weights do not fit {encoder.name}: {str(error).splitlines()[0]}"
        ) from None
    return encoder, cfg


def load_stage1_encoder(path: str) -> Tuple[Encoder, SupConConfig]:
    """Encoder (architecture and weights) and config from a ``train_supcon.py`` checkpoint.

    Raises:
        FileNotFoundError: No such file.
        ConfigError: The file is not a stage-1 checkpoint, or its weights do not fit its architecture.
    """
    return load_trained_encoder(path, "model.stage1_checkpoint", stages=(STAGE1,))


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


def _start(schema: type, cfg: Any, config_stem: str, resume: Optional[str],
           resume_overrides: Sequence[str] = ()) -> tuple:
    """Joins the process group and checks the launch; a resumed run takes its saved config.

    ``resume_overrides`` are ``key=value`` changes to that config (only ``RESUME_OVERRIDES``: the data's
    place on this machine, this session's budget and the precision this machine runs fast).

    Returns ``(cfg, run, checkpoint)``: ``run`` and ``checkpoint`` (its ``last.pt``, read once here and
    handed to :func:`bcl.training.fit`) are None for a new run, whose folder is made only once data and model
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
        cfg = config_from_dict(schema, checkpoint["config"], resume_overrides)
        _check_launch_settings(cfg)
    torch.manual_seed(cfg.run.seed)
    return cfg, run, checkpoint


def stage_encoder(model_cfg: Any) -> Encoder:
    """The encoder a stage's ``model`` section asks for (ImageNet weights downloaded unless told not to)."""
    return build_encoder(model_cfg.encoder, weights=model_cfg.weights, small_image_stem=model_cfg.small_image_stem,
                         allow_download=model_cfg.allow_download, download_timeout_s=model_cfg.download_timeout_s)


def _check_launch_settings(cfg: Any) -> None:
    """Fails on settings that cannot work on this launch, before anything is built or written.

    Such settings are GPU-only options without a CUDA device, or a batch size the world size does not divide.

    Raises:
        ConfigError: One of those settings, named.
    """
    try:
        check_batch_divisible(cfg.optim.batch_size)
    except ValueError as error:
        raise ConfigError(f"optim.batch_size: {error}") from None
    device = resolve_device(cfg.run.device)
    if cfg.train.sync_batchnorm and device.type != "cuda":
        raise ConfigError("train.sync_batchnorm=true needs CUDA: PyTorch's SyncBatchNorm works only on GPU modules")
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.amp=fp16 needs a CUDA device (it relies on a gradient scaler); use train.amp=bf16 on CPU"
        )


def stage_data(cfg: Any) -> Tuple[ImageClassificationDataset, DataSplits]:
    """The dataset and its parts, as both stages make them.

    There is a validation part only under ``eval.selection=val``; pasted defects (if asked for) are added to
    the training part.
    """
    dataset = build_dataset(cfg.data)
    splits = make_splits(dataset, cfg.data, validation=cfg.eval.selection == "val")
    return add_pasted_defects(dataset, splits, cfg.data, cfg.run.seed)


# ------------------------------------------------------------------------------------------------
# Stage 1
# ------------------------------------------------------------------------------------------------


def stage1_objective(out: Dict[str, torch.Tensor], targets: torch.Tensor, contrastive: nn.Module,
                     logit_adjusted: nn.Module, alpha: float, beta: float, joint: bool) -> tuple:
    """Stage 1's loss on one batch: ``alpha · LA-CE(view 0) + beta · contrastive(views 1..)``.

    When not ``joint``, the loss is the contrastive term alone, on every view.

    Args:
        out: the model's outputs for ``[B, V, 3, H, W]`` images: ``projections`` ``[B, V, D]``, ``logits``
            ``[B, V, C]`` and ``prototypes`` ``[C, D]`` (or None).
        targets: ``[B]`` labels.
        contrastive: a :class:`~bcl.losses.BalancedSupCon` (with ``gather=True`` under DDP it is already
            scaled for DDP's gradient averaging; the per-process CE mean needs no scaling).
        logit_adjusted: a :class:`~bcl.losses.LogitAdjustedLoss` for the classifier view.
        alpha: Weight of the classifier term.
        beta: Weight of the contrastive term.
        joint: Whether the classifier term is trained.

    Returns:
        ``(objective, {"contrastive": ..., "ce": ...})``, the objective ready for ``backward()``.
    """
    terms = {"contrastive": contrastive(out["projections"][:, 1 if joint else 0:], targets, out["prototypes"])}
    if not joint:
        return terms["contrastive"], terms
    terms["ce"] = logit_adjusted(out["logits"][:, 0], targets)
    return alpha * terms["ce"] + beta * terms["contrastive"], terms


class Stage1Objective(nn.Module):
    """:func:`stage1_objective` as a module (so the loop moves its losses' buffers to the device once)."""

    def __init__(self, contrastive: nn.Module, logit_adjusted: nn.Module, alpha: float, beta: float,
                 joint: bool) -> None:
        super().__init__()
        self.contrastive, self.logit_adjusted = contrastive, logit_adjusted
        self.alpha, self.beta, self.joint = alpha, beta, joint

    def forward(self, out: Dict[str, torch.Tensor], targets: torch.Tensor) -> tuple:
        """``(objective, terms)`` of one batch; see :func:`stage1_objective`."""
        return stage1_objective(out, targets, self.contrastive, self.logit_adjusted, self.alpha, self.beta, self.joint)


def stage1_model(cfg: SupConConfig, encoder: Encoder, num_classes: int) -> BCLModel:
    """Stage 1's network around ``encoder``: projector, classifier and prototypes as ``cfg.model`` asks."""
    return BCLModel(encoder, num_classes, proj_dim=cfg.model.proj_dim, proj_hidden_dim=cfg.model.proj_hidden_dim,
                    classifier=cfg.model.classifier, prototypes=cfg.model.prototypes)


def run_supcon(cfg: SupConConfig, config_stem: str = "supcon", resume: Optional[str] = None,
               resume_overrides: Sequence[str] = ()) -> StageResult:
    """Stage 1: contrastive pre-training (joint with a logit-adjusted classifier, or contrastive only)."""
    cfg, run, checkpoint = _start(SupConConfig, cfg, config_stem, resume, resume_overrides)
    dataset, splits = stage_data(cfg)
    model = stage1_model(cfg, stage_encoder(cfg.model), len(dataset.class_names))
    joint = cfg.loss.mode == "joint"
    views = bcl_train_transform(
        cfg.data.image_size, contrastive_views=cfg.loss.contrastive_views, classifier_view_first=joint,
        crop_scale=tuple(cfg.data.crop_scale), randaugment=cfg.data.randaugment, augment=cfg.data.augment,
        normalization=cfg.data.normalization,
    )
    # No input check in the loss: a diverged encoder's NaN features then reach check_finite, whose
    # message names the term, epoch and step and suggests a lower learning rate.
    contrastive = BalancedSupCon(**cfg.loss.contrastive_arguments(), gather=get_world_size() > 1, check_finite=False)
    objective = Stage1Objective(contrastive, LogitAdjustedLoss(list(splits.train_counts), tau=cfg.loss.la_tau),
                                cfg.loss.alpha, cfg.loss.beta, joint)
    stage = Stage(
        STAGE1, _SCRIPTS[STAGE1], f"stage 1 ({cfg.loss.name}, {cfg.loss.mode})", cfg, model, dataset, splits, views,
        objective, selection="balanced_accuracy" if joint else "knn_balanced_accuracy", classifier_metrics=joint,
        unused_parameters=not joint,
    )
    return fit(stage, run or _open_run(cfg, config_stem, None), checkpoint)


# ------------------------------------------------------------------------------------------------
# Stage 2
# ------------------------------------------------------------------------------------------------

# Settings that decide which images are in which split: a stage-1 encoder must come from the same ones,
# or its training images could sit in this run's test part.
_SPLIT_KEYS = ("dataset", "root", "category", "layout", "class_names", "imbalance_factor", "synthetic_counts",
               "synthetic_seed", "synthetic_test_counts", "synthetic_test_seed", "split", "n_folds", "fold",
               "inner_folds", "inner_fold", "test_fraction", "val_fraction", "split_seed")


def _check_same_split(cfg: LinearConfig, stage1_cfg: SupConConfig, path: str) -> None:
    differing = [k for k in _SPLIT_KEYS if getattr(cfg.data, k) != getattr(stage1_cfg.data, k)]
    if differing:
        details = ", ".join(f"data.{k}: {getattr(stage1_cfg.data, k)!r} vs {getattr(cfg.data, k)!r}" for k in differing)
        raise ConfigError(
            f"model.stage1_checkpoint {path!r} was trained on a different split ({details}); its training "
            "images could be in this run's test part. Use the stage-1 run's data settings."
        )
    if cfg.data.normalization != stage1_cfg.data.normalization:
        raise ConfigError(
            f"data.normalization={cfg.data.normalization}: model.stage1_checkpoint {path!r} was trained on images "
            f"normalised with {stage1_cfg.data.normalization!r}; set data.normalization={stage1_cfg.data.normalization}"
        )


class ClassifierObjective(nn.Module):
    """A classification loss on the model's ``logits``, reported as the term ``name``."""

    def __init__(self, criterion: nn.Module, name: str) -> None:
        super().__init__()
        self.criterion, self.name = criterion, name

    def forward(self, out: Dict[str, torch.Tensor], targets: torch.Tensor) -> tuple:
        """``(loss, {name: loss})`` for logits ``[B, C]`` and targets ``[B]``."""
        loss = self.criterion(out["logits"], targets)
        return loss, {self.name: loss}


def classifier_loss(cfg: LinearConfig, train_counts: Sequence[int]) -> nn.Module:
    """Stage 2's ``loss.name`` criterion, with the class counts of the training part where it needs them."""
    if cfg.loss.name == "logit_adjusted":
        return LogitAdjustedLoss(list(train_counts), tau=cfg.loss.la_tau)
    if cfg.loss.name == "focal":
        return FocalLoss(gamma=cfg.loss.focal_gamma)
    weight = (class_balanced_weights(list(train_counts), beta=cfg.loss.cb_beta) if cfg.loss.name == "weighted_ce"
              else None)
    return nn.CrossEntropyLoss(weight=weight)


def stage2_model(cfg: LinearConfig, encoder: Encoder, num_classes: int) -> LinearProbeModel:
    """Stage 2's network: ``encoder`` (frozen unless ``model.finetune``) and the classifier ``cfg.model`` asks for."""
    return LinearProbeModel(encoder, num_classes, cfg.model.classifier, frozen=not cfg.model.finetune)


def run_linear(cfg: LinearConfig, config_stem: str = "linear", resume: Optional[str] = None,
               resume_overrides: Sequence[str] = ()) -> StageResult:
    """Stage 2: a classifier on a frozen (linear probe) or fine-tuned encoder."""
    cfg, run, checkpoint = _start(LinearConfig, cfg, config_stem, resume, resume_overrides)
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
        logger.info("encoder %s (small stem: %s) from %s", encoder.name, encoder.small_image_stem,
                    cfg.model.stage1_checkpoint)
    else:
        encoder = stage_encoder(cfg.model)
    dataset, splits = stage_data(cfg)
    frozen = not cfg.model.finetune
    model = stage2_model(cfg, encoder, len(dataset.class_names))
    encoder_digest = _state_digest(model.encoder) if frozen else None
    view = classifier_view(cfg.data.image_size, tuple(cfg.data.crop_scale), cfg.data.randaugment, cfg.data.augment,
                           cfg.data.normalization)
    stage = Stage(STAGE2, _SCRIPTS[STAGE2], f"stage 2 ({'linear probe' if frozen else 'fine-tune'}, {cfg.loss.name})",
                  cfg, model, dataset, splits, view, ClassifierObjective(classifier_loss(cfg, splits.train_counts),
                                                                         cfg.loss.name),
                  "balanced_accuracy", True, frozen_encoder=frozen)
    run = run or _open_run(cfg, config_stem, None)
    result = fit(stage, run, checkpoint)
    if frozen and _state_digest(model.encoder) != encoder_digest:
        raise RuntimeError("the frozen encoder changed during the linear probe; this is a bug in bcl")
    if result.metrics is not None:
        result.metrics["encoder_frozen"] = frozen
        if cfg.model.stage1_checkpoint:
            result.metrics["stage1_run"] = str(Path(cfg.model.stage1_checkpoint).resolve().parent.parent)
        result.metrics["encoder_sha256"] = _state_digest(model.encoder)
        run.write_metrics(result.metrics)
    return result
