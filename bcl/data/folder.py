r"""Image folders, the layout users bring: one folder per class, optionally split into ``train/`` and ``test/``.

Two layouts are read:

- ``flat``: ``root/<class>/<image>``; bcl splits it (stratified k-fold or holdout) like MVTec AD.
- ``train_test``: ``root/train/<class>/<image>`` and ``root/test/<class>/<image>``; every sample keeps
  its source folder in :attr:`Sample.split` and ``data.split=folders`` trains on ``train/`` and tests on
  ``test/`` (the CIFAR copy in ``BCL_CIFAR10_ROOT`` has this layout).

``layout="auto"`` picks ``train_test`` when ``root`` holds exactly the class-free folders ``train`` and
``test``, ``flat`` otherwise. Class names are the folder names in sorted order, or ``class_names`` in
the order given (which then must name exactly the folders present).

Images: any file PIL reads with an image extension (png, jpg/jpeg, bmp, tif/tiff, any case), decoded once
through :func:`bcl.data.image_io.load_images` (the same colour, orientation, resizing and cache rules as
:class:`~bcl.data.MVTecAD`). **Litter policy**: hidden entries (``.DS_Store``, ``._x.png``,
``.ipynb_checkpoints``) and OS thumbnail / settings files (``Thumbs.db``, ``desktop.ini``, ``Icon\r``)
are ignored with one log line saying how many; any other file that is not an image, and any image that
cannot be decoded, is an error naming the file — a dataset is never trained on silently less than what
its folders hold.

Masks (optional): with ``mask_root``, an image ``<class>/<stem>.<ext>`` pairs with the mask
``mask_root/<class>/<stem><mask_suffix>.png`` when that file exists (MVTec's ``ground_truth`` rule);
images without one get ``None``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from bcl.choices import FOLDER_LAYOUTS
from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.image_io import ImageCache, is_image_file, is_os_litter, load_images, load_masks, sorted_entries

__all__ = ["FOLDER_LAYOUTS", "ImageFolder", "ImageFolderError"]

logger = logging.getLogger(__name__)


_SPLIT_FOLDERS = ("train", "test")


class ImageFolderError(ValueError):
    """An image folder whose layout cannot be a dataset (the message names the folder or file)."""


def _entries(folder: Path) -> List[os.DirEntry]:
    try:
        return sorted_entries(folder)
    except FileNotFoundError:
        raise ImageFolderError(f"image folder {folder} does not exist") from None
    except NotADirectoryError:
        raise ImageFolderError(f"image folder {folder} is a file, not a folder") from None


def _class_folders(folder: Path, litter: List[str]) -> Dict[str, Path]:
    classes: Dict[str, Path] = {}
    for entry in _entries(folder):
        if is_os_litter(entry.name):
            litter.append(entry.path)
        elif entry.is_dir():
            classes[entry.name] = Path(entry.path)
        else:
            raise ImageFolderError(
                f"{entry.path}: a file where class folders were expected (layout: {folder}/<class>/<image>)"
            )
    if not classes:
        raise ImageFolderError(f"image folder {folder} has no class subfolders (expected {folder}/<class>/<image>)")
    by_case: Dict[str, List[str]] = {}
    for name in classes:
        by_case.setdefault(name.casefold(), []).append(name)
    clashes = [names for names in by_case.values() if len(names) > 1]
    if clashes:
        raise ImageFolderError(
            f"image folder {folder}: class folders {clashes[0]} differ only in case, which is one class on "
            "case-insensitive file systems; rename or merge them"
        )
    return classes


def _class_images(folder: Path, litter: List[str]) -> List[Path]:
    images = []
    for entry in _entries(folder):
        if is_os_litter(entry.name):
            litter.append(entry.path)
        elif entry.is_dir():
            raise ImageFolderError(
                f"{entry.path}: a folder inside class folder {folder} (class folders hold images only)"
            )
        elif not is_image_file(entry.name):
            raise ImageFolderError(f"{entry.path}: not an image file (expected .png, .jpg, .jpeg, .bmp, .tif or .tiff)")
        else:
            images.append(Path(entry.path))
    if not images:
        raise ImageFolderError(f"class folder {folder} holds no images")
    return images


def _resolve_layout(root: Path, layout: str) -> str:
    if layout != "auto":
        return layout
    names = {e.name for e in _entries(root) if e.is_dir() and not is_os_litter(e.name)}
    return "train_test" if names == set(_SPLIT_FOLDERS) else "flat"


def _order_classes(found: Sequence[str], class_names: Optional[Sequence[str]], where: Path) -> List[str]:
    if class_names is None:
        return sorted(found)
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ImageFolderError(f"class_names {names} lists a class twice")
    missing = [n for n in names if n not in found]
    extra = sorted(set(found) - set(names))
    if missing or extra:
        raise ImageFolderError(
            f"class_names {names} do not match the class folders of {where}: "
            + "; ".join(part for part in (f"no folder for {missing}" if missing else "",
                                          f"folders not listed: {extra}" if extra else "") if part)
        )
    return names


class ImageFolder(ImageClassificationDataset):
    """An image-folder dataset, decoded once into memory (see the module docstring for the rules).

    Args:
        root: The dataset folder.
        image_size: Working side in pixels (images are resized to ``S x S``), or None for native size.
        layout: ``auto``, ``flat`` or ``train_test``.
        class_names: Class order (must name exactly the class folders); default: sorted folder names.
        transform: Optional callable applied to the uint8 ``[3, H, W]`` image in ``__getitem__``.
        cache_dir: Optional :class:`~bcl.data.ImageCache` folder for decoded images.
        mask_root: Optional folder of masks ``<class>/<stem><mask_suffix>.png``.
        mask_suffix: See ``mask_root``.
        num_threads: Decoding threads (None: up to 8).

    Attributes:
        layout: The layout read (``flat`` or ``train_test``).
        masks: bool ``[H, W]`` per image where a mask was found, else None.

    Raises:
        ImageFolderError: No class folders, an empty class, a class present in only one of ``train/`` and
            ``test/``, classes that differ only in case, a non-image file, or ``class_names`` that do not
            match the folders.
        bcl.data.ImageDecodeError: An image that cannot be decoded (names the file).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for split in ("train", "test"):
        ...         for c in ("cat", "dog"):
        ...             os.makedirs(f"{d}/{split}/{c}")
        ...             Image.new("RGB", (8, 8)).save(f"{d}/{split}/{c}/0.png")
        ...     ds = ImageFolder(d, image_size=8)
        >>> ds.layout, ds.class_names, [s.split for s in ds.samples]
        ('train_test', ['cat', 'dog'], ['train', 'train', 'test', 'test'])
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        image_size: Optional[int] = None,
        layout: str = "auto",
        class_names: Optional[Sequence[str]] = None,
        transform=None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        mask_root: Optional[Union[str, os.PathLike]] = None,
        mask_suffix: str = "_mask",
        num_threads: Optional[int] = None,
    ) -> None:
        if layout not in FOLDER_LAYOUTS:
            raise ValueError(f"layout must be one of {list(FOLDER_LAYOUTS)}, got {layout!r}")
        started = time.perf_counter()
        root = Path(os.fspath(root)).absolute()
        self.root = root
        self.layout = _resolve_layout(root, layout)
        litter: List[str] = []
        parts: List[Tuple[str, Dict[str, Path]]]
        if self.layout == "train_test":
            parts = []
            for split in _SPLIT_FOLDERS:
                if not (root / split).is_dir():
                    raise ImageFolderError(
                        f"layout train_test needs {root / split}/<class>/<image>; {root / split} is missing"
                    )
                parts.append((split, _class_folders(root / split, litter)))
            (_, train), (_, test) = parts
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            if only_train or only_test:
                raise ImageFolderError(
                    f"image folder {root}: train/ and test/ must hold the same classes; "
                    + "; ".join(p for p in (f"only in train/: {only_train}" if only_train else "",
                                            f"only in test/: {only_test}" if only_test else "") if p)
                )
        else:
            parts = [("all", _class_folders(root, litter))]
        names = _order_classes(list(parts[0][1]), class_names, root)
        samples: List[Sample] = []
        for split, classes in parts:
            for index, name in enumerate(names):
                for path in _class_images(classes[name], litter):
                    mask = None
                    if mask_root is not None:
                        candidate = Path(os.fspath(mask_root)) / name / f"{path.stem}{mask_suffix}.png"
                        mask = str(candidate) if candidate.is_file() else None
                    samples.append(
                        Sample(path=str(path), split=split, class_name=name, class_index=index, mask_path=mask)
                    )
        if litter:
            logger.info("image folder %s: ignored %d hidden or OS files (e.g. %s)", root, len(litter), litter[0])
        cache = ImageCache(cache_dir) if cache_dir is not None else None
        images = load_images([s.path for s in samples], image_size, cache=cache, num_threads=num_threads)
        super().__init__(names, samples, images, transform)
        with_mask = [i for i, s in enumerate(samples) if s.mask_path is not None]
        decoded = load_masks(
            [samples[i].mask_path for i in with_mask], image_size, cache=cache, num_threads=num_threads
        )
        self.masks: List[Optional[torch.Tensor]] = [None] * len(samples)
        for i, mask in zip(with_mask, decoded):
            if tuple(mask.shape) != tuple(images[i].shape[-2:]):
                raise ImageFolderError(f"mask {samples[i].mask_path} is {tuple(mask.shape)} but its image "
                                       f"{samples[i].path} is {tuple(images[i].shape[-2:])}")
            self.masks[i] = mask
        logger.info("image folder %s (%s): %d images in %d classes at %s px in %.1f s", root, self.layout,
                    len(self), len(names), image_size, time.perf_counter() - started)
