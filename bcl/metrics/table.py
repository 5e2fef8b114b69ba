r"""Results tables: a generic padded markdown table and the table of selected metrics for several runs.

:func:`markdown_table` lays out string cells; :func:`format_results_table` formats metric dictionaries
(percentages with one decimal, counts as they are, ``-`` for a missing metric) into one.
:data:`DEFAULT_TABLE_COLUMNS` is the console table for data with a good class (MVTec AD, the synthetic
transistor), :data:`LONG_TAIL_TABLE_COLUMNS` the one for data without (CIFAR-LT, image folders).
:func:`replace_marked` puts a generated table into a page between two marker lines.
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Sequence, Tuple

from bcl._checks import is_int, is_real

__all__ = [
    "DEFAULT_TABLE_COLUMNS", "LONG_TAIL_TABLE_COLUMNS", "format_results_table", "markdown_table", "replace_marked",
]

#: The console table for data without a good class (CIFAR-LT, image folders): the shot groups instead.
LONG_TAIL_TABLE_COLUMNS: Tuple[str, ...] = (
    "balanced_accuracy",
    "macro_f1",
    "many_shot_accuracy",
    "medium_shot_accuracy",
    "few_shot_accuracy",
    "knn_balanced_accuracy",
)

DEFAULT_TABLE_COLUMNS: Tuple[str, ...] = (
    "balanced_accuracy",
    "accuracy",
    "macro_f1",
    "head_accuracy",
    "tail_accuracy",
    "good_vs_defect_auroc",
    # a contrastive stage without a classifier has only the kNN metrics
    "knn_balanced_accuracy",
    "knn_good_vs_defect_auroc",
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    r"""A markdown table with padded columns: the first left-aligned, the others right-aligned.

    A ``|`` inside a cell is escaped as ``\|``, so it cannot split the cell.

    Args:
        header: ``K`` column headers.
        rows: The rows, each ``K`` cells already formatted as strings.

    Returns:
        The table as a string of ``len(rows) + 2`` lines (header, alignment rule, rows) with no
        trailing newline.

    Raises:
        ValueError: An empty ``header``, a row that does not have ``K`` cells, or a cell that is not a
            string.

    Example:
        >>> print(markdown_table(["name", "count"], [["a|b", "7"], ["long name", "12"]]))
        | name      | count |
        | :-------- | ----: |
        | a\|b      |     7 |
        | long name |    12 |
    """
    if isinstance(header, str) or not isinstance(header, Sequence) or not header:
        raise ValueError(f"header must be a non-empty list of column headers, got {header!r}")
    lines = [list(header), *(list(row) for row in rows)]
    for number, line in enumerate(lines[1:]):
        if len(line) != len(header):
            raise ValueError(f"rows[{number}] has {len(line)} cells but the header has {len(header)}: {line!r}")
    for line in lines:
        if not all(isinstance(cell, str) for cell in line):
            raise ValueError(f"table cells must be strings, got {line!r}")
    table = [[cell.replace("|", "\\|") for cell in line] for line in lines]
    # Columns are at least 3 wide, so an alignment cell is never shorter than ":--".
    widths = [max(3, *(len(line[i]) for line in table)) for i in range(len(header))]

    def render(cells: List[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join([":" + "-" * (widths[0] - 1)] + ["-" * (w - 1) + ":" for w in widths[1:]]) + " |"
    return "\n".join([render(table[0]), rule, *(render(line) for line in table[1:])])


def _format_cell(value: Any, run: str, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if is_int(value):  # counts such as num_samples or knn_k
        return str(int(value))
    if is_real(value):
        return "-" if math.isnan(value) else f"{100.0 * float(value):.1f}"
    raise ValueError(f"rows[{run!r}][{column!r}] must be a number, a string or None, got {type(value).__name__}")


def format_results_table(
    rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = DEFAULT_TABLE_COLUMNS
) -> str:
    r"""A markdown table of selected metrics, one row per run or stage (laid out by :func:`markdown_table`).

    Float metrics are shown as percentages with one decimal, ints (such as ``num_samples`` or
    ``knn_k``) as they are, strings verbatim, and a missing or ``None`` metric as ``-``; a ``|`` in a
    run name or column is escaped as ``\|``.

    Args:
        rows: ``{run name: metrics dictionary}`` in display order, for example
            ``{"stage 2 linear probe": classification_metrics(...)}``.
        columns: The metric keys to show, in order (they are also the column headers).

    Returns:
        The table as a string of ``len(rows) + 2`` lines with no trailing newline.

    Raises:
        ValueError: ``rows`` not a mapping of mappings, empty ``columns``, or a selected value that
            is not a number, string or ``None``.

    Example:
        >>> print(format_results_table({"CE": {"balanced_accuracy": 0.5, "accuracy": 0.91234},
        ...                              "BCL": {"balanced_accuracy": 0.875, "accuracy": 0.9}},
        ...                             columns=["balanced_accuracy", "accuracy", "macro_f1"]))
        | run | balanced_accuracy | accuracy | macro_f1 |
        | :-- | ----------------: | -------: | -------: |
        | CE  |              50.0 |     91.2 |        - |
        | BCL |              87.5 |     90.0 |        - |
    """
    if not isinstance(rows, Mapping) or not all(isinstance(metrics, Mapping) for metrics in rows.values()):
        raise ValueError(f"rows must map run names to metric dictionaries, got {type(rows).__name__}")
    if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
        raise ValueError(f"columns must be a non-empty list of metric names, got {columns!r}")
    header = ["run", *[str(column) for column in columns]]
    body = [
        [str(run), *[_format_cell(metrics.get(column), str(run), column) for column in columns]]
        for run, metrics in rows.items()
    ]
    return markdown_table(header, body)


def replace_marked(page: str, markers: Tuple[str, str], text: str, name: Any) -> str:
    r"""``page`` with what lies between its two marker lines replaced by ``text``: a generated part of a page.

    Args:
        page: The page's text.
        markers: The (start, end) marker lines.
        text: What goes between them, without the surrounding newlines.
        name: The page's file, named in the error.

    Raises:
        ValueError: ``page`` lacks a marker, has one more than once, or has them out of order.

    Example:
        >>> replace_marked("a\n<!-- s -->\nold\n<!-- e -->\nb", ("<!-- s -->", "<!-- e -->"), "new", "page.md")
        'a\n<!-- s -->\nnew\n<!-- e -->\nb'
    """
    start, end = markers
    if page.count(start) != 1 or page.count(end) != 1 or page.index(start) > page.index(end):
        raise ValueError(f"{name}: needs the line {start!r} once and, after it, the line {end!r} once; the "
                         "generated text goes between them")
    before, rest = page.split(start)
    after = rest.split(end)[1]
    return f"{before}{start}\n{text}\n{end}{after}"
