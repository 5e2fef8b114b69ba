"""MVTec AD as a (long-tailed) image-classification dataset.

**Getting the data.** MVTec AD (Bergmann et al., CVPR 2019) is downloaded from
https://www.mvtec.com/company/research/datasets/mvtec-ad after accepting its license, Creative Commons
Attribution-NonCommercial-ShareAlike 4.0 (CC BY-NC-SA 4.0: research use, cite the paper, share
derivatives alike; commercial use needs MVTec's permission). Never commit it into a repository.
Unpack the archive anywhere; the reader accepts any of its 15 categories (:data:`MVTEC_CATEGORIES`).

**Pointing the reader at it.** Either the MVTec AD root plus a category, or one category folder::

    MVTecAD("/data/mvtec_ad", category="transistor")   # /data/mvtec_ad/transistor/train/good/...
    MVTecAD("/data/mvtec_ad/transistor")               # the category folder itself

A category folder is recognised by holding ``train/good/`` and ``test/``; it may be renamed (e.g. a
downscaled copy ``mvtec_transistor_256``): the category is then read from the folder name when it
contains one of the 15 names. bcl's tests read the path from the environment variable
``BCL_MVTEC_ROOT`` and skip without it.

**Layout** (what is parsed)::

    <category>/train/good/*.png                       -> class "good"
    <category>/test/good/*.png                        -> class "good"
    <category>/test/<defect_type>/*.png               -> class <defect_type>
    <category>/ground_truth/<defect_type>/<stem>_mask.png   mask of test/<defect_type>/<stem>.png

The classification view pools train and test images (``Sample.split`` remembers the source): class 0
is ``good``, the defect types follow in sorted order. Within a class, images are ordered train before
test, then by file name. Masks pair with images by name, never by position. Image extensions are
``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff`` (any case); hidden files (``.DS_Store``,
``._000.png``) and files with other extensions are ignored with a debug log.

**Errors.** A root that is not this layout, an unknown category, an empty class folder or an
unexpected ``train/<not good>`` folder is a :class:`MVTecLayoutError` (a ``ValueError``) whatever
``on_error`` says. Bad files -- an image that cannot be decoded (zero bytes, truncated, not an image;
:class:`~bcl.data.image_io.ImageDecodeError`; the same for a mask), a defect image without a mask, a mask
without an image, a file in ``ground_truth`` not named ``<stem>_mask.<ext>`` -- follow ``on_error``:
``"raise"`` stops at the first one; ``"skip"`` leaves it out, logs a warning and records
``(path, reason)`` in ``ds.skipped``. Grayscale, palette, RGBA and 16-bit images are converted to RGB (see
:mod:`bcl.data.image_io`), never an error. Masks are decoded at construction too, at the working
resolution (nearest neighbour), and returned by :meth:`MVTecAD.load_mask`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from bcl._checks import is_int
from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.image_io import (
    ImageCache,
    ImageDecodeError,
    _check_size,
    is_image_file,
    is_os_litter,
    load_images,
    load_masks,
    sorted_entries,
)

__all__ = ["MVTEC_CATEGORIES", "MVTecAD", "MVTecLayoutError"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: The 15 MVTec AD categories.
MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)

_EXPECTED_LAYOUT = (
    "expected an MVTec AD category folder laid out as <category>/train/good/*.png, "
    "<category>/test/<good|defect_type>/*.png and <category>/ground_truth/<defect_type>/<stem>_mask.png, "
    "or the MVTec AD root holding such category folders (then pass category=...)"
)
_SPLIT_ORDER = ("train", "test")
_ON_ERROR = ("raise", "skip")


class MVTecLayoutError(ValueError):
    """The folder tree is not (or not entirely) an MVTec AD layout."""


def _describe(path: Path, limit: int = 20) -> str:
    """The entries of ``path`` for an error message: ``['a/', 'b.png', ...]``."""
    try:
        entries = [e.name + ("/" if e.is_dir() else "") for e in sorted_entries(path)]
    except OSError as e:
        return f"<cannot list {path}: {e}>"
    if not entries:
        return "nothing (empty folder)"
    shown = ", ".join(entries[:limit])
    more = f", ... and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"[{shown}{more}]"


def _is_category_dir(path: Path) -> bool:
    return (path / "train" / "good").is_dir() and (path / "test").is_dir()


def _missing_parts(path: Path) -> str:
    missing = [p for p in ("train/good", "test") if not (path / p).is_dir()]
    return " and ".join(f"{p}/" for p in missing)


def _category_from_name(name: str) -> str:
    """The category a category folder stands for: its name, or the one MVTec name inside it."""
    if name in MVTEC_CATEGORIES:
        return name
    hits = [c for c in MVTEC_CATEGORIES if re.search(rf"(?<![a-z]){re.escape(c)}(?![a-z])", name.lower())]
    return hits[0] if len(hits) == 1 else name


def _resolve_category(root: Path, category: Optional[str]) -> Tuple[Path, str]:
    """``(category folder, category name)`` from the user's ``root`` and ``category``."""
    if not root.exists():
        raise FileNotFoundError(f"MVTec AD root {root} does not exist; {_EXPECTED_LAYOUT}")
    if not root.is_dir():
        raise MVTecLayoutError(f"MVTec AD root {root} is not a folder; {_EXPECTED_LAYOUT}")
    if _is_category_dir(root):
        inferred = _category_from_name(root.name)
        if category is not None and category not in (inferred, root.name):
            raise MVTecLayoutError(
                f"root {root} is itself a category folder (of {inferred!r}, by its name) but category={category!r} "
                f"was asked; pass category=None, or the MVTec AD root ({root.parent}) with category={category!r}"
            )
        return root, category if category is not None else inferred
    available = [e.name for e in sorted_entries(root)
                 if e.is_dir() and not is_os_litter(e.name) and _is_category_dir(Path(e.path))]
    if category is None:
        if available:
            raise MVTecLayoutError(f"{root} is an MVTec AD root: pass category=..., one of {available}")
        raise MVTecLayoutError(
            f"{root} is not an MVTec AD layout: {_EXPECTED_LAYOUT}; found in {root}: {_describe(root)}"
        )
    cdir = root / category
    if _is_category_dir(cdir):
        return cdir, category
    if cdir.is_dir():
        raise MVTecLayoutError(
            f"category folder {cdir} is not an MVTec AD layout: {_missing_parts(cdir)} missing; {_EXPECTED_LAYOUT}; "
            f"found in {cdir}: {_describe(cdir)}"
        )
    if available:
        raise MVTecLayoutError(f"unknown category {category!r}: no folder {cdir}; categories under {root}: {available}")
    raise MVTecLayoutError(
        f"unknown category {category!r} and {root} is not an MVTec AD layout: {_EXPECTED_LAYOUT}; "
        f"found in {root}: {_describe(root)}"
    )


def _image_files(folder: Path) -> List[Path]:
    """Image files of ``folder`` sorted by name; hidden and non-image entries are logged and ignored."""
    files = []
    for e in sorted_entries(folder):
        if is_os_litter(e.name):
            logger.info("ignoring hidden or OS entry %s", e.path)
        elif not e.is_file():
            logger.info("ignoring non-file entry %s", e.path)
        elif not is_image_file(e.name):
            logger.info("ignoring non-image file %s (e.g. an OS thumbnail cache)", e.path)
        else:
            files.append(Path(e.path))
    return files


def _subfolders(folder: Path) -> List[str]:
    names = []
    for e in sorted_entries(folder):
        if e.is_dir() and not is_os_litter(e.name):
            names.append(e.name)
        else:
            logger.debug("ignoring %s (not a class folder)", e.path)
    return names


def _parse_layout(cdir: Path) -> Tuple[List[str], List[Sample], List[Tuple[str, str]]]:
    """Parse a category folder into ``(class_names, samples, problems)``.

    ``problems`` are per-file faults, ``(path, reason)`` in traversal order; the samples they concern
    are already left out. Whole-layout faults raise :class:`MVTecLayoutError` here.
    """
    train_classes = _subfolders(cdir / "train")
    stray = [c for c in train_classes if c != "good"]
    if stray:
        raise MVTecLayoutError(
            f"unexpected folder(s) {[str(cdir / 'train' / c) for c in stray]}: MVTec AD training images are all "
            f"good (<category>/train/good/*.png); defect images belong in <category>/test/<defect_type>/"
        )
    test_classes = _subfolders(cdir / "test")
    defects = sorted(c for c in test_classes if c != "good")
    class_names = ["good"] + defects
    index = {c: i for i, c in enumerate(class_names)}

    # (split, class) folders in the canonical order: good (train, then test), then each defect type.
    folders = [("train", "good")] + ([("test", "good")] if "good" in test_classes else [])
    folders += [("test", d) for d in defects]
    images: Dict[Tuple[str, str], List[Path]] = {}
    for split, cls in folders:
        folder = cdir / split / cls
        files = _image_files(folder)
        if not files:
            raise MVTecLayoutError(
                f"class folder {folder} holds no images (expected {split}/{cls}/*.png); found: {_describe(folder)}"
            )
        images[(split, cls)] = files

    # Masks, keyed by (defect type, image stem).
    problems: List[Tuple[str, str]] = []
    masks: Dict[Tuple[str, str], List[Path]] = defaultdict(list)
    gt = cdir / "ground_truth"
    if gt.is_dir():
        for d in _subfolders(gt):
            if d == "good":
                # Some copies ship all-black masks for good images; a good image has no defect region.
                logger.info("ignoring %s: good images have no defect mask", gt / d)
                continue
            for f in _image_files(gt / d):
                stem = f.stem
                if stem.endswith("_mask") and len(stem) > len("_mask"):
                    masks[(d, stem[: -len("_mask")])].append(f)
                else:
                    problems.append((str(f), f"unexpected file in ground_truth: masks are named <stem>_mask.png, "
                                             f"e.g. {stem}_mask{f.suffix} for test/{d}/{stem}{f.suffix}"))
    elif defects:
        logger.warning("%s has no ground_truth/ folder; every defect image will lack its mask", cdir)

    samples: List[Sample] = []
    used = set()
    for split, cls in folders:
        for f in images[(split, cls)]:
            mask_path = None
            if cls != "good":
                found = masks.get((cls, f.stem), [])
                if len(found) != 1:
                    expected = gt / cls / f"{f.stem}_mask.png"
                    reason = (f"defect image has no mask: expected {expected}" if not found else
                              f"defect image has {len(found)} masks, cannot tell which: {[str(m) for m in found]}")
                    problems.append((str(f), reason))
                    used.add((cls, f.stem))
                    continue
                used.add((cls, f.stem))
                mask_path = str(found[0])
            samples.append(
                Sample(path=str(f), split=split, class_name=cls, class_index=index[cls], mask_path=mask_path)
            )
    for key in sorted(masks):
        if key not in used:
            d, stem = key
            for m in masks[key]:
                reason = (f"mask without an image: expected {cdir / 'test' / d / (stem + '.png')}" if d in defects else
                          f"mask folder {gt / d} matches no defect folder test/{d} (defect types: {defects})")
                problems.append((str(m), reason))
    return class_names, samples, problems


class MVTecAD(ImageClassificationDataset):
    """One MVTec AD category as a classification dataset: ``good`` plus its defect types.

    All images (train and test pooled) are decoded once at construction, in a thread pool and through
    the on-disk cache when ``cache_dir`` is given, and held in memory as uint8 ``[3, S, S]`` tensors;
    ``ds[i]`` returns ``(transform(image), class_index)``. See the module docstring for the layout,
    where to download the data, and the error policy.

    Args:
        root: The MVTec AD root (then ``category`` is required) or one category folder.
        category: One of the categories under ``root`` (e.g. ``"transistor"``); with a category folder
            as ``root`` it must match that folder, or be None.
        image_size: Working resolution ``S`` (images are resized to ``S x S``), or None for the native
            size (1024 px for the originals of most categories).
        transform: Optional callable applied to the uint8 ``[3, H, W]`` image in ``__getitem__``.
        cache_dir: Optional folder for an :class:`~bcl.data.image_io.ImageCache` of decoded images.
        on_error: ``"raise"`` (default): stop at the first bad file. ``"skip"``: leave bad files out,
            log a warning for each and list them in :attr:`skipped`.
        num_threads: Decoding threads; None = ``min(8, cpu_count)``.

    Attributes:
        root: The category folder actually read.
        category: The category name.
        class_names: ``["good", <defect types sorted>]``.
        samples: One :class:`~bcl.data.base.Sample` per image, grouped by class, then train before test,
            then by file name.
        images: uint8 ``[3, S, S]`` tensors aligned with ``samples``.
        targets: Class index per image.
        skipped: ``[(path, reason), ...]`` for every file left out (``on_error="skip"``).

    Raises:
        MVTecLayoutError: Not an MVTec layout, unknown category, empty class folder; with
            ``on_error="raise"`` also a missing/orphan/misnamed mask.
        ImageDecodeError: With ``on_error="raise"``, an image or mask that cannot be decoded (the layout,
            mask pairing included, is checked first, before anything is decoded).
        ValueError: Bad ``on_error``, ``image_size`` or ``num_threads``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     cdir = Path(d) / "transistor"  # a minimal category: 3 good images, 1 per defect type
        ...     for rel in ("train/good/000", "train/good/001", "test/good/000", "test/cut_lead/000",
        ...                 "test/bent_lead/000"):
        ...         image = cdir / f"{rel}.png"
        ...         image.parent.mkdir(parents=True, exist_ok=True)
        ...         Image.new("RGB", (32, 32), "gray").save(image)
        ...         if image.parent.name != "good":  # a defect image needs its <stem>_mask.png
        ...             mask = cdir / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
        ...             mask.parent.mkdir(parents=True, exist_ok=True)
        ...             region = Image.new("L", (32, 32))
        ...             region.paste(255, (0, 0, 16, 16))  # the defect: the top-left quarter
        ...             region.save(mask)
        ...     ds = MVTecAD(d, category="transistor", image_size=16)  # or MVTecAD(cdir, image_size=16)
        >>> ds.class_names
        ['good', 'bent_lead', 'cut_lead']
        >>> len(ds), ds.class_counts()
        (5, {'good': 3, 'bent_lead': 1, 'cut_lead': 1})
        >>> image, label = ds[3]
        >>> image.dtype, tuple(image.shape), label, ds.samples[3].class_name
        (torch.uint8, (3, 16, 16), 1, 'bent_lead')
        >>> mask = ds.load_mask(3)
        >>> mask.dtype, tuple(mask.shape), int(mask.sum()), bool(ds.load_mask(0).any())
        (torch.bool, (16, 16), 64, False)
    """

    def __init__(
        self,
        root: PathLike,
        category: Optional[str] = None,
        image_size: Optional[int] = 256,
        transform: Optional[Callable] = None,
        cache_dir: Optional[PathLike] = None,
        on_error: str = "raise",
        num_threads: Optional[int] = None,
    ) -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {list(_ON_ERROR)}, got {on_error!r}")
        size = _check_size(image_size)
        bad_threads = not is_int(num_threads) or num_threads < 1
        if num_threads is not None and bad_threads:
            raise ValueError(f"num_threads must be None or an int >= 1, got {num_threads!r}")
        if category is not None and (not isinstance(category, str) or not category):
            raise ValueError(f"category must be None or a non-empty str, got {category!r}")

        t0 = time.perf_counter()
        cdir, self.category = _resolve_category(Path(os.fspath(root)).absolute(), category)
        self.root: Path = cdir
        self.image_size = image_size
        self.on_error = on_error
        self.skipped: List[Tuple[str, str]] = []

        class_names, samples, problems = _parse_layout(cdir)
        for path, reason in problems:
            if on_error == "raise":
                raise MVTecLayoutError(f"{path}: {reason} (pass on_error='skip' to leave such files out)")
            self._skip(path, reason)

        self.cache: Optional[ImageCache] = ImageCache(cache_dir) if cache_dir is not None else None
        decoded = load_images(
            [s.path for s in samples], size, cache=self.cache, num_threads=num_threads,
            return_exceptions=(on_error == "skip"),
        )
        kept = []  # (sample, image)
        for s, x in zip(samples, decoded):
            if isinstance(x, ImageDecodeError):
                self._skip(s.path, x.reason)
            else:
                kept.append((s, x))

        # Masks are decoded now too (once, through the cache), so a bad mask is found at construction and
        # load_mask() works even after the data folder is gone.
        with_mask = [(s, x) for s, x in kept if s.mask_path is not None]
        masks = load_masks(
            [s.mask_path for s, _ in with_mask], size, cache=self.cache, num_threads=num_threads,
            return_exceptions=(on_error == "skip"),
        )
        mask_of: Dict[str, torch.Tensor] = {}
        for (s, x), m in zip(with_mask, masks):
            if isinstance(m, ImageDecodeError):
                self._skip(s.path, f"its mask {s.mask_path} cannot be decoded: {m.reason}")
                continue
            if tuple(m.shape) != tuple(x.shape[-2:]):  # only possible at native size
                logger.warning("mask %s is %s but its image is %s; resizing the mask (nearest)",
                               s.mask_path, tuple(m.shape), tuple(x.shape[-2:]))
                m = F.interpolate(m[None, None].float(), size=tuple(x.shape[-2:]), mode="nearest")[0, 0] > 0.5
            mask_of[s.path] = m
        kept = [(s, x) for s, x in kept if s.mask_path is None or s.path in mask_of]

        super().__init__(class_names, [s for s, _ in kept], [x for _, x in kept], transform)
        #: bool ``[H, W]`` per image for defect images, None for good ones (see :meth:`load_mask`).
        self.masks: List[Optional[torch.Tensor]] = [mask_of.get(s.path) for s in self.samples]

        for name, n in self.class_counts().items():
            if n == 0:
                logger.warning("MVTec AD %s: class %r has no images left after skipping bad files", self.category, name)
        cache_note = ""
        if self.cache is not None:
            cache_note = f", {self.cache.hits} of {self.cache.hits + self.cache.misses} files from the cache"
        logger.info(
            "MVTec AD %s: %d images in %d classes at %s px (%d skipped%s) in %.1f s from %s",
            self.category, len(self), len(class_names), image_size, len(self.skipped), cache_note,
            time.perf_counter() - t0, cdir,
        )

    def _skip(self, path: str, reason: str) -> None:
        logger.warning("skipping %s: %s", path, reason)
        self.skipped.append((path, reason))

    def class_counts(self) -> Dict[str, int]:
        """Images per class, in class order (``{"good": 273, "bent_lead": 10, ...}``)."""
        counts = Counter(self.targets)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def load_mask(self, index: int) -> torch.Tensor:
        """The ground-truth defect mask of image ``index`` at its working resolution.

        Args:
            index: Position in the dataset.

        Returns:
            bool ``[H, W]`` (the image's height and width), True = defect; all False for good images.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} images")
        mask = self.masks[index]
        if mask is None:
            h, w = self.images[index].shape[-2:]
            return torch.zeros(h, w, dtype=torch.bool)
        return mask

    def summary(self) -> str:
        """A multi-line table: images per class, split by source (train/test)."""
        per = Counter((s.class_name, s.split) for s in self.samples)
        lines = [f"MVTec AD {self.category!r} at {self.root}: {len(self)} images, {len(self.class_names)} classes, "
                 f"image_size={self.image_size}"]
        for i, name in enumerate(self.class_names):
            parts = ", ".join(f"{sp} {per[(name, sp)]}" for sp in _SPLIT_ORDER if per[(name, sp)])
            lines.append(f"  {i}  {name:<16s} {self.class_counts()[name]:>5d}  ({parts or 'none'})")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s):")
            lines.extend(f"    {p}: {r}" for p, r in self.skipped)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"MVTecAD(category={self.category!r}, images={len(self)}, classes={self.class_counts()}, "
                f"image_size={self.image_size}, skipped={len(self.skipped)})")
