"""What the suite writes: tables, figures, the embedding map and the markdown report."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from bcl.checkpoints import atomic_write_text
from bcl.data import MVTecAD, stratified_kfold
from bcl.metrics import markdown_table, replace_marked

from .cells import Suite, final_checkpoint
from .definitions import DESIGNS, REPORTED_METRICS, Lever, Method
from .statistics import mean_std

__all__ = ["ablation_table", "recall_table", "results_table", "tuning_table", "write_embedding_map",
           "write_figures", "write_report", "write_results"]


def _pct(stat: Optional[Dict[str, Any]]) -> str:
    return "–" if not stat or stat["mean"] is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def _diff(stat: Optional[Dict[str, Any]]) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat["low"] is None:
        return f"{100 * stat['mean']:+.1f}"
    return f"{100 * stat['mean']:+.1f} [{100 * stat['low']:+.1f}, {100 * stat['high']:+.1f}]"


def results_table(summary: Dict[str, Any], methods: Dict[str, Method]) -> str:
    """The headline: one row per reported method."""
    reported = {n: e for n, e in summary["methods"].items() if methods[n].reported}
    best = summary["reference"].get("best_ce")
    header = ["method", "balanced acc.", "Δ vs CE [95 % CI]", f"Δ vs best CE ({best}) [95 % CI]", "macro-F1",
              "AUROC good/defect", "kNN AUROC", "kNN bal. acc.", "min per cell", "cells"]
    rows = []
    for name, entry in reported.items():
        rows.append([methods[name].label, _pct(entry["balanced_accuracy"]),
               "(reference)" if name == "ce" else _diff(entry.get("vs_ce")),
               "(reference)" if name == best else _diff(entry.get("vs_best_ce")),
               _pct(entry["macro_f1"]), _pct(entry["good_vs_defect_auroc"]), _pct(entry["knn_good_vs_defect_auroc"]),
               _pct(entry["knn_balanced_accuracy"]), f"{entry['wall_time_s']['mean'] / 60:.1f}",
               str(len(entry["cells"]))])
    return markdown_table(header, rows)


def recall_table(summary: Dict[str, Any], methods: Dict[str, Method]) -> str:
    reported = {n: e for n, e in summary["methods"].items() if methods[n].reported and e["per_class_recall"]}
    if not reported:
        return ""
    classes = list(next(iter(reported.values()))["per_class_recall"])
    return markdown_table(["method", *(f"recall {k}" for k in classes)],
                          [[methods[name].label, *(_pct(entry["per_class_recall"].get(k)) for k in classes)]
                           for name, entry in reported.items()])


def ablation_table(summary: Dict[str, Any], methods: Dict[str, Method], levers: Dict[str, Lever]) -> str:
    if not summary["ablations"]:
        return ""
    header = ["lever (switched on top of the method's chosen point)", "method", "balanced acc.", "same cells, as tuned",
              "Δ [95 % CI]", "AUROC good/defect", "min per cell", "cells"]
    rows = []
    for name, entry in summary["ablations"].items():
        lever = levers[name]
        rows.append([
            lever.what, methods[lever.method].label, _pct(entry["balanced_accuracy"]),
            _pct(entry["base"]["balanced_accuracy"]) if entry["base"] else "–", _diff(entry["vs_base"]),
            _pct(entry["good_vs_defect_auroc"]), f"{entry['wall_time_s']['mean'] / 60:.1f}", str(len(entry["cells"]))])
    return markdown_table(header, rows)


def tuning_table(tune_cells: Sequence[Dict[str, Any]], chosen: Dict[str, int], methods: Dict[str, Method]) -> str:
    rows = []
    for name, point in chosen.items():
        method = methods[name]
        if len(method.grid) == 1:
            continue
        for index, overrides in enumerate(method.grid):
            mine = [c["test"]["balanced_accuracy"] for c in tune_cells if c["row"] == f"{name}@{index}"]
            rows.append([method.label, ", ".join(f"`{o}`" for o in overrides) or "as shipped", _pct(mean_std(mine)),
                         str(len(mine)), "**yes**" if index == point else ""])
    return markdown_table(["method", "grid point", "inner-fold balanced acc.", "inner folds", "chosen"], rows)


def write_results(out: Path, summary: Dict[str, Any], cells: Sequence[Dict[str, Any]],
                  methods: Dict[str, Method]) -> None:
    """``results.json`` (summary + cells), ``results_cells.csv`` (one row per cell) and ``results.md``."""
    atomic_write_text(out / "results.json", json.dumps({"summary": summary, "cells": cells}, indent=1))
    rows = []
    for cell in cells:
        row = {k: cell[k] for k in ("phase", "row", "method", "repeat", "fold", "inner", "wall_time_s")}
        row.update({m: cell["test"].get(m) for m in REPORTED_METRICS})
        row.update({f"recall_{k}": v for k, v in cell["test"].get("per_class_recall", {}).items()})
        rows.append(row)
    if rows:
        names = list(dict.fromkeys(k for row in rows for k in row))
        with open(out / "results_cells.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write_text(out / "results.md", results_table(summary, methods) + "\n")


def write_figures(summary: Dict[str, Any], main_cells: Sequence[Dict[str, Any]], class_names: Sequence[str],
                  folder: Path, methods: Dict[str, Method]) -> List[Path]:
    """Writes the per-class recall figure and, per method, a confusion matrix summed over cells.

    The recall figure shows one point per cell (recalls on 2-image classes take few values) with the mean marked.

    Returns:
        The paths of the PNG files written under ``folder``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bcl.tensorboard import confusion_matrix_figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    reported = [n for n in summary["methods"] if methods[n].reported and summary["methods"][n]["per_class_recall"]]
    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(reported), 1)
    jitter = np.random.default_rng(0)
    for i, name in enumerate(reported):
        colour = f"C{i}"
        for k, class_name in enumerate(class_names):
            values = [100 * c["test"]["per_class_recall"][class_name] for c in main_cells
                      if c["row"] == name and c["test"]["per_class_recall"].get(class_name) is not None]
            x = k + i * width
            axes.scatter(x + jitter.uniform(-width / 4, width / 4, len(values)), values, s=9, color=colour, alpha=0.45,
                         label=methods[name].label if k == 0 else None)
            if values:
                axes.plot([x - width / 2.5, x + width / 2.5], [np.mean(values)] * 2, color=colour, linewidth=2.5)
    axes.set_xticks(np.arange(len(class_names)) + width * (len(reported) - 1) / 2, class_names)
    axes.set_ylabel("test recall, % (a point per cell; bar = mean)")
    axes.set_ylim(-5, 125)  # headroom for the legend above the points
    axes.legend(fontsize=7, ncol=4, loc="upper center")
    figure.tight_layout()
    path = folder / "results_per_class_recall.png"
    figure.savefig(path, dpi=110)
    written.append(path)
    for name in reported:
        if "confusion_matrix" not in summary["methods"][name]:
            continue
        fig = confusion_matrix_figure(np.asarray(summary["methods"][name]["confusion_matrix"]), class_names,
                                      title=f"{methods[name].label}: test, summed over cells")
        path = folder / f"results_confusion_{name}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def write_embedding_map(suite: Suite, folder: Path, repeat: int = 0, fold: int = 0) -> Optional[Path]:
    """Writes a 2-D t-SNE map of the encoder features of every image, one panel per method of the design's map.

    The panels show one cell's encoders, each fed as it was trained (its image size and normalisation);
    the cell's training images are dots, its test images crosses.

    Returns:
        The path of the PNG written under ``folder``, or None when no method has a final checkpoint for the cell.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    from bcl.engine import extract
    from bcl.stages import load_trained_encoder

    available = [m for m in DESIGNS[suite.protocol.design].map_methods
                 if final_checkpoint(suite.run_dir("main", m, repeat, fold), suite.protocol).exists()]
    if not available:
        return None
    dataset = MVTecAD(suite.root, category=suite.category, image_size=suite.protocol.image_size)
    test_positions = stratified_kfold(dataset, n_splits=suite.protocol.folds,
                                      seed=suite.protocol.split_seed + repeat)[fold].test_idx
    in_test = np.zeros(len(dataset), dtype=bool)
    in_test[test_positions] = True
    figure = Figure(figsize=(5.5 * len(available), 5))
    FigureCanvasAgg(figure)
    for panel, name in enumerate(available, start=1):
        encoder, cfg = load_trained_encoder(
            str(final_checkpoint(suite.run_dir("main", name, repeat, fold), suite.protocol)),
            setting=f"the {name} checkpoint",
        )
        features = extract(_FeaturesOnly(encoder), dataset, cfg.data.image_size, torch.device("cpu"),
                           normalization=cfg.data.normalization)["features"].numpy()
        points = TSNE(n_components=2, perplexity=min(30, len(features) - 1), init="pca",
                      random_state=0).fit_transform(features)
        axes = figure.add_subplot(1, len(available), panel)
        labels = np.asarray(dataset.targets)
        for k, class_name in enumerate(dataset.class_names):
            for held_out, marker in ((False, "o"), (True, "x")):
                chosen = (labels == k) & (in_test == held_out)
                axes.scatter(points[chosen, 0], points[chosen, 1], s=(6 if k == 0 else 22) * (2 if held_out else 1),
                             marker=marker, color=f"C{k}", alpha=0.5 if k == 0 else 0.9,
                             label=f"{class_name} ({'test' if held_out else 'train'})")
        axes.set_title(f"{suite.methods[name].label}: encoder of repeat {repeat}, fold {fold}\n"
                       "dots: its training images, crosses: its test images", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results_tsne.png"
    figure.savefig(path, dpi=100)
    return path


class _FeaturesOnly(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.encoder(images)
        return {"features": features, "logits": features[:, :1]}


REFERENCE_NUMBERS = """\
These come from other protocols and are **not comparable** to the table above; they are here so a
reader can place it.

- **Defect type on MVTec transistor**: the only published defect-*type* figure we know of is 74 %
  (a GAN-similarity method); anomaly detectors with ImageNet features separate good from defective at
  image AUROC 0.999 (PatchCore, WideResNet-50). Both use pretrained features.
- **Reference coursework** (the project this library grew out of): best 91.67 % *validation accuracy*
  on a 12-image validation set, ImageNet-pretrained ResNet-50 fine-tuned with Adam on MVTec transistor
  subsampled 2 : 1 : 1 : 1 : 1 (good : each defect). Differs from ours: a ResNet-50 with torchvision's
  ImageNet weights (none can be downloaded here), plain accuracy on 12 images (one image is 8.3 points) rather
  than balanced accuracy over repeated stratified folds of the full long-tailed set, and selection on the
  reported split. Its five runs ship as `configs/coursework_*.yaml`; they need the ImageNet weights.
- **BCL paper** (Zhu et al., CVPR 2022), as listed on Papers with Code and its benchmark pages:
  CIFAR-100-LT top-1 53.9 % (imbalance 100) and 56.6 % (imbalance 50) with ResNet-32; iNaturalist 2018
  top-1 71.8 % with ResNet-50. Differs from ours: natural-image benchmarks with 100 to 8,142 classes and
  thousands of images, hundreds of epochs on GPUs, and top-1 accuracy on balanced test sets; here, five
  classes, 313 images of one industrial object, small defects, a short CPU budget.
"""


def _num_images(cells: Sequence[Dict[str, Any]]) -> int:
    """The test parts of one row's folds in one repeat partition the dataset.

    Counted over the row and repeat with the most finished folds, so an unfinished suite is not read as a
    smaller dataset.
    """
    sizes: Dict[Tuple[str, int], Dict[int, int]] = {}
    for c in cells:
        sizes.setdefault((c["row"], c["repeat"]), {})[c["fold"]] = sum(c["test"]["per_class_support"].values())
    return sum(max(sizes.values(), key=len).values())


def _unfinished(finished: Optional[Tuple[int, int]]) -> bool:
    """Whether (finished, planned) cell records say the suite has cells left."""
    return finished is not None and finished[0] < finished[1]


def write_report(path: Path, suite: Suite, summary: Dict[str, Any], cells: Dict[str, List[Dict[str, Any]]],
                 chosen: Dict[str, int], figures: Sequence[Path], machine: str, command: str,
                 reading: str = "", finished: Optional[Tuple[int, int]] = None) -> None:
    """The markdown report: headline, recalls, ablation, tuning, figures, protocol, machine, wall time.

    ``finished``: (finished, planned) cell records of the suite the command runs; a report of an unfinished
    suite says so at the top, so no partial row is read as a final one.
    """
    relative = [os.path.relpath(f, path.parent) for f in figures]
    every = [c for phase in cells.values() for c in phase]
    minutes = {phase: sum(c["wall_time_s"] for c in phase_cells) / 60 for phase, phase_cells in cells.items()}
    p = suite.protocol.as_dict()
    selection = ("trained on the whole training part of each cell for a fixed budget and evaluated once, at "
                 "the last epoch (no epoch or checkpoint is chosen on a few images)" if p["selection"] == "last"
                 else "the epoch chosen on a stratified validation part carved from each cell's training part")
    if p["weights"] == "none":
        start = f"{p['encoder']} from scratch (no pretrained weights)"
        title = "# Results: BCL against cross-entropy baselines on MVTec AD transistor"
    else:
        start = (f"{p['encoder']} from its ImageNet weights (`{p['weights']}`, images normalised as "
                 f"`{p['normalization']}`), the same starting point for every method")
        title = ("# Results on ImageNet features: BCL against cross-entropy and frozen-feature baselines on MVTec AD "
                 "transistor")
    precision = f"; `train.amp={p['amp']}` for every cell" if p["amp"] is not None else ""
    lines = [
        title,
        "",
        ("Generated by `python benchmarks/mvtec_suite.py`; every number below comes from the cells it ran. "
         "Do not edit by"),
        "hand: rerun the command (finished cells are kept) to regenerate.",
        "",
        f"**Protocol `{p['name']}`**: {start}, {p['image_size']} px{precision}, "
        f"a budget of {p['epochs']} epochs for every trained model, scaled only where a method's tuning chose a "
        f"longer schedule (below), {p['probe_epochs']} for linear probes on a frozen encoder; batch "
        f"{p['batch_size']}; stratified {p['folds']}-fold cross-validation repeated {p['repeats']} "
        f"times with different fold assignments (split seeds {p['split_seed']}..{p['split_seed'] + p['repeats'] - 1}) "
        f"over all {_num_images(cells['main'])} images of the category (train and test pooled, the natural long "
        f"tail); the same cells for every method; {selection}. Each method's settings were chosen on "
        f"{p['inner_folds']} inner folds of repeat 0, fold 0's training part, from a grid of the same size for "
        "every trained method (below); the outer test parts were never used for a choice.",
        "",
        f"**Command**: `{command}`",
        "",
        f"**Machine**: {machine}. **Training time**: {sum(minutes.values()):.0f} min for {len(every)} runs "
        f"({', '.join(f'{phase} {m:.0f} min' for phase, m in minutes.items())}), "
        f"{sum(minutes.values()) / max(len(every), 1):.1f} min a run on average (per method: the table's "
        "\"min per cell\").",
        "",
        *([f"**Unfinished**: {finished[0]} of the {finished[1]} cells this command plans are finished; a row with "
           f"fewer than {p['repeats'] * p['folds']} cells is partial, and its Δ is over the cells it shares with "
           "CE. Rerun the command to continue.", ""] if _unfinished(finished) else []),
        "## Headline",
        "",
        results_table(summary, suite.methods),
        "",
        "Balanced accuracy is the mean per-class recall (the headline: 87 % of the images are `good`, so plain",
        "accuracy rewards ignoring defects); mean ± sample standard deviation over cells. Δ: the mean per-cell",
        "difference (percentage points) to the CE baseline and to the best CE row, on the same cells, with a 95 %",
        "interval from the corrected resampled t-test (Nadeau & Bengio 2003: the variance of the mean difference is",
        "inflated by 1/n + n_test/n_train, since cells share training images; the plain t-interval would be",
        "narrower). An interval that excludes 0 is a difference these cells support. AUROC good/defect is from",
        "the classifier's probability of `good`; kNN AUROC scores each test image by its cosine similarity to the",
        "nearest `good` training embeddings (k = 20, faiss).",
        "",
        "## Per-class recall",
        "",
        recall_table(summary, suite.methods),
        "",
    ]
    if summary["ablations"]:
        lines += ["## Ablation: what each lever buys", "",
                  f"Over the {p['folds']} cells of repeat 0; Δ is paired with the method's own main cells of "
                  "repeat 0.", "",
                  ablation_table(summary, suite.methods, suite.ablations), ""]
    lines += ["## Tuning (inner folds only)", "", tuning_table(cells.get("tune", []), chosen, suite.methods), ""]
    if reading:
        lines += ["## Reading", "", reading.strip(), ""]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in relative]
    lines += ["", "## Reported elsewhere (different protocols)", "", REFERENCE_NUMBERS]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def headline_markers(protocol: str) -> Tuple[str, str]:
    """The two lines of a page between which ``--headline-into`` puts the protocol's headline."""
    return f"<!-- headline of protocol {protocol}: begin -->", f"<!-- headline of protocol {protocol}: end -->"


def write_headline_into(page: Path, report: Path, suite: Suite, summary: Dict[str, Any], command: str,
                        finished: Optional[Tuple[int, int]] = None) -> None:
    """Puts the headline table of ``report`` into ``page`` between the protocol's two marker lines.

    A page that sets two protocols side by side then repeats the generated table, never a hand copy.

    Raises:
        ValueError: ``page`` lacks the markers, or has them more than once or out of order
            (:func:`bcl.metrics.replace_marked`).
    """
    link = os.path.relpath(report, page.parent)
    unfinished = f" **Unfinished**: {finished[0]} of {finished[1]} cells." if _unfinished(finished) else ""
    block = "\n".join(["", f"Generated with the report [{report.name}]({link}) by `{command}`.{unfinished}", "",
                       results_table(summary, suite.methods), ""])
    atomic_write_text(page, replace_marked(page.read_text(), headline_markers(suite.protocol.name), block, page))
