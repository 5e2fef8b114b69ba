"""TensorBoard logging: scalars, hyperparameters, confusion matrices and the embedding projector.

:class:`TensorBoardLogger` wraps :class:`torch.utils.tensorboard.SummaryWriter`; with
``enabled=False`` (non-zero ranks of a distributed run) every method does nothing, so callers need no
``if rank == 0`` around each call.

The embedding projector files are written here rather than with ``SummaryWriter.add_embedding``,
which keeps its list of embeddings in the writer object (a resumed run would rewrite
``projector_config.pbtxt`` without the embeddings logged before the restart), pads the sprite with
an extra empty row, and prints to stdout. Here ``projector_config.pbtxt`` is read, merged and written
back atomically on every call, so embeddings from before a resume stay listed.

Figures are drawn with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never pyplot, so
importing this module leaves a script's chosen matplotlib backend alone and works without a display.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from bcl._checks import as_label_array, is_int
from bcl.checkpoints import atomic_write_text

__all__ = [
    "TensorBoardLogger",
    "tensorboard_hint",
    "select_projector_indices",
    "confusion_matrix_figure",
    "figure_to_array",
    "flatten_hparams",
    "MAX_SPRITE_SIZE",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# TensorBoard's projector refuses sprites larger than this many pixels on a side.
MAX_SPRITE_SIZE = 8192
PROJECTOR_CONFIG = "projector_config.pbtxt"


# ----------------------------------------------------------------------------------------------------
# Helpers (usable without a writer)
# ----------------------------------------------------------------------------------------------------


def tensorboard_hint(logdir: Path) -> str:
    """How to open a folder of runs in TensorBoard, with this interpreter's own ``tensorboard``.

    The path works whether or not the virtual environment is activated.
    """
    executable = Path(sys.executable).parent / "tensorboard"
    command = str(executable) if executable.exists() else "tensorboard"
    return (f"TensorBoard: {command} --logdir {logdir}  (then open http://localhost:6006; in the PROJECTOR "
            "tab pick a run's features and use 'Color by' class, split, prediction or correct)")


def select_projector_indices(labels: Any, per_class: int, seed: int = 0) -> np.ndarray:
    """Chooses up to ``per_class`` points of every class for the embedding projector.

    A uniform sample of a long-tailed set would show almost only head-class points; stratifying keeps
    every tail class in the picture (all of a class's points when it has ``per_class`` or fewer).

    Args:
        labels: Class id of every point (1-D list, numpy array or integer tensor).
        per_class: Most points kept per class (>= 1).
        seed: Seed of the choice within classes larger than ``per_class``.

    Returns:
        Sorted ``int64`` positions into ``labels``; the same for the same arguments.

    Example:
        >>> labels = [0] * 100 + [1] * 3 + [2] * 10
        >>> chosen = select_projector_indices(labels, per_class=5, seed=0)
        >>> np.bincount(np.asarray(labels)[chosen]).tolist()
        [5, 3, 5]
        >>> bool((chosen == select_projector_indices(labels, per_class=5, seed=0)).all())
        True
    """
    array = as_label_array(labels)
    if not is_int(per_class) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(array):  # sorted, so the draws happen in a fixed order
        positions = np.flatnonzero(array == label)
        if positions.size > per_class:
            positions = rng.choice(positions, size=per_class, replace=False)
        chosen.append(positions)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> Dict[str, Union[int, float, str, bool]]:
    """Flattens nested dicts with dots and turns every value into a type TensorBoard's HParams accepts.

    Numbers, strings and bools are kept (numpy/torch scalars become Python ones); lists, tuples,
    ``None`` and anything else become their ``str``.

    Example:
        >>> flatten_hparams({"model": {"arch": "resnet18", "dims": [512, 128]}, "lr": 0.1, "ema": None})
        {'model.arch': 'resnet18', 'model.dims': '[512, 128]', 'lr': 0.1, 'ema': 'None'}
    """
    flat: Dict[str, Union[int, float, str, bool]] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, prefix=f"{name}."))
            continue
        if isinstance(value, (np.generic, np.ndarray, torch.Tensor)) and _numel(value) == 1:
            value = value.item()
        if isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _numel(value: Any) -> int:
    # np.size misreads a torch tensor (its .size is a method), so each kind is asked its own way.
    return value.numel() if isinstance(value, torch.Tensor) else int(np.size(value))


def _as_matrix(matrix: Any) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    array = np.asarray(matrix)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"a confusion matrix must be square [C, C], got shape {array.shape}")
    if array.dtype.kind not in "iuf" or (array.size and (array.min() < 0 or not np.isfinite(array).all())):
        raise ValueError("a confusion matrix must hold finite non-negative counts")
    return array


def confusion_matrix_figure(matrix: Any, class_names: Sequence[str], title: str = "Confusion matrix"):
    """Draws a confusion matrix: colour is the row-normalised fraction, numbers are the counts.

    Rows are true classes and columns predictions (scikit-learn's convention), so the colour of a
    diagonal cell is that class's recall and a tail class with 10 images is as visible as a head class
    with 300.

    Args:
        matrix: ``[C, C]`` counts (numpy array, tensor or nested lists).
        class_names: ``C`` names, shown on both axes.
        title: The figure's title.

    Returns:
        A :class:`matplotlib.figure.Figure` (Agg canvas attached; save it with ``fig.savefig``).

    Example:
        >>> fig = confusion_matrix_figure([[8, 2], [1, 9]], ["good", "bent_lead"])
        >>> figure_to_array(fig).shape[2], figure_to_array(fig).dtype
        (3, dtype('uint8'))
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = _as_matrix(matrix)
    names = [str(name) for name in class_names]
    if len(names) != counts.shape[0]:
        raise ValueError(f"{len(names)} class names for a {counts.shape[0]}x{counts.shape[0]} matrix")
    totals = counts.sum(axis=1, keepdims=True)
    # A class with no true examples gets an empty (white) row instead of a division by zero.
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)

    size = max(4.0, 0.7 * len(names) + 2.5)
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class (row-normalised)")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    integral = bool(np.all(counts == np.round(counts)))
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            text = f"{int(counts[i, j])}" if integral else f"{counts[i, j]:.3g}"
            colour = "white" if fractions[i, j] > 0.5 else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_array(fig) -> np.ndarray:
    """Renders a matplotlib figure to an ``[H, W, 3]`` uint8 RGB array with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _thumbnails(images: Any, count: int, size: int) -> torch.Tensor:
    """``[N, C, H, W]`` uint8 (or float in [0, 1]) images as float ``[N, 3, h, w]`` in [0, 1], longest side <= size."""
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    tensor = tensor.detach().cpu()
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3) or tensor.shape[0] != count:
        raise ValueError(
            f"images must be [N, 3, H, W] (or [N, 1, H, W]) with N = {count} points, got {tuple(tensor.shape)}"
        )
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.dtype.is_floating_point:
        tensor = tensor.float()
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
            raise ValueError("float images must lie in [0, 1]; pass uint8 images otherwise")
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1], got {tensor.dtype}")
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    height, width = tensor.shape[2:]
    scale = size / max(height, width)
    if scale < 1:
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
        tensor = torch.nn.functional.interpolate(tensor, size=target, mode="bilinear", antialias=True,
                                                 align_corners=False).clamp_(0, 1)
    return tensor


def _write_sprite(thumbnails: torch.Tensor, path: Path) -> None:
    """Tiles thumbnails row-first into a square grid of ``ceil(sqrt(N))`` columns, as the projector expects."""
    from PIL import Image

    count, _, height, width = thumbnails.shape
    columns = math.ceil(math.sqrt(count))
    # Square (columns x columns) even when the last rows are empty: the projector derives the grid
    # from the sprite's size.
    grid = np.zeros((columns * height, columns * width, 3), dtype=np.uint8)
    pixels = (thumbnails.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = pixels[index]
    Image.fromarray(grid).save(path, format="PNG")


def _tsv_cell(value: Any) -> str:
    # Tabs and newlines would split a cell or a row of the TSV.
    return re.sub(r"[\t\r\n]+", " ", str(value))


def _safe_folder_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("._") or "embedding"


# ----------------------------------------------------------------------------------------------------
# Logger
# ----------------------------------------------------------------------------------------------------


class TensorBoardLogger:
    """A thin wrapper over ``SummaryWriter`` with bcl's conventions; a no-op when ``enabled=False``.

    Args:
        log_dir: Event folder, e.g. :attr:`bcl.runs.RunDir.tensorboard_dir`.
        enabled: ``False`` makes every method a no-op and creates no files (non-zero ranks).
        flush_secs: How often pending events are written to disk.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with TensorBoardLogger(folder) as tb:
        ...         tb.scalars({"loss": 0.5, "acc": None}, step=1, prefix="train")
        ...     any(name.startswith("events.out.tfevents") for name in os.listdir(folder))
        True
        >>> TensorBoardLogger("unused", enabled=False).scalars({"loss": 1.0}, step=0)  # does nothing
    """

    def __init__(self, log_dir: PathLike, enabled: bool = True, flush_secs: int = 30) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = bool(enabled)
        self._writer = None
        if self.enabled:
            # Imported here so non-zero ranks (and `import bcl.tensorboard`) do not pay for it.
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)

    @property
    def writer(self):
        """The underlying ``SummaryWriter`` (None when disabled), for anything not wrapped here."""
        return self._writer

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Logs each value as a scalar ``<prefix>/<key>``; None values are skipped, nested dicts add ``/key``.

        Args:
            values: Numbers (Python, numpy or one-element tensors; bools as 0/1), None, or nested
                dicts of them.
            step: The global step (e.g. epoch).
            prefix: Tag prefix such as ``"train"`` or ``"val"``.

        Raises:
            TypeError: A value that is not a number, naming its tag.
        """
        if self._writer is None:
            return
        prefix = prefix.strip("/")
        for key, value in values.items():
            tag = f"{prefix}/{key}" if prefix else str(key)
            if value is None:
                continue
            if isinstance(value, Mapping):
                self.scalars(value, step, prefix=tag)
                continue
            if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
                if _numel(value) != 1:
                    raise TypeError(f"scalar {tag!r} must be a single number, got shape {tuple(value.shape)}")
                value = value.item()
            if not isinstance(value, (int, float)):  # bools pass, as 0 and 1
                raise TypeError(f"scalar {tag!r} must be a number, got {type(value).__name__}: {value!r}")
            self._writer.add_scalar(tag, float(value), global_step=step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int = 0,
                log_metrics: bool = True) -> None:
        """Records a run's hyperparameters and final metrics for TensorBoard's HParams tab.

        Written into this run's own event folder (``SummaryWriter.add_hparams`` would start a separate
        timestamped sub-run), so the HParams table and the run's curves stay one run.

        Args:
            hparams: The (resolved) config; nested dicts are flattened with dots (``model.arch``),
                lists and None stringified.
            metrics: Final metric values by tag; None values are skipped.
            step: Step at which the metric values are written.
            log_metrics: Also write ``metrics`` as scalars (the HParams table reads a metric as the
                last value of the scalar with its tag); pass False when those tags were already logged
                with :meth:`scalars`.
        """
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = flatten_hparams(hparams)
        values = {}
        for tag, value in metrics.items():
            if value is None:
                continue
            if isinstance(value, (torch.Tensor, np.generic, np.ndarray)):
                value = value.item()
            values[str(tag)] = float(value)
        experiment, start, end = hparams_summary(flat, values)
        file_writer = self._writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary, step)
        if log_metrics:
            self.scalars(values, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """Logs an ``[H, W, 3]`` uint8 RGB image."""
        if self._writer is None:
            return
        self._writer.add_image(tag, np.asarray(image), global_step=step, dataformats="HWC")

    def figure(self, tag: str, fig, step: int) -> None:
        """Logs a matplotlib figure as an image (rendered with Agg; pyplot is never involved)."""
        if self._writer is None:
            return
        self.image(tag, figure_to_array(fig), step)

    def confusion_matrix(self, matrix: Any, class_names: Sequence[str], step: int,
                         tag: str = "confusion_matrix") -> None:
        """Logs :func:`confusion_matrix_figure` (counts as numbers, row-normalised colour) as an image."""
        if self._writer is None:
            return
        self.figure(tag, confusion_matrix_figure(matrix, class_names, title=f"{tag} (step {step})"), step)

    def embeddings(self, features: Any, metadata: Optional[Sequence[Mapping[str, Any]]] = None,
                   images: Any = None, step: int = 0, tag: str = "embeddings",
                   thumbnail_size: int = 48) -> Optional[Path]:
        """Writes points for TensorBoard's embedding projector, with metadata columns and thumbnails.

        Files go to ``<log_dir>/projector/<tag>/<step>/`` (``tensors.tsv``, ``metadata.tsv``,
        ``sprite.png``) and are listed in ``<log_dir>/projector_config.pbtxt``; logging the same tag
        and step again replaces that entry. Choose the points with :func:`select_projector_indices`
        so tail classes are shown.

        Args:
            features: ``[N, D]`` features (tensor or array).
            metadata: ``N`` dicts with the same keys (e.g. ``class``, ``split``, ``prediction``,
                ``correct``), one column each. With several keys the TSV has a header row; with one
                key it has none, as the projector requires for single-column metadata.
            images: ``[N, 3, H, W]`` uint8 images (or float in [0, 1], or 1 channel), or None.
            step: The global step, part of the folder and of the tensor's name.
            tag: The embedding's name.
            thumbnail_size: Longest side of a thumbnail in the sprite (images are only shrunk); lowered
                automatically if the sprite would exceed the projector's 8192-pixel limit.

        Returns:
            The folder written (None when disabled).
        """
        if self._writer is None:
            return None
        from google.protobuf import text_format
        from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

        matrix = features.detach().cpu().float().numpy() if isinstance(features, torch.Tensor) \
            else np.asarray(features, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise ValueError(f"features must be [N, D] with N >= 1, got shape {matrix.shape}")
        count = matrix.shape[0]
        if not is_int(step) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if not is_int(thumbnail_size) or thumbnail_size < 1:
            raise ValueError(f"thumbnail_size must be a positive int, got {thumbnail_size!r}")

        rows: List[List[str]] = []
        header: List[str] = []
        if metadata is not None:
            if len(metadata) != count:
                raise ValueError(f"{len(metadata)} metadata rows for {count} points")
            header = [str(key) for key in metadata[0]]
            if not header:
                raise ValueError("metadata rows must have at least one key")
            for index, row in enumerate(metadata):
                if [str(key) for key in row] != header:
                    raise ValueError(f"metadata row {index} has keys {list(row)}, expected {header}")
                rows.append([_tsv_cell(value) for value in row.values()])

        # Everything is checked (and thumbnails made) before the first file is written.
        thumbnails = None
        if images is not None:
            columns = math.ceil(math.sqrt(count))
            size = min(thumbnail_size, MAX_SPRITE_SIZE // columns)
            if size < 1:
                raise ValueError(f"{count} points are too many for a {MAX_SPRITE_SIZE}-pixel sprite")
            if size < thumbnail_size:
                logger.warning("%d points: thumbnails shrunk to %d px so the sprite fits in %d px",
                               count, size, MAX_SPRITE_SIZE)
            thumbnails = _thumbnails(images, count, size)

        folder_rel = f"projector/{_safe_folder_name(tag)}/{step:06d}"
        folder = self.log_dir / folder_rel
        folder.mkdir(parents=True, exist_ok=True)
        # float32 printed with 9 significant digits reads back as exactly the same float32.
        np.savetxt(folder / "tensors.tsv", matrix, fmt="%.9g", delimiter="\t")

        config = ProjectorConfig()
        config_path = self.log_dir / PROJECTOR_CONFIG
        if config_path.exists():
            try:
                text_format.Parse(config_path.read_text(encoding="utf-8"), config)
            except text_format.ParseError as error:
                logger.warning("%s is unreadable (%s); writing a new one", config_path, error)
                config = ProjectorConfig()
        name = f"{tag}:{step:06d}"
        kept = [entry for entry in config.embeddings if entry.tensor_name != name]
        del config.embeddings[:]
        config.embeddings.extend(kept)
        info = config.embeddings.add()
        info.tensor_name = name
        info.tensor_path = f"{folder_rel}/tensors.tsv"
        info.tensor_shape.extend(list(matrix.shape))

        if metadata is not None:
            lines = rows if len(header) == 1 else [header] + rows
            atomic_write_text(folder / "metadata.tsv", "".join("\t".join(line) + "\n" for line in lines))
            info.metadata_path = f"{folder_rel}/metadata.tsv"

        if thumbnails is not None:
            _write_sprite(thumbnails, folder / "sprite.png")
            info.sprite.image_path = f"{folder_rel}/sprite.png"
            info.sprite.single_image_dim.extend([thumbnails.shape[3], thumbnails.shape[2]])  # width, height

        atomic_write_text(config_path, text_format.MessageToString(config))
        logger.debug("wrote %d projector points to %s", count, folder)
        return folder

    def flush(self) -> None:
        """Writes pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the writer; later calls do nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
