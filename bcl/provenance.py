"""Provenance: where, when and with which code and library versions a run started (``environment.json``)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

__all__ = ["git_info", "environment_info", "cpu_name", "sha256_of"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


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


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :func:`platform.processor` says (or ``CPU``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def sha256_of(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


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
