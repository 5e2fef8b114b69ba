"""COCO and YOLO export of defect masks: boxes, polygons and RLE for detectors and segmenters.

Turns a dataset with defect masks (an MVTec AD folder, or any bcl dataset with a ``masks`` attribute
such as :class:`~bcl.data.SyntheticTransistor`) into what detection and segmentation tools read::

    python -m bcl.data.export --format coco --out exports/coco             # MVTec at $BCL_MVTEC_ROOT
    python -m bcl.data.export --format yolo-seg --split all --image-size 640 --out exports/yolo

Conventions (``docs/data.md``, "Exporting masks for detection and segmentation", has the details):

* Instances are the connected components of each defect mask (8-connected, or 4) of at least
  ``min_area`` pixels (default 1), labelled with the image's class; ``good`` images get none (negatives);
  a defect image left without an instance is an error, never a silent negative.
* A mask holding 0 and one other value reads as in bcl (non-zero = defect); any other mask (anti-aliased
  edges) is thresholded at ``mask_threshold`` of full scale (0.5: 128 of 255) with a warning naming it.
* Pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``; COCO ``bbox`` ``[x, y, w, h]`` is the tight box of
  the component's pixels, ``area`` its pixel count; YOLO boxes are the same, centred and normalised.
* Polygons run a quarter pixel inside the component's outer pixel edges (OpenCV's contour of the mask
  upsampled 2x): rasterised at pixel centres they give back its pixels exactly, holes excepted (filled:
  COCO polygons cannot carry holes). ``segmentation="rle"`` (COCO) stores the exact pixels. ``iscrowd`` is 0.
* Splits are bcl's (``kfold``/``holdout`` over the same image table as :class:`~bcl.data.MVTecAD`, parts
  ``train``/``test``), or ``all`` (one part, ``all``).

Output: ``images/<part>/`` (source files copied or linked, PNG when resized), ``annotations/instances_<part>.json``
(COCO) or ``labels/<part>/*.txt`` and ``data.yaml`` (YOLO), and ``export.json`` (settings, counts,
thresholded and skipped files). A non-empty output folder is refused unless ``overwrite`` (and then only a
bcl export); the export is built in a temporary sibling folder and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from bcl._checks import is_int
from bcl import __version__
from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.contact_sheet import save_contact_sheet
from bcl.data.image_io import _UINT16_MODES, _decode_rgb, _open_fully, _resize_rgb
from bcl.data.mvtec import MVTecLayoutError, _parse_layout, _resolve_category
from bcl.data.splits import stratified_kfold, stratified_split
from bcl.data.synthetic import SyntheticTransistor
from bcl.checkpoints import atomic_write_text

__all__ = ["FORMATS", "Instance", "mask_instances", "read_mask", "export", "save_export_sheet", "main"]

logger = logging.getLogger(__name__)

FORMATS = ("coco", "yolo-detect", "yolo-seg")
SEGMENTATIONS = ("polygon", "rle")
SPLITS = ("all", "holdout", "kfold")
NEGATIVE_CLASS = "good"
SHEET_PER_CLASS = 4


@dataclass(frozen=True, eq=False)  # compared by identity: ``==`` on the mask would be element-wise
class Instance:
    """One connected component of a defect mask.

    Attributes:
        bbox: ``(x, y, w, h)`` integers, COCO's convention (top-left pixel corner, width, height).
        area: Pixels of the component.
        polygon: ``[x1, y1, x2, y2, ...]``, its outer boundary a quarter pixel inside the pixel edges.
        mask: bool ``[H, W]``, the component alone (what RLE stores).
    """

    bbox: Tuple[int, int, int, int]
    area: int
    polygon: List[float]
    mask: np.ndarray = field(repr=False)


def _outer_polygon(crop: np.ndarray, x0: int, y0: int) -> List[float]:
    """The outer contour of the one component in ``crop`` (its bbox), in image pixel coordinates."""
    up = np.pad(np.kron(crop.astype(np.uint8), np.ones((2, 2), np.uint8)), 1)  # 2x: never a degenerate polygon
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) != 1:  # a connected component has one outer boundary
        raise RuntimeError(f"expected one outer contour for a component, OpenCV found {len(contours)}")
    points = (contours[0].reshape(-1, 2).astype(np.float64) - 1 + 0.5) / 2 + (x0, y0)
    return points.ravel().tolist()


def mask_instances(mask: np.ndarray, min_area: int = 1, connectivity: int = 8) -> List[Instance]:
    """The connected components of a bool mask as :class:`Instance` objects, in raster order.

    Args:
        mask: bool (or 0/1) ``[H, W]``.
        min_area: Components with fewer pixels are dropped.
        connectivity: 8 (diagonal neighbours join) or 4.

    Example:
        >>> m = np.zeros((6, 8), bool); m[1:3, 1:3] = True; m[4, 5:8] = True
        >>> [(i.bbox, i.area) for i in mask_instances(m)]
        [((1, 1, 2, 2), 4), ((5, 4, 3, 1), 3)]
        >>> mask_instances(m)[0].polygon
        [1.25, 1.25, 1.25, 2.75, 2.75, 2.75, 2.75, 1.25]
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=connectivity)
    found = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area >= min_area:
            component = labels == k
            found.append(Instance((x, y, w, h), area, _outer_polygon(component[y:y + h, x:x + w], x, y), component))
    return found


def read_mask(path: Union[str, os.PathLike], threshold: float = 0.5) -> Tuple[np.ndarray, bool]:
    """Decode a mask file: ``(bool [H, W], whether it had to be thresholded)``.

    A mask whose raw values are 0 and one other value is binary: non-zero is defect (as
    :func:`~bcl.data.load_mask`). Otherwise values ``>= threshold`` of full scale (255 for 8-bit, 65535
    for 16-bit, 1 for float) are defect, with a warning naming the file.
    """
    image = _open_fully(path)
    raw = np.array(image) if image.mode in ("1", "L", "I", "F") + _UINT16_MODES else np.array(image.convert("L"))
    levels = np.unique(raw)
    if levels.size == 1 or (levels.size == 2 and levels[0] == 0):
        return raw > 0, False
    full = 1.0 if image.mode in ("1", "F") else 255.0 if raw.dtype == np.uint8 else 65535.0
    logger.warning("mask %s is not binary (%d grey levels, e.g. anti-aliased edges): pixels >= %g of full scale "
                   "(%g) count as defect", path, levels.size, threshold, threshold * full)
    return raw >= threshold * full, True


@dataclass(frozen=True)
class _Item:
    """One image to export: from files (MVTec) or from memory (a bcl dataset)."""

    name: str
    class_name: str
    label: int
    source: str  # the image file or identifier, for messages
    image_file: Optional[Path] = None
    mask_file: Optional[Path] = None
    image: Any = None  # uint8 [3, H, W] tensor
    mask: Any = None  # bool [H, W] tensor or None


def _mask_name(item: _Item) -> str:
    return f"mask {item.mask_file}" if item.mask_file else f"the mask of {item.source}"


def _safe_name(sample: Any) -> str:
    stem = Path(sample.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{sample.split}_{sample.class_name}_{stem}")


def _source_items(source: Any, category: Optional[str], on_error: str,
                  skipped: list) -> Tuple[List[str], List[_Item], str]:
    """``(class_names, items, description)`` for an MVTec folder or an in-memory dataset with masks."""
    if isinstance(source, (str, os.PathLike)):
        cdir, category = _resolve_category(Path(os.fspath(source)).absolute(), category)
        class_names, samples, problems = _parse_layout(cdir)
        for path, reason in problems:
            if on_error == "raise":
                raise MVTecLayoutError(f"{path}: {reason} (pass on_error='skip' / --on-error skip to leave it out)")
            logger.warning("skipping %s: %s", path, reason)
            skipped.append([path, reason])
        items = [_Item(_safe_name(s), s.class_name, s.class_index, s.path, Path(s.path),
                       Path(s.mask_path) if s.mask_path else None) for s in samples]
        return class_names, items, f"MVTec AD {category} at {cdir}"
    if category is not None:
        raise ValueError(f"category={category!r} selects an MVTec AD category; the source is a dataset, not a folder")
    masks = getattr(source, "masks", None)
    if masks is None or not hasattr(source, "samples"):
        raise ValueError(f"cannot export {type(source).__name__}: expected an MVTec AD folder or a bcl dataset with "
                         f"a `masks` attribute (one bool [H, W] mask per image, e.g. SyntheticTransistor)")
    items = [_Item(_safe_name(s), s.class_name, s.class_index, s.path, image=x, mask=m)
             for s, x, m in zip(source.samples, source.images, masks)]
    return list(source.class_names), items, f"{type(source).__name__} ({len(items)} images)"


def _load(item: _Item, size: Optional[int], threshold: float) -> Tuple[np.ndarray, np.ndarray, bool, bool]:
    """``(rgb [H, W, 3], mask [H, W], thresholded, resized)`` at the output size, checked."""
    rgb = _decode_rgb(item.image_file, None) if item.image_file else item.image.permute(1, 2, 0).numpy()
    h, w = rgb.shape[:2]
    thresholded, where = False, _mask_name(item)
    if item.mask_file is not None:
        mask, thresholded = read_mask(item.mask_file, threshold)
    else:
        mask = np.zeros((h, w), bool) if item.mask is None else np.asarray(item.mask, bool)
    if mask.shape != (h, w):
        raise ValueError(f"{where} is {mask.shape[1]}x{mask.shape[0]} px but its image {item.source} is "
                         f"{w}x{h} px: a mask must have its image's size")
    if item.class_name == NEGATIVE_CLASS and mask.any():
        raise ValueError(f"{where} marks {int(mask.sum())} defect pixels on the {NEGATIVE_CLASS!r} image "
                         f"{item.source}: {NEGATIVE_CLASS} images must have empty masks")
    resized = size is not None and (h, w) != (size, size)
    if resized:
        rgb = _resize_rgb(rgb, (size, size), item.source)
        mask = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 0
    return rgb, mask, thresholded, resized


def _parts(labels: List[int], class_names: List[str], split: str, fold: int, n_folds: int,
           test_fraction: float, seed: int) -> Dict[str, np.ndarray]:
    table = SimpleNamespace(targets=labels, class_names=class_names)  # lets the splitters name a class
    if split == "all":
        return {"all": np.arange(len(labels))}
    if split == "holdout":
        train, _, test = stratified_split(table, val_fraction=0.0, test_fraction=test_fraction, seed=seed)
        return {"train": train, "test": test}
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in [0, n_folds={n_folds}), got {fold}")
    chosen = stratified_kfold(table, n_splits=n_folds, seed=seed)[fold]
    return {"train": chosen.train_idx, "test": chosen.test_idx}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder; expected a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output folder {out} exists and is not empty; choose another folder or pass "
                             f"--overwrite (overwrite=True) to replace it")
        if not (out / "export.json").is_file():
            raise ValueError(f"output folder {out} is not a bcl export (no export.json); refusing to replace it")


def _check_options(fmt: str, segmentation: str, split: str, image_size: Optional[int], link: bool,
                   min_area: int, connectivity: int, mask_threshold: float, on_error: str) -> None:
    choices = {"format": (fmt, FORMATS), "segmentation": (segmentation, SEGMENTATIONS), "split": (split, SPLITS),
               "connectivity": (connectivity, (4, 8)), "on_error": (on_error, ("raise", "skip"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")
    if fmt != "coco" and segmentation != "polygon":
        raise ValueError(f"segmentation={segmentation!r} is for the coco format only; YOLO labels hold boxes "
                         f"or polygons")
    if image_size is not None and (not is_int(image_size) or image_size < 1):
        raise ValueError(f"image_size must be None (native) or a positive int, got {image_size!r}")
    if link and image_size is not None:
        raise ValueError("link=True (--link) links the source files, which cannot be resized: drop image_size or link")
    if not is_int(min_area) or min_area < 1:
        raise ValueError(f"min_area must be an int >= 1 (pixels), got {min_area!r}")
    if not 0 < mask_threshold <= 1:
        raise ValueError(f"mask_threshold must be in (0, 1] (a fraction of full scale), got {mask_threshold!r}")


def _instances(item: _Item, mask: np.ndarray, min_area: int, connectivity: int, size: Optional[int]) -> List[Instance]:
    """The instances of a defect image (none for ``good``); a defect image without one is an error."""
    if item.class_name == NEGATIVE_CLASS:
        return []
    found = mask_instances(mask, min_area, connectivity)
    if not found:
        what = "no defect pixels" if not mask.any() else f"no component of >= {min_area} px (min_area)"
        raise ValueError(f"{_mask_name(item)} of the {item.class_name!r} image {item.source} "
                         f"has {what}{f' at {size} px' if size else ''}: a defect image needs at least one instance")
    return found


def _coco_annotation(inst: Instance, annotation_id: int, image_id: int, category_id: int, segmentation: str) -> dict:
    if segmentation == "rle":
        rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        seg: Any = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    else:
        seg = [inst.polygon]
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "segmentation": seg,
            "area": inst.area, "bbox": list(inst.bbox), "iscrowd": 0}


def _yolo_lines(instances: List[Instance], cls: int, w: int, h: int, fmt: str) -> List[str]:
    """YOLO label lines: ``class cx cy w h`` or ``class x1 y1 x2 y2 ...``, normalised by the image size."""
    if fmt == "yolo-detect":
        return [f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                for x, y, bw, bh in (i.bbox for i in instances)]
    return [f"{cls} " + " ".join(f"{v / (h if k % 2 else w):.6f}" for k, v in enumerate(i.polygon)) for i in instances]


def _write_image(item: _Item, rgb: np.ndarray, folder: Path, link: bool, resized: bool) -> str:
    """Copies (or links) the source file when its pixels are unchanged, else writes a PNG; returns the file name."""
    if item.image_file is not None and not resized:
        name = item.name + item.image_file.suffix.lower()
        if link:
            os.symlink(item.image_file.resolve(), folder / name)
        else:
            shutil.copyfile(item.image_file, folder / name)
        return name
    Image.fromarray(np.ascontiguousarray(rgb)).save(folder / (item.name + ".png"))
    return item.name + ".png"


def export(source: Any, out: Union[str, os.PathLike], format: str = "coco", *, category: Optional[str] = None,
           segmentation: str = "polygon", split: str = "kfold", fold: int = 0, n_folds: int = 5,
           test_fraction: float = 0.2, seed: int = 0, image_size: Optional[int] = None, link: bool = False,
           min_area: int = 1, connectivity: int = 8, mask_threshold: float = 0.5, on_error: str = "raise",
           overwrite: bool = False, sheet: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """Export images and their defect instances as COCO JSON or YOLO TXT (see the module docstring).

    Args:
        source: An MVTec AD root (with ``category``) or category folder, or a bcl dataset with ``masks``.
        out: Output folder (new or empty; see ``overwrite``).
        format: ``"coco"``, ``"yolo-detect"`` (boxes) or ``"yolo-seg"`` (polygons).
        category: MVTec category when ``source`` is the MVTec root.
        segmentation: COCO segmentation, ``"polygon"`` (outer contour) or ``"rle"`` (exact pixels).
        split: ``"kfold"`` (fold ``fold`` of ``n_folds``), ``"holdout"`` (``test_fraction``) or ``"all"``.
        fold: With ``split="kfold"``, the fold that is the test part, as a bcl run's ``data.fold``.
        n_folds: With ``split="kfold"``, the number of stratified folds, as a bcl run's ``data.n_folds``.
        test_fraction: With ``split="holdout"``, the stratified test share, as a bcl run's ``data.test_fraction``.
        seed: The split seed, as a bcl run's ``data.split_seed``.
        image_size: None (native) or ``S``: images resized to ``S x S`` as bcl does, masks nearest neighbour.
        link: Symlink source files instead of copying them (native size, files only).
        min_area: Smallest component kept, in pixels (at the output size).
        connectivity: 8 or 4.
        mask_threshold: For non-binary masks, the fraction of full scale from which a pixel is defect.
        on_error: ``"raise"`` stops at the first bad image or mask; ``"skip"`` leaves it out (logged, listed).
        overwrite: Replace an existing export in ``out``.
        sheet: Optional PNG path: a contact sheet of the exported boxes and polygons.

    Returns:
        The summary also written to ``out/export.json`` (counts per part and class under ``"parts"``).

    Raises:
        ValueError: Bad options, a non-empty ``out``, or (``on_error="raise"``) an empty mask, a mask
            of another size than its image, a bad file (each message names the file).
    """
    _check_options(format, segmentation, split, image_size, link, min_area, connectivity, mask_threshold, on_error)
    out = Path(out).absolute()
    _check_out(out, overwrite)
    skipped: List[List[str]] = []
    class_names, items, description = _source_items(source, category, on_error, skipped)
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two images would both be written as {dup!r}: {[i.source for i in items if i.name == dup]}")
    if link and any(item.image_file is None for item in items):
        raise ValueError("link=True (--link) needs image files; this dataset is in memory")
    labels = [item.label for item in items]
    parts = _parts(labels, class_names, split, fold, n_folds, test_fraction, seed)
    categories = [c for c in class_names if c != NEGATIVE_CLASS]
    category_id = {c: k + 1 for k, c in enumerate(categories)}  # COCO ids from 1; YOLO classes from 0
    summary: Dict[str, Any] = {
        "format": format, "segmentation": None if format == "yolo-detect" else segmentation, "source": description,
        "split": {"kind": split, "fold": fold, "n_folds": n_folds, "test_fraction": test_fraction, "seed": seed},
        "image_size": image_size, "link": link, "min_area": min_area, "connectivity": connectivity,
        "mask_threshold": mask_threshold, "categories": categories, "parts": {}, "thresholded_masks": [],
        "skipped": skipped, "bcl_version": __version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    shown: List[Tuple[int, np.ndarray, List[Instance]]] = []
    ids = {"image": 0, "annotation": 0}  # unique over all parts
    try:
        for part, positions in parts.items():
            counts = summary["parts"][part] = {c: {"images": 0, "boxes": 0, "polygons": 0} for c in class_names}
            coco = {"info": {"description": f"{description}, exported by bcl {__version__}"}, "licenses": [],
                    "images": [], "annotations": [],
                    "categories": [{"id": category_id[c], "name": c, "supercategory": "defect"} for c in categories]}
            for sub in ("images",) if format == "coco" else ("images", "labels"):
                (tmp / sub / part).mkdir(parents=True)
            for index in positions:
                item = items[index]
                try:
                    rgb, mask, thresholded, resized = _load(item, image_size, mask_threshold)
                    instances = _instances(item, mask, min_area, connectivity, image_size)
                except ValueError as error:  # ImageDecodeError included
                    if on_error == "raise":
                        raise
                    logger.warning("skipping %s: %s", item.source, error)
                    skipped.append([item.source, str(error)])
                    continue
                if thresholded:
                    summary["thresholded_masks"].append(str(item.mask_file))
                (h, w), file_name = mask.shape, _write_image(item, rgb, tmp / "images" / part, link, resized)
                ids["image"] += 1
                coco["images"].append({"id": ids["image"], "file_name": file_name, "width": w, "height": h})
                for inst in instances:
                    ids["annotation"] += 1
                    coco["annotations"].append(_coco_annotation(inst, ids["annotation"], ids["image"],
                                                                category_id[item.class_name], segmentation))
                if format != "coco":
                    lines = _yolo_lines(instances, category_id.get(item.class_name, 0) - 1, w, h, format)
                    (tmp / "labels" / part / f"{Path(file_name).stem}.txt").write_text("".join(f"{x}\n" for x in lines))
                row = counts[item.class_name]
                row["images"] += 1
                row["boxes"] += len(instances)
                row["polygons"] += len(instances) if format != "yolo-detect" and segmentation == "polygon" else 0
                if sheet and sum(entry[0] == item.label for entry in shown) < SHEET_PER_CLASS:
                    shown.append((item.label, rgb, instances))
            if format == "coco":
                atomic_write_text(tmp / "annotations" / f"instances_{part}.json", json.dumps(coco))
        if format != "coco":
            train, val = ("all", "all") if split == "all" else ("train", "test")
            data = {"path": str(out), "train": f"images/{train}", "val": f"images/{val}",
                    "names": dict(enumerate(categories))}
            note = "# bcl export; val is the training images themselves\n" if split == "all" else "# bcl export\n"
            atomic_write_text(tmp / "data.yaml", note + yaml.safe_dump(data, sort_keys=False))
        atomic_write_text(tmp / "export.json", json.dumps(summary, indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if sheet:
        save_export_sheet(shown, class_names, sheet, title=f"{description}: {format} export")
    logger.info("exported %d images (%d skipped) as %s to %s", ids["image"], len(skipped), format, out)
    return summary


def _move_into_place(tmp: Path, out: Path) -> None:
    """Renames the finished export ``tmp`` to ``out``; an old ``out`` is removed only after that."""
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(old / "export")
    tmp.rename(out)
    shutil.rmtree(old)


def save_export_sheet(shown: Sequence[Tuple[int, np.ndarray, List[Instance]]], class_names: Sequence[str],
                      path: Union[str, os.PathLike], title: str = "") -> Path:
    """A contact sheet (:func:`~bcl.data.save_contact_sheet`) of exported images, boxes yellow, polygons cyan.

    Args:
        shown: ``(class index, rgb [H, W, 3], instances)`` per image, as exported (one size).
        class_names: Row labels.
        path: Output PNG.
        title: Text above the grid.
    """
    zoom = max(1, 256 // max(shown[0][1].shape[:2])) if shown else 1
    samples, images = [], []
    for label, rgb, instances in shown:
        tile = Image.fromarray(np.ascontiguousarray(rgb))
        tile = tile.resize((tile.width * zoom, tile.height * zoom), Image.Resampling.NEAREST)
        pen = ImageDraw.Draw(tile)
        for inst in instances:  # PIL puts pixel centres at integers; the export at half-integers
            pen.polygon((np.asarray(inst.polygon) * zoom - 0.5).tolist(), outline=(0, 255, 255))
            x, y, w, h = inst.bbox
            pen.rectangle([x * zoom, y * zoom, (x + w) * zoom - 1, (y + h) * zoom - 1], outline=(255, 220, 0))
        samples.append(Sample(f"export://{len(samples)}", "export", class_names[label], label))
        images.append(torch.from_numpy(np.array(tile)).permute(2, 0, 1))
    sheet = ImageClassificationDataset(class_names, samples, images)
    return save_contact_sheet(sheet, path, per_class=SHEET_PER_CLASS, title=f"{title} (yellow: box, cyan: polygon)",
                              show_masks=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bcl.data.export", description=__doc__.split("\n")[0])
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--dataset", choices=("mvtec", "synthetic"), default="mvtec")
    p.add_argument("--root", default=os.environ.get("BCL_MVTEC_ROOT"),
                   help="MVTec AD root (with --category) or a category folder; default $BCL_MVTEC_ROOT")
    p.add_argument("--category", default=None)
    p.add_argument("--synthetic-seed", type=int, default=0, help="seed of the embedded synthetic data")
    p.add_argument("--segmentation", choices=SEGMENTATIONS, default="polygon", help="COCO segmentation")
    p.add_argument("--split", choices=SPLITS, default="kfold")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.2, help="with --split holdout")
    p.add_argument("--seed", type=int, default=0, help="split seed (a run's data.split_seed)")
    p.add_argument("--image-size", type=int, default=None, help="resize to S x S (default: native; synthetic: 128)")
    p.add_argument("--link", action="store_true", help="symlink the source images instead of copying them")
    p.add_argument("--min-area", type=int, default=1, help="smallest component kept, in pixels")
    p.add_argument("--connectivity", type=int, choices=(4, 8), default=8)
    p.add_argument("--mask-threshold", type=float, default=0.5, help="for non-binary masks, fraction of full scale")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--sheet", type=Path, default=None, help="also draw the exported boxes and polygons into this PNG")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (2 on a user error, named on stderr)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    keys = ("category", "segmentation", "split", "fold", "n_folds", "test_fraction", "seed", "image_size", "link",
            "min_area", "connectivity", "mask_threshold", "on_error", "overwrite", "sheet")
    options = {key: getattr(args, key) for key in keys}
    try:
        if args.dataset == "synthetic":
            source: Any = SyntheticTransistor(image_size=args.image_size or 128, seed=args.synthetic_seed)
            options["image_size"] = None
        elif not args.root:
            raise ValueError("give --root (the MVTec AD root or a category folder) or set BCL_MVTEC_ROOT")
        else:
            source = args.root
        summary = export(source, args.out, args.format, **options)
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(f"{summary['source']} -> {args.out} ({args.format})\n{'part':<6} {'class':<14} "
                     f"{'images':>6} {'boxes':>6} {'polygons':>8}\n")
    for part, rows in summary["parts"].items():
        for name, row in rows.items():
            sys.stdout.write(f"{part:<6} {name:<14} {row['images']:>6} {row['boxes']:>6} {row['polygons']:>8}\n")
    if summary["skipped"] or summary["thresholded_masks"]:
        sys.stdout.write(f"{len(summary['skipped'])} skipped, {len(summary['thresholded_masks'])} masks thresholded: "
                         f"see {args.out / 'export.json'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
