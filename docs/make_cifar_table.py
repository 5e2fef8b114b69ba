"""Writes the CIFAR-10-LT results table of docs/cifar.md from finished run folders.

    python docs/make_cifar_table.py --runs /tmp/cifar-runs ce-e40 la-e40 bcl-e40 [--write docs/cifar.md]

Each run folder's ``config.yaml`` says which method and budget it was, its ``metrics.json`` holds the
numbers. Without ``--write`` the table is printed; with it, the part of the page between the
``<!-- cifar-table:start -->`` and ``<!-- cifar-table:end -->`` markers is replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from bcl.compare import load_test_metrics
from bcl.runs import RunDir

START, END = "<!-- cifar-table:start -->", "<!-- cifar-table:end -->"
# The paper's table (Zhu et al., CVPR 2022, Table 1: CIFAR-10-LT, ResNet-32, 200 epochs), top-1 by
# method and imbalance factor; CE and logit adjustment as the paper quotes them.
PUBLISHED = {("ce", 100): 70.4, ("logit_adjusted", 100): 77.7, ("bcl", 100): 84.32, ("bcl", 50): 87.24,
             ("bcl", 10): 91.12}
LABELS = {"ce": "CE", "logit_adjusted": "logit-adjusted CE (τ = {la_tau:g})",
          "bcl": "BCL (α {alpha:g}, β {beta:g}, τ {temperature:g}), its own classifier"}


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def row(folder: Path) -> str:
    metrics = load_test_metrics(folder)
    cfg = yaml.safe_load(RunDir(folder).config_path.read_text(encoding="utf-8"))
    loss = cfg["loss"]
    test = metrics["test"]
    factor = cfg["data"].get("imbalance_factor")
    published = PUBLISHED.get((loss["name"], int(factor) if factor else None))
    minutes = metrics.get("wall_time_s", 0) / 60
    return (f"| {LABELS.get(loss['name'], loss['name']).format(**loss)} | {cfg['optim']['epochs']} | "
            f"{percent(test['balanced_accuracy'])} | {percent(test.get('many_shot_accuracy'))} | "
            f"{percent(test.get('medium_shot_accuracy'))} | {percent(test.get('few_shot_accuracy'))} | "
            f"{percent(test.get('knn_balanced_accuracy'))} | {minutes:.0f} min | "
            f"{published if published is not None else '—'} |")


def table(folders) -> str:
    header = ("| method (seed 0) | epochs | top-1 (balanced test) | many | medium | few | kNN (k=20) | train time | "
              "published, 200 epochs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    return "\n".join([header, *(row(folder) for folder in folders)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder holding the run folders")
    parser.add_argument("names", nargs="+", help="run folder names, in table order")
    parser.add_argument("--write", type=Path, help="page whose marked table to replace")
    args = parser.parse_args()
    try:
        text = table([args.runs / name for name in args.names])
    except (OSError, KeyError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    if not args.write:
        sys.stdout.write(text + "\n")
        return 0
    page = args.write.read_text(encoding="utf-8")
    if page.count(START) != 1 or page.count(END) != 1:
        sys.stderr.write(f"error: {args.write} must hold the markers {START} and {END} once each\n")
        return 2
    before, rest = page.split(START)
    _, after = rest.split(END)
    args.write.write_text(f"{before}{START}\n{text}\n{END}{after}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
