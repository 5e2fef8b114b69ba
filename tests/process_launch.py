"""Starting test workers in separate processes without ever hanging the suite."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _import_root(worker: Callable) -> str:
    # Spawned workers unpickle `worker` by importing its module under the name pytest gave it (with
    # --import-mode=importlib: "tests.test_x"), which works only if the folder that name is relative
    # to is on their sys.path; they start with a copy of the parent's.
    module = sys.modules[worker.__module__]
    return str(Path(module.__file__).resolve().parents[len(worker.__module__.split(".")) - 1])


def launch(worker: Callable, args: Sequence, nprocs: int = 2, deadline_s: float = 90.0) -> None:
    """Runs ``worker(rank, *args)`` in ``nprocs`` spawned processes; kills them and fails past the deadline."""
    root = _import_root(worker)
    sys.path.insert(0, root)
    try:
        context = mp.start_processes(worker, args=tuple(args), nprocs=nprocs, join=False, start_method="spawn")
    finally:
        sys.path.remove(root)
    end = time.monotonic() + deadline_s
    for process in context.processes:
        process.join(max(0.0, end - time.monotonic()))
    hung = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
    for rank in hung:
        context.processes[rank].kill()
        context.processes[rank].join()
    assert not hung, f"ranks {hung} still running after {deadline_s} s (a collective hung)"
