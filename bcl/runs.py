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

Every file is written atomically (a temporary file in the same folder, flushed and fsynced, then
:func:`os.replace` onto the final name), so a run killed while writing leaves the previous version
intact and never a partial file under the final name.

Checkpoints are loaded with ``torch.load(weights_only=True)``, which unpickles no arbitrary objects
(loading a checkpoint cannot run code). A checkpoint may therefore hold only tensors (and
``nn.Parameter``), ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``, ``tuple``,
``dict``/``OrderedDict``, ``torch.Size``, ``torch.dtype`` and ``torch.device`` — which covers
``state_dict()`` of models, optimizers, LR schedulers and ``GradScaler``. :meth:`RunDir.save_checkpoint`
checks this *before* writing (a TypeError naming the offending key), so a bad checkpoint fails at save
time rather than hours later at resume. Numpy arrays and scalars are not allowed: convert them with
:func:`checkpoint_safe`. Random number generator states are not saved: the training loop reseeds every
stream from ``(run.seed, epoch)`` at the start of each epoch, so a resumed run draws what the
uninterrupted one drew.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import logging
import math
import os
import pickle
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch

__all__ = [
    "RunDir",
    "RunExistsError",
    "RunLockedError",
    "CheckpointError",
    "RUN_MODES",
    "atomic_write_text",
    "atomic_torch_save",
    "atomic_copy",
    "load_checkpoint_file",
    "check_checkpoint_safe",
    "checkpoint_safe",
    "to_jsonable",
    "read_jsonl",
    "git_info",
    "environment_info",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

RUN_MODES = ("new", "resume", "overwrite")
LAST_CHECKPOINT = "last.pt"


class RunExistsError(FileExistsError):
    """A new run was asked for in a folder that already holds a run."""


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock (two writers would mix their logs and checkpoints)."""


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
    """A new hidden ``.<name>.<random>.tmp`` beside ``path``, opened for writing with the permissions a
    plain ``open()`` gives (the umask applies; ``tempfile.mkstemp`` would make it 0600)."""
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
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
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
    """Writes ``text`` to ``path`` atomically: readers see the old file or the new one, never a mix.

    Args:
        path: The file to write; parent folders are created.
        text: The content.
        encoding: Text encoding.

    Returns:
        The path written, as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = atomic_write_text(Path(folder) / "a" / "note.txt", "hello\\n")
        ...     path.read_text(), sorted(p.name for p in path.parent.iterdir())
        ('hello\\n', ['note.txt'])
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
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_copy(source: PathLike, target: PathLike) -> Path:
    """Copies ``source`` to ``target`` atomically (e.g. ``last.pt`` to ``best.pt``).

    Args:
        source: An existing file.
        target: The destination; replaced atomically if it exists.

    Returns:
        The target path.

    Raises:
        FileNotFoundError: ``source`` does not exist.
    """
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"cannot copy {source}: no such file")

    def write(handle: Any) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle, length=16 * 1024 * 1024)

    return _atomic_write(target, write)


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
    # Iterative walk: deep nests cannot hit the recursion limit, and cycles are caught.
    stack = [(obj, name)]
    seen = set()
    while stack:
        value, where = stack.pop()
        # Exact types: numpy.float64 subclasses float and IntEnum subclasses int, yet both pickle as
        # globals that weights_only refuses.
        if isinstance(value, torch.Tensor) or type(value) in _SAFE_LEAVES or isinstance(value, _SAFE_TYPES):
            continue
        if isinstance(value, (list, tuple, dict)):  # torch.Size and OrderedDict are subclasses
            if id(value) in seen:
                raise TypeError(f"{where} contains itself (a reference cycle); checkpoints must be trees")
            seen.add(id(value))
            if isinstance(value, dict):
                if type(value) not in (dict, collections.OrderedDict):
                    raise TypeError(f"{where} is a {type(value).__name__}; use a plain dict")
                for key, item in value.items():
                    if type(key) not in _SAFE_LEAVES:
                        raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
                    stack.append((item, _key_path(where, key)))
            else:
                if type(value) not in (list, tuple, torch.Size):
                    raise TypeError(f"{where} is a {type(value).__name__}; use a plain list or tuple")
                stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
            continue
        kind = f"{type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")
        raise TypeError(
            f"{where} is a {kind}, which torch.load(weights_only=True) refuses; checkpoints may hold "
            f"only {_ALLOWED_DESCRIPTION} (convert numpy with bcl.runs.checkpoint_safe)"
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
            out[key if isinstance(key, str) else json.dumps(key)] = to_jsonable(value, _key_path(name, key))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value, f"{name}[{i}]") for i, value in enumerate(obj)]
    raise TypeError(f"{name} is a {type(obj).__name__}, which has no JSON form: {obj!r}")


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    """Reads a JSON-lines file (one object per line), e.g. a run's ``metrics.jsonl``.

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
        ...     _ = path.write_text('{"epoch": 0}\\n{"epoch": 1}\\n{"epo')
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
# Environment
# ----------------------------------------------------------------------------------------------------


def _git(folder: Path, *args: str) -> Optional[str]:
    """Output of ``git -C folder args``, or None when git is missing, fails or hangs."""
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock under a concurrent git command.
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_info(path: Optional[PathLike] = None) -> Dict[str, Any]:
    """The git commit of the code at ``path`` and whether its working tree has uncommitted changes.

    Never fails: ``commit`` and ``dirty`` are None when ``path`` is not inside a git checkout, git is
    not installed, or the files at ``path`` are not tracked by the enclosing repository (e.g. bcl
    installed into a virtual environment that itself sits inside some repository).

    Args:
        path: A folder of code; by default the folder of the ``bcl`` package.

    Returns:
        ``{"commit": 40-hex str or None, "dirty": bool or None, "root": str or None}``; ``dirty``
        counts changes to tracked files only (untracked run outputs do not make a tree dirty).
    """
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    if folder.is_file():
        folder = folder.parent
    none = {"commit": None, "dirty": None, "root": None}
    if not folder.is_dir():
        return none
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None or _git(folder, "ls-files", "--error-unmatch", "--", ".") is None:
        return none
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    root = _git(folder, "rev-parse", "--show-toplevel")
    return {
        "commit": commit.strip(),
        "dirty": None if status is None else bool(status.strip()),
        "root": None if root is None else root.strip(),
    }


def _version(distributions: tuple, module: Optional[str] = None) -> Optional[str]:
    """Installed version of the first distribution found, else ``module.__version__``, else None."""
    from importlib import metadata

    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    if module is not None:
        try:
            return str(getattr(__import__(module), "__version__", None))
        except Exception:  # a broken optional install must not stop a run from starting
            return None
    return None


def environment_info(code_path: Optional[PathLike] = None) -> Dict[str, Any]:
    """When, where and with what a run starts: time, host, versions, git commit, command line.

    Args:
        code_path: Folder whose git commit is recorded; by default the ``bcl`` package's.

    Returns:
        A JSON-serialisable dict (keys: ``start_time_utc``, ``hostname``, ``platform``, ``python``,
        ``versions``, ``git``, ``argv``, ``cuda``, ``env``).
    """
    import bcl

    versions = {
        "bcl": getattr(bcl, "__version__", None),
        "torch": torch.__version__,
        "torchvision": _version(("torchvision",), "torchvision"),
        "numpy": np.__version__,
        "faiss": _version(("faiss-cpu", "faiss-gpu", "faiss", "faiss-gpu-cu12", "faiss-gpu-cu11"), "faiss"),
        "scikit-learn": _version(("scikit-learn",)),
    }
    cuda: Dict[str, Any] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        cuda["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cuda["cudnn"] = torch.backends.cudnn.version()
    watched = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_JOB_ID")
    return {
        "start_time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "git": git_info(code_path),
        "argv": list(sys.argv),
        "cuda": cuda,
        "torch_threads": torch.get_num_threads(),
        "env": {key: os.environ[key] for key in watched if key in os.environ},
    }


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
        return True
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
    _HELD_LOCKS[path.resolve()] = _HELD_LOCKS.pop(staging.resolve())


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

    def has_checkpoint(self, name: str = LAST_CHECKPOINT) -> bool:
        """Whether ``checkpoints/<name>`` exists."""
        return self.checkpoint_path(name).is_file()

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

    def copy_checkpoint(self, source: str = LAST_CHECKPOINT, target: str = "best.pt") -> Path:
        """Copies ``checkpoints/<source>`` to ``checkpoints/<target>`` atomically (e.g. keep the best)."""
        return atomic_copy(self.checkpoint_path(source), self.checkpoint_path(target))

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

    def read_metrics(self) -> Dict[str, Any]:
        """The contents of ``metrics.json``."""
        return json.loads(self.metrics_path.read_text(encoding="utf-8"))

    def write_environment(self, code_path: Optional[PathLike] = None) -> Dict[str, Any]:
        """Writes ``environment.json`` (see :func:`environment_info`) and returns its contents."""
        info = environment_info(code_path)
        atomic_write_text(self.environment_path, json.dumps(to_jsonable(info, "environment"), indent=2,
                                                            sort_keys=True) + "\n")
        return info
