"""The small-data suite end to end on a tiny MVTec tree.

Tuning on inner folds, repeated folds, paired differences and intervals checked by hand, resume, refusals.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.mvtec import schedule
from benchmarks.mvtec.cells import Suite
from benchmarks.mvtec.definitions import DESIGNS, SCRATCH, Lever, Method, Protocol, check_definitions
from benchmarks.mvtec.report import headline_markers
from benchmarks.mvtec.statistics import aggregate, paired_difference
from benchmarks.mvtec_suite import main
from bcl.checkpoints import atomic_write_text
from bcl.config import LinearConfig, load_config
from bcl.data import MVTecAD, stratified_kfold
from bcl.datasets import build_dataset, make_splits
from helpers.mvtec_tree import make_tiny_mvtec

TINY = ["--methods", "ce", "focal", "--folds", "2", "--repeats", "2", "--inner-folds", "2", "--epochs", "1",
        "--probe-epochs", "1", "--image-size", "32", "--batch-size", "8", "--ablations", "no_paste"]
T_975_3 = 3.182446305284263  # Student t quantile 0.975 with 3 degrees of freedom (tables)
T_975_1 = 12.706204736174707


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    return make_tiny_mvtec(root, defects=("bent_lead", "cut_lead"), n_train_good=8, n_test_good=4, n_defect=6, size=32)


@pytest.fixture(scope="module")
def finished(tiny_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("suite")
    out, report = base / "suite", base / "docs" / "results.md"
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY, "--report", str(report)]) == 0
    return out, report


def test_paired_difference_is_the_corrected_resampled_t_interval():
    a = {(0, 0): 0.6, (0, 1): 0.7, (1, 0): 0.5, (1, 1): 0.9, (2, 0): 0.1}  # (2, 0) has no partner: not used
    b = {(0, 0): 0.5, (0, 1): 0.4, (1, 0): 0.5, (1, 1): 0.6}
    d = np.array([0.1, 0.3, 0.0, 0.3])
    half = T_975_3 * d.std(ddof=1) * math.sqrt(1 / 4 + 1 / 4)
    result = paired_difference(a, b, test_over_train=0.25)
    assert result["n"] == 4 and result["mean"] == pytest.approx(0.175)
    assert result["low"] == pytest.approx(0.175 - half) and result["high"] == pytest.approx(0.175 + half)
    assert paired_difference({(0, 0): 0.5}, {(0, 0): 0.25}, 0.25) == {"mean": 0.25, "std": None, "n": 1, "low": None,
                                                                     "high": None}


def test_suite_end_to_end_paired_differences_by_hand(finished):
    out, report = finished
    names = sorted(p.name for p in (out / "cells" / "main").glob("*.json"))
    assert names == [f"{m}__r{r}__f{f}.json" for m in ("ce", "focal") for r in (0, 1) for f in (0, 1)]
    tune = sorted(p.name for p in (out / "cells" / "tune").glob("*.json"))
    assert len(tune) == 2 * 3 * 2 and all("__r0__f0__i" in n for n in tune)  # 2 methods x 3 points x 2 inner folds
    assert sorted(p.name for p in (out / "cells" / "ablation").glob("*.json")) == ["no_paste__r0__f0.json",
                                                                                   "no_paste__r0__f1.json"]

    def scores(phase, row):
        cells = [json.loads(p.read_text()) for p in (out / "cells" / phase).glob(f"{row}__*.json")]
        return {(c["repeat"], c["fold"]): c["test"]["balanced_accuracy"] for c in cells}

    ce, focal = scores("main", "ce"), scores("main", "focal")
    summary = json.loads((out / "results.json").read_text())["summary"]
    best = "ce" if np.mean(list(ce.values())) >= np.mean(list(focal.values())) else "focal"
    assert summary["reference"] == {"ce": "ce", "best_ce": best}
    d = np.array([focal[k] - ce[k] for k in sorted(ce)])
    vs_ce = summary["methods"]["focal"]["vs_ce"]
    half = T_975_3 * d.std(ddof=1) * math.sqrt(1 / 4 + 1 / (2 - 1))  # 2 folds: n_test / n_train = 1
    assert vs_ce["n"] == 4 and vs_ce["mean"] == pytest.approx(d.mean())
    assert vs_ce["low"] == pytest.approx(d.mean() - half) and vs_ce["high"] == pytest.approx(d.mean() + half)
    assert summary["methods"]["ce"]["balanced_accuracy"]["std"] == pytest.approx(np.std(list(ce.values()), ddof=1))

    lever = scores("ablation", "no_paste")
    base = {k: v for k, v in ce.items() if k[0] == 0}
    d = np.array([lever[k] - base[k] for k in sorted(base)])
    ablation = summary["ablations"]["no_paste"]["vs_base"]
    assert ablation["mean"] == pytest.approx(d.mean())
    assert ablation["high"] - ablation["mean"] == pytest.approx(T_975_1 * d.std(ddof=1) * math.sqrt(1 / 2 + 1))

    for name in ("ce", "focal"):
        means = [np.mean([json.loads(p.read_text())["test"]["balanced_accuracy"]
                          for p in (out / "cells" / "tune").glob(f"{name}@{point}__*.json")]) for point in range(3)]
        assert json.loads((out / "tuning" / f"{name}.json").read_text())["chosen"] == int(np.argmax(means))
    text = report.read_text()
    assert (re.search(r"^\| CE \(instance sampling\) +\|", text, re.M) and "python benchmarks/mvtec_suite.py" in text
            and "corrected resampled" in text)
    assert "## Ablation" in text and "## Tuning (inner folds only)" in text and "**yes**" in text
    assert "**Unfinished**" not in text
    assert (out / "results_per_class_recall.png").is_file() and (out / "results_tsne.png").is_file()


def test_tuning_runs_never_see_the_outer_test_part(tiny_root):
    dataset = MVTecAD(tiny_root, category="transistor", image_size=32)
    outer = stratified_kfold(dataset, n_splits=2, seed=0)[0]
    seen = []
    for inner in (0, 1):
        cfg = load_config(LinearConfig, overrides=["data.dataset=mvtec", f"data.root={tiny_root}", "data.n_folds=2",
                                                   "data.inner_folds=2", f"data.inner_fold={inner}",
                                                   "data.image_size=32"])
        splits = make_splits(build_dataset(cfg.data), cfg.data, validation=False)
        assert not set(splits.train) & set(outer.test_idx) and not set(splits.test) & set(outer.test_idx)
        assert not set(splits.train) & set(splits.test)
        seen += list(splits.test)
    assert sorted(seen) == sorted(outer.train_idx)  # the inner test parts cover the outer training part


def test_resume_skips_finished_cells_and_keeps_interrupted_runs(tiny_root, finished, capsys):
    out, _ = finished
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    interrupted = out / "cells" / "main" / "focal__r1__f1.json"
    interrupted.unlink()
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY]) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    assert set(after) == set(stamps)
    assert all(after[p] == stamps[p] for p in stamps if p != interrupted)
    # the interrupted cell's old run folder was moved aside, not overwritten
    assert list((out / "runs" / "main" / "focal").glob("r1-f1.replaced-*"))
    capsys.readouterr()


@pytest.mark.parametrize("flag, value, message", [("--repeats", "3", "protocol.repeats: 2 there, 3 now"),
                                                  ("--selection", "val", "protocol.selection: 'last' there, 'val' now"),
                                                  ("--inner-folds", "3", "protocol.inner_folds: 2 there, 3 now")])
def test_refuses_a_folder_of_another_protocol(tiny_root, finished, capsys, flag, value, message):
    out, _ = finished
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY, flag, value]) == 2  # the last flag wins
    assert message in capsys.readouterr().err


def test_refuses_a_folder_made_with_another_grid(tiny_root, finished, capsys, monkeypatch):
    out, _ = finished
    changed = Method("ce", "CE (instance sampling)", "linear", "mvtec_ce.yaml",
                     grid=((), ("optim.lr=0.1",), ("bench.epochs_scale=2",)))
    monkeypatch.setitem(SCRATCH.methods, "ce", changed)
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY]) == 2
    assert "grid.ce:" in capsys.readouterr().err


def test_a_grid_or_lever_cannot_touch_splits_or_selection():
    methods = {"ce": Method("ce", "CE", "linear", "mvtec_ce.yaml", grid=((), ("data.fold=1",)))}
    with pytest.raises(ValueError, match="method 'ce' grid sets data.fold"):
        check_definitions(methods, {})
    ok = {"ce": Method("ce", "CE", "linear", "mvtec_ce.yaml")}
    with pytest.raises(ValueError, match="ablation 'peek' sets eval.selection"):
        check_definitions(ok, {"peek": Lever("peek", "ce", "select on val", ("eval.selection=val",))})
    with pytest.raises(ValueError, match="bench.epochs_scale must be a positive number"):
        check_definitions({"ce": Method("ce", "CE", "linear", "mvtec_ce.yaml", grid=(("bench.epochs_scale=x",),))}, {})
    for design in DESIGNS.values():  # the shipped grids and levers pass
        check_definitions(design.methods, design.ablations)


def test_every_tuned_method_gets_the_same_budget_and_schedule_choices():
    ce = Method("ce", "CE", "linear", "mvtec_ce.yaml", grid=((), ("bench.epochs_scale=2",)))
    longer_only_for_ce = {"ce": ce, "bcl": Method("bcl", "BCL", "supcon", "mvtec_bcl.yaml",
                                                  grid=((), ("loss.temperature=0.2",)))}
    unequal = r"'bcl' may choose bench.epochs_scale from \[1.0\] and 'ce' from \[1.0, 2.0\]"
    with pytest.raises(ValueError, match=unequal):
        check_definitions(longer_only_for_ce, {})
    fewer_points = {"ce": ce, "bcl": Method("bcl", "BCL", "supcon", "mvtec_bcl.yaml", grid=((),))}
    with pytest.raises(ValueError, match="'bcl' has 1 grid points and 'ce' 2"):
        check_definitions(fewer_points, {})
    fair = {"ce": ce, "bcl": Method("bcl", "BCL", "supcon", "mvtec_bcl.yaml",
                                    grid=(("loss.temperature=0.2",), ("bench.epochs_scale=2.0",))),
            "bcl_probe": Method("bcl_probe", "probe", "linear", "mvtec_linear.yaml", needs="bcl")}
    check_definitions(fair, {})


def test_bad_dataset_fold_count_and_protocol_fail_before_training(tiny_root, tmp_path, capsys):
    assert main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a"), *TINY]) == 2
    assert "nowhere" in capsys.readouterr().err
    args = list(TINY)
    args[args.index("--folds") + 1] = "7"
    assert main(["--root", str(tiny_root), "--out", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err
    assert "bent_lead" in err or "cut_lead" in err
    assert not (tmp_path / "b" / "cells").exists()
    assert main(["--root", str(tiny_root), "--out", str(tmp_path / "c"), *TINY, "--selection", "best"]) == 2
    assert "protocol selection must be 'last' or 'val', got 'best'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--root", str(tiny_root), "--out", str(tmp_path / "d"), "--methods", "resnet"])
    assert "invalid choice: 'resnet'" in capsys.readouterr().err


def test_aggregation_without_partners_leaves_the_difference_empty():
    def cell(row, repeat, fold, value):
        return {"row": row, "method": row, "repeat": repeat, "fold": fold, "wall_time_s": 1.0,
                "test": {"balanced_accuracy": value, "per_class_recall": {"good": 1.0}, "confusion_matrix": [[1]]}}

    summary = aggregate(SCRATCH.methods, SCRATCH.ablations,
                        [cell("ce", 0, 0, 0.5), cell("ce", 0, 1, 0.7), cell("bcl", 1, 0, 0.9)], folds=5)
    assert summary["methods"]["bcl"]["vs_ce"]["n"] == 0 and summary["methods"]["bcl"]["vs_ce"]["mean"] is None
    assert summary["methods"]["ce"]["balanced_accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["reference"]["best_ce"] == "ce"


def test_report_of_an_unfinished_suite_says_how_many_cells_are_missing(tiny_root, finished, tmp_path):
    out, _ = finished
    copy, report = tmp_path / "suite", tmp_path / "results.md"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("runs"))
    planned = len(list((copy / "cells").glob("*/*.json")))
    (copy / "cells" / "main" / "ce__r0__f1.json").unlink()
    assert main(["--root", str(tiny_root), "--out", str(copy), *TINY, "--aggregate-only", "--report", str(report)]) == 0
    text = report.read_text()
    assert f"**Unfinished**: {planned - 1} of the {planned} cells this command plans are finished" in text
    assert "over all 24 images of the category" in text  # 12 good + 2 x 6 defects, though ce's repeat 0 is short


def test_headline_goes_into_a_page_between_its_markers_and_nowhere_else(tiny_root, finished, tmp_path, capsys):
    out, _ = finished
    copy, report, page = tmp_path / "suite", tmp_path / "docs" / "results_quick.md", tmp_path / "docs" / "results.md"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("runs"))
    begin, end = headline_markers("quick")
    page.parent.mkdir()
    page.write_text(f"# Two protocols\n\nhand text above\n{begin}\nstale table\n{end}\nhand text below\n")
    argv = ["--root", str(tiny_root), "--out", str(copy), *TINY, "--aggregate-only", "--report", str(report)]
    assert main([*argv, "--headline-into", str(page)]) == 0
    text = page.read_text()
    assert text.startswith(f"# Two protocols\n\nhand text above\n{begin}")
    assert text.endswith(f"{end}\nhand text below\n")
    assert "stale table" not in text and "[results_quick.md](results_quick.md)" in text
    headline = report.read_text().split("## Headline\n\n", 1)[1].split("\n\n", 1)[0]
    assert headline.startswith("| method") and headline in text  # the report's own table, to the digit

    page.write_text("no markers here\n")
    assert main([*argv, "--headline-into", str(page)]) == 2
    assert f"{page}: needs the line {begin!r} once" in capsys.readouterr().err
    assert page.read_text() == "no markers here\n"
    argv.remove("--report"), argv.remove(str(report))
    assert main([*argv, "--headline-into", str(page)]) == 2
    assert "--headline-into needs --report" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    (lambda cells: (cells / "main" / "ce__r0__f0.json").write_text("{not json"), "is damaged"),
    (lambda cells: shutil.copy(cells / "main" / "ce__r0__f0.json", cells / "main" / "ce__r5__f0.json"),
     "is not a main cell of this suite"),
    (lambda cells: (cells / "main" / "ce__r0__f1.json").write_text(json.dumps(
        {**json.loads((cells / "main" / "ce__r0__f1.json").read_text()), "protocol": {"image_size": 128}})),
     "copied from another suite"),
])
def test_damaged_or_foreign_cells_are_refused_naming_the_file(tiny_root, finished, tmp_path, capsys, damage, message):
    out, _ = finished
    copy = tmp_path / "suite"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("runs"))
    damage(copy / "cells")
    assert main(["--root", str(tiny_root), "--out", str(copy), *TINY, "--aggregate-only"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(copy / "cells" / "main") in err and "Traceback" not in err


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_workers_share_a_suite_through_claims_and_take_over_dead_ones(tiny_root, finished, capsys):
    out, _ = finished
    cells = out / "cells" / "main"
    live, stale = cells / "ce__r1__f0.json", cells / "focal__r1__f1.json"
    live.unlink()
    stale.unlink()
    live.with_suffix(".claim").write_text(str(os.getpid()))  # a live worker holds it
    stale.with_suffix(".claim").write_text(str(_dead_pid()))  # its worker died mid-cell
    reused = cells / "focal__r0__f0.json"
    reused.unlink()
    reused.with_suffix(".claim").write_text(str(os.getpid()))  # a live pid, but one that started after the claim
    os.utime(reused.with_suffix(".claim"), (1e9, 1e9))
    capsys.readouterr()
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY]) == 0
    assert "1 cells are other workers' of this suite; no report" in capsys.readouterr().out
    assert not live.exists() and live.with_suffix(".claim").exists()
    assert stale.exists() and not stale.with_suffix(".claim").exists()
    assert reused.exists() and not reused.with_suffix(".claim").exists()
    live.with_suffix(".claim").unlink()  # that worker finished elsewhere without writing: this one runs it now
    assert main(["--root", str(tiny_root), "--out", str(out), *TINY]) == 0
    assert live.exists() and "| CE (instance sampling)" in capsys.readouterr().out


def fake_runs(monkeypatch):
    """Replaces training by a record (and the checkpoint a probe reads); returns the list of cells trained."""
    ran = []

    def fake_run(suite_, phase, row, method, extra, repeat, fold, inner=None, stage1_dir=None):
        ran.append((phase, row, repeat, fold, inner))
        checkpoint = suite_.run_dir(phase, row, repeat, fold, inner) / "checkpoints" / "last.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b"")
        cell = {"phase": phase, "row": row, "method": method.name, "repeat": repeat, "fold": fold, "inner": inner,
                "overrides": list(extra), "protocol": suite_.protocol.as_dict(), "run_dir": "", "wall_time_s": 60.0,
                "test": {"balanced_accuracy": 0.5}}
        atomic_write_text(suite_.cell_path(phase, row, repeat, fold, inner), json.dumps(cell))
        return cell

    monkeypatch.setattr(schedule, "run_cell", fake_run)
    return ran


def tiny_suite(tmp_path, tiny_root, **protocol):
    settings = {"folds": 2, "repeats": 1, "inner_folds": 2, "epochs": 1, "probe_epochs": 1, **protocol}
    return Suite(tmp_path / "suite", str(tiny_root), None, Protocol("tiny", **settings))


def test_a_time_budget_stops_at_a_cell_boundary_and_the_next_sitting_continues(tiny_root, tmp_path, monkeypatch):
    suite = tiny_suite(tmp_path, tiny_root)
    ran = fake_runs(monkeypatch)
    # every cell takes 60 s, and time passes only as the records say: three cells fit in 3.5 minutes, a
    # fourth would end at 4 (the first is started with nothing to judge by, the others expected to take 60 s)
    now = [0.0]
    monkeypatch.setattr(schedule.time, "monotonic", lambda: now[0])
    real_record = schedule._Clock.record

    def record(self, cell):
        now[0] += cell["wall_time_s"]
        real_record(self, cell)

    monkeypatch.setattr(schedule._Clock, "record", record)
    progress = schedule.run_suite(suite, ["ce", "bcl", "bcl_probe"], stop_after_minutes=3.5)
    planned = 2 * 3 * 2 + 2 * 3  # tune: 2 methods x 3 points x 2 inner folds; main: 2 folds x 3 methods
    assert len(ran) == 3 and progress.left_for_time == planned - 3 and progress.elsewhere == 0
    first = {p: p.stat().st_mtime_ns for p in (suite.out / "cells").rglob("*.json")}
    assert not list((suite.out / "cells").rglob("*.claim"))
    progress = schedule.run_suite(suite, ["ce", "bcl", "bcl_probe"])  # the next sitting, no budget
    assert progress.left_for_time == 0 and len(ran) == planned
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in first.items())


def test_a_fresh_clone_retrains_the_encoder_a_missing_probe_needs_and_keeps_the_old_record(tiny_root, tmp_path,
                                                                                           monkeypatch):
    suite = tiny_suite(tmp_path, tiny_root)
    ran = fake_runs(monkeypatch)
    schedule.run_suite(suite, ["bcl", "bcl_probe"])
    # what a commit carries: the records, not the run folders; and a sitting that ended between bcl and its probe
    shutil.rmtree(suite.out / "runs")
    suite.cell_path("main", "bcl_probe", 0, 1).unlink()
    old = json.loads(suite.cell_path("main", "bcl", 0, 1).read_text())
    ran.clear()
    schedule.run_suite(suite, ["bcl", "bcl_probe"])
    assert ran == [("main", "bcl", 0, 1, None), ("main", "bcl_probe", 0, 1, None)]
    kept = list((suite.out / "cells" / "replaced").glob("bcl__r0__f1.*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == old
    assert suite.cell_path("main", "bcl", 0, 1).exists()


def test_a_probe_never_reads_a_stage1_checkpoint_another_worker_is_training(tiny_root, tmp_path, monkeypatch):
    suite = tiny_suite(tmp_path, tiny_root)
    ran = fake_runs(monkeypatch)
    claimed = suite.cell_path("main", "bcl", 0, 0).with_suffix(".claim")
    claimed.parent.mkdir(parents=True)
    claimed.write_text(str(os.getpid()))
    assert schedule.run_suite(suite, ["bcl", "bcl_probe"]).elsewhere == 2  # bcl r0 f0 and the probe that needs it
    main_runs = [r for r in ran if r[0] == "main"]
    assert main_runs == [("main", "bcl", 0, 1, None), ("main", "bcl_probe", 0, 1, None)]
    assert len([r for r in ran if r[0] == "tune"]) == 3 * 2  # tuning claims and releases its own cells
    assert not list((tmp_path / "suite" / "cells" / "tune").glob("*.claim"))


@pytest.mark.slow
def test_the_pretrained_protocol_end_to_end_with_its_frozen_baselines(tiny_root, tmp_path, capsys):
    out, report = tmp_path / "suite", tmp_path / "docs" / "results_pretrained.md"
    base = ["--root", str(tiny_root), "--out", str(out), "--protocol", "pretrained", "--folds", "2", "--repeats", "1",
            "--inner-folds", "2", "--epochs", "1", "--probe-epochs", "1", "--image-size", "32", "--batch-size", "8"]
    assert main([*base, "--methods", "bcl_probe", "frozen_knn", "--ablations", "--report", str(report)]) == 0
    names = sorted(p.name for p in (out / "cells" / "main").glob("*.json"))
    assert names == [f"{m}__r0__f{f}.json" for m in ("bcl", "bcl_probe", "frozen_probe") for f in (0, 1)]
    config = (out / "runs" / "main" / "frozen_probe" / "r0-f0" / "config.yaml").read_text()
    assert "weights: imagenet" in config and "normalization: inception" in config and "amp: 'off'" in config
    assert "encoder: efficientnet_lite0" in config and "finetune: false" in config

    cells = [json.loads(p.read_text()) for p in (out / "cells" / "main").glob("frozen_probe__*.json")]
    summary = json.loads((out / "results.json").read_text())["summary"]
    knn = summary["methods"]["frozen_knn"]
    assert knn["balanced_accuracy"]["mean"] == pytest.approx(np.mean([c["test"]["knn_balanced_accuracy"]
                                                                        for c in cells]))
    assert set(knn["per_class_recall"]) == {"good", "bent_lead", "cut_lead"} and knn["cells"] == [[0, 0], [0, 1]]
    assert "vs_ce" not in knn  # no CE row was run
    text = report.read_text()
    assert "from its ImageNet weights (`imagenet`, images normalised as `inception`)" in text
    assert "| ImageNet features, frozen → kNN" in text and "| ImageNet features, frozen → linear probe" in text
    assert set(json.loads((out / "suite.json").read_text())["settings"]["grid"]) == set(DESIGNS["pretrained"].methods)
    capsys.readouterr()
    # a method of the other design is refused by name
    assert main([*base, "--methods", "focal"]) == 2
    assert "unknown method 'focal' for protocol 'pretrained'" in capsys.readouterr().err
