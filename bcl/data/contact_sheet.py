"""Contact sheets: a PNG grid of a dataset's images, one row per class, defect masks outlined."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageDraw

from bcl._checks import is_int
from bcl.data.base import ImageClassificationDataset

__all__ = ["save_contact_sheet"]

logger = logging.getLogger(__name__)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with at least one 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def save_contact_sheet(
    dataset: ImageClassificationDataset,
    path: Union[str, os.PathLike],
    per_class: int = 6,
    title: str = "",
    show_masks: bool = True,
) -> Path:
    """Saves a grid of ``per_class`` images per class (evenly spread over each class), masks in red.

    Works for any bcl dataset; masks are read from a ``masks`` attribute when the dataset has one
    (:class:`~bcl.data.MVTecAD`, :class:`~bcl.data.SyntheticTransistor`).

    Args:
        dataset: The dataset; its images must share one size.
        path: Output PNG file (parent folders are created).
        per_class: Images per row (fewer when a class has fewer).
        title: Text above the grid.
        show_masks: Outline each defect mask in red.

    Returns:
        The path written.

    Example:
        >>> import os, tempfile
        >>> from bcl.data import SyntheticTransistor
        >>> data = SyntheticTransistor([2, 2, 2, 2, 2], image_size=32)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     Image.open(save_contact_sheet(data, os.path.join(folder, "sheet.png"), per_class=2)).size
        (168, 188)
    """
    if not is_int(per_class) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    sizes = {tuple(image.shape[1:]) for image in dataset.images}
    if len(sizes) != 1:
        raise ValueError(f"a contact sheet needs images of one size, got sizes {sorted(sizes)}")
    (height, width), = sizes
    masks: Optional[list] = getattr(dataset, "masks", None)
    label_width, gap, header = 100, 2, 18
    num_classes = len(dataset.class_names)
    sheet = Image.new("RGB", (label_width + per_class * (width + gap), header + num_classes * (height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), title + (" (red: defect mask)" if show_masks and masks is not None else ""), fill="black")
    targets = np.asarray(dataset.targets)
    for row, class_name in enumerate(dataset.class_names):
        members = np.flatnonzero(targets == row)
        top = header + row * (height + gap)
        draw.text((4, top + height // 2 - 6), class_name, fill="black")
        chosen = (members[np.linspace(0, len(members) - 1, min(per_class, len(members))).round().astype(int)]
                  if len(members) else [])
        for col, index in enumerate(chosen):
            pixels = dataset.images[index].permute(1, 2, 0).numpy().copy()
            mask = masks[index] if masks is not None else None
            if show_masks and mask is not None and bool(mask.any()):
                pixels[_outline(mask.numpy())] = (255, 0, 0)
            sheet.paste(Image.fromarray(pixels), (label_width + col * (width + gap), top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    logger.info("saved a contact sheet of %d classes to %s", num_classes, path)
    return path
