"""Tensor helpers shared by the losses and the models (one home, so every unit vector is made the same way)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["l2_normalize"]


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ||x||`` along ``dim``, exact for any finite scale of ``x``.

    ``F.normalize`` squares the entries first, so in float32 a vector of norm above ~1e19 overflows to an
    infinite norm (and becomes zeros) and one below ~1e-19 underflows (and becomes zeros as well). Dividing by
    each vector's largest magnitude first puts its norm in ``[1, sqrt(n)]``; the quotient is scale-invariant,
    so the divisor is detached and the gradient is the unit vector's own. All-zero vectors stay zero.

    Args:
        x: Any tensor; ``dim`` indexes its vectors' entries.
        dim: The dimension to normalise along.

    Returns:
        A tensor of ``x``'s shape and dtype whose vectors along ``dim`` have unit norm (or are zero).

    Example:
        >>> l2_normalize(torch.tensor([[3e30, 4e30]]))
        tensor([[0.6000, 0.8000]])
    """
    largest = x.detach().abs().amax(dim=dim, keepdim=True)
    safe = torch.where(largest > 0, largest, torch.ones_like(largest))
    return F.normalize(x / safe, dim=dim)
