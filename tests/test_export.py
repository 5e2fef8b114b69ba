"""COCO / YOLO export of defect masks: round trips, splits, resizing, bad inputs, the real data.

Components by hand, pycocotools round trips, YOLO round trips, the library's splits, resizing, every
bad input, and (with ``BCL_MVTEC_ROOT``) the real transistor set.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bcl.data.export import export, main, mask_instances, read_mask
from bcl.data.mvtec import MVTecAD
from bcl.data.splits import stratified_kfold, stratified_split
from bcl.data.synthetic import SyntheticTransistor
from helpers.mvtec_tree import make_tiny_mvtec

S = 32
# pycocotools' decode trips numpy 2's __array__ deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _save(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def _two_components() -> np.ndarray:
    """A square with a 3x3 hole (bbox 2,2,8,8; 55 px) and a bar (bbox 15,20,13,5; 65 px)."""
    m = np.zeros((S, S), bool)
    m[2:10, 2:10] = True
    m[5:8, 5:8] = False
    m[20:25, 15:28] = True
    return m


@pytest.fixture
def tree(tmp_path):
    """Tiny MVTec transistor tree: 4 good, 2 bent_lead, 2 cut_lead; bent_lead/000 has two components and a hole."""
    cdir = make_tiny_mvtec(tmp_path / "src", "transistor", defects=("bent_lead", "cut_lead"), size=S)
    _save(cdir / "ground_truth" / "bent_lead" / "000_mask.png", _two_components().astype(np.uint8) * 255)
    return cdir


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(path))


def _source_masks(cdir: Path) -> dict:
    return {f"test_{p.parent.name}_{p.stem[:-5]}": read_mask(p)[0] for p in cdir.glob("ground_truth/*/*_mask.png")}


def _worst_union_iou(coco: COCO, masks: dict) -> tuple:
    """Worst IoU over images between the union of their decoded annotations and the source mask."""
    worst = (2.0, None)
    for image in coco.dataset["images"]:
        union = np.zeros((image["height"], image["width"]), bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            union |= coco.annToMask(ann).astype(bool)
        target = masks.get(Path(image["file_name"]).stem)
        if target is None:  # a good image
            assert not union.any(), image["file_name"]
            continue
        worst = min(worst, ((union & target).sum() / (union | target).sum(), image["file_name"]))
    return worst


def _read_yolo(out: Path, part: str) -> dict:
    """``{stem: [(class, [values in pixels])]}`` from labels/<part>/*.txt, scaled by each image's size."""
    found = {}
    for label in sorted((out / "labels" / part).glob("*.txt")):
        image = next((out / "images" / part).glob(label.stem + ".*"))
        w, h = Image.open(image).size
        rows = []
        for line in label.read_text().splitlines():
            cls, *values = line.split()
            rows.append((int(cls), [float(v) * (h if k % 2 else w) for k, v in enumerate(values)]))
        found[label.stem] = rows
    return found


def _coco_by_stem(coco: COCO) -> dict:
    return {Path(im["file_name"]).stem: coco.loadAnns(coco.getAnnIds(imgIds=im["id"])) for im in coco.dataset["images"]}


def _check_yolo_round_trip(detect: Path, seg: Path, coco_path: Path, part: str) -> float:
    """YOLO boxes equal the COCO boxes to 1e-3 px; returns the worst polygon IoU against COCO's polygons."""
    coco = _coco(coco_path)
    by_stem = _coco_by_stem(coco)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    yaml_names = yaml.safe_load((detect / "data.yaml").read_text())["names"]
    boxes, polygons = _read_yolo(detect, part), _read_yolo(seg, part)
    assert set(boxes) == set(polygons) == set(by_stem)
    worst = 1.0
    for stem, anns in by_stem.items():
        assert len(boxes[stem]) == len(polygons[stem]) == len(anns), stem
        for ann, (cls, (cx, cy, w, h)), (cls2, poly) in zip(anns, boxes[stem], polygons[stem]):
            assert yaml_names[cls] == yaml_names[cls2] == names[ann["category_id"]]
            np.testing.assert_allclose([cx - w / 2, cy - h / 2, w, h], ann["bbox"], atol=1e-3)
            image = coco.imgs[ann["image_id"]]
            a = mask_utils.decode(mask_utils.frPyObjects([poly], image["height"], image["width"]))[..., 0]
            b = coco.annToMask(ann)
            worst = min(worst, float((a & b).sum() / (a | b).sum()))
    return worst


# ------------------------------------------------------------------------------------------ components


def test_components_boxes_areas_and_connectivity_by_hand():
    found = mask_instances(_two_components())
    assert [(i.bbox, i.area) for i in found] == [((2, 2, 8, 8), 55), ((15, 20, 13, 5), 65)]
    diagonal = np.zeros((6, 6), bool)
    diagonal[1, 1] = diagonal[2, 2] = diagonal[4, 4] = True
    assert [i.bbox for i in mask_instances(diagonal)] == [(1, 1, 2, 2), (4, 4, 1, 1)]
    assert [i.bbox for i in mask_instances(diagonal, connectivity=4)] == [(1, 1, 1, 1), (2, 2, 1, 1), (4, 4, 1, 1)]
    assert [i.area for i in mask_instances(diagonal, min_area=2)] == [2]
    assert mask_instances(np.zeros((4, 4), bool)) == []


def _filled(component: np.ndarray) -> np.ndarray:
    """The component with its holes (background not 4-connected to the outside) filled."""
    padded = np.pad(component, 1).astype(np.uint8)
    cv2.floodFill(padded, None, (0, 0), 2)
    return (padded != 2)[1:-1, 1:-1]


def test_polygons_rasterise_back_to_the_component_with_holes_filled():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m = rng.random((17, 23)) < rng.uniform(0.05, 0.6)
        for inst in mask_instances(m):
            back = mask_utils.decode(mask_utils.frPyObjects([inst.polygon], 17, 23))[..., 0].astype(bool)
            np.testing.assert_array_equal(back, _filled(inst.mask))
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            assert inst.bbox == tuple(int(v) for v in mask_utils.toBbox(rle)) and inst.area == mask_utils.area(rle)
    hole = mask_instances(_two_components())[0]
    back = mask_utils.decode(mask_utils.frPyObjects([hole.polygon], S, S))[..., 0].astype(bool)
    assert back.sum() == 64 and hole.area == 55  # the polygon fills the 9-pixel hole; area does not


# ----------------------------------------------------------------------------------------------- COCO


@pytest.mark.parametrize("segmentation, worst", [("rle", (1.0, "test_cut_lead_000.png")),
                                                  ("polygon", (120 / 129, "test_bent_lead_000.png"))])
def test_coco_export_loads_and_unions_back_to_the_masks(tree, tmp_path, segmentation, worst):
    out = tmp_path / "coco"
    summary = export(tree, out, "coco", segmentation=segmentation, split="all")
    coco = _coco(out / "annotations" / "instances_all.json")
    assert [c["name"] for c in coco.dataset["categories"]] == ["bent_lead", "cut_lead"]
    assert len(coco.dataset["images"]) == 8 and len(coco.dataset["annotations"]) == 5
    anns = _coco_by_stem(coco)
    assert [(a["bbox"], a["area"], a["iscrowd"]) for a in anns["test_bent_lead_000"]] == [
        ([2, 2, 8, 8], 55, 0), ([15, 20, 13, 5], 65, 0)]
    assert [a["bbox"] for a in anns["test_cut_lead_001"]] == [[0, 0, 16, 16]]
    assert anns["train_good_000"] == [] and anns["test_good_000"] == []  # negatives are kept
    iou, name = _worst_union_iou(coco, _source_masks(tree))  # polygons: exact but for the filled 9-px hole
    assert iou == pytest.approx(worst[0]) and (iou == 1.0 or name == worst[1])
    polygons = 3 if segmentation == "polygon" else 0
    assert summary["parts"]["all"]["bent_lead"] == {"images": 2, "boxes": 3, "polygons": polygons}
    assert json.loads((out / "export.json").read_text())["parts"] == summary["parts"]
    copied = out / "images" / "all" / "test_bent_lead_000.png"
    assert copied.read_bytes() == (tree / "test" / "bent_lead" / "000.png").read_bytes()


def test_kfold_and_holdout_parts_are_the_librarys(tree, tmp_path):
    export(tree, tmp_path / "kfold", "coco", split="kfold", n_folds=2, fold=1, seed=3)
    data = MVTecAD(tree, image_size=16)
    fold = stratified_kfold(data, n_splits=2, seed=3)[1]
    for part, positions in (("train", fold.train_idx), ("test", fold.test_idx)):
        expected = sorted(f"{data.samples[i].split}_{data.samples[i].class_name}_{Path(data.samples[i].path).stem}.png"
                          for i in positions)
        assert sorted(p.name for p in (tmp_path / "kfold" / "images" / part).iterdir()) == expected
        assert json.loads((tmp_path / "kfold" / "annotations" / f"instances_{part}.json").read_text())["images"]
    export(tree, tmp_path / "holdout", "yolo-detect", split="holdout", test_fraction=0.25, seed=1)
    _, _, test = stratified_split(data, val_fraction=0.0, test_fraction=0.25, seed=1)
    expected = sorted(f"{s.split}_{s.class_name}_{Path(s.path).stem}.txt" for s in (data.samples[i] for i in test))
    assert sorted(p.name for p in (tmp_path / "holdout" / "labels" / "test").iterdir()) == expected


def test_resized_export_scales_images_and_annotations(tree, tmp_path):
    export(tree, tmp_path / "small", "coco", split="all", image_size=16)
    coco = _coco(tmp_path / "small" / "annotations" / "instances_all.json")
    assert {(im["width"], im["height"]) for im in coco.dataset["images"]} == {(16, 16)}
    assert Image.open(tmp_path / "small" / "images" / "all" / "test_cut_lead_000.png").size == (16, 16)
    assert [a["bbox"] for a in _coco_by_stem(coco)["test_cut_lead_000"]] == [[0, 0, 8, 8]]


# ----------------------------------------------------------------------------------------------- YOLO


def test_yolo_round_trip_matches_the_coco_export(tree, tmp_path):
    for fmt in ("coco", "yolo-detect", "yolo-seg"):
        export(tree, tmp_path / fmt, fmt, split="kfold", n_folds=2)
    for part in ("train", "test"):
        iou = _check_yolo_round_trip(tmp_path / "yolo-detect", tmp_path / "yolo-seg",
                                     tmp_path / "coco" / "annotations" / f"instances_{part}.json", part)
        assert iou >= 0.95
    data = yaml.safe_load((tmp_path / "yolo-seg" / "data.yaml").read_text())
    assert data == {"path": str(tmp_path / "yolo-seg"), "train": "images/train", "val": "images/test",
                    "names": {0: "bent_lead", 1: "cut_lead"}}
    goods = [p for part in ("train", "test") for p in (tmp_path / "yolo-detect" / "labels" / part).glob("*_good_*.txt")]
    assert len(goods) == 4 and all(p.read_text() == "" for p in goods)  # negatives: empty label files


def test_link_symlinks_the_sources(tree, tmp_path):
    export(tree, tmp_path / "linked", "yolo-seg", split="all", link=True)
    linked = tmp_path / "linked" / "images" / "all" / "test_bent_lead_001.png"
    assert linked.is_symlink() and linked.resolve() == (tree / "test" / "bent_lead" / "001.png").resolve()


def test_in_memory_synthetic_dataset_and_contact_sheet(tmp_path):
    data = SyntheticTransistor(counts=[2, 2, 2, 2, 2], image_size=32)
    summary = export(data, tmp_path / "synthetic", "yolo-seg", split="all", sheet=tmp_path / "sheet.png")
    assert all(summary["parts"]["all"][c]["boxes"] >= 2 for c in data.class_names[1:])
    assert Image.open(tmp_path / "sheet.png").size[0] > 100
    labels = _read_yolo(tmp_path / "synthetic", "all")
    for index, sample in enumerate(data.samples):
        stem = f"synthetic_{sample.class_name}_{Path(sample.path).name}"
        assert len(labels[stem]) == len(mask_instances(data.masks[index].numpy())) * (sample.class_name != "good")


# ------------------------------------------------------------------------------------------ bad input


def test_empty_mask_is_named_and_skippable(tree, tmp_path):
    empty = _save(tree / "ground_truth" / "cut_lead" / "001_mask.png", np.zeros((S, S), np.uint8))
    with pytest.raises(ValueError, match=rf"{empty}.*'cut_lead'.*no defect pixels"):
        export(tree, tmp_path / "a", "coco", split="all")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.tmp-*"))  # nothing left behind
    summary = export(tree, tmp_path / "b", "coco", split="all", on_error="skip")
    assert summary["parts"]["all"]["cut_lead"]["images"] == 1
    assert [Path(p).name for p, _ in summary["skipped"]] == ["001.png"]


def test_min_area_that_removes_every_component_is_named(tree, tmp_path):
    with pytest.raises(ValueError, match=r"000_mask.png.*no component of >= 500 px"):
        export(tree, tmp_path / "a", "coco", split="all", min_area=500)


def test_mask_of_another_size_is_named(tree, tmp_path):
    bad = _save(tree / "ground_truth" / "bent_lead" / "001_mask.png", np.full((S, S + 4), 255, np.uint8))
    with pytest.raises(ValueError, match=rf"mask {bad} is 36x32 px but its image .*001.png is 32x32 px"):
        export(tree, tmp_path / "a", "yolo-detect", split="all")


def test_non_binary_mask_is_thresholded_at_half_scale_and_reported(tree, tmp_path, caplog):
    soft = np.zeros((S, S), np.uint8)
    soft[4:12, 4:12] = 255
    soft[4:12, 12] = 128  # anti-aliased edge: counts (>= 128)
    soft[4:12, 13] = 127  # does not
    path = _save(tree / "ground_truth" / "cut_lead" / "000_mask.png", soft)
    mask, thresholded = read_mask(path)
    assert thresholded and mask.sum() == 8 * 9 and mask[4:12, 4:13].all()
    with caplog.at_level(logging.WARNING, logger="bcl.data.export"):
        summary = export(tree, tmp_path / "a", "coco", split="all")
    assert summary["thresholded_masks"] == [str(path)] and str(path) in caplog.text
    coco = _coco(tmp_path / "a" / "annotations" / "instances_all.json")
    assert [a["bbox"] for a in _coco_by_stem(coco)["test_cut_lead_000"]] == [[4, 4, 9, 8]]
    assert read_mask(tree / "ground_truth" / "cut_lead" / "001_mask.png")[1] is False  # 0/255 is binary


def test_in_memory_masks_are_checked_too(tmp_path):
    data = SyntheticTransistor(counts=[1, 1, 0, 0, 0], image_size=32)
    data.masks[0] = data.masks[1].clone()
    with pytest.raises(ValueError, match=r"the mask of synthetic://good/0000 marks \d+ defect pixels on the 'good'"):
        export(data, tmp_path / "x", "coco", split="all")
    data.masks[0] = data.masks[0][:16]
    with pytest.raises(ValueError, match=r"the mask of synthetic://good/0000 is 32x16 px but its image .* is 32x32"):
        export(data, tmp_path / "x", "coco", split="all")


def test_non_empty_output_is_refused_unless_overwrite(tree, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=rf"output folder {busy} exists and is not empty.*--overwrite"):
        export(tree, busy, "coco")
    with pytest.raises(ValueError, match="is not a bcl export"):
        export(tree, busy, "coco", overwrite=True)
    assert (busy / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    export(tree, out, "coco", split="all")
    with pytest.raises(ValueError, match="exists and is not empty"):
        export(tree, out, "yolo-detect", split="all")
    export(tree, out, "yolo-detect", split="all", overwrite=True)
    assert (out / "data.yaml").is_file() and not (out / "annotations").exists()


@pytest.mark.parametrize("options, message", [
    (dict(format="yolo-seg", segmentation="rle"), "for the coco format only"),
    (dict(link=True, image_size=64), "cannot be resized"),
    (dict(format="voc"), "format must be one of"),
    (dict(split="kfold", fold=5), r"fold must be in \[0, n_folds=5\)"),
    (dict(split="kfold", n_folds=3), "n_splits.*class"),
    (dict(min_area=0), "min_area must be an int >= 1"),
    (dict(mask_threshold=0), r"mask_threshold must be in \(0, 1\]"),
])
def test_bad_options_are_named(tree, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        export(tree, tmp_path / "x", **options)


def test_command_line(tree, tmp_path, capsys):
    assert main(["--format", "coco", "--root", str(tree), "--split", "all", "--out", str(tmp_path / "c")]) == 0
    assert "all    bent_lead           2      3        3" in capsys.readouterr().out
    assert main(["--format", "coco", "--root", str(tree), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output folder") and err.count("\n") == 1


# ------------------------------------------------------------------------------------ the real data set


def test_real_transistor_export_meets_the_thresholds(tmp_path):
    root = os.environ.get("BCL_MVTEC_ROOT")
    if not root:
        pytest.skip("BCL_MVTEC_ROOT is not set (point it at MVTec AD's transistor folder)")
    category = None if (Path(root) / "train" / "good").is_dir() else "transistor"
    for name, fmt, seg in (("rle", "coco", "rle"), ("polygon", "coco", "polygon"),
                           ("detect", "yolo-detect", "polygon"), ("seg", "yolo-seg", "polygon")):
        summary = export(root, tmp_path / name, fmt, category=category, segmentation=seg, split="all", link=True)
    counts = summary["parts"]["all"]
    assert counts["good"] == {"images": 273, "boxes": 0, "polygons": 0}
    assert {c: r["images"] for c, r in counts.items() if c != "good"} == dict.fromkeys(summary["categories"], 10)
    cdir = Path(root) if category is None else Path(root) / category
    masks = _source_masks(cdir)
    worst_rle = _worst_union_iou(_coco(tmp_path / "rle" / "annotations" / "instances_all.json"), masks)
    worst_polygon = _worst_union_iou(_coco(tmp_path / "polygon" / "annotations" / "instances_all.json"), masks)
    assert worst_rle[0] >= 0.99 and worst_polygon[0] >= 0.95, (worst_rle, worst_polygon)
    iou = _check_yolo_round_trip(tmp_path / "detect", tmp_path / "seg",
                                 tmp_path / "polygon" / "annotations" / "instances_all.json", "all")
    assert iou >= 0.95
    logging.getLogger(__name__).info("worst union IoU: rle %s, polygon %s; YOLO polygon IoU %.4f; counts %s",
                                     worst_rle, worst_polygon, iou, counts)
