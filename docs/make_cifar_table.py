r"""Writes the CIFAR-10-LT results of docs/cifar.md from run folders: the table, the checkpoints, the curves.

    python docs/make_cifar_table.py --runs results/cifar10lt ce la bcl --write docs/cifar.md \
        --curves docs/images/cifar10lt_curves.png

Each run folder's ``config.yaml`` says which method and budget it was. A finished run's ``metrics.json``
gives its row; a run still in progress gets a row from the last test point of its ``metrics.jsonl``
(``eval.test_every``), marked as such. Without ``--write`` the tables are printed; with it, the parts of
the page between the ``<!-- cifar-table:start/end -->`` and ``<!-- cifar-checkpoints:start/end -->``
markers are replaced. ``--curves`` draws test top-1 against epoch for every run, with the published
numbers as dashed lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from bcl.metrics import replace_marked
from bcl.provenance import sha256_of
from bcl.runs import RunDir, load_test_metrics, read_jsonl

TABLE = ("<!-- cifar-table:start -->", "<!-- cifar-table:end -->")
CHECKPOINTS = ("<!-- cifar-checkpoints:start -->", "<!-- cifar-checkpoints:end -->")
# The paper's table (Zhu et al., CVPR 2022, Table 1: CIFAR-10-LT, ResNet-32, 200 epochs), top-1 by
# method and imbalance factor; CE and logit adjustment as the paper quotes them.
PUBLISHED = {("ce", 100): 70.4, ("logit_adjusted", 100): 77.7, ("bcl", 100): 84.32, ("bcl", 50): 87.24,
             ("bcl", 10): 91.12}
LABELS = {"ce": "CE", "logit_adjusted": "logit-adjusted CE (τ = {la_tau:g})",
          "bcl": "BCL (α {alpha:g}, β {beta:g}, τ {temperature:g}), its own classifier"}
SHORT_LABELS = {"ce": "CE", "logit_adjusted": "logit-adjusted CE", "bcl": "BCL"}


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


class Run:
    """One run folder as the page shows it: its config, its test numbers, how far it got."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cfg = yaml.safe_load(RunDir(folder).config_path.read_text(encoding="utf-8"))
        self.log = read_jsonl(RunDir(folder).log_path)
        self.loss = self.cfg["loss"]
        self.epochs = self.cfg["optim"]["epochs"]
        self.done = self.log[-1]["epoch"] if self.log else 0
        factor = self.cfg["data"].get("imbalance_factor")
        self.published = PUBLISHED.get((self.loss["name"], int(factor) if factor else None))
        self.finished = (folder / "metrics.json").is_file()
        if self.finished:
            metrics = load_test_metrics(folder)
            self.test: Dict[str, Optional[float]] = metrics["test"]
            self.tested_at = metrics["selected_epoch"]
            self.wall_s = metrics.get("wall_time_s") or 0.0
        else:
            points = [r for r in self.log if "test_balanced_accuracy" in r]
            last = points[-1] if points else {}
            self.test = {k[len("test_"):]: v for k, v in last.items() if k.startswith("test_")}
            self.tested_at = last.get("epoch")
            self.wall_s = _checkpoint_wall_time(folder)

    @property
    def label(self) -> str:
        return LABELS.get(self.loss["name"], self.loss["name"]).format(**self.loss)

    def curve(self) -> List[Tuple[int, float]]:
        """``(epoch, test top-1 in %)`` at every test point, and the final evaluation of a finished run."""
        points = [(r["epoch"], 100 * r["test_balanced_accuracy"]) for r in self.log if "test_balanced_accuracy" in r]
        if self.finished and (not points or points[-1][0] != self.tested_at):
            points.append((self.tested_at, 100 * self.test["balanced_accuracy"]))
        return points

    def precisions(self) -> str:
        """Which precision the epochs ran in (records older than the field ran in the config's bf16)."""
        counts: Dict[str, int] = {}
        for record in self.log:
            name = record.get("precision", "bf16")
            counts[name] = counts.get(name, 0) + 1
        return " + ".join(f"{n} {name}" for name, n in counts.items())


def _checkpoint_wall_time(folder: Path) -> float:
    import torch

    last = folder / "checkpoints" / "last.pt"
    if not last.is_file():
        return 0.0
    return float(torch.load(last, map_location="cpu", weights_only=True).get("wall_time_s") or 0.0)


def row(run: Run) -> str:
    test = run.test
    epochs = f"{run.epochs}" if run.finished else f"{run.done} of {run.epochs} (running; tested at {run.tested_at})"
    return (f"| {run.label} | {epochs} | {percent(test.get('balanced_accuracy'))} | "
            f"{percent(test.get('many_shot_accuracy'))} | {percent(test.get('medium_shot_accuracy'))} | "
            f"{percent(test.get('few_shot_accuracy'))} | {percent(test.get('knn_balanced_accuracy'))} | "
            f"{run.wall_s / 3600:.1f} h | {run.published if run.published is not None else '—'} |")


def table(runs: List[Run]) -> str:
    header = ("| method (seed 0) | epochs | top-1 (balanced test) | many | medium | few | kNN (k=20) | train time | "
              "published, 200 epochs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    total = sum(run.wall_s for run in runs) / 3600
    return "\n".join([header, *(row(run) for run in runs), "",
                      f"Total compute so far: {total:.1f} h of single-thread CPU training (the three runs' wall "
                      f"clocks, each on one thread). Epochs by precision: "
                      + "; ".join(f"{SHORT_LABELS.get(r.loss['name'], r.folder.name)} {r.precisions()}"
                                  for r in runs) + "."])


def checkpoints(runs: List[Run], root: Path) -> str:
    lines = ["| run | checkpoint (final weights, optimiser state included) | MB | sha256 |", "|---|---|---:|---|"]
    finished = [run for run in runs if run.finished]
    for run in finished:
        path = run.folder / "checkpoints" / "last.pt"
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        lines.append(f"| {SHORT_LABELS.get(run.loss['name'], run.folder.name)} | `{shown}` | "
                     f"{path.stat().st_size / 1e6:.1f} | `{sha256_of(path)}` |")
    waiting = [SHORT_LABELS.get(r.loss["name"], r.folder.name) for r in runs if not r.finished]
    if waiting:
        lines += ["", f"Not yet published (still training): {', '.join(waiting)}."]
    return "\n".join(lines)


def write_curves(runs: List[Run], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, run in enumerate(runs):
        colour = f"C{index}"
        points = run.curve()
        epochs, top1 = zip(*points) if points else ((), ())
        name = SHORT_LABELS.get(run.loss["name"], run.folder.name)
        axes.plot(epochs, top1, marker="o", markersize=3, color=colour,
                  label=name if run.finished else f"{name} (running)")
        if run.published is not None:
            axes.axhline(run.published, color=colour, linestyle="--", linewidth=0.8)
    axes.set_xlabel("epoch")
    axes.set_ylabel("test top-1, balanced (%)")
    axes.set_xlim(0, max(run.epochs for run in runs))
    axes.set_title("CIFAR-10-LT (IF 100), ResNet-32: test every 10 epochs; dashed: published at 200 epochs",
                   fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder holding the run folders")
    parser.add_argument("names", nargs="+", help="run folder names, in table order")
    parser.add_argument("--write", type=Path, help="page whose marked parts to replace")
    parser.add_argument("--curves", type=Path, help="where to write the learning-curve figure (PNG)")
    args = parser.parse_args()
    try:
        runs = [Run(args.runs / name) for name in args.names]
        results, published = table(runs), checkpoints(runs, Path.cwd())
        if args.write:
            page = args.write.read_text(encoding="utf-8")
            page = replace_marked(page, TABLE, results, args.write)
            page = replace_marked(page, CHECKPOINTS, published, args.write)
            args.write.write_text(page, encoding="utf-8")
        else:
            sys.stdout.write(f"{results}\n\n{published}\n")
        if args.curves:
            write_curves(runs, args.curves)
    except (OSError, KeyError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
