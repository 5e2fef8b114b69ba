"""Aggregation of the cells: mean ± sample std per row, paired differences with a corrected t-interval.

Differences between methods are paired per cell and given a 95 % interval from the corrected resampled
t-test (Nadeau & Bengio, 2003): cells of one repeat share most of their training images, so the plain
t-interval would be too narrow; the variance is inflated by ``1/n + n_test/n_train``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .definitions import CE_FAMILY, REPORTED_METRICS, Lever, Method

__all__ = ["aggregate", "knn_view", "mean_std", "paired_difference", "with_knn_rows"]


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    array = np.asarray(present, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array)}


def paired_difference(a: Dict[Tuple[int, int], float], b: Dict[Tuple[int, int], float], test_over_train: float,
                      level: float = 0.95) -> Dict[str, Any]:
    """Mean of ``a - b`` over the cells both have, with a corrected resampled t-interval.

    Args:
        a: ``{(repeat, fold): score}`` of the first method.
        b: ``{(repeat, fold): score}`` of the second method, subtracted from ``a``.
        test_over_train: ``n_test / n_train`` of one cell (``1 / (folds - 1)`` for k-fold).
        level: Coverage of the interval.

    Returns:
        ``{"mean", "std", "n", "low", "high"}``; the interval is ``mean ± t_{n-1} · std ·
        sqrt(1/n + test_over_train)`` (Nadeau & Bengio, 2003), ``None`` with fewer than two cells.
    """
    from scipy.stats import t as student_t

    shared = sorted(set(a) & set(b))
    differences = np.asarray([a[c] - b[c] for c in shared], dtype=np.float64)
    n = len(differences)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "low": None, "high": None}
    mean = float(differences.mean())
    if n < 2:
        return {"mean": mean, "std": None, "n": 1, "low": None, "high": None}
    std = float(differences.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * std * math.sqrt(1.0 / n + test_over_train)
    return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}


def scores(cells: Sequence[Dict[str, Any]], row: str,
           metric: str = "balanced_accuracy") -> Dict[Tuple[int, int], float]:
    return {(c["repeat"], c["fold"]): c["test"][metric] for c in cells
            if c["row"] == row and c["test"].get(metric) is not None}


def knn_view(cells: Sequence[Dict[str, Any]], source: str, row: str) -> List[Dict[str, Any]]:
    """``source``'s cells as the cells of ``row``, the kNN classifier on their embeddings.

    The kNN metrics take the classifier metrics' names (balanced accuracy, per-class recall, good-vs-defect
    AUROC), so the kNN row is read, compared and plotted like any other; it trained nothing of its own.
    """
    renamed = []
    for cell in cells:
        if cell["row"] != source:
            continue
        test = cell["test"]
        view = {"balanced_accuracy": test.get("knn_balanced_accuracy"), "accuracy": test.get("knn_accuracy"),
                "good_vs_defect_auroc": test.get("knn_good_vs_defect_auroc"),
                "knn_balanced_accuracy": test.get("knn_balanced_accuracy"),
                "knn_good_vs_defect_auroc": test.get("knn_good_vs_defect_auroc"),
                "per_class_recall": test.get("knn_per_class_recall", {}),
                "per_class_support": test.get("per_class_support", {})}
        renamed.append({**cell, "row": row, "method": row, "wall_time_s": 0.0, "test": view})
    return renamed


def with_knn_rows(methods: Dict[str, Method], cells: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``cells`` plus the cells of every ``knn_of`` method, made from its source's (:func:`knn_view`)."""
    cells = list(cells)
    for name, method in methods.items():
        if method.knn_of is not None:
            cells += knn_view(cells, method.knn_of, name)
    return cells


def _summarise(cells: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    tests = [c["test"] for c in cells]
    entry: Dict[str, Any] = {m: mean_std([t.get(m) for t in tests]) for m in REPORTED_METRICS}
    # A contrastive-only stage has no classifier: kNN metrics but no recall or confusion matrix.
    classes = list(tests[0].get("per_class_recall", {}))
    entry["per_class_recall"] = {k: mean_std([t["per_class_recall"].get(k) for t in tests]) for k in classes}
    if "confusion_matrix" in tests[0]:
        entry["confusion_matrix"] = np.sum([t["confusion_matrix"] for t in tests], axis=0).tolist()
    entry["wall_time_s"] = mean_std([c["wall_time_s"] for c in cells])
    entry["cells"] = sorted((c["repeat"], c["fold"]) for c in cells)
    return entry


def aggregate(methods: Dict[str, Method], levers: Dict[str, Lever], main_cells: Sequence[Dict[str, Any]],
              ablation_cells: Sequence[Dict[str, Any]] = (), folds: int = 5) -> Dict[str, Any]:
    """Mean ± sample std per row, and paired differences (corrected t-interval) to CE and the best CE row.

    Rows of ``knn_of`` methods are made from their source's cells (:func:`with_knn_rows`).
    """
    ratio = 1.0 / (folds - 1)
    main_cells = with_knn_rows(methods, main_cells)
    rows = [name for name in methods if any(c["row"] == name for c in main_cells)]
    summary: Dict[str, Any] = {"methods": {}, "ablations": {}, "reference": {}}
    for name in rows:
        summary["methods"][name] = _summarise([c for c in main_cells if c["row"] == name])
    ce_rows = [n for n in rows if methods[n].family == CE_FAMILY and summary["methods"][n]["balanced_accuracy"]["n"]]
    best_ce = max(ce_rows, key=lambda n: summary["methods"][n]["balanced_accuracy"]["mean"]) if ce_rows else None
    summary["reference"] = {"ce": "ce" if "ce" in rows else None, "best_ce": best_ce}
    for name in rows:
        mine = scores(main_cells, name)
        entry = summary["methods"][name]
        for key, ref in (("vs_ce", "ce"), ("vs_best_ce", best_ce)):
            if ref is not None and ref in rows and mine:
                entry[key] = {"reference": ref, **paired_difference(mine, scores(main_cells, ref), ratio)}
    for name, lever in levers.items():
        mine = [c for c in ablation_cells if c["row"] == name]
        if not mine:
            continue
        base = lever.method
        entry = _summarise(mine)
        base_cells = [c for c in main_cells if c["row"] == base and c["repeat"] == 0]
        entry["base"] = _summarise(base_cells) if base_cells else None
        entry["vs_base"] = {"reference": base,
                            **paired_difference(scores(mine, name), scores(base_cells, base), ratio)}
        summary["ablations"][name] = entry
    return summary
