"""Writes the contact sheets of docs/data.md: the synthetic dataset, and (locally) the real photos.

The real MVTec photos are CC BY-NC-SA 4.0 and are not committed to this repository, so their sheet
is written next to the synthetic one only on your machine (it is git-ignored).

Run:  BCL_MVTEC_ROOT=/path/to/mvtec/transistor python docs/make_contact_sheets.py
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bcl.data import MVTecAD, SyntheticTransistor, save_contact_sheet

IMAGES = Path(__file__).resolve().parent / "images"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    synthetic = SyntheticTransistor(image_size=128, seed=0)
    save_contact_sheet(synthetic, IMAGES / "synthetic_contact_sheet.png", title="SyntheticTransistor, seed 0, 128 px")
    # The working size of the main job and the MVTec suite, where the defects must still be visible.
    small = SyntheticTransistor(image_size=64, seed=0)
    save_contact_sheet(small, IMAGES / "synthetic_contact_sheet_64px.png", title="SyntheticTransistor, seed 0, 64 px")
    root = os.environ.get("BCL_MVTEC_ROOT")
    if root:
        category = None if (Path(root) / "train").is_dir() else "transistor"
        for size, suffix in ((128, ""), (64, "_64px")):
            real = MVTecAD(root, category=category, image_size=size)
            save_contact_sheet(real, IMAGES / f"real_contact_sheet{suffix}.png",
                               title=f"MVTec AD transistor (real), {size} px")
    else:
        logging.info("BCL_MVTEC_ROOT is not set: skipping the sheet of real photos")


if __name__ == "__main__":
    main()
