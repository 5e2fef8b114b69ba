"""Datasets, long-tail tools, splits and image pipelines."""

from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.cifar_lt import CIFAR10LT, CIFAR100LT
from bcl.data.contact_sheet import save_contact_sheet
from bcl.data.folder import FOLDER_LAYOUTS, ImageFolder, ImageFolderError
from bcl.data.image_io import ImageCache, ImageDecodeError, load_image, load_images, load_mask, load_masks
from bcl.data.longtail import (
    class_counts,
    fixed_ratio_subsample,
    imbalance_factor,
    long_tail_profile,
    long_tail_subsample,
)
from bcl.data.mvtec import MVTEC_CATEGORIES, MVTecAD, MVTecLayoutError
from bcl.data.synthesis import PASTED, paste_defects
from bcl.data.splits import Fold, stratified_kfold, stratified_split, train_val_split_within
from bcl.data.synthetic import CLASS_NAMES as TRANSISTOR_CLASS_NAMES
from bcl.data.synthetic import SyntheticTransistor
from bcl.data.transforms import (
    MultiViewTransform,
    bcl_train_transform,
    classifier_view,
    contrastive_view,
    eval_transform,
    seed_worker,
)

__all__ = [
    "PASTED",
    "paste_defects",
    "ImageClassificationDataset",
    "Sample",
    "MVTecAD",
    "ImageFolder",
    "ImageFolderError",
    "FOLDER_LAYOUTS",
    "MVTecLayoutError",
    "MVTEC_CATEGORIES",
    "SyntheticTransistor",
    "TRANSISTOR_CLASS_NAMES",
    "save_contact_sheet",
    "CIFAR10LT",
    "CIFAR100LT",
    "ImageCache",
    "ImageDecodeError",
    "load_image",
    "load_images",
    "load_mask",
    "load_masks",
    "class_counts",
    "imbalance_factor",
    "long_tail_profile",
    "long_tail_subsample",
    "fixed_ratio_subsample",
    "Fold",
    "stratified_split",
    "stratified_kfold",
    "train_val_split_within",
    "MultiViewTransform",
    "classifier_view",
    "contrastive_view",
    "eval_transform",
    "bcl_train_transform",
    "seed_worker",
]
