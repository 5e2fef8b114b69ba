"""Run folders: resolved config, atomic checkpoints, JSON-lines log, final metrics, environment record.

One folder per run (DESIGN §5)::

    <output_dir>/<name>/
        config.yaml         the resolved config (YAML text from the config module)
        environment.json    when, where and with which code and library versions the run started
        metrics.jsonl       one JSON object per line (per epoch / evaluation), appended as the run goes
        metrics.json        the final metrics, pretty-printed with sorted keys
        checkpoints/        last.pt (and e.g. best.pt), each written atomically
        tensorboard/        TensorBoard events and the embedding projector (bcl.tensorboard)

An existing run is never silently reused or overwritten: :meth:`RunDir.open` refuses a non-empty folder
unless told to ``resume`` it (which needs ``checkpoints/last.pt``; a missing checkpoint is an error,
never a silent fresh start) or to ``overwrite`` it (the old folder is moved aside, not deleted). The one
exception is a folder whose run died before its first checkpoint (no ``checkpoints/*.pt``, no
``metrics.json``, no live owner): it holds no result, so a new run under that name replaces it, with a
warning.

One writer per run folder: the process that opens a run holds an advisory lock on ``<run>/.lock``
(``fcntl.flock``, which the operating system releases when the process dies, so a crashed owner never
blocks a resume) and writes its pid, host and start time into it; a second process that opens the same
run is refused with a message naming that pid. A new run's folder is built under a temporary name and
renamed into place whole, so two runs started together under one name cannot both get it.

Files are written atomically and checkpoints hold only what ``torch.load(weights_only=True)`` reads
(:mod:`bcl.checkpoints`); ``environment.json`` comes from :mod:`bcl.provenance`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from bcl.checkpoints import (
    atomic_torch_save,
    atomic_write_text,
    check_checkpoint_safe,
    load_checkpoint_file,
)
from bcl.provenance import environment_info

__all__ = [
    "RunDir",
    "RunExistsError",
    "RunLockedError",
    "RUN_MODES",
    "PORTABLE_RUN_FILES",
    "release_lock",
    "to_jsonable",
    "read_jsonl",
    "load_test_metrics",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

RUN_MODES = ("new", "resume", "overwrite")

#: The files of a run folder another machine needs to resume it (and, once finished, its result): what a
#: results store in a repository commits, where present (``best.pt`` exists only when the run selects an
#: epoch on validation; the final evaluation reloads it). TensorBoard events and the lock stay behind.
PORTABLE_RUN_FILES = (
    "config.yaml", "environment.json", "metrics.jsonl", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt",
)
LAST_CHECKPOINT = "last.pt"


class RunExistsError(FileExistsError):
    """A new run was asked for in a folder that already holds a run."""


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock (two writers would mix their logs and checkpoints)."""


# ----------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------


def to_jsonable(obj: Any, name: str = "record") -> Any:
    """Converts ``obj`` into plain JSON types; NaN and infinities become ``None`` with a warning.

    Numpy and torch scalars become Python numbers, arrays and tensors (nested) lists, paths strings,
    tuples lists; dict keys that are numbers become strings (as :mod:`json` would).

    Args:
        obj: The value to convert.
        name: How to call ``obj`` in warnings and errors (keys are appended, e.g. ``record['loss']``).

    Raises:
        TypeError: A value with no JSON form, naming where it is.

    Example:
        >>> to_jsonable({"acc": np.float32(0.5), "counts": torch.tensor([3, 1]), "loss": float("nan")})
        {'acc': 0.5, 'counts': [3, 1], 'loss': None}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.generic, np.ndarray)):
        obj = obj.tolist()
    elif isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    elif isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        logger.warning("%s is %s; written as null", name, obj)
        return None
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(key, (np.generic, torch.Tensor)):
                key = key.item()
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"{name} has a key of type {type(key).__name__} ({key!r}); use str keys")
            out[key if isinstance(key, str) else json.dumps(key)] = to_jsonable(value, f"{name}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value, f"{name}[{i}]") for i, value in enumerate(obj)]
    raise TypeError(f"{name} is a {type(obj).__name__}, which has no JSON form: {obj!r}")


def load_test_metrics(run_dir: PathLike) -> Dict[str, Any]:
    """The ``metrics.json`` of a finished run.

    Raises:
        FileNotFoundError: The run has no ``metrics.json`` (it did not finish).
        ValueError: The file is not a finished run's metrics.
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run in {run_dir} has not finished")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict) or "class_names" not in metrics:
        raise ValueError(f"{path} holds no test metrics with class names")
    return metrics


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    r"""Reads a JSON-lines file (one object per line), e.g. a run's ``metrics.jsonl``.

    A run killed mid-write can leave a partial last line: it is skipped with a warning. An unreadable
    line anywhere else is an error.

    Args:
        path: The file.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A line that is not JSON (other than a partial last line), naming the line.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "log.jsonl"
        ...     _ = path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
        ...     read_jsonl(path)
        [{'epoch': 0}, {'epoch': 1}]
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    complete = lines[-1] == ""  # a file whose last write finished ends with "\n"
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not complete:
                logger.warning("%s: skipping a partial last line (a run interrupted mid-write?)", path)
                continue
            raise ValueError(f"{path} line {number} is not JSON: {error}") from error
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"a run or checkpoint name must be one non-empty path component, got {name!r}")


def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


try:
    import fcntl
except ImportError:  # Windows: no flock; runs work, but two writers are not kept apart
    fcntl = None

LOCK_FILE = ".lock"
# Run folders this process holds the lock of (resolved path -> open lock file): opening the same run
# twice in one process (a resume after a fresh start in a notebook or a test) is the same owner.
_HELD_LOCKS: Dict[Path, int] = {}


def _lock_owner(lock_path: Path) -> str:
    # The owner writes its record just after taking the lock, over an empty file (a clean release
    # empties it) or the record of a killed owner: give it a moment before giving up.
    for _ in range(40):
        try:
            owner = json.loads(lock_path.read_text(encoding="utf-8"))
            if owner["host"] != socket.gethostname() or _alive(int(owner["pid"])):
                return f"process {owner['pid']} on {owner['host']} (since {owner['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.025)
    return "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return True


def _acquire_lock(folder: Path) -> None:
    """Takes ``<folder>/.lock`` for this process or raises :class:`RunLockedError` naming its owner."""
    key = folder.resolve()
    if key in _HELD_LOCKS or fcntl is None:
        return
    lock_path = folder / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunLockedError(
            f"run folder {folder} is in use by {_lock_owner(lock_path)}: one run folder takes one writer; "
            f"wait for that run to end (or stop it), or choose another run.name"
        ) from None
    owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, owner.encode("utf-8") + b"\n", 0)
    _HELD_LOCKS[key] = fd


def release_lock(folder: PathLike) -> None:
    """Gives up this process's lock on a run folder (a no-op if it holds none); process exit does it too."""
    fd = _HELD_LOCKS.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.ftruncate(fd, 0)  # no owner any more: a process refused in the next instant must not name this one
        os.close(fd)  # closing the descriptor releases the flock


def _remove_stale_temporaries(folder: Path) -> None:
    """Deletes the hidden ``.<name>.*.tmp`` files of writes a killed process never finished.

    Only called with the folder's lock held, so no live writer owns them.
    """
    stale = [p for where in (folder, folder / "checkpoints") if where.is_dir()
             for p in where.glob(".*.tmp") if p.is_file()]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    if stale:
        logger.warning("removed %d unfinished temporary file(s) left in %s by a killed run: %s", len(stale),
                       folder, ", ".join(p.name for p in stale))


def _holds_results(folder: Path) -> bool:
    """Whether a run folder holds anything a new run must not replace: a checkpoint or final metrics.

    Anything that is not a run folder (no ``config.yaml``) counts as holding something.
    """
    if not (folder / "config.yaml").is_file():
        return True
    return (folder / "metrics.json").exists() or any((folder / "checkpoints").glob("*.pt"))


def _create_run_folder(path: Path) -> None:
    """Builds the run skeleton under a temporary name, locked, and renames it onto ``path`` whole.

    The rename succeeds onto a missing or empty folder only, so of two processes starting the same run
    name at once exactly one gets it; the other gets :class:`RunExistsError`.
    """
    staging = path.with_name(f".{path.name}.new-{secrets.token_hex(6)}")
    staging.mkdir()  # mkdir, not tempfile.mkdtemp, so the umask (not 0700) sets its permissions
    (staging / "checkpoints").mkdir()
    (staging / "tensorboard").mkdir()
    _acquire_lock(staging)
    try:
        os.rename(staging, path)
    except OSError:
        release_lock(staging)
        shutil.rmtree(staging, ignore_errors=True)
        if path.is_dir() and path.resolve() not in _HELD_LOCKS:
            _acquire_lock(path)  # a run that got there first and still runs: name its owner
            release_lock(path)
        raise RunExistsError(
            f"run folder {path} already exists and is not empty. To continue that run, pass --resume; to "
            f"replace it (the old folder is moved aside, not deleted), pass run.overwrite=true; or choose "
            f"another run name"
        ) from None
    fd = _HELD_LOCKS.pop(staging.resolve(), None)
    if fd is not None:  # None where there is no flock (Windows)
        _HELD_LOCKS[path.resolve()] = fd


class RunDir:
    """One run's folder: config, checkpoints, TensorBoard events, JSON-lines log, metrics, environment.

    Create or reopen one with :meth:`open`; ``RunDir(path)`` just wraps an existing folder (e.g. to
    read a finished run's metrics) without any checks.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as out:
        ...     run = RunDir.open(out, "demo")
        ...     _ = run.save_checkpoint({"epoch": 1, "w": torch.ones(2)})
        ...     run.append_log({"epoch": 1, "loss": 0.5})
        ...     resumed = RunDir.open(out, "demo", mode="resume")
        ...     resumed.load_checkpoint()["epoch"], resumed.read_log()
        (1, [{'epoch': 1, 'loss': 0.5}])
    """

    def __init__(self, path: PathLike) -> None:
        self._path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self._path)!r})"

    def __fspath__(self) -> str:
        return str(self._path)

    @classmethod
    def open(cls, output_dir: PathLike, name: str, mode: str = "new", lock: bool = True) -> "RunDir":
        """Creates, resumes or replaces the run folder ``<output_dir>/<name>`` and locks it for this process.

        Args:
            output_dir: Folder holding all runs (created if missing).
            name: The run's folder name (one path component).
            mode: ``"new"``: create the folder; an existing non-empty folder is refused, unless its run
                died before its first checkpoint (it is then replaced, with a warning).
                ``"resume"``: reopen a run, which must hold ``checkpoints/last.pt``; unfinished temporary
                files of a killed writer are removed.
                ``"overwrite"``: move an existing folder aside to ``<name>.replaced-<UTC time>``
                (nothing is deleted), then create it afresh.
            lock: take the folder's lock (every caller except the non-main processes of a multi-process
                run, which write nothing, should).

        Returns:
            The run folder, with ``checkpoints/`` and ``tensorboard/`` created.

        Raises:
            RunExistsError: ``mode="new"`` and the folder already holds a run with results.
            RunLockedError: Another live process holds the folder (the message names its pid).
            FileNotFoundError: ``mode="resume"`` and the folder or its ``checkpoints/last.pt`` is missing.
            ValueError: An unknown mode or a name that is not a single path component.
        """
        if mode not in RUN_MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, RUN_MODES))}, got {mode!r}")
        _check_name(name)
        path = Path(output_dir) / name
        run = cls(path)
        if mode == "resume":
            if not path.is_dir():
                raise FileNotFoundError(
                    f"cannot resume run {path}: the folder does not exist (start it without --resume)"
                )
            last = run.checkpoint_path(LAST_CHECKPOINT)
            if not last.is_file():
                raise FileNotFoundError(
                    f"cannot resume run {path}: no checkpoint at {last}. A missing checkpoint is an "
                    f"error, never a silent fresh start; to start this run again from scratch, replace "
                    f"the folder with run.overwrite=true"
                )
            if lock:
                _acquire_lock(path)
                _remove_stale_temporaries(path)
            logger.info("resuming run %s from %s", path, last)
            return run
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(error.errno, f"cannot create the runs folder {path.parent} (run.output_dir): "
                                       f"{error.strerror}") from None
        if path.is_dir() and lock and path.resolve() not in _HELD_LOCKS:
            # An existing run folder: refused while another process owns it, whatever it holds.
            _acquire_lock(path)
            if mode == "new" and any(path.iterdir()) and not _holds_results(path):
                logger.warning("run folder %s holds a run that stopped before its first checkpoint (no "
                               "results): replacing it", path)
                shutil.rmtree(path)
            release_lock(path)
        if mode == "overwrite" and (path.exists() or path.is_symlink()):
            aside = path.with_name(f"{name}.replaced-{_utc_stamp()}")
            suffix = 1
            while aside.exists():  # two replacements within one second
                suffix += 1
                aside = path.with_name(f"{name}.replaced-{_utc_stamp()}-{suffix}")
            os.replace(path, aside)
            logger.warning("run.overwrite=true: moved the previous run %s aside to %s", path, aside)
        if path.is_dir() and not any(p.name != LOCK_FILE for p in path.iterdir()):
            # An empty folder (e.g. made by a scheduler for the job's output) holds no run to lose.
            (path / LOCK_FILE).unlink(missing_ok=True)
        if lock:
            _create_run_folder(path)
        else:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
            (path / "tensorboard").mkdir(exist_ok=True)
        logger.info("new run folder %s", path)
        return run

    def release(self) -> None:
        """Gives up this process's lock on the folder (the run's process exiting does it too)."""
        release_lock(self._path)

    # Paths ------------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The run folder."""
        return self._path

    @property
    def checkpoint_dir(self) -> Path:
        """``<run>/checkpoints``."""
        return self._path / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        """``<run>/tensorboard`` (give it to :class:`bcl.tensorboard.TensorBoardLogger`)."""
        return self._path / "tensorboard"

    @property
    def log_path(self) -> Path:
        """``<run>/metrics.jsonl``: the JSON-lines log."""
        return self._path / "metrics.jsonl"

    @property
    def metrics_path(self) -> Path:
        """``<run>/metrics.json``: the final metrics."""
        return self._path / "metrics.json"

    @property
    def config_path(self) -> Path:
        """``<run>/config.yaml``: the resolved config."""
        return self._path / "config.yaml"

    @property
    def environment_path(self) -> Path:
        """``<run>/environment.json``."""
        return self._path / "environment.json"

    def checkpoint_path(self, name: str = LAST_CHECKPOINT) -> Path:
        """``<run>/checkpoints/<name>``."""
        _check_name(name)
        return self.checkpoint_dir / name

    # Files ------------------------------------------------------------------------------------------

    def save_config(self, text: str) -> Path:
        """Writes the resolved config (YAML text) to ``config.yaml`` atomically."""
        return atomic_write_text(self.config_path, text)

    def save_checkpoint(self, state: Dict[str, Any], name: str = LAST_CHECKPOINT) -> Path:
        """Saves ``state`` to ``checkpoints/<name>`` atomically, after checking it loads with weights_only.

        Args:
            state: The checkpoint (see the module docstring for what it may hold).
            name: File name, e.g. ``"last.pt"`` or ``"best.pt"``.

        Returns:
            The path written.

        Raises:
            TypeError: ``state`` holds something ``torch.load(weights_only=True)`` would refuse.
        """
        check_checkpoint_safe(state)
        path = atomic_torch_save(state, self.checkpoint_path(name))
        logger.debug("saved checkpoint %s", path)
        return path

    def load_checkpoint(self, name: str = LAST_CHECKPOINT, map_location: Any = "cpu") -> Dict[str, Any]:
        """Loads ``checkpoints/<name>`` with ``weights_only=True``.

        Raises:
            FileNotFoundError: The checkpoint does not exist (the message names its path).
            CheckpointError: The file is corrupt or truncated (the message names it).
        """
        return load_checkpoint_file(self.checkpoint_path(name), map_location=map_location)

    def append_log(self, record: Dict[str, Any]) -> None:
        """Appends ``record`` as one JSON line to ``metrics.jsonl`` and flushes it at once.

        Numpy/torch values are converted; NaN and infinities are written as ``null`` with a warning.

        Raises:
            TypeError: ``record`` is not a dict, or holds a value with no JSON form.
        """
        if not isinstance(record, dict):
            raise TypeError(f"a log record must be a dict, got {type(record).__name__}")
        line = json.dumps(to_jsonable(record), allow_nan=False, ensure_ascii=False)
        with open(self.log_path, "a+b") as handle:
            # A run killed mid-line leaves no trailing newline; start a fresh line so the record
            # appended after resuming is not glued onto the partial one.
            prefix = b""
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    prefix = b"\n"
            handle.write(prefix + line.encode("utf-8") + b"\n")
            handle.flush()

    def read_log(self) -> List[Dict[str, Any]]:
        """The records of ``metrics.jsonl`` (an empty list if nothing was logged yet)."""
        return read_jsonl(self.log_path) if self.log_path.exists() else []

    def write_metrics(self, metrics: Dict[str, Any]) -> Path:
        """Writes ``metrics.json`` atomically: pretty-printed, sorted keys, NaN as ``null``."""
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
        text = json.dumps(to_jsonable(metrics, "metrics"), indent=2, sort_keys=True, allow_nan=False,
                          ensure_ascii=False)
        return atomic_write_text(self.metrics_path, text + "\n")

    def write_environment(self, code_path: Optional[PathLike] = None) -> Dict[str, Any]:
        """Writes ``environment.json`` (see :func:`environment_info`) and returns its contents."""
        info = environment_info(code_path)
        atomic_write_text(self.environment_path, json.dumps(to_jsonable(info, "environment"), indent=2,
                                                            sort_keys=True) + "\n")
        return info
