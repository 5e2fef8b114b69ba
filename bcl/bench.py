"""The comparison suite: methods × stratified folds × seeds on an MVTec AD category, resumable.

    python -m bcl.bench --root $BCL_MVTEC_ROOT --protocol quick --out results/quick --report docs/results.md

Each (method, fold, seed) cell trains from the method's shipped config with the protocol's encoder,
resolution and epoch budget, and leaves ``cells/<method>__fold<f>__seed<s>.json``. A rerun skips
finished cells, so the suite can be spread over several sittings or machines; ``--methods`` runs part
of it. Aggregation (mean ± sample std over cells), the CSV/JSON/markdown results and the figures are
rebuilt from whatever cells exist.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

import bcl
from bcl.config import LinearConfig, SupConConfig, load_config
from bcl.data import MVTecAD, stratified_kfold
from bcl.runs import atomic_write_text

__all__ = ["PROTOCOLS", "METHODS", "Protocol", "run_suite", "aggregate", "main"]

logger = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    stage: str  # "supcon" (train_supcon.py) or "linear" (train_linear.py)
    config: str
    needs: Optional[str] = None  # the stage-1 method whose encoder this one probes
    reported: bool = True


METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("ce", "CE (instance sampling)", "linear", "mvtec_ce.yaml"),
    Method("ce_classaware", "CE + class-aware sampler", "linear", "mvtec_ce_classaware.yaml"),
    Method("ce_logitadjusted", "CE + logit adjustment", "linear", "mvtec_ce_logitadjusted.yaml"),
    Method("focal", "Focal loss", "linear", "mvtec_focal.yaml"),
    Method("supcon", "SupCon pre-training (kNN only)", "supcon", "mvtec_supcon.yaml", reported=False),
    Method("supcon_probe", "SupCon → linear probe", "linear", "mvtec_linear.yaml", needs="supcon"),
    Method("bcl", "BCL (joint, own classifier)", "supcon", "mvtec_bcl.yaml"),
    Method("bcl_probe", "BCL → linear probe", "linear", "mvtec_linear.yaml", needs="bcl"),
]}


@dataclass(frozen=True)
class Protocol:
    """Settings shared by every method, so the comparison is fair."""

    name: str
    encoder: str = "resnet18"
    image_size: int = 64
    epochs: int = 30
    probe_epochs: int = 15
    batch_size: int = 32
    folds: int = 5
    seeds: Sequence[int] = (0,)

    def as_dict(self) -> Dict[str, Any]:
        values = asdict(self)
        values["seeds"] = list(self.seeds)
        return values


PROTOCOLS = {
    "quick": Protocol("quick"),  # sized for a 2-core CPU
    "full": Protocol("full", image_size=128, epochs=100, probe_epochs=30, batch_size=64, seeds=(0, 1, 2)),  # a GPU
}

REPORTED_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "good_vs_defect_auroc", "knn_balanced_accuracy",
                    "knn_good_vs_defect_auroc")


@dataclass
class Suite:
    out: Path
    root: str
    category: Optional[str]
    protocol: Protocol
    class_names: List[str] = field(default_factory=list)

    def cell_path(self, method: str, fold: int, seed: int) -> Path:
        return self.out / "cells" / f"{method}__fold{fold}__seed{seed}.json"

    def run_dir(self, method: str, fold: int, seed: int) -> Path:
        return self.out / "runs" / method / f"fold{fold}-seed{seed}"


def _settings(suite: Suite) -> Dict[str, Any]:
    return {"protocol": suite.protocol.as_dict(), "root": str(Path(suite.root).resolve()), "category": suite.category}


def _check_or_write_settings(suite: Suite) -> None:
    """Refuses to mix cells of different suite configurations in one results folder."""
    path = suite.out / "suite.json"
    settings = _settings(suite)
    if path.exists():
        saved = json.loads(path.read_text())
        differing = _differences(saved.get("settings", {}), settings)
        if differing:
            raise ValueError(
                f"{suite.out} holds results of a different suite configuration ({'; '.join(differing)}); "
                "use another --out folder or the same settings"
            )
        return
    suite.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"settings": settings, "bcl_version": bcl.__version__}, indent=2))


def _differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = "") -> List[str]:
    found = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return found


def _cell_config(suite: Suite, method: Method, fold: int, seed: int):
    p = suite.protocol
    probe = method.needs is not None
    overrides = [
        f"data.root={suite.root}", f"data.image_size={p.image_size}", f"data.n_folds={p.folds}",
        f"data.fold={fold}", f"data.split_seed={seed}", f"run.seed={seed}", f"optim.batch_size={p.batch_size}",
        f"optim.epochs={p.probe_epochs if probe else p.epochs}", "eval.projector_per_class=10", "run.progress=false",
        f"run.output_dir={suite.run_dir(method.name, fold, seed).parent}", f"run.name=fold{fold}-seed{seed}",
        "run.overwrite=true",  # a folder without a finished cell is an interrupted try: moved aside, kept
    ]
    overrides.append(f"data.category={suite.category}" if suite.category else "data.category=null")
    if probe:
        checkpoint = suite.run_dir(method.needs, fold, seed) / "checkpoints" / "best.pt"
        overrides.append(f"model.stage1_checkpoint={checkpoint}")
    else:
        overrides.append(f"model.encoder={p.encoder}")
    schema = SupConConfig if method.stage == "supcon" else LinearConfig
    return load_config(schema, CONFIGS / method.config, overrides)


def _run_cell(suite: Suite, method: Method, fold: int, seed: int) -> Dict[str, Any]:
    from bcl.stages import run_linear, run_supcon  # imported late: the CLI's --help stays fast

    cfg = _cell_config(suite, method, fold, seed)
    started = time.perf_counter()
    result = (run_supcon if method.stage == "supcon" else run_linear)(cfg, config_stem=method.name)
    cell = {
        "method": method.name, "fold": fold, "seed": seed, "run_dir": str(result.run_dir),
        "wall_time_s": round(time.perf_counter() - started, 2), "val": result.metrics["val"],
        "test": result.metrics["test"], "selected_epoch": result.metrics["selected_epoch"],
    }
    atomic_write_text(suite.cell_path(method.name, fold, seed), json.dumps(cell, indent=1))
    return cell


def _with_prerequisites(names: Iterable[str]) -> List[str]:
    ordered: List[str] = []
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
        needs = METHODS[name].needs
        for item in ([needs] if needs else []) + [name]:
            if item not in ordered:
                ordered.append(item)
    return ordered


def run_suite(suite: Suite, methods: Sequence[str]) -> List[Dict[str, Any]]:
    """Runs every missing cell of ``methods`` (and what they depend on); returns the new cells."""
    dataset = MVTecAD(suite.root, category=suite.category, image_size=suite.protocol.image_size)
    suite.class_names = dataset.class_names
    for seed in suite.protocol.seeds:  # a fold count too large for the smallest class fails here, not mid-suite
        stratified_kfold(dataset, n_splits=suite.protocol.folds, seed=seed)
    _check_or_write_settings(suite)
    done = []
    order = _with_prerequisites(methods)
    cells = [(m, f, s) for s in suite.protocol.seeds for f in range(suite.protocol.folds) for m in order]
    for index, (name, fold, seed) in enumerate(cells, start=1):
        if suite.cell_path(name, fold, seed).exists():
            logger.info("[%d/%d] %s fold %d seed %d: done before, skipped", index, len(cells), name, fold, seed)
            continue
        logger.info("[%d/%d] %s fold %d seed %d", index, len(cells), name, fold, seed)
        done.append(_run_cell(suite, METHODS[name], fold, seed))
    return done


def _read_cells(out: Path) -> List[Dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def _mean_std(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    array = np.asarray(present, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array)}


def aggregate(cells: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per method: mean ± sample std over its cells of the headline metrics, per-class recall and wall time."""
    summary: Dict[str, Dict[str, Any]] = {}
    for name in METHODS:
        mine = [c for c in cells if c["method"] == name]
        if not mine:
            continue
        tests = [c["test"] for c in mine]
        entry: Dict[str, Any] = {m: _mean_std([t.get(m) for t in tests]) for m in REPORTED_METRICS}
        # A contrastive-only stage has no classifier: kNN metrics but no recall or confusion matrix.
        classes = list(tests[0].get("per_class_recall", {}))
        entry["per_class_recall"] = {k: _mean_std([t["per_class_recall"].get(k) for t in tests]) for k in classes}
        if "confusion_matrix" in tests[0]:
            entry["confusion_matrix"] = np.sum([t["confusion_matrix"] for t in tests], axis=0).tolist()
        entry["wall_time_s"] = _mean_std([c["wall_time_s"] for c in mine])
        entry["cells"] = sorted((c["fold"], c["seed"]) for c in mine)
        summary[name] = entry
    return summary


def _pct(stat: Dict[str, Any]) -> str:
    return "–" if stat["mean"] is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def results_table(summary: Dict[str, Dict[str, Any]]) -> str:
    first = next(entry for name, entry in summary.items() if METHODS[name].reported)
    defects = [k for k in first["per_class_recall"] if k != "good"]
    header = (["method", "balanced acc.", "macro-F1"] + [f"recall {d}" for d in defects]
              + ["AUROC good/defect", "kNN bal. acc.", "kNN AUROC", "minutes per cell", "cells"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary.items():
        if not METHODS[name].reported:
            continue
        row = [METHODS[name].label, _pct(entry["balanced_accuracy"]), _pct(entry["macro_f1"])]
        row += [_pct(entry["per_class_recall"][d]) for d in defects]
        row += [_pct(entry["good_vs_defect_auroc"]), _pct(entry["knn_balanced_accuracy"]),
                _pct(entry["knn_good_vs_defect_auroc"]), f"{entry['wall_time_s']['mean'] / 60:.1f}",
                str(len(entry["cells"]))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_results(out: Path, summary: Dict[str, Dict[str, Any]], cells: Sequence[Dict[str, Any]]) -> None:
    """``results.json`` (summary + cells), ``results_cells.csv`` (one row per cell) and ``results.md``."""
    atomic_write_text(out / "results.json", json.dumps({"summary": summary, "cells": cells}, indent=1))
    rows = []
    for cell in cells:
        row = {"method": cell["method"], "fold": cell["fold"], "seed": cell["seed"], "wall_time_s": cell["wall_time_s"]}
        row.update({m: cell["test"].get(m) for m in REPORTED_METRICS})
        row.update({f"recall_{k}": v for k, v in cell["test"].get("per_class_recall", {}).items()})
        rows.append(row)
    if rows:
        with open(out / "results_cells.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    atomic_write_text(out / "results.md", results_table(summary) + "\n")


def write_figures(summary: Dict[str, Dict[str, Any]], class_names: Sequence[str], folder: Path) -> List[Path]:
    """Per-class recall bars per method and a confusion matrix (summed over cells) per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bcl.tensorboard import confusion_matrix_figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    reported = [n for n in summary if METHODS[n].reported]
    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(reported), 1)
    for i, name in enumerate(reported):
        recall = summary[name]["per_class_recall"]
        means = [100 * (recall[k]["mean"] or 0) for k in class_names]
        stds = [100 * (recall[k]["std"] or 0) for k in class_names]
        axes.bar(np.arange(len(class_names)) + i * width, means, width, yerr=stds, capsize=2, label=METHODS[name].label)
    axes.set_xticks(np.arange(len(class_names)) + width * (len(reported) - 1) / 2, class_names)
    axes.set_ylabel("test recall, % (mean ± std over cells)")
    axes.set_ylim(0, 135)  # headroom for the legend above the bars
    axes.legend(fontsize=7, ncol=4, loc="upper center")
    figure.tight_layout()
    path = folder / "results_per_class_recall.png"
    figure.savefig(path, dpi=110)
    written.append(path)
    for name in reported:
        fig = confusion_matrix_figure(np.asarray(summary[name]["confusion_matrix"]), class_names,
                                      title=f"{METHODS[name].label}: test, summed over cells")
        path = folder / f"results_confusion_{name}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def write_embedding_map(suite: Suite, methods: Sequence[str], folder: Path, fold: int = 0, seed: int = 0) -> Optional[Path]:
    """A 2-D t-SNE map of the encoder features of every image, one panel per method (one fold's encoders)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    from bcl.engine import extract
    from bcl.models import Encoder
    from bcl.runs import load_checkpoint_file

    available = [m for m in methods if (suite.run_dir(m, fold, seed) / "checkpoints" / "best.pt").exists()]
    if not available:
        return None
    dataset = MVTecAD(suite.root, category=suite.category, image_size=suite.protocol.image_size)
    figure = Figure(figsize=(5.5 * len(available), 5))
    FigureCanvasAgg(figure)
    for panel, name in enumerate(available, start=1):
        checkpoint = load_checkpoint_file(suite.run_dir(name, fold, seed) / "checkpoints" / "best.pt")
        model_cfg = checkpoint["config"]["model"]
        encoder = Encoder(model_cfg.get("encoder", suite.protocol.encoder), model_cfg.get("small_image_stem", False))
        encoder.load_state_dict({k[len("encoder."):]: v for k, v in checkpoint["model"].items() if k.startswith("encoder.")})
        wrapper = _FeaturesOnly(encoder)
        features = extract(wrapper, dataset, suite.protocol.image_size, torch.device("cpu"))["features"].numpy()
        points = TSNE(n_components=2, perplexity=min(30, len(features) - 1), init="pca", random_state=0).fit_transform(features)
        axes = figure.add_subplot(1, len(available), panel)
        labels = np.asarray(dataset.targets)
        for k, class_name in enumerate(dataset.class_names):
            chosen = labels == k
            axes.scatter(points[chosen, 0], points[chosen, 1], s=6 if k == 0 else 22, label=class_name,
                         alpha=0.5 if k == 0 else 0.9)
        axes.set_title(f"{METHODS[name].label}: encoder of fold {fold}, seed {seed}; all images", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.legend(fontsize=7)
    figure.tight_layout()
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

- **Reference coursework** (the project this library grew out of): best 91.67 % *validation accuracy*
  on a 12-image validation set, ImageNet-pretrained ResNet-50 fine-tuned with Adam on MVTec transistor
  subsampled 2 : 1 : 1 : 1 : 1 (good : each defect). Differs from ours: ImageNet weights (we train from
  scratch: none can be downloaded here), plain accuracy on 12 images (one image is 8.3 points) rather
  than balanced accuracy over five stratified folds of the full long-tailed set, and selection on the
  reported split. Its five runs ship as `configs/coursework_*.yaml`; they need the ImageNet weights.
- **BCL paper** (Zhu et al., CVPR 2022), as listed on Papers with Code and its benchmark pages:
  CIFAR-100-LT top-1 53.9 % (imbalance 100) and 56.6 % (imbalance 50) with ResNet-32; iNaturalist 2018
  top-1 71.8 % with ResNet-50. Differs from ours: natural-image benchmarks with 100 to 8,142 classes and
  thousands of images, hundreds of epochs on GPUs, and top-1 accuracy on balanced test sets; here, five
  classes, 313 images of one industrial object, small defects, a short CPU budget.
"""


def _num_images(cells: Sequence[Dict[str, Any]]) -> int:
    """The test parts of one method's folds for one seed partition the dataset."""
    first = cells[0]
    return sum(sum(c["test"]["per_class_support"].values()) for c in cells
               if c["method"] == first["method"] and c["seed"] == first["seed"])


def write_report(path: Path, suite: Suite, summary: Dict[str, Dict[str, Any]], cells: Sequence[Dict[str, Any]],
                 figures: Sequence[Path], machine: str, command: str, reading: str = "") -> None:
    """``docs/results.md``: the table, figures, protocol, machine, wall time and reference numbers."""
    relative = [os.path.relpath(f, path.parent) for f in figures]
    total_minutes = sum(c["wall_time_s"] for c in cells) / 60
    protocol = suite.protocol.as_dict()
    lines = [
        "# Results: BCL against cross-entropy baselines on MVTec AD transistor",
        "",
        "Generated by `python -m bcl.bench`; every number below comes from the cells it ran. Do not edit by",
        "hand: rerun the command (finished cells are kept) to regenerate.",
        "",
        f"**Protocol `{suite.protocol.name}`**: {protocol['encoder']} from scratch (no pretrained weights), "
        f"{protocol['image_size']} px, {protocol['epochs']} epochs for every trained model "
        f"({protocol['probe_epochs']} for linear probes on a frozen stage-1 encoder), global batch "
        f"{protocol['batch_size']}, SGD with warmup and cosine decay, the same augmentations for every "
        f"method; stratified {protocol['folds']}-fold cross-validation x seeds {protocol['seeds']} over all "
        f"{_num_images(cells)} images of the category (train and test pooled, the natural long tail). "
        "Each cell selects its epoch on "
        "a stratified validation part carved from the fold's training part and is evaluated once on the "
        "fold's test part. Mean ± sample standard deviation over cells.",
        "",
        f"**Command**: `{command}`",
        "",
        f"**Machine**: {machine}. **Training time**: {total_minutes:.0f} min for {len(cells)} cells.",
        "",
        results_table(summary),
        "",
        "Balanced accuracy is the mean per-class recall (the headline: 87 % of the images are `good`, so",
        "plain accuracy rewards ignoring defects). AUROC is good-vs-defect from the classifier's",
        "probabilities; kNN columns use the encoder features of the training images (faiss, cosine, k = 20).",
        "",
    ]
    if reading:
        lines += ["## Reading", "", reading.strip(), ""]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in relative]
    lines += ["", "## Reported elsewhere (different protocols)", "", REFERENCE_NUMBERS]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def reproduce_command(argv: Sequence[str]) -> str:
    """The command that reruns the suite and rewrites the report (without this sitting's extras)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--aggregate-only":
            continue
        elif token == "--reading":
            skip = True
        else:
            kept.append(token)
    prefix = [] if "--root" in kept else ["BCL_MVTEC_ROOT=/path/to/mvtec_ad/transistor"]
    return " ".join([*prefix, "python -m bcl.bench", *kept])


def machine_description() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, bcl {bcl.__version__}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bcl.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.environ.get("BCL_MVTEC_ROOT"),
                        help="MVTec AD root (with --category) or a category folder; default $BCL_MVTEC_ROOT")
    parser.add_argument("--category", default="transistor")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="quick")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/<protocol>)")
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if METHODS[m].reported],
                        choices=list(METHODS), metavar="METHOD",
                        help=f"methods to run (default: all reported): {', '.join(METHODS)}")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild results from finished cells")
    parser.add_argument("--figures", type=Path, default=None, help="folder for the PNG figures (default <out>)")
    parser.add_argument("--report", type=Path, default=None, help="also write this markdown report (docs/results.md)")
    parser.add_argument("--reading", type=Path, default=None, help="markdown file with a reading of the results, put in the report")
    for name, kind in (("epochs", int), ("probe-epochs", int), ("image-size", int), ("folds", int), ("batch-size", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the protocol's value")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the protocol's seeds")
    parser.add_argument("--encoder", default=None, help="override the protocol's encoder")
    return parser


def resolve_protocol(args: argparse.Namespace) -> Protocol:
    base = PROTOCOLS[args.protocol]
    changes = {k: v for k, v in {
        "epochs": args.epochs, "probe_epochs": args.probe_epochs, "image_size": args.image_size, "folds": args.folds,
        "batch_size": args.batch_size, "encoder": args.encoder,
        "seeds": tuple(args.seeds) if args.seeds else None}.items() if v is not None}
    return Protocol(**{**base.as_dict(), "seeds": tuple(base.seeds), **changes})


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.root:
        sys.stderr.write("error: give --root (the MVTec AD root or a category folder) or set BCL_MVTEC_ROOT\n")
        return 2
    protocol = resolve_protocol(args)
    out = args.out or Path("results") / protocol.name
    suite = Suite(out, str(args.root), args.category, protocol)
    sys.stdout.write(f"Suite: {json.dumps(_settings(suite))}\nMethods: {', '.join(_with_prerequisites(args.methods))}\n"
                     f"Machine: {machine_description()}\n")
    sys.stdout.flush()
    started = time.perf_counter()
    try:
        if not args.aggregate_only:
            run_suite(suite, args.methods)
        else:
            _check_or_write_settings(suite)
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    cells = _read_cells(out)
    if not cells:
        sys.stderr.write(f"error: no finished cells in {out}\n")
        return 2
    summary = aggregate(cells)
    write_results(out, summary, cells)
    class_names = next(list(c["test"]["per_class_recall"]) for c in cells if "per_class_recall" in c["test"])
    figures = write_figures(summary, class_names, args.figures or out)
    tsne = write_embedding_map(suite, [m for m in ("ce", "bcl") if m in summary], args.figures or out)
    if args.report:
        reading = args.reading.read_text() if args.reading else ""
        write_report(args.report, suite, summary, cells, figures + ([tsne] if tsne else []), machine_description(),
                     reproduce_command(argv if argv is not None else sys.argv[1:]), reading)
    sys.stdout.write("\n" + results_table(summary) + "\n")
    total = sum(c["wall_time_s"] for c in cells)
    sys.stdout.write(f"\n{len(cells)} cells, {total / 60:.1f} min of training in all "
                     f"({(time.perf_counter() - started) / 60:.1f} min this sitting). Results in {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
