"""Evaluation metrics for long-tailed classification and for learned embeddings.

Three modules, all re-exported here:

* :mod:`bcl.metrics.classification`: :func:`classification_metrics` (balanced accuracy, the headline:
  the mean recall of the classes present in the test set; accuracy, macro-F1, per-class recall and
  support, the confusion matrix, many/medium/few-shot and head/tail accuracy, and good-vs-defect AUROC
  from class probabilities) and :func:`good_vs_defect_auroc`, the AUROC on its own.
* :mod:`bcl.metrics.knn`: :func:`knn_predict` and :func:`knn_metrics`, a temperature-weighted
  k-nearest-neighbour classifier on embeddings (cosine similarity, exact search with faiss, as in
  InstDisc / DINO), and a kNN anomaly score (distance to the nearest *good* training embeddings) for
  good-vs-defect AUROC.
* :mod:`bcl.metrics.table`: :func:`format_results_table`, a small markdown table of selected metrics
  for several runs, laid out by the generic :func:`markdown_table`.

Every returned dictionary is JSON-serialisable as is: plain ``float``/``int``/``list``/``dict``
values, and ``None`` (never NaN) for a metric that is undefined on the given data (a class with no
test images, an AUROC with only one side present).
"""

from bcl.metrics.classification import (
    FEW_SHOT_MAX,
    GOOD_CLASS,
    GOOD_CLASS_METRICS,
    MANY_SHOT_MIN,
    classification_metrics,
    good_vs_defect_auroc,
)
from bcl.metrics.knn import knn_metrics, knn_predict
from bcl.metrics.table import (DEFAULT_TABLE_COLUMNS, LONG_TAIL_TABLE_COLUMNS, format_results_table, markdown_table,
                               replace_marked)

__all__ = [
    "MANY_SHOT_MIN",
    "FEW_SHOT_MAX",
    "DEFAULT_TABLE_COLUMNS",
    "LONG_TAIL_TABLE_COLUMNS",
    "GOOD_CLASS",
    "GOOD_CLASS_METRICS",
    "classification_metrics",
    "good_vs_defect_auroc",
    "knn_predict",
    "knn_metrics",
    "format_results_table",
    "markdown_table",
    "replace_marked",
]
