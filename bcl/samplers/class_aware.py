"""Class-aware sampling for long-tailed training.

The sampler first draws a class with probability proportional to ``n_c ** q`` and then the next image
of that class from a per-class shuffled cycle, so ``q`` interpolates between instance-balanced
(``q = 1``, the plain label distribution), square-root (``q = 0.5``) and class-balanced (``q = 0``)
sampling, while every image of a class is used before any of them repeats.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from bcl._checks import as_label_array, is_int, is_real

__all__ = ["ClassAwareSampler"]

LabelsLike = Union[Sequence[int], np.ndarray, torch.Tensor]


class ClassAwareSampler(Sampler[int]):
    """Samples a class with probability ∝ ``n_c ** q``, then the next image of that class.

    Each class keeps a shuffled cycle over its images: all ``n_c`` images of a class are drawn before
    any of them repeats, and an exhausted cycle is replaced by a fresh permutation. Cycles restart at
    every epoch because the whole order is a pure function of ``(seed, epoch)``; call
    :meth:`set_epoch` before each epoch to get a new, reproducible order.

    For multi-process training every rank builds the same global sequence of
    ``ceil(num_samples / num_replicas) * num_replicas`` draws (the extra draws continue the same
    random stream, so the global sequence of a shorter run is a prefix of a longer one) and yields
    the positions ``rank, rank + num_replicas, ...``. Shards are therefore disjoint by position, of
    equal length, and interleave back into the single-process sequence.

    Args:
        labels: One non-negative integer class id per dataset item (list, numpy array or integer
            tensor). Only classes that occur are ever drawn; class ids need not be contiguous.
        q: Exponent in ``[0, 1]`` of the class-drawing distribution ∝ ``n_c ** q``: 0 is
            class-balanced, 0.5 square-root, 1 instance-balanced.
        num_samples: Total draws per epoch over all replicas. Defaults to ``len(labels)``.
        seed: Non-negative int; together with the epoch it fully determines the order.
        num_replicas: Number of processes sharing the sequence. Give it together with ``rank``, or
            leave both ``None`` to take them from an initialised ``torch.distributed`` process group
            (a single process otherwise).
        rank: This process's shard, in ``[0, num_replicas)``.

    Raises:
        TypeError: If ``labels`` are not integers, or ``q``, ``num_samples``, ``seed``,
            ``num_replicas`` or ``rank`` have the wrong type.
        ValueError: If ``labels`` are empty, not 1-D or negative, ``q`` is outside ``[0, 1]``,
            ``num_samples`` or ``num_replicas`` is below 1, ``seed`` is negative, ``rank`` is out of
            range, or only one of ``num_replicas`` and ``rank`` is given.

    Example:
        >>> labels = [0] * 90 + [1] * 10
        >>> sampler = ClassAwareSampler(labels, q=0.0, num_samples=1000, seed=0)
        >>> len(sampler), sampler.class_probabilities.tolist()
        (1000, [0.5, 0.5])
        >>> len(set(sampler))  # every image of both classes is drawn
        100
        >>> ClassAwareSampler(labels, q=1.0).class_probabilities.tolist()
        [0.9, 0.1]
        >>> len(ClassAwareSampler(labels, num_samples=1000, num_replicas=3, rank=2))
        334
    """

    def __init__(
        self,
        labels: LabelsLike,
        q: float = 0.0,
        num_samples: Optional[int] = None,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
    ) -> None:
        label_array = as_label_array(labels)

        if not is_real(q):
            raise TypeError(f"q must be a real number in [0, 1], got {type(q).__name__}")
        if not 0.0 <= float(q) <= 1.0:  # also rejects NaN
            raise ValueError(f"q must be in [0, 1], got {q}")

        if num_samples is None:
            num_samples = label_array.size
        elif not is_int(num_samples):
            raise TypeError(
                f"num_samples must be a positive int or None, got {type(num_samples).__name__}"
            )
        elif num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples}")

        if not is_int(seed):
            raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")

        num_replicas, rank = self._resolve_replicas(num_replicas, rank)

        self._q = float(q)
        self._num_samples = int(num_samples)
        self._seed = int(seed)
        self._num_replicas = num_replicas
        self._rank = rank
        self._epoch = 0

        order = np.argsort(label_array, kind="stable")
        self._classes, counts = np.unique(label_array, return_counts=True)
        self._class_indices: List[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        self._class_counts = counts.astype(np.int64)
        weights = self._class_counts.astype(np.float64) ** self._q
        self._class_probabilities = weights / weights.sum()
        # Inverse-CDF draws keep the class sequence prefix-stable in its length (numpy's `choice`
        # gives no such guarantee); the last edge is pinned to 1 so rounding can never yield class K.
        self._class_cdf = np.cumsum(self._class_probabilities)
        self._class_cdf[-1] = 1.0

    @staticmethod
    def _resolve_replicas(num_replicas: Optional[int], rank: Optional[int]) -> Tuple[int, int]:
        if num_replicas is None and rank is None:
            if dist.is_available() and dist.is_initialized():
                return dist.get_world_size(), dist.get_rank()
            return 1, 0
        # Filling in just one of them from the process group is a common source of silently
        # overlapping shards, so require both.
        if num_replicas is None or rank is None:
            raise ValueError(
                "num_replicas and rank must be given together (or both left None), "
                f"got num_replicas={num_replicas}, rank={rank}"
            )
        if not is_int(num_replicas):
            raise TypeError(f"num_replicas must be a positive int, got {type(num_replicas).__name__}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive int, got {num_replicas}")
        if not is_int(rank):
            raise TypeError(f"rank must be an int in [0, num_replicas), got {type(rank).__name__}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        return int(num_replicas), int(rank)

    @property
    def classes(self) -> np.ndarray:
        """Sorted class ids present in ``labels``, shape ``[K]``."""
        return self._classes.copy()

    @property
    def class_counts(self) -> np.ndarray:
        """Number of images per present class, aligned with :attr:`classes`, shape ``[K]``."""
        return self._class_counts.copy()

    @property
    def class_probabilities(self) -> np.ndarray:
        """Probability of drawing each present class, ∝ ``class_counts ** q``, shape ``[K]``."""
        return self._class_probabilities.copy()

    @property
    def q(self) -> float:
        """Exponent of the class-drawing distribution."""
        return self._q

    @property
    def num_samples(self) -> int:
        """Total draws per epoch over all replicas (before padding)."""
        return self._num_samples

    @property
    def num_replicas(self) -> int:
        """Number of shards the global sequence is split into."""
        return self._num_replicas

    @property
    def rank(self) -> int:
        """Index of the shard this sampler yields."""
        return self._rank

    @property
    def epoch(self) -> int:
        """Epoch the next iteration's order is drawn for."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose (reproducible) order the next iteration yields.

        Args:
            epoch: Non-negative int.
        """
        if not is_int(epoch):
            raise TypeError(f"epoch must be a non-negative int, got {type(epoch).__name__}")
        if epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self._num_samples / self._num_replicas)

    def __iter__(self) -> Iterator[int]:
        sequence = self._global_sequence(len(self) * self._num_replicas)
        return iter(sequence[self._rank :: self._num_replicas].tolist())

    def _global_sequence(self, length: int) -> np.ndarray:
        """The first ``length`` dataset indices of this epoch's order, shared by all ranks."""
        num_classes = self._class_counts.size
        # Independent streams for the class draw and for each class's cycles: drawing more samples
        # then only appends to every stream, which is what makes padding "continue the draw".
        root = np.random.SeedSequence([self._seed, self._epoch])
        class_stream, *cycle_streams = root.spawn(1 + num_classes)

        uniforms = np.random.default_rng(class_stream).random(length)
        drawn = np.searchsorted(self._class_cdf, uniforms, side="right")
        draws_per_class = np.bincount(drawn, minlength=num_classes)
        positions_by_class = np.split(np.argsort(drawn, kind="stable"), np.cumsum(draws_per_class)[:-1])

        sequence = np.empty(length, dtype=np.int64)
        for indices, positions, stream in zip(self._class_indices, positions_by_class, cycle_streams):
            if positions.size == 0:
                continue
            num_cycles = -(-positions.size // indices.size)
            # Row-wise argsort of uniforms gives `num_cycles` independent permutations in one call.
            uniforms = np.random.default_rng(stream).random((num_cycles, indices.size))
            cycles = np.argsort(uniforms, axis=1, kind="stable")
            sequence[positions] = indices[cycles.ravel()[: positions.size]]
        return sequence
