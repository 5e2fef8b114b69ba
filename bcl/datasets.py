"""The data a config asks for: the dataset, its train / validation / test parts and the pasted defects.

Both stages make their data here (:func:`build_dataset`, :func:`make_splits`, :func:`add_pasted_defects`),
so a probe and the stage-1 run it reads see the same images in the same parts. The parts' positions and
the training part's class counts travel together as :class:`DataSplits`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Dict, Sequence, Tuple

import numpy as np

from bcl.config import ConfigError, DataConfig
from bcl.data import (
    ImageClassificationDataset,
    ImageFolder,
    ImageFolderError,
    MVTecAD,
    SyntheticTransistor,
    class_counts,
    fixed_ratio_subsample,
    long_tail_subsample,
    paste_defects,
    stratified_kfold,
    stratified_split,
    train_val_split_within,
)

__all__ = ["DataSplits", "build_dataset", "make_splits", "add_pasted_defects"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSplits:
    """Positions of the train / validation / test images in the dataset, and the training part's class counts.

    Build it with :meth:`of`, which counts the training part once; the losses, the sampler-free
    metrics (head / tail) and the run's ``metrics.json`` all read ``train_counts`` from here.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_counts: Tuple[int, ...]

    @classmethod
    def of(cls, dataset: ImageClassificationDataset, train: Sequence[int], val: Sequence[int],
           test: Sequence[int]) -> "DataSplits":
        """The parts of ``dataset`` at these positions, with the training part's counts per class."""
        train, val, test = (np.asarray(part, dtype=np.int64) for part in (train, val, test))
        counts = class_counts(np.asarray(dataset.targets)[train], num_classes=len(dataset.class_names))
        return cls(train, val, test, tuple(int(n) for n in counts))

    def as_dict(self) -> Dict[str, np.ndarray]:
        """The non-empty parts by name (no ``val`` under ``eval.selection=last``)."""
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return {name: positions for name, positions in parts.items() if len(positions)}


def build_dataset(cfg: DataConfig) -> ImageClassificationDataset:
    """The labelled dataset, decoded once at ``cfg.image_size`` (no transform yet)."""
    if cfg.dataset == "synthetic":
        dataset = SyntheticTransistor(counts=list(cfg.synthetic_counts), image_size=cfg.image_size,
                                      seed=cfg.synthetic_seed)
        if cfg.split == "generated":
            try:
                test = SyntheticTransistor(counts=list(cfg.synthetic_test_counts), image_size=cfg.image_size,
                                           seed=cfg.synthetic_test_seed)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"data.synthetic_test_counts / data.synthetic_test_seed: {error}") from None
            # One table: the training set first, then the test set, marked by the sample's source split.
            test.samples = [replace(sample, path=f"{sample.path}?seed={cfg.synthetic_test_seed}", split=_GENERATED_TEST)
                            for sample in test.samples]
            dataset = _concatenate(dataset, test)
    elif cfg.dataset == "folder":
        if not cfg.root:
            raise ConfigError("data.dataset=folder needs data.root: a folder of <class>/<image> or train/ and test/ "
                              "folders of them; e.g. data.root=$BCL_CIFAR10_ROOT")
        try:
            dataset = ImageFolder(cfg.root, image_size=cfg.image_size, layout=cfg.layout, class_names=cfg.class_names,
                                  cache_dir=cfg.cache_dir)
        except ImageFolderError as error:
            raise ConfigError(f"data.root: {error}") from None
        if cfg.split == "folders" and dataset.layout != "train_test":
            raise ConfigError(f"data.split=folders needs train/ and test/ folders in data.root={cfg.root!r}, "
                              "which has class folders only; use data.split=kfold or holdout")
    elif not cfg.root:
        raise ConfigError(
            "data.dataset=mvtec needs data.root: the MVTec AD root (with data.category) or one category "
            "folder; e.g. data.root=/data/mvtec_ad, or set BCL_MVTEC_ROOT for the shipped configs"
        )
    else:
        dataset = MVTecAD(cfg.root, category=cfg.category, image_size=cfg.image_size, cache_dir=cfg.cache_dir)
    if cfg.subsample_ratios is not None:
        dataset = dataset.subset(fixed_ratio_subsample(dataset, cfg.subsample_ratios, seed=cfg.split_seed))
    return dataset


_GENERATED_TEST = "synthetic_test"  # Sample.split of the separately generated test images (data.split=generated)


def _concatenate(first: ImageClassificationDataset, second: ImageClassificationDataset) -> ImageClassificationDataset:
    """``first``'s images then ``second``'s, with their defect masks and ``first``'s transform."""
    combined = ImageClassificationDataset(first.class_names, [*first.samples, *second.samples],
                                          [*first.images, *second.images], first.transform)
    combined.masks = [*first.masks, *second.masks]
    return combined


def make_splits(dataset: ImageClassificationDataset, cfg: DataConfig, validation: bool = True) -> DataSplits:
    """Stratified train / validation / test positions; every class must keep training images.

    Args:
        dataset: From :func:`build_dataset` with the same ``cfg``.
        cfg: The data settings.
        validation: Whether to carve a validation part (``cfg.val_fraction``) from the training part;
            without one (``eval.selection=last``) the whole training part trains and ``val`` is empty.
    """
    try:
        if cfg.split == "holdout":
            train, val, test = stratified_split(dataset, val_fraction=cfg.val_fraction if validation else 0.0,
                                                test_fraction=cfg.test_fraction, seed=cfg.split_seed)
        elif cfg.split == "folders":
            source = np.array([sample.split for sample in dataset.samples])
            pool, test = np.flatnonzero(source == "train"), np.flatnonzero(source == "test")
            train, val = (train_val_split_within(pool, dataset, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
                          if validation else (pool, []))
        else:
            if cfg.split == "generated":
                source = np.array([sample.split for sample in dataset.samples])
                pool, test = np.flatnonzero(source != _GENERATED_TEST), np.flatnonzero(source == _GENERATED_TEST)
            else:
                fold = stratified_kfold(dataset, n_splits=cfg.n_folds, seed=cfg.split_seed)[cfg.fold]
                pool, test = fold.train_idx, fold.test_idx
                if cfg.inner_folds:  # tuning: the outer test part leaves the run entirely
                    labels = np.asarray(dataset.targets)[pool]
                    inner = stratified_kfold(labels, n_splits=cfg.inner_folds, seed=cfg.split_seed)[cfg.inner_fold]
                    pool, test = pool[inner.train_idx], pool[inner.test_idx]
            train, val = (train_val_split_within(pool, dataset, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
                          if validation else (pool, []))
        splits = DataSplits.of(dataset, train, val, test)
    except ValueError as error:  # the splitters name the class that is too small
        raise ConfigError(f"data.split={cfg.split} cannot split this dataset: {error}") from None
    if cfg.imbalance_factor is not None:
        splits = _long_tail_training_part(dataset, splits, cfg)
    empty = [dataset.class_names[k] for k, n in enumerate(splits.train_counts) if n == 0]
    if empty:
        raise ConfigError(f"the split leaves classes {empty} without training images; change data.* split settings")
    return splits


def _long_tail_training_part(dataset: ImageClassificationDataset, splits: DataSplits, cfg: DataConfig) -> DataSplits:
    """Keeps an exponential long-tailed subsample of the training part; validation and test are untouched.

    Class order is head first and the subsample is seeded by ``split_seed``; balanced test sets stay balanced.
    """
    labels = np.asarray(dataset.targets)[splits.train]
    try:
        kept = long_tail_subsample(labels, cfg.imbalance_factor, seed=cfg.split_seed)
    except ValueError as error:
        raise ConfigError(f"data.imbalance_factor={cfg.imbalance_factor}: {error}") from None
    long_tailed = DataSplits.of(dataset, splits.train[kept], splits.val, splits.test)
    logger.info("long-tailed training part (imbalance factor %g): %s", cfg.imbalance_factor,
                dict(zip(dataset.class_names, long_tailed.train_counts)))
    return long_tailed


def add_pasted_defects(dataset: ImageClassificationDataset, splits: DataSplits, cfg: DataConfig,
                       seed: int) -> Tuple[ImageClassificationDataset, DataSplits]:
    """Appends ``cfg.paste_per_class`` mask-pasted images per defect class to the training part.

    Only training images are read (see :func:`bcl.data.paste_defects`). Returns ``(dataset, splits)``,
    unchanged when ``paste_per_class`` is 0.
    """
    if cfg.paste_per_class == 0:
        return dataset, splits
    try:
        pasted = paste_defects(dataset, splits.train, cfg.paste_per_class, seed)
    except ValueError as error:
        raise ConfigError(f"data.paste_per_class={cfg.paste_per_class}: {error}") from None
    combined = _concatenate(dataset, pasted)
    new = np.arange(len(dataset), len(combined), dtype=np.int64)
    logger.info("pasted %d training defects onto training good images (%d per defect class)", len(new),
                cfg.paste_per_class)
    return combined, DataSplits.of(combined, np.concatenate([splits.train, new]), splits.val, splits.test)
