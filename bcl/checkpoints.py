"""Checkpoints and atomic files: what a checkpoint may hold, how it is written, how it is read back.

Every file is written atomically (a temporary file in the same folder, flushed and fsynced, then
:func:`os.replace` onto the final name), so a process killed while writing leaves the previous version
intact and never a partial file under the final name; an interrupt (Ctrl-C, SIGTERM) during a write
removes the temporary file on its way out.

Checkpoints are loaded with ``torch.load(weights_only=True)``, which unpickles no arbitrary objects
(loading a checkpoint cannot run code). A checkpoint may therefore hold only tensors (and
``nn.Parameter``), ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``, ``tuple``,
``dict``/``OrderedDict``, ``torch.Size``, ``torch.dtype`` and ``torch.device`` — which covers
``state_dict()`` of models, optimizers, LR schedulers and ``GradScaler``. :func:`check_checkpoint_safe`
checks this *before* writing (a TypeError naming the offending key), so a bad checkpoint fails at save
time rather than hours later at resume. Numpy arrays and scalars are not allowed: convert them with
:func:`checkpoint_safe`. Random number generator states are not saved: the training loop reseeds every
stream from ``(run.seed, epoch)`` at the start of each epoch, so a resumed run draws what the
uninterrupted one drew.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "atomic_write_text",
    "atomic_torch_save",
    "load_checkpoint_file",
    "check_checkpoint_safe",
    "checkpoint_safe",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be loaded (corrupt, truncated, or holds disallowed objects)."""


# ----------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Makes a rename durable on POSIX; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temporary(path: Path) -> tuple:
    """Creates a new hidden ``.<name>.<random>.tmp`` beside ``path`` and opens it for writing.

    It gets the permissions a plain ``open()`` gives (the umask applies; ``tempfile.mkstemp`` would make it 0600).

    Returns:
        ``(tmp, fd)``: the temporary file's path and its OS-level file descriptor, open for writing.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


def _interrupt_behind(error: BaseException) -> Optional[BaseException]:
    """The KeyboardInterrupt that ``error`` was raised while handling, if any (or ``error`` itself)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__context__
    return None


def _atomic_write(path: PathLike, write: Callable[[Any], None]) -> Path:
    """Calls ``write(binary_file)`` on a temporary file next to ``path``, then renames it onto ``path``.

    The temporary file lives in the same folder so :func:`os.replace` is a same-filesystem rename
    (atomic on POSIX and Windows). On any failure, including KeyboardInterrupt, it is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and suffixed .tmp so a glob for "*.pt" or "*.json" never picks up a half-written file.
    tmp, fd = _new_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        interrupt = _interrupt_behind(error)
        if interrupt is not None and interrupt is not error:
            # Ctrl-C / SIGTERM landed inside torch.save, whose clean-up then failed on the half-written
            # archive ("unexpected pos"): the interrupt is what happened, so that is what is raised.
            raise interrupt from None
        if isinstance(error, OSError) and error.errno is not None and not error.filename:
            # A full disk or a lost mount reports no file; say which one could not be written.
            raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from error
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    r"""Writes ``text`` to ``path`` atomically: readers see the old file or the new one, never a mix.

    Args:
        path: The file to write; parent folders are created.
        text: The content.
        encoding: Text encoding.

    Returns:
        The path written, as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = atomic_write_text(Path(folder) / "a" / "note.txt", "hello\n")
        ...     path.read_text(), sorted(p.name for p in path.parent.iterdir())
        ('hello\n', ['note.txt'])
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    data = text.encode(encoding)
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, flush, fsync, :func:`os.replace`).

    A process killed mid-write leaves the previous file at ``path`` intact and no partial file under
    that name (at worst a hidden ``.<name>.*.tmp`` file if killed by SIGKILL; any Python exception,
    including KeyboardInterrupt, removes it).

    Args:
        obj: What to save.
        path: The destination; parent folders are created.

    Returns:
        The path written.
    """
    # torch.save goes to memory first, never straight into the temporary file: an interrupt that lands
    # between torch's archive writer being made and being finished leaves that writer to finish itself
    # when it is garbage-collected, and if its target were our (by then closed) file, its write would
    # raise inside a C++ destructor and abort the process (SIGABRT) after the clean interrupt message.
    def write(handle) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        handle.write(buffer.getbuffer())

    return _atomic_write(path, write)


# ----------------------------------------------------------------------------------------------------
# Checkpoint contents
# ----------------------------------------------------------------------------------------------------

# What torch.load(weights_only=True) accepts on every torch this package supports (>= 2.1). Newer
# torch also takes set, Counter and complex; they are left out so checkpoints stay portable.
_SAFE_LEAVES = (type(None), bool, int, float, str, bytes)
_SAFE_TYPES = (torch.dtype, torch.device)
_ALLOWED_DESCRIPTION = (
    "tensors, None, bool, int, float, str, bytes, list, tuple, dict/OrderedDict, torch.Size, "
    "torch.dtype and torch.device"
)


def _key_path(parent: str, key: Any) -> str:
    return f"{parent}[{key!r}]"


def check_checkpoint_safe(obj: Any, name: str = "state") -> None:
    """Raises TypeError if ``obj`` holds anything ``torch.load(weights_only=True)`` might refuse.

    Args:
        obj: A checkpoint's contents.
        name: How to call ``obj`` in the error message.

    Raises:
        TypeError: Naming the first offending entry (e.g. ``state['sampler']['counts']``) and its type.

    Example:
        >>> check_checkpoint_safe({"epoch": 3, "model": {"w": torch.zeros(2)}, "betas": (0.9, 0.99)})
        >>> check_checkpoint_safe({"counts": np.array([3, 1])})
        Traceback (most recent call last):
        ...
        TypeError: state['counts'] is a numpy.ndarray, which torch.load(weights_only=True) refuses; ...
    """
    # Iterative walk: deep nests cannot hit the recursion limit. A container met again is either shared
    # (the optimiser's param groups share one `betas` tuple: checked once, fine) or its own ancestor (a
    # cycle: refused), so each entry carries the ids of the containers above it.
    stack: List[Tuple[Any, str, Tuple[int, ...]]] = [(obj, name, ())]
    checked = set()
    while stack:
        value, where, above = stack.pop()
        # Exact types: numpy.float64 subclasses float and IntEnum subclasses int, yet both pickle as
        # globals that weights_only refuses.
        if isinstance(value, torch.Tensor) or type(value) in _SAFE_LEAVES or isinstance(value, _SAFE_TYPES):
            continue
        if isinstance(value, (list, tuple, dict)):  # torch.Size and OrderedDict are subclasses
            if id(value) in above:
                raise TypeError(f"{where} contains itself (a reference cycle); checkpoints must be trees")
            if id(value) in checked:
                continue
            checked.add(id(value))
            inside = (*above, id(value))
            if isinstance(value, dict):
                if type(value) not in (dict, collections.OrderedDict):
                    raise TypeError(f"{where} is a {type(value).__name__}; use a plain dict")
                for key, item in value.items():
                    if type(key) not in _SAFE_LEAVES:
                        raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
                    stack.append((item, _key_path(where, key), inside))
            else:
                if type(value) not in (list, tuple, torch.Size):
                    raise TypeError(f"{where} is a {type(value).__name__}; use a plain list or tuple")
                stack.extend((item, f"{where}[{i}]", inside) for i, item in enumerate(value))
            continue
        kind = f"{type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")
        raise TypeError(
            f"{where} is a {kind}, which torch.load(weights_only=True) refuses; checkpoints may hold "
            f"only {_ALLOWED_DESCRIPTION} (convert numpy with bcl.checkpoints.checkpoint_safe)"
        )


def checkpoint_safe(obj: Any) -> Any:
    """Converts numpy values and paths into types a ``weights_only`` checkpoint can hold.

    Numpy arrays become tensors (same dtype and values), numpy scalars Python scalars, paths strings;
    containers are rebuilt, everything else is returned as it is (and checked at save time).

    Example:
        >>> safe = checkpoint_safe({"counts": np.array([3, 1]), "lr": np.float64(0.1), "dir": Path("a")})
        >>> safe["counts"], safe["lr"], safe["dir"]
        (tensor([3, 1]), 0.1, 'a')
    """
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        converted = {checkpoint_safe(k): checkpoint_safe(v) for k, v in obj.items()}
        return collections.OrderedDict(converted) if isinstance(obj, collections.OrderedDict) else converted
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        items = [checkpoint_safe(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def load_checkpoint_file(
    path: PathLike, map_location: Any = "cpu", weights_only: bool = True
) -> Dict[str, Any]:
    """Loads a checkpoint file written by :func:`atomic_torch_save`, with errors that name the file.

    Args:
        path: The checkpoint file.
        map_location: Passed to :func:`torch.load` (``"cpu"`` by default, so any checkpoint loads on a
            machine without the GPU it was saved on).
        weights_only: Keep ``True`` (no arbitrary unpickling); ``False`` only for trusted old files.

    Returns:
        The saved object.

    Raises:
        FileNotFoundError: No file at ``path``.
        CheckpointError: The file is corrupt or truncated, or holds objects ``weights_only`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:
        text = str(error)
        # torch's weights_only message is long; its one informative line follows "WeightsUnpickler error:".
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        reason = detail.group(1).strip() if detail else (text.strip().splitlines() or [""])[0]
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in text:
            raise CheckpointError(
                f"checkpoint {path} holds objects that torch.load(weights_only=True) refuses ({reason}); "
                f"bcl checkpoints may hold only {_ALLOWED_DESCRIPTION}"
            ) from error
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupt ({path.stat().st_size} bytes; "
            f"{type(error).__name__}: {reason}); it may have been written by an interrupted copy, or "
            f"is not a torch checkpoint"
        ) from error
