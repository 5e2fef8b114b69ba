"""MVTec AD reader and image decoding: layouts, mask pairing, every bad input, colour modes, the cache.

Synthetic trees are built in ``tmp_path`` with tiny PNGs; the real-data tests read ``BCL_MVTEC_ROOT``
(the transistor category folder, or the MVTec AD root) and skip without it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image

from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.image_io import (
    ImageCache,
    ImageDecodeError,
    load_image,
    load_images,
    load_mask,
)
from bcl.data.mvtec import MVTecAD, MVTecLayoutError
from helpers.mvtec_tree import make_tiny_mvtec

S = 16  # working resolution of the synthetic tests


def _png(path: Path, arr: np.ndarray, mode: str = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _rgb(path: Path, value=(10, 20, 30), size: int = 32) -> Path:
    return _png(path, np.full((size, size, 3), value, np.uint8))


def _mask(path: Path, rows: int, size: int = 32) -> Path:
    """A mask whose first ``rows`` rows are defect, so a mask can be recognised by its defect area."""
    m = np.zeros((size, size), np.uint8)
    m[:rows] = 255
    return _png(path, m)


@pytest.fixture
def tiny(tmp_path):
    """An MVTec root with one category: 3 train good, 1 test good, 2 x bent_lead, 2 x cut_lead."""
    cdir = make_tiny_mvtec(tmp_path / "mvtec", "transistor", defects=("cut_lead", "bent_lead"), size=32)
    return tmp_path / "mvtec", cdir


# --------------------------------------------------------------------------------------------- happy path


def test_root_plus_category_parses_pools_and_orders(tiny):
    root, cdir = tiny
    ds = MVTecAD(root, category="transistor", image_size=S, num_threads=2)
    assert isinstance(ds, ImageClassificationDataset)
    assert ds.category == "transistor" and ds.root == cdir.absolute()
    assert ds.class_names == ["good", "bent_lead", "cut_lead"]
    assert ds.class_counts() == {"good": 4, "bent_lead": 2, "cut_lead": 2}
    # Train and test pooled; grouped by class, train before test, then by file name.
    rows = [(s.class_name, s.split, Path(s.path).name) for s in ds.samples]
    assert rows == [
        ("good", "train", "000.png"), ("good", "train", "001.png"), ("good", "train", "002.png"),
        ("good", "test", "000.png"),
        ("bent_lead", "test", "000.png"), ("bent_lead", "test", "001.png"),
        ("cut_lead", "test", "000.png"), ("cut_lead", "test", "001.png"),
    ]
    assert ds.targets == [0, 0, 0, 0, 1, 1, 2, 2]
    assert all(isinstance(s, Sample) and s.class_index == ds.class_names.index(s.class_name) for s in ds.samples)
    assert [s.mask_path is None for s in ds.samples] == [True] * 4 + [False] * 4
    for s, x in zip(ds.samples, ds.images):
        assert x.dtype == torch.uint8 and x.shape == (3, S, S)
        assert torch.equal(x, load_image(s.path, S))  # the stored image is the file, decoded once
    img, label = ds[5]
    assert label == 1 and img is ds.images[5]
    assert ds.skipped == []
    assert "bent_lead" in repr(ds) and "train 3, test 1" in ds.summary()


def test_category_folder_as_root(tiny):
    root, cdir = tiny
    a = MVTecAD(root, category="transistor", image_size=S)
    b = MVTecAD(cdir, image_size=S)
    c = MVTecAD(cdir, category="transistor", image_size=S)
    assert b.category == c.category == "transistor"
    assert a.samples == b.samples == c.samples
    with pytest.raises(MVTecLayoutError, match="category='cable'"):
        MVTecAD(cdir, category="cable", image_size=S)


def test_renamed_category_folder_infers_category(tmp_path):
    cdir = make_tiny_mvtec(tmp_path, "mvtec_metal_nut_256", defects=("scratch",))
    assert MVTecAD(cdir, image_size=S).category == "metal_nut"
    assert len(MVTecAD(cdir, category="metal_nut", image_size=S)) == 6
    assert len(MVTecAD(tmp_path, category="mvtec_metal_nut_256", image_size=S)) == 6


def test_class_order_is_good_then_sorted_defects(tmp_path):
    make_tiny_mvtec(tmp_path, "cable", defects=("poke_insulation", "bent_wire", "missing_cable"), n_defect=1)
    ds = MVTecAD(tmp_path, category="cable", image_size=S)
    assert ds.class_names == ["good", "bent_wire", "missing_cable", "poke_insulation"]
    assert ds.targets == [0, 0, 0, 0, 1, 2, 3]


def test_good_only_in_train_and_native_size(tmp_path):
    make_tiny_mvtec(tmp_path, "screw", defects=("thread_top",), n_test_good=0, size=24)
    ds = MVTecAD(tmp_path / "screw", image_size=None)
    assert ds.class_counts() == {"good": 3, "thread_top": 2}
    assert all(x.shape == (3, 24, 24) for x in ds.images)
    assert ds.load_mask(4).shape == (24, 24)


def test_hidden_and_non_image_files_are_ignored(tiny, caplog):
    root, cdir = tiny
    (cdir / "train" / "good" / ".DS_Store").write_bytes(b"\x00junk")
    (cdir / "train" / "good" / "._000.png").write_bytes(b"AppleDouble junk")
    (cdir / "train" / "good" / "notes.txt").write_text("not an image")
    (cdir / "test" / ".ipynb_checkpoints").mkdir()
    (cdir / "ground_truth" / "cut_lead" / "Thumbs.db").write_bytes(b"junk")
    with caplog.at_level(logging.DEBUG, logger="bcl.data.mvtec"):
        ds = MVTecAD(root, category="transistor", image_size=S)
    assert len(ds) == 8 and ds.skipped == []
    assert "notes.txt" in caplog.text  # ignored, but not silently


def test_jpeg_and_uppercase_extensions(tmp_path):
    cdir = make_tiny_mvtec(tmp_path, "wood", defects=("hole",), n_defect=1)
    Image.new("RGB", (32, 32), (200, 100, 50)).save(cdir / "train" / "good" / "100.JPG", "JPEG")
    ds = MVTecAD(cdir, image_size=S)
    assert [Path(s.path).name for s in ds.samples[:4]] == ["000.png", "001.png", "002.png", "100.JPG"]


# ------------------------------------------------------------------------------------------------- masks


def test_masks_pair_by_name_not_position(tmp_path):
    cdir = make_tiny_mvtec(tmp_path, "transistor", defects=(), n_test_good=1)
    # Image names sort as 1, 10, 2; their masks sort as 10_mask, 1_mask, 2_mask: a positional pairing
    # would swap masks. Each mask has (stem + 1) defect rows, so the pairing can be read off its area.
    for stem in ("1", "10", "2"):
        _rgb(cdir / "test" / "misplaced" / f"{stem}.png")
    for stem in ("2", "10", "1"):  # written in yet another order
        _mask(cdir / "ground_truth" / "misplaced" / f"{stem}_mask.png", rows=int(stem) + 1)
    ds = MVTecAD(cdir, image_size=None)
    for i, s in enumerate(ds.samples):
        if s.class_name != "misplaced":
            continue
        stem = Path(s.path).stem
        assert Path(s.mask_path).name == f"{stem}_mask.png"
        assert int(ds.load_mask(i).sum()) == (int(stem) + 1) * 32


def test_masks_only_for_some_stems_pair_by_name(tmp_path):
    cdir = make_tiny_mvtec(tmp_path, "transistor", defects=())
    for k in range(4):
        _rgb(cdir / "test" / "bent_lead" / f"{k:03d}.png", value=(k, k, k))
    _mask(cdir / "ground_truth" / "bent_lead" / "001_mask.png", rows=2)
    _mask(cdir / "ground_truth" / "bent_lead" / "003_mask.png", rows=4)
    ds = MVTecAD(cdir, image_size=None, on_error="skip")
    defect = [(Path(s.path).name, int(ds.load_mask(i).sum() // 32)) for i, s in enumerate(ds.samples) if s.class_index]
    assert defect == [("001.png", 2), ("003.png", 4)]
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["000.png", "002.png"]
    assert all("no mask" in r and "_mask.png" in r for _, r in ds.skipped)


def test_load_mask_good_and_defect_at_working_size(tmp_path):
    cdir = make_tiny_mvtec(tmp_path, "transistor", defects=("cut_lead",), n_defect=1, size=32)
    m = np.zeros((32, 32), np.uint8)
    m[:, :8] = 255  # left quarter
    _png(cdir / "ground_truth" / "cut_lead" / "000_mask.png", m)
    ds = MVTecAD(cdir, image_size=8)
    good = ds.load_mask(0)
    assert good.dtype == torch.bool and good.shape == (8, 8) and not good.any()
    mask = ds.load_mask(-1)
    assert mask.dtype == torch.bool and mask.shape == (8, 8)
    assert mask[:, :2].all() and not mask[:, 2:].any()
    assert torch.equal(mask, load_mask(ds.samples[-1].mask_path, 8))
    shutil.rmtree(cdir)  # masks are held in memory, like the images
    assert torch.equal(ds.load_mask(-1), mask)
    with pytest.raises(IndexError):
        ds.load_mask(len(ds))


def test_load_mask_thresholds_raw_values(tmp_path):
    m16 = np.zeros((4, 4), np.uint16)
    m16[0, 0] = 1  # would become 0 after an 8-bit conversion
    p = tmp_path / "m16.png"
    Image.fromarray(m16).save(p)
    assert load_mask(p).sum() == 1
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = (255, 255, 255)
    assert load_mask(_png(tmp_path / "rgb.png", rgb)).nonzero().tolist() == [[1, 1]]


# -------------------------------------------------------------------------------------------- bad layouts


def test_not_an_mvtec_root_says_expected_and_found(tmp_path):
    (tmp_path / "foo.txt").write_text("x")
    (tmp_path / "bar").mkdir()
    with pytest.raises(MVTecLayoutError) as e:
        MVTecAD(tmp_path)
    msg = str(e.value)
    expected_layout = (
        "<category>/train/good/*.png", "<category>/test/<", "<category>/ground_truth/<defect_type>/<stem>_mask.png"
    )
    for expected in expected_layout:
        assert expected in msg
    assert "foo.txt" in msg and "bar/" in msg
    with pytest.raises(MVTecLayoutError, match="train/good"):
        MVTecAD(tmp_path, category="transistor")
    with pytest.raises(FileNotFoundError, match="nope"):
        MVTecAD(tmp_path / "nope")


def test_category_folder_missing_parts(tmp_path):
    (tmp_path / "transistor" / "train" / "good").mkdir(parents=True)
    (tmp_path / "transistor" / "readme.txt").write_text("x")
    with pytest.raises(MVTecLayoutError) as e:
        MVTecAD(tmp_path, category="transistor")
    assert "test/ missing" in str(e.value) and "readme.txt" in str(e.value) and "train/" in str(e.value)


def test_unknown_or_missing_category_lists_existing(tmp_path):
    make_tiny_mvtec(tmp_path, "transistor")
    make_tiny_mvtec(tmp_path, "cable")
    with pytest.raises(MVTecLayoutError) as e:
        MVTecAD(tmp_path, category="zipper")
    assert "'zipper'" in str(e.value) and "['cable', 'transistor']" in str(e.value)
    with pytest.raises(MVTecLayoutError, match=r"pass category=.*\['cable', 'transistor'\]"):
        MVTecAD(tmp_path)


def test_empty_class_folder(tiny):
    root, cdir = tiny
    folder = cdir / "test" / "cut_lead"
    for f in folder.iterdir():
        f.unlink()
    (folder / ".DS_Store").write_bytes(b"junk")  # hidden files do not count as images
    for on_error in ("raise", "skip"):  # a layout fault, not a bad file: skipping cannot fix it
        with pytest.raises(MVTecLayoutError, match=r"cut_lead holds no images"):
            MVTecAD(root, category="transistor", on_error=on_error)


def test_defect_folder_in_train_is_an_error(tiny):
    root, cdir = tiny
    _rgb(cdir / "train" / "bent_lead" / "000.png")
    with pytest.raises(MVTecLayoutError, match="training images are all good"):
        MVTecAD(root, category="transistor")


# ------------------------------------------------------------------------------------------ bad files


def _truncated_png(path: Path) -> Path:
    rng = np.random.default_rng(0)
    _png(path, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # noise: the data is not tiny
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_zero_byte_png(tiny):
    root, cdir = tiny
    bad = cdir / "train" / "good" / "001.png"
    bad.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"001\.png.*empty \(0 bytes\)") as e:
        MVTecAD(root, category="transistor")
    assert e.value.path == str(bad.absolute())


def test_truncated_png(tiny):
    root, cdir = tiny
    bad = _truncated_png(cdir / "test" / "good" / "000.png")
    with pytest.raises(ImageDecodeError, match="truncated") as e:
        MVTecAD(root, category="transistor")
    assert e.value.path == str(bad.absolute())
    assert not PIL.ImageFile.LOAD_TRUNCATED_IMAGES


def test_text_file_named_png(tiny):
    root, cdir = tiny
    (cdir / "train" / "good" / "x.png").write_text("I am not a picture\n")
    with pytest.raises(ImageDecodeError, match=r"x\.png.*not an image"):
        MVTecAD(root, category="transistor")
    assert isinstance(ImageDecodeError("p", "r"), ValueError)


def test_defect_image_without_mask(tiny):
    root, cdir = tiny
    (cdir / "ground_truth" / "bent_lead" / "001_mask.png").unlink()
    with pytest.raises(MVTecLayoutError) as e:
        MVTecAD(root, category="transistor")
    msg = str(e.value)
    assert "bent_lead/001.png" in msg and "no mask" in msg and "ground_truth/bent_lead/001_mask.png" in msg


def test_mask_without_image(tiny):
    root, cdir = tiny
    _mask(cdir / "ground_truth" / "cut_lead" / "007_mask.png", rows=3)
    with pytest.raises(MVTecLayoutError, match=r"007_mask\.png: mask without an image.*test/cut_lead/007\.png"):
        MVTecAD(root, category="transistor")
    # A mask folder for a defect type that has no image folder at all.
    (cdir / "ground_truth" / "cut_lead" / "007_mask.png").unlink()
    _mask(cdir / "ground_truth" / "misplaced" / "000_mask.png", rows=3)
    with pytest.raises(MVTecLayoutError, match=r"misplaced/000_mask\.png: mask folder .*ground_truth/misplaced "
                                              r"matches no defect folder test/misplaced"):
        MVTecAD(root, category="transistor")


def test_litter_policy_masks_of_good_images_thumbnails_and_hidden_files_are_ignored_with_a_log_line(tiny, caplog):
    root, cdir = tiny
    clean = MVTecAD(root, category="transistor", image_size=32)
    _mask(cdir / "ground_truth" / "good" / "000_mask.png", rows=0)  # test/good/000.png exists
    (cdir / "test" / "good" / "Thumbs.db").write_bytes(b"\x00" * 16)
    (cdir / "train" / "good" / ".DS_Store").write_bytes(b"\x00" * 16)
    (cdir / "ground_truth" / "bent_lead" / "._000_mask.png").write_bytes(b"\x00" * 16)  # macOS resource fork
    with caplog.at_level("INFO", logger="bcl.data.mvtec"):
        littered = MVTecAD(root, category="transistor", image_size=32)
    logged = caplog.text
    assert "ground_truth/good: good images have no defect mask" in logged
    assert "Thumbs.db" in logged and ".DS_Store" in logged and "._000_mask.png" in logged
    assert [x.path for x in littered.samples] == [x.path for x in clean.samples]
    assert [x.mask_path for x in littered.samples] == [x.mask_path for x in clean.samples]


def test_misnamed_mask(tiny):
    root, cdir = tiny
    _mask(cdir / "ground_truth" / "cut_lead" / "000.png", rows=3)
    with pytest.raises(MVTecLayoutError, match=r"ground_truth/cut_lead/000\.png: unexpected file in ground_truth"):
        MVTecAD(root, category="transistor")


def test_on_error_skip_records_every_bad_file_and_loads_the_rest(tiny, caplog):
    root, cdir = tiny
    bad = {
        (cdir / "train" / "good" / "001.png"): "empty",
        (cdir / "train" / "good" / "x.png"): "not an image",
        (cdir / "test" / "good" / "000.png"): "truncated",
        (cdir / "test" / "bent_lead" / "001.png"): "no mask",
        (cdir / "ground_truth" / "cut_lead" / "009_mask.png"): "mask without an image",
        (cdir / "test" / "cut_lead" / "000.png"): "its mask",  # the mask is corrupt
    }
    (cdir / "train" / "good" / "001.png").write_bytes(b"")
    (cdir / "train" / "good" / "x.png").write_text("text")
    _truncated_png(cdir / "test" / "good" / "000.png")
    (cdir / "ground_truth" / "bent_lead" / "001_mask.png").unlink()
    _mask(cdir / "ground_truth" / "cut_lead" / "009_mask.png", rows=1)
    (cdir / "ground_truth" / "cut_lead" / "000_mask.png").write_text("garbage")

    with pytest.raises((ImageDecodeError, MVTecLayoutError)):
        MVTecAD(root, category="transistor")
    with caplog.at_level(logging.WARNING, logger="bcl.data.mvtec"):
        ds = MVTecAD(root, category="transistor", image_size=S, on_error="skip")
    got = {Path(p): r for p, r in ds.skipped}
    assert set(got) == {p.absolute() for p in bad}
    for p, word in bad.items():
        assert word in got[p.absolute()], (p, got[p.absolute()])
        assert p.name in caplog.text
    assert len(ds.skipped) == len(bad)
    assert [(s.class_name, s.split, Path(s.path).name) for s in ds.samples] == [
        ("good", "train", "000.png"), ("good", "train", "002.png"),
        ("bent_lead", "test", "000.png"), ("cut_lead", "test", "001.png"),
    ]
    assert ds.targets == [0, 0, 1, 2] and len(ds.images) == len(ds.masks) == 4
    assert "skipped 6 file(s)" in ds.summary()


def test_bad_arguments(tiny):
    root, _ = tiny
    with pytest.raises(ValueError, match=r"on_error must be one of \['raise', 'skip'\], got 'ignore'"):
        MVTecAD(root, category="transistor", on_error="ignore")
    for size in (0, -4, 2.5, True, "64"):
        with pytest.raises(ValueError, match="image_size"):
            MVTecAD(root, category="transistor", image_size=size)
    with pytest.raises(ValueError, match="num_threads"):
        MVTecAD(root, category="transistor", num_threads=0)


# ---------------------------------------------------------------------------------------- colour modes


def test_grayscale_rgba_palette_16bit_and_more_convert_to_uint8_rgb(tmp_path):
    g = _png(tmp_path / "l.png", np.full((4, 4), 77, np.uint8))
    assert load_image(g)[:, 0, 0].tolist() == [77, 77, 77]

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)
    rgba[0, 1] = (200, 100, 50, 128)  # half transparent -> composited on black
    rgba[0, 2] = (200, 100, 50, 0)  # fully transparent -> black, not the stored colour
    x = load_image(_png(tmp_path / "rgba.png", rgba))
    assert x.dtype == torch.uint8 and x.shape == (3, 4, 4)
    assert x[:, 0, 0].tolist() == [200, 100, 50]
    assert x[:, 0, 1].tolist() == [100, 50, 25]
    assert x[:, 0, 2].tolist() == [0, 0, 0]

    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0], la[..., 1] = 200, 255
    la[0, 0, 1] = 0
    x = load_image(_png(tmp_path / "la.png", la, "LA"))
    assert x[:, 1, 1].tolist() == [200] * 3 and x[:, 0, 0].tolist() == [0] * 3

    p = Image.new("P", (2, 2))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    p.putpixel((0, 0), 1)
    p.putpixel((1, 0), 2)
    p.save(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png")
    assert x[:, 0, 0].tolist() == [255, 0, 0] and x[:, 0, 1].tolist() == [0, 0, 255]
    p.info["transparency"] = 1  # palette entry 1 (red) is transparent -> black
    p.save(tmp_path / "pt.png", transparency=1)
    x = load_image(tmp_path / "pt.png")
    assert x[:, 0, 0].tolist() == [0, 0, 0] and x[:, 0, 1].tolist() == [0, 0, 255]

    v16 = np.array([[0, 255, 256, 32768, 65535]], np.uint16)
    expected = [0, 0, 1, 128, 255]  # value >> 8: the true 16-bit range, not clipping
    Image.fromarray(v16).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    x = load_image(tmp_path / "i16.png")
    assert x.dtype == torch.uint8 and x[0, 0].tolist() == expected and torch.equal(x[0], x[2])
    Image.frombytes("I;16B", (5, 1), v16.astype(">u2").tobytes()).save(tmp_path / "i16b.tif")
    assert load_image(tmp_path / "i16b.tif")[1, 0].tolist() == expected
    Image.fromarray(v16.astype(np.int32), "I").save(tmp_path / "i32.tif")  # mode I holding 16-bit data
    assert load_image(tmp_path / "i32.tif")[2, 0].tolist() == expected

    Image.new("CMYK", (2, 2), (255, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    assert load_image(tmp_path / "cmyk.tif")[:, 0, 0].tolist() == [0, 255, 255]
    Image.new("1", (2, 2), 1).save(tmp_path / "bw.png")
    assert load_image(tmp_path / "bw.png")[:, 0, 0].tolist() == [255] * 3


def test_dataset_with_mixed_modes_loads(tmp_path):
    cdir = make_tiny_mvtec(tmp_path, "transistor", defects=("bent_lead",))
    good = cdir / "train" / "good"
    _png(good / "010.png", np.full((32, 32), 9, np.uint8))
    _png(good / "011.png", np.full((32, 32, 4), 255, np.uint8))
    Image.new("P", (32, 32), 0).save(good / "012.png")
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(good / "013.png")
    ds = MVTecAD(cdir, image_size=S)
    assert len(ds) == 10 and all(x.dtype == torch.uint8 and x.shape == (3, S, S) for x in ds.images)
    names = [Path(s.path).name for s in ds.samples]
    assert ds.images[names.index("010.png")].unique().tolist() == [9]
    assert ds.images[names.index("013.png")].unique().tolist() == [255]


def test_1024_px_original_resized_to_working_size(tmp_path):
    big = np.zeros((1024, 1024, 3), np.uint8)
    big[:, :512] = (255, 128, 0)  # left half orange, right half black
    p = _png(tmp_path / "big.png", big)
    x = load_image(p, 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
    # Exact away from the edge (Lanczos blurs and rings over a few output pixels around column 32).
    assert (x[:, :, :28] == torch.tensor([255, 128, 0], dtype=torch.uint8)[:, None, None]).all()
    assert (x[:, :, 36:] <= 1).all() and (x[:, :, 40:] == 0).all()
    assert load_image(p).shape == (3, 1024, 1024)
    cdir = make_tiny_mvtec(tmp_path, "transistor", defects=(), size=32)
    shutil.copy(p, cdir / "train" / "good" / "big.png")
    ds = MVTecAD(cdir, image_size=64)
    assert all(x.shape == (3, 64, 64) for x in ds.images)


def test_non_square_image_is_resized_with_a_warning(tmp_path, caplog):
    p = _png(tmp_path / "wide.png", np.full((20, 50, 3), 40, np.uint8))
    with caplog.at_level(logging.WARNING, logger="bcl.data.image_io"):
        x = load_image(p, 10)
    assert x.shape == (3, 10, 10) and x.unique().tolist() == [40]
    assert "non-square" in caplog.text
    assert load_image(p, (4, 10)).shape == (3, 4, 10)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(tmp_path / "z.png")


def test_load_images_order_threads_and_errors(tmp_path):
    paths = [_rgb(tmp_path / f"{i}.png", value=(i, 0, 0)) for i in range(6)]
    xs = load_images(paths, 8, num_threads=3)
    assert [int(x[0, 0, 0]) for x in xs] == list(range(6))
    paths[2].write_bytes(b"")
    paths[4].write_text("text")
    with pytest.raises(ImageDecodeError, match=r"2\.png"):  # the first bad file in order
        load_images(paths, 8, num_threads=3)
    out = load_images(paths, 8, num_threads=3, return_exceptions=True)
    kinds = [type(o).__name__ for o in out]
    assert kinds == ["Tensor", "Tensor", "ImageDecodeError", "Tensor", "ImageDecodeError", "Tensor"]
    with pytest.raises(ValueError, match="num_threads"):
        load_images(paths, 8, num_threads=0)


# ------------------------------------------------------------------------------------------------ cache


def test_second_construction_with_cache_decodes_nothing(tiny, tmp_path, monkeypatch):
    root, _ = tiny
    cache_dir = tmp_path / "cache"
    first = MVTecAD(root, category="transistor", image_size=S, cache_dir=cache_dir)
    assert first.cache.misses == 8 + 4 and first.cache.hits == 0  # 8 images + 4 masks

    def no_decoding(*args, **kwargs):
        raise AssertionError("PIL decode called although every file is cached")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    second = MVTecAD(root, category="transistor", image_size=S, cache_dir=cache_dir)
    assert second.cache.hits == 12 and second.cache.misses == 0
    assert second.samples == first.samples
    assert all(torch.equal(a, b) for a, b in zip(first.images, second.images))
    assert all(torch.equal(first.load_mask(i), second.load_mask(i)) for i in range(len(first)))
    assert not list(cache_dir.glob(".tmp-*"))  # no temp file left behind
    # Another working resolution is another entry: it needs decoding.
    with pytest.raises(AssertionError, match="PIL decode called"):
        MVTecAD(root, category="transistor", image_size=S // 2, cache_dir=cache_dir)


def test_changed_or_touched_file_invalidates_its_entry(tmp_path):
    p = _rgb(tmp_path / "a.png", value=(1, 2, 3))
    cache = ImageCache(tmp_path / "cache")
    assert cache.load(p, 8)[:, 0, 0].tolist() == [1, 2, 3]
    assert cache.load(p, 8)[:, 0, 0].tolist() == [1, 2, 3] and (cache.hits, cache.misses) == (1, 1)

    st = os.stat(p)
    _rgb(p, value=(7, 8, 9))  # same size on disk, new content
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.load(p, 8)[:, 0, 0].tolist() == [7, 8, 9] and cache.misses == 2

    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touch only
    assert cache.load(p, 8)[:, 0, 0].tolist() == [7, 8, 9] and cache.misses == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "wrong_dtype"])
def test_corrupt_cache_entry_is_a_miss_and_is_rewritten(tmp_path, damage, caplog):
    p = _rgb(tmp_path / "a.png", value=(5, 6, 7))
    cache = ImageCache(tmp_path / "cache")
    good = cache.load(p, 8)
    entry = cache.entry_path(p, 8)
    assert entry.is_file()
    if damage == "garbage":
        entry.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:100])
    elif damage == "wrong_shape":
        np.save(entry, np.zeros((3, 4, 4), np.uint8))
    else:
        np.save(entry, np.zeros((3, 8, 8), np.float32))
    with caplog.at_level(logging.WARNING, logger="bcl.data.image_io"):
        again = cache.load(p, 8)
    assert torch.equal(again, good) and cache.misses == 2 and "cache entry" in caplog.text
    assert torch.equal(cache.load(p, 8), good) and cache.hits == 1  # rewritten, now a hit


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    p = _rgb(tmp_path / "a.png")
    cache = ImageCache(tmp_path / "cache")
    real_save = np.save

    def killed_mid_write(f, arr, **kw):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # the run is killed while writing

    monkeypatch.setattr(np, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        cache.load(p, 8)
    assert list((tmp_path / "cache").iterdir()) == []  # neither a corrupt entry nor a temp file
    monkeypatch.setattr(np, "save", real_save)
    assert cache.load(p, 8).shape == (3, 8, 8) and len(list((tmp_path / "cache").iterdir())) == 1


# -------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_transistor():
    root = os.environ.get("BCL_MVTEC_ROOT")
    if not root:
        pytest.skip("BCL_MVTEC_ROOT is not set (point it at MVTec AD or its transistor folder)")
    root = Path(root)
    if (root / "train" / "good").is_dir():
        return MVTecAD(root, image_size=64, num_threads=2)
    return MVTecAD(root, category="transistor", image_size=64, num_threads=2)


def test_real_transistor_counts_and_classes(real_transistor):
    ds = real_transistor
    assert ds.category == "transistor" and ds.skipped == []
    assert ds.class_names == ["good", "bent_lead", "cut_lead", "damaged_case", "misplaced"]
    assert ds.class_counts() == {"good": 273, "bent_lead": 10, "cut_lead": 10, "damaged_case": 10, "misplaced": 10}
    good_splits = [s.split for s in ds.samples if s.class_name == "good"]
    assert good_splits.count("train") == 213 and good_splits.count("test") == 60
    assert len(ds.images) == 313
    assert all(x.dtype == torch.uint8 and x.shape == (3, 64, 64) for x in ds.images)


def test_real_transistor_masks_pair_by_name(real_transistor):
    ds = real_transistor
    paired = [(i, s) for i, s in enumerate(ds.samples) if s.mask_path is not None]
    assert len(paired) == 40
    assert all(s.class_name != "good" for _, s in paired)
    assert all(s.mask_path is None for s in ds.samples if s.class_name == "good")
    for i, s in paired:
        img, mask = Path(s.path), Path(s.mask_path)
        assert mask.stem == img.stem + "_mask"
        assert mask.parent.name == img.parent.name == s.class_name and mask.parent.parent.name == "ground_truth"
        m = ds.load_mask(i)
        assert m.dtype == torch.bool and m.shape == (64, 64) and m.any()


def test_real_transistor_through_mvtec_root_and_category(real_transistor, tmp_path):
    """The other way to point at the data: the MVTec AD root plus ``category="transistor"``."""
    mvtec_root = tmp_path / "mvtec_ad"
    mvtec_root.mkdir()
    (mvtec_root / "transistor").symlink_to(real_transistor.root, target_is_directory=True)
    ds = MVTecAD(mvtec_root, category="transistor", image_size=32, num_threads=2)
    assert ds.class_names == real_transistor.class_names
    assert ds.class_counts() == real_transistor.class_counts()
    assert [Path(s.path).relative_to(ds.root) for s in ds.samples] == [
        Path(s.path).relative_to(real_transistor.root) for s in real_transistor.samples
    ]
