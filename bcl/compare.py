"""Side-by-side test results of finished runs, with the chance line: ``python -m bcl.compare``.

``make run`` ends with it to put BCL → linear probe, BCL's own classifier and the cross-entropy
baseline on one table. Each argument is ``LABEL=RUN_DIR``; the runs must share class names and test
part (the table refuses to compare runs tested on different images).

Example:
    python -m bcl.compare "BCL -> linear probe=runs/main-probe" "CE baseline=runs/main-ce"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from bcl.metrics import format_results_table
from bcl.runs import load_test_metrics
from bcl.tensorboard import tensorboard_hint

__all__ = ["comparison_rows", "main"]


def comparison_rows(runs: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Optional[float]]]:
    """Table rows ``{label: {balanced_accuracy, <class recalls>, good_vs_defect_auroc}}`` plus a chance row.

    Args:
        runs: ``{label: metrics.json contents}``, in display order.

    Raises:
        ValueError: The runs have different class names or test parts of different sizes.
    """
    if not runs:
        raise ValueError("nothing to compare: give at least one LABEL=RUN_DIR")
    first_label, first = next(iter(runs.items()))
    names: List[str] = list(first["class_names"])
    support = first["test"].get("per_class_support")
    rows: Dict[str, Dict[str, Optional[float]]] = {}
    for label, metrics in runs.items():
        if list(metrics["class_names"]) != names:
            raise ValueError(f"{label!r} has classes {metrics['class_names']}, {first_label!r} has {names}")
        if metrics["test"].get("per_class_support") != support:
            raise ValueError(f"{label!r} was tested on other images than {first_label!r} (per-class support differs)")
        test = metrics["test"]
        recall = test.get("per_class_recall") or {}
        rows[label] = {"balanced_accuracy": test.get("balanced_accuracy"), **{n: recall.get(n) for n in names},
                       "good_vs_defect_auroc": test.get("good_vs_defect_auroc")}
    # Guessing uniformly at random: every class recalled 1/C of the time, AUROC 0.5.
    chance = 1.0 / len(names)
    rows["chance"] = {"balanced_accuracy": chance, **{n: chance for n in names}, "good_vs_defect_auroc": 0.5}
    return rows


def _describe(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """What the runs were trained and tested on; training counts per group of runs when they differ."""
    groups: Dict[str, List[str]] = {}
    for label, metrics in runs.items():
        groups.setdefault(":".join(str(n) for n in metrics.get("train_counts", [])), []).append(label)
    if len(groups) == 1:
        trained = f"trained on {next(iter(groups))} images per class"
    else:
        trained = "trained on " + ", ".join(f"{counts} ({', '.join(labels)})" for counts, labels in groups.items()) \
            + " images per class"
    first = next(iter(runs.values()))
    support = first["test"].get("per_class_support") or {}
    tested = ", ".join(f"{support[name]} {name}" for name in first["class_names"] if name in support)
    return (f"{trained} ({', '.join(first['class_names'])}; pasted images, if any, included), tested once on "
            f"{sum(support.values())} images ({tested}); columns are test balanced accuracy, per-class recall "
            "and good-vs-defect AUROC, in %")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: prints the test results of ``LABEL=RUN_DIR`` runs side by side, with chance.

    Args:
        argv: The arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status: 0, or 2 on a user error (named on stderr).
    """
    parser = argparse.ArgumentParser(description="Test results of finished runs side by side, with chance.")
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    args = parser.parse_args(argv)
    try:
        runs = {}
        for item in args.runs:
            label, sep, run_dir = item.partition("=")
            if not sep or not label or not run_dir:
                raise ValueError(f"argument {item!r} must look like LABEL=RUN_DIR")
            runs[label] = load_test_metrics(Path(run_dir))
        rows = comparison_rows(runs)
    except (FileNotFoundError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    first = next(iter(runs.values()))
    columns = ["balanced_accuracy", *first["class_names"], "good_vs_defect_auroc"]
    sys.stdout.write(f"\nTest results: {_describe(runs)}.\n\n{format_results_table(rows, columns)}\n")
    logdirs = {str(Path(item.partition("=")[2]).resolve().parent) for item in args.runs}
    sys.stdout.write("\n" + "\n".join(tensorboard_hint(Path(d)) for d in sorted(logdirs)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
