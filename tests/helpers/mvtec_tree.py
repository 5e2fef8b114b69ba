"""A tiny, valid MVTec AD folder tree written on the fly, so the reader can be tested without the data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

__all__ = ["make_tiny_mvtec"]


def make_tiny_mvtec(
    root: Union[str, os.PathLike],
    category: str = "transistor",
    defects: Sequence[str] = ("bent_lead", "cut_lead"),
    n_train_good: int = 3,
    n_test_good: int = 1,
    n_defect: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a tiny, valid MVTec AD tree (random RGB PNGs and matching masks).

    Every mask marks the top-left quarter of its image as defect.

    Args:
        root: Folder that receives ``<category>/``.
        category: Category folder name.
        defects: Defect types (one ``test/<d>/`` and ``ground_truth/<d>/`` folder each).
        n_train_good: Images in ``train/good/``, named ``000.png``, ``001.png``, ...
        n_test_good: Images in ``test/good/`` (0 leaves the folder out).
        n_defect: Images (and masks) per defect type (0 leaves the folders out).
        size: Image side ``S`` in pixels: RGB ``[S, S, 3]`` images, ``[S, S]`` masks.
        seed: Seed of the pixel values.

    Returns:
        The category folder.
    """
    rng = np.random.default_rng(seed)
    cdir = Path(root) / category

    def write(folder: Path, n: int, masks: Optional[Path] = None) -> None:
        if n == 0:  # an empty class folder would be a layout error
            return
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(folder / f"{k:03d}.png")
            if masks is not None:
                masks.mkdir(parents=True, exist_ok=True)
                m = np.zeros((size, size), np.uint8)
                m[: size // 2, : size // 2] = 255
                Image.fromarray(m, "L").save(masks / f"{k:03d}_mask.png")

    write(cdir / "train" / "good", n_train_good)
    write(cdir / "test" / "good", n_test_good)
    for d in defects:
        write(cdir / "test" / d, n_defect, masks=cdir / "ground_truth" / d)
    return cdir
