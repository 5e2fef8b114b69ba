"""Multi-process (multi-GPU) training helpers on top of :mod:`torch.distributed`.

Launch with ``torchrun --nproc_per_node=N train_supcon.py ...``; :func:`init_distributed` reads the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
and initialises the default process group (NCCL on CUDA, Gloo on CPU). In a plain single process every
helper here is a cheap no-op, so library code calls them unconditionally::

    info = init_distributed()
    check_same_config(config_text)             # every rank must run the same resolved config
    per_rank_batch = check_batch_divisible(cfg.batch_size)
    torch.manual_seed(rank_seed(cfg.seed, info.rank))
    ...
    feats = all_gather_with_grad(local_feats)  # [world * B, ...], gradients flow back to the owner
    labels = all_gather_no_grad(local_labels)
    ...
    cleanup()

Every collective here must be called by all ranks, in the same order. Errors that depend on what
several ranks hold (different configs, and in debug mode unequal batch shapes) are detected collectively
and raised on *every* rank, so no rank is left waiting in a collective for a peer that already gave up.
The shape check costs one extra all-gather per gathered tensor, so it runs only in PyTorch's own
distributed debug mode (``TORCH_DISTRIBUTED_DEBUG=INFO`` or ``DETAIL``, see :func:`debug_checks`); the
training loop's ``drop_last`` loaders keep shapes equal without it. A rank that
dies makes the others fail after ``timeout_s`` (or sooner, when the backend notices the closed
connection) instead of hanging forever.

Device-agnostic: with the NCCL backend, CPU tensors handed to :func:`all_reduce_sum` and the gather
functions are moved to the current CUDA device for the communication and the result is moved back.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from bcl._checks import is_int, is_real

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "cleanup",
    "rank_seed",
    "all_reduce_sum",
    "broadcast_object",
    "all_gather_with_grad",
    "all_gather_no_grad",
    "check_same_config",
    "check_batch_divisible",
    "debug_checks",
]

logger = logging.getLogger(__name__)

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_BACKENDS = ("nccl", "gloo")
# Shapes are exchanged as fixed-length int64 vectors: [ndim, dtype code, size_0, ..., size_{MAX-1}].
_MAX_GATHER_DIMS = 8
_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
)
_UINT32 = 2**32
_SEED_STRIDE = 0x9E3779B9  # odd, so rank -> seed is one-to-one modulo 2**32


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: Global rank (0 in a single process).
        world_size: Number of processes (1 in a single process).
        local_rank: Rank on this machine; the CUDA device index with NCCL.
        backend: ``"nccl"`` or ``"gloo"``; ``None`` when not distributed.
        distributed: Whether a process group is initialised.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: Optional[str]
    distributed: bool


# ----------------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------------


def _env_int(name: str, env: Dict[str, str]) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _read_env(env: Dict[str, str]) -> Optional[Tuple[int, int, int]]:
    """(rank, world_size, local_rank) from a torchrun-like environment; None for a plain process."""
    rank, world, local = (_env_int(n, env) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if rank is None and world is None and local is None:
        return None
    shown = ", ".join(f"{n}={env.get(n)!r}" for n in _ENV_VARS)
    if rank is None or world is None:
        missing = [n for n, v in (("RANK", rank), ("WORLD_SIZE", world)) if v is None]
        raise ValueError(
            f"incomplete distributed environment: {' and '.join(missing)} not set ({shown}); launch with "
            "torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or unset them "
            "all for a single process"
        )
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world} ({shown})")
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank} with WORLD_SIZE={world}")
    if local is None:
        if world > 1:
            raise ValueError(f"incomplete distributed environment: LOCAL_RANK not set ({shown})")
        local = 0
    if not 0 <= local < world:
        raise ValueError(f"LOCAL_RANK must be in [0, WORLD_SIZE), got LOCAL_RANK={local} with WORLD_SIZE={world}")
    local_world = _env_int("LOCAL_WORLD_SIZE", env)
    if local_world is not None and not 0 <= local < local_world:
        raise ValueError(
            f"LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE), got LOCAL_RANK={local} with LOCAL_WORLD_SIZE={local_world}"
        )
    if world > 1:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not env.get(n, "").strip()]
        if missing:
            raise ValueError(
                f"incomplete distributed environment: {' and '.join(missing)} not set with WORLD_SIZE={world} "
                f"({shown})"
            )
        port = _env_int("MASTER_PORT", env)
        if not 0 < port < 65536:  # type: ignore[operator]
            raise ValueError(f"MASTER_PORT must be a TCP port in [1, 65535], got {port}")
    return rank, world, local


def _current_info() -> DistInfo:
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        local = _env_int("LOCAL_RANK", dict(os.environ))
    except ValueError:
        local = None
    return DistInfo(rank, world, rank if local is None else local, str(dist.get_backend()), True)


def init_distributed(timeout_s: float = 1800.0, backend: Optional[str] = None) -> DistInfo:
    """Initialises the default process group from a torchrun-like environment; a no-op otherwise.

    With ``WORLD_SIZE`` > 1 (plus ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the default
    process group is initialised with ``timeout=timedelta(seconds=timeout_s)``, so a rank that dies makes
    the others fail rather than hang forever. With NCCL the CUDA device is set to ``LOCAL_RANK`` and
    ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` is set unless already set. Without that environment (or with
    ``WORLD_SIZE=1``) nothing is initialised. Calling it again returns the current state.

    Args:
        timeout_s: Seconds a collective (and the rendezvous) may wait for the other ranks.
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else Gloo.

    Returns:
        The :class:`DistInfo` of this process.

    Raises:
        ValueError: A partial or inconsistent environment (e.g. ``RANK`` without ``WORLD_SIZE``,
            ``RANK >= WORLD_SIZE``), a ``LOCAL_RANK`` without a matching CUDA device, a bad timeout
            or backend.

    Example:
        >>> info = init_distributed()  # a plain process: nothing to initialise
        >>> (info.rank, info.world_size, info.distributed)
        (0, 1, False)
    """
    if not is_real(timeout_s) or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
    if is_distributed():
        return _current_info()
    parsed = _read_env(dict(os.environ))
    if parsed is None or parsed[1] == 1:
        local = 0 if parsed is None else parsed[2]
        return DistInfo(rank=0, world_size=1, local_rank=local, backend=None, distributed=False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    rank, world, local = parsed
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA, which is not available; use 'gloo'")
        count = torch.cuda.device_count()
        if local >= count:
            raise ValueError(f"LOCAL_RANK={local} but only {count} CUDA device(s) are visible on this machine")
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    logger.info("initialised process group: backend %s, rank %d of %d (local rank %d)", backend, rank, world, local)
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend, distributed=True)


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that logs, writes files and shows progress."""
    return get_rank() == 0


def barrier() -> None:
    """Waits for every rank; a no-op when not distributed."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def cleanup() -> None:
    """Destroys the default process group if one is initialised; always safe to call."""
    if is_distributed():
        dist.destroy_process_group()
        logger.debug("destroyed the default process group")


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank random seed: deterministic, distinct for every rank, and ``seed`` itself on rank 0.

    Computed as ``(seed + rank * 0x9E3779B9) % 2**32`` (an odd stride, so distinct ranks never share a
    seed), which also keeps the result a valid numpy seed.

    Example:
        >>> rank_seed(42, 0), rank_seed(42, 1) != rank_seed(42, 0)
        (42, True)
    """
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not is_int(rank) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    return int((int(seed) + int(rank) * _SEED_STRIDE) % _UINT32)


def _comm_device() -> Optional[torch.device]:
    """The device tensors must be on for communication (CUDA with NCCL), or None if any will do."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def _to_comm(tensor: torch.Tensor) -> torch.Tensor:
    device = _comm_device()
    if device is not None and tensor.device != device:
        tensor = tensor.to(device)
    return tensor.contiguous()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (the input is not modified).

    A plain process returns the input itself. Python numbers are accepted and turned into tensors.

    Example:
        >>> all_reduce_sum(torch.tensor([1.0, 2.0]))
        tensor([1., 2.])
    """
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    if not is_distributed():
        return tensor
    out = _to_comm(tensor.detach()).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s (picklable) ``obj`` on every rank; a plain process returns ``obj``."""
    if not is_distributed():
        return obj
    world = get_world_size()
    if not is_int(src) or not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src!r}")
    holder = [obj]
    dist.broadcast_object_list(holder, src=int(src))
    return holder[0]


# ----------------------------------------------------------------------------------------------------
# Gathers
# ----------------------------------------------------------------------------------------------------


def _shape_code(tensor: torch.Tensor) -> torch.Tensor:
    ndim = tensor.dim()
    code = torch.full((2 + _MAX_GATHER_DIMS,), -1, dtype=torch.int64)
    code[0] = ndim
    code[1] = _DTYPES.index(tensor.dtype) if tensor.dtype in _DTYPES else -1
    if ndim <= _MAX_GATHER_DIMS:
        code[2 : 2 + ndim] = torch.tensor(tuple(tensor.shape), dtype=torch.int64)
    return code


def _describe(code: List[int]) -> str:
    ndim, dtype = code[0], code[1]
    shape = tuple(code[2 : 2 + ndim]) if ndim <= _MAX_GATHER_DIMS else f"<{ndim} dims>"
    return f"{shape} {_DTYPES[dtype] if dtype >= 0 else 'unsupported dtype'}"


def debug_checks() -> bool:
    """Whether the gathers check shapes and dtypes across ranks first (an extra collective each).

    On when PyTorch's distributed debug level is ``INFO`` or ``DETAIL`` (``TORCH_DISTRIBUTED_DEBUG``, or
    :func:`torch.distributed.set_debug_level`), off by default.
    """
    return dist.get_debug_level() != dist.DebugLevel.OFF


def _check_gatherable(tensor: torch.Tensor, what: str) -> None:
    """Checks that every rank holds a tensor of the same shape and dtype; raises on *every* rank if not."""
    code = _to_comm(_shape_code(tensor))
    codes = [torch.empty_like(code) for _ in range(get_world_size())]
    dist.all_gather(codes, code)
    rows = [c.cpu().tolist() for c in codes]
    if any(r != rows[0] for r in rows) or rows[0][1] < 0 or rows[0][0] > _MAX_GATHER_DIMS:
        shapes = ", ".join(f"rank {i}: {_describe(r)}" for i, r in enumerate(rows))
        raise ValueError(
            f"{what} needs a tensor of the same shape and a supported dtype on every rank (at most "
            f"{_MAX_GATHER_DIMS} dims); got {shapes}. Use the same per-rank batch size on every rank "
            "(e.g. drop_last=True in the DataLoader)"
        )
    if rows[0][0] == 0:
        raise ValueError(f"{what} needs a tensor with at least one dimension, got a 0-dim tensor")


def _check_local(tensor: Any, what: str) -> None:
    """What one rank can check alone, at no communication cost."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} expects a tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError(f"{what} needs a tensor with at least one dimension, got a 0-dim tensor")


def _gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    sent = _to_comm(tensor)
    parts = [torch.empty_like(sent) for _ in range(get_world_size())]
    dist.all_gather(parts, sent)
    return torch.cat(parts, dim=0).to(tensor.device)


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all_gather + cat. Backward: all-reduce (SUM) the gradient, return this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rows = tensor.shape[0]
        return _gather_cat(tensor.detach())

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = _to_comm(grad_output).clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = get_rank() * ctx.rows
        return grad[start : start + ctx.rows].to(grad_output.device)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` from every rank along dim 0, in rank order, keeping gradients.

    The backward pass sums the gradient of the gathered tensor over ranks and hands each rank the rows
    it owns, so each rank's input receives ``d(sum_r loss_r) / d(input)`` — what one process computing
    every rank's loss on the concatenated batch would get. (DDP then averages parameter gradients over
    ranks, so the effective objective is the mean of the per-rank losses.) Every rank must run backward
    through the gathered tensor, since the backward pass is itself a collective.

    Args:
        tensor: ``[B, ...]``, the same shape and dtype on every rank.

    Returns:
        ``[world_size * B, ...]``; in a plain process the input itself.

    Raises:
        ValueError: A 0-dim tensor; in debug mode (:func:`debug_checks`) also shapes or dtypes that differ
            across ranks (raised on every rank).

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> all_gather_with_grad(x) is x  # a plain process: the identity
        True
    """
    _check_local(tensor, "all_gather_with_grad")
    if not is_distributed():
        return tensor
    if debug_checks():
        _check_gatherable(tensor, "all_gather_with_grad")
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` but detached; for labels and other tensors of any dtype.

    Example:
        >>> all_gather_no_grad(torch.tensor([3, 1])).tolist()
        [3, 1]
    """
    _check_local(tensor, "all_gather_no_grad")
    if not is_distributed():
        return tensor.detach()
    if debug_checks():
        _check_gatherable(tensor, "all_gather_no_grad")
    with torch.no_grad():
        return _gather_cat(tensor.detach())


# ----------------------------------------------------------------------------------------------------
# Consistency checks
# ----------------------------------------------------------------------------------------------------


def check_same_config(config_text: str) -> None:
    r"""Raises on every rank unless all ranks hold the same resolved config text (compared by sha256).

    A plain process does nothing.

    Raises:
        TypeError: ``config_text`` is not a string.
        RuntimeError: Some ranks' configs differ from rank 0's (the message names them).

    Example:
        >>> check_same_config("model: resnet32\n")  # a plain process: nothing to compare
    """
    if not isinstance(config_text, str):
        raise TypeError(f"config_text must be the resolved config as a string, got {type(config_text).__name__}")
    if not is_distributed():
        return
    digest = hashlib.sha256(config_text.encode("utf-8")).digest()
    mine = _to_comm(torch.tensor(list(digest), dtype=torch.uint8))
    hashes = [torch.empty_like(mine) for _ in range(get_world_size())]
    dist.all_gather(hashes, mine)
    rows = [bytes(h.cpu().tolist()) for h in hashes]
    differ = [r for r in range(1, len(rows)) if rows[r] != rows[0]]
    if differ:
        raise RuntimeError(
            f"inconsistent configs across ranks: ranks {differ} differ from rank 0; launch every rank with "
            f"the same config (sha256 prefixes: "
            + ", ".join(f"rank {r}: {rows[r].hex()[:12]}" for r in range(len(rows)))
            + ")"
        )


def check_batch_divisible(global_batch_size: int) -> int:
    """Checks that the world size divides the global batch size; returns the per-rank batch size.

    A plain process (world size 1) checks nothing and returns ``global_batch_size``.

    Raises:
        ValueError: The world size does not divide it (the message suggests batch sizes that work), or
            it is not a positive integer.

    Example:
        >>> check_batch_divisible(256)  # a plain process
        256
    """
    world = get_world_size()
    if world <= 1:
        return global_batch_size
    if not is_int(global_batch_size) or global_batch_size < 1:
        raise ValueError(f"global batch size must be a positive integer, got {global_batch_size!r}")
    if global_batch_size % world:
        lower = (global_batch_size // world) * world
        upper = lower + world
        suggest = f"{lower} or {upper}" if lower > 0 else f"{upper}"
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the world size {world}; "
            f"use a multiple of {world}, e.g. {suggest}"
        )
    return int(global_batch_size) // world
