"""The benchmark suite end to end on a tiny MVTec tree: cells, aggregation, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bcl.bench import aggregate, main
from bcl.data import make_tiny_mvtec

TINY = ["--methods", "ce", "focal", "--folds", "2", "--epochs", "1", "--probe-epochs", "1", "--image-size", "32",
        "--batch-size", "8"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    return make_tiny_mvtec(root, defects=("bent_lead", "cut_lead"), n_train_good=8, n_test_good=4, n_defect=6, size=32)


def cell(method, fold, balanced, recall_good=1.0):
    test = {"balanced_accuracy": balanced, "accuracy": 0.9, "macro_f1": 0.5, "good_vs_defect_auroc": None,
            "knn_balanced_accuracy": 0.4, "knn_good_vs_defect_auroc": 0.6,
            "per_class_recall": {"good": recall_good, "bent_lead": None}, "confusion_matrix": [[1, 0], [0, 1]]}
    return {"method": method, "fold": fold, "seed": 0, "wall_time_s": 10.0 * (fold + 1), "test": test}


def test_aggregation_is_over_each_method_s_own_cells():
    contrastive_only = cell("supcon", 0, None)
    for key in ("per_class_recall", "confusion_matrix", "balanced_accuracy"):
        del contrastive_only["test"][key]  # a stage without a classifier has kNN metrics only
    summary = aggregate([cell("ce", 0, 0.5), cell("ce", 1, 0.7), cell("focal", 0, 0.2, recall_good=0.5),
                         contrastive_only])
    assert summary["supcon"]["balanced_accuracy"]["n"] == 0 and summary["supcon"]["knn_balanced_accuracy"]["n"] == 1
    assert summary["ce"]["balanced_accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["ce"]["balanced_accuracy"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summary["ce"]["balanced_accuracy"]["n"] == 2 and summary["ce"]["cells"] == [(0, 0), (1, 0)]
    assert summary["focal"]["balanced_accuracy"] == {"mean": 0.2, "std": 0.0, "n": 1}
    assert summary["focal"]["per_class_recall"]["good"]["mean"] == 0.5
    assert summary["ce"]["per_class_recall"]["bent_lead"] == {"mean": None, "std": None, "n": 0}  # absent, not 0
    assert summary["ce"]["good_vs_defect_auroc"]["n"] == 0
    assert summary["ce"]["confusion_matrix"] == [[2, 0], [0, 2]]
    assert summary["ce"]["wall_time_s"]["mean"] == pytest.approx(15.0)


def test_suite_end_to_end_then_resume_skips_finished_cells(tiny_root, tmp_path, capsys):
    out = tmp_path / "suite"
    report = tmp_path / "docs" / "results.md"
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY, "--report", str(report)]) == 0
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert cells == ["ce__fold0__seed0.json", "ce__fold1__seed0.json", "focal__fold0__seed0.json",
                     "focal__fold1__seed0.json"]
    results = json.loads((out / "results.json").read_text())
    ce = [json.loads((out / "cells" / name).read_text())["test"]["balanced_accuracy"] for name in cells[:2]]
    assert results["summary"]["ce"]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(ce))
    assert results["summary"]["ce"]["balanced_accuracy"]["std"] == pytest.approx(np.std(ce, ddof=1))
    assert (out / "results_cells.csv").read_text().count("\n") == 5
    assert (out / "results_per_class_recall.png").is_file() and (out / "results_tsne.png").is_file()
    text = report.read_text()
    assert "| CE (instance sampling) |" in text and "python -m bcl.bench" in text and "91.67" in text
    capsys.readouterr()

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    (out / "cells" / "focal__fold1__seed0.json").unlink()
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert set(after) == set(stamps)
    assert all(after[name] == stamps[name] for name in stamps if name != "focal__fold1__seed0.json")
    # the interrupted cell's old run folder was moved aside, not overwritten
    assert list((out / "runs" / "focal").glob("fold1-seed0.replaced-*"))


def test_refuses_to_mix_cells_of_another_configuration(tiny_root, tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY[:2], "--folds", "2", "--epochs", "1",
                 "--image-size", "32", "--batch-size", "8"]) == 0
    capsys.readouterr()
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY[:2], "--folds", "2", "--epochs", "2",
                 "--image-size", "32", "--batch-size", "8"]) == 2
    assert "protocol.epochs: 1 there, 2 now" in capsys.readouterr().err


def test_bad_dataset_and_fold_count_fail_before_training(tiny_root, tmp_path, capsys):
    assert main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a"), *TINY]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["--root", str(tiny_root), "--out", str(tmp_path / "b"), *TINY[:3], "--folds", "7"]) == 2
    err = capsys.readouterr().err
    assert "bent_lead" in err or "cut_lead" in err
    assert not (tmp_path / "b" / "cells").exists()
    with pytest.raises(SystemExit):
        main(["--root", str(tiny_root), "--out", str(tmp_path / "c"), "--methods", "resnet"])
    assert "invalid choice: 'resnet'" in capsys.readouterr().err
