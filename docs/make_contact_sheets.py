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
    root = os.environ.get("BCL_MVTEC_ROOT")
    if root:
        real = MVTecAD(root, category=None if (Path(root) / "train").is_dir() else "transistor", image_size=128)
        save_contact_sheet(real, IMAGES / "real_contact_sheet.png", title="MVTec AD transistor (real), 128 px")
    else:
        logging.info("BCL_MVTEC_ROOT is not set: skipping the sheet of real photos")


if __name__ == "__main__":
    main()
