"""Test metrics recomputed from a saved checkpoint: ``python -m bcl.evaluate CHECKPOINT``.

A published checkpoint (``results/cifar10lt/<run>/checkpoints/last.pt``) is checked the way a reader
would: rebuild the run's data and network from the config the checkpoint carries, load its weights,
and compute top-1 (balanced accuracy), the many/medium/few-shot accuracies and kNN on the test part.
When the checkpoint sits in its run folder next to a finished run's ``metrics.json`` and holds the
epoch that run was tested at, the recorded numbers are printed beside the recomputed ones.

Example:
    python -m bcl.evaluate results/cifar10lt/ce/checkpoints/last.pt --data-root "$BCL_CIFAR10_ROOT"

The image folder is read at ``data.root`` as saved in the checkpoint unless ``--data-root`` gives its
place on this machine. Evaluation runs in float32 without autocast, as a run's own final evaluation
does, so on the machine that trained it the numbers match exactly; on another CPU they may differ in the
last digits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from bcl.checkpoints import atomic_write_text
from bcl.config import ConfigError
from bcl.engine import evaluate, extract, resolve_device
from bcl.metrics import DEFAULT_TABLE_COLUMNS, GOOD_CLASS, LONG_TAIL_TABLE_COLUMNS, format_results_table
from bcl.runs import load_test_metrics
from bcl.stages import STAGE1, read_trained_checkpoint, stage1_model, stage2_model, stage_data

__all__ = ["evaluate_checkpoint", "recorded_test_metrics", "main"]


def evaluate_checkpoint(path: str, data_root: Optional[str] = None, device: str = "cpu") -> Dict[str, Any]:
    """The test metrics of the weights in ``path``, on the data and split its config names.

    Args:
        path: A ``train_supcon.py`` or ``train_linear.py`` checkpoint (``last.pt`` or ``best.pt``).
        data_root: Where the dataset is on this machine, if not at the saved ``data.root``.
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        ``{"epoch", "stage", "test": metrics}``; ``test`` has the keys of a run's ``metrics.json`` test part.

    Raises:
        FileNotFoundError: No such checkpoint, or the data is not where the config says.
        ConfigError: Not a bcl checkpoint, or its weights do not fit the network its config describes.
    """
    checkpoint, cfg, encoder = read_trained_checkpoint(
        path, "checkpoint", overrides=[f"data.root={data_root}"] if data_root else ())
    dataset, splits = stage_data(cfg)
    build = stage1_model if checkpoint["stage"] == STAGE1 else stage2_model
    model = build(cfg, encoder, len(dataset.class_names))
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        raise ConfigError(f"checkpoint {path!r}: its weights do not fit the network its config describes: "
                          f"{str(error).splitlines()[0]}") from None
    target = resolve_device(device)
    model.to(target)
    size, normalization = cfg.data.image_size, cfg.data.normalization
    with torch.no_grad():
        reference = extract(model, dataset.subset(splits.train), size, target, normalization=normalization)
        outputs = extract(model, dataset.subset(splits.test), size, target, normalization=normalization)
    classifier = checkpoint["stage"] != STAGE1 or cfg.loss.mode == "joint"
    test = evaluate(outputs, reference, dataset.class_names, list(splits.train_counts), cfg.eval, classifier)
    return {"epoch": int(checkpoint["epoch"]), "stage": checkpoint["stage"], "test": test}


def recorded_test_metrics(path: str, epoch: int) -> Optional[Dict[str, Any]]:
    """The test metrics the run folder of checkpoint ``path`` recorded, if that run was tested at ``epoch``."""
    run_dir = Path(path).resolve().parent.parent
    try:
        metrics = load_test_metrics(run_dir)
    except (FileNotFoundError, ValueError):
        return None
    return metrics["test"] if metrics.get("selected_epoch") == epoch else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: prints the recomputed test metrics (and the recorded ones, when there are).

    Returns:
        The exit status: 0, or 2 on a user error (named on stderr).
    """
    parser = argparse.ArgumentParser(description="Test metrics recomputed from a bcl checkpoint.")
    parser.add_argument("checkpoint", help="a train_supcon.py or train_linear.py checkpoint (last.pt, best.pt)")
    parser.add_argument("--data-root", help="where the dataset is on this machine (default: the saved data.root)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--json", metavar="FILE", help="also write the recomputed metrics to FILE")
    args = parser.parse_args(argv)
    try:
        result = evaluate_checkpoint(args.checkpoint, args.data_root, args.device)
    except (FileNotFoundError, ConfigError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    test = result["test"]
    rows = {f"recomputed (epoch {result['epoch']})": test}
    recorded = recorded_test_metrics(args.checkpoint, result["epoch"])
    if recorded is not None:
        rows["recorded in metrics.json"] = recorded
    good_class = GOOD_CLASS in test.get("per_class_recall", {})
    columns = DEFAULT_TABLE_COLUMNS if good_class else LONG_TAIL_TABLE_COLUMNS
    sys.stdout.write(f"\nTest part of {args.checkpoint}: {test['num_samples']} images, in %\n\n"
                     f"{format_results_table(rows, columns)}\n")
    if recorded is not None:
        gaps = [abs(test[c] - recorded[c]) for c in columns
                if isinstance(test.get(c), float) and isinstance(recorded.get(c), float)]
        sys.stdout.write(f"largest difference from the recorded run: {100 * max(gaps, default=0.0):.2f} points\n")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
