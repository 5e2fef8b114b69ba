"""Classification losses for long-tailed data: logit adjustment, focal loss, class-balanced weights."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcl._checks import is_real

__all__ = [
    "class_priors",
    "class_balanced_weights",
    "logit_adjusted_loss",
    "focal_loss",
    "LogitAdjustedLoss",
    "FocalLoss",
]

CountsLike = Union[Sequence[int], Tensor]
_REDUCTIONS = ("mean", "sum", "none")


def _as_class_counts(class_counts: CountsLike) -> Tensor:
    """Returns counts as a 1-D float64 tensor, refusing forms that would give a silent wrong prior."""
    counts = torch.as_tensor(class_counts)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"class_counts must be a non-empty 1-D sequence of per-class counts, got shape {list(counts.shape)}"
        )
    if counts.dtype == torch.bool or counts.dtype.is_complex:
        raise ValueError(f"class_counts must hold numbers, got dtype {counts.dtype}")
    counts = counts.to(torch.float64)
    if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
        bad = [i for i, c in enumerate(counts.tolist()) if not (math.isfinite(c) and c > 0)]
        raise ValueError(
            f"class_counts must be positive for every class (a class with no training images has no prior); "
            f"classes {bad} have counts {[counts.tolist()[i] for i in bad]}"
        )
    return counts


def _check_logits_targets(logits: Tensor, targets: Tensor, num_classes: Optional[int] = None) -> Tensor:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape [B, C], got {shape}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} classes (shape {list(logits.shape)}) "
            f"but the loss was built for {num_classes}"
        )
    if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        shape = list(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(
            f"targets must have shape [B] = [{logits.shape[0]}] to match logits {list(logits.shape)}, got {shape}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    targets = targets.to(device=logits.device, dtype=torch.long)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(
            f"targets must lie in [0, {logits.shape[1]}), got values in [{int(targets.min())}, {int(targets.max())}]"
        )
    return targets


def _check_reduction(reduction: str, logits: Optional[Tensor] = None) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if reduction == "mean" and logits is not None and logits.shape[0] == 0:
        # The mean over no samples has no value (F.cross_entropy gives NaN); sum (0) and none (empty) do.
        raise ValueError(f"logits is an empty batch (shape {list(logits.shape)}): reduction='mean' is undefined")
    return reduction


def class_priors(class_counts: CountsLike) -> Tensor:
    """Training-set class priors ``π_c = n_c / Σ n``.

    Args:
        class_counts: ``[C]`` positive per-class image counts.

    Returns:
        ``[C]`` float32 priors summing to 1.

    Example:
        >>> class_priors([3, 1]).tolist()
        [0.75, 0.25]
    """
    counts = _as_class_counts(class_counts)
    return (counts / counts.sum()).to(torch.float32)


def class_balanced_weights(class_counts: CountsLike, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    ``w_c ∝ (1 − β) / (1 − β^{n_c})``, rescaled so the weights sum to the number of classes.
    β = 0 gives uniform weights; β → 1 approaches inverse class frequency. Pass the result as
    ``weight=`` to :func:`torch.nn.functional.cross_entropy` or as ``alpha`` to :class:`FocalLoss`.

    Args:
        class_counts: ``[C]`` positive per-class image counts.
        beta: in ``[0, 1)``.

    Returns:
        ``[C]`` float32 weights.

    Example:
        >>> [round(w, 3) for w in class_balanced_weights([100, 10], beta=0.99).tolist()]
        [0.262, 1.738]
    """
    if not is_real(beta) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    counts = _as_class_counts(class_counts)
    # -expm1(n·log β) = 1 − β^n without cancellation when β is close to 1.
    effective_num = -torch.expm1(counts * math.log(beta)) / (1.0 - beta) if beta > 0 else torch.ones_like(counts)
    weights = 1.0 / effective_num
    return (weights * len(counts) / weights.sum()).to(torch.float32)


def logit_adjusted_loss(
    logits: Tensor, targets: Tensor, log_priors: Tensor, tau: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Logit-adjusted cross-entropy ``CE(logits + τ · log π, y)`` (Menon et al., ICLR 2021).

    Equal to Balanced Softmax (Ren et al. 2020) at τ = 1. The adjustment applies to the loss only:
    predict with the argmax of the raw logits.

    Args:
        logits: ``[B, C]`` raw classifier outputs.
        targets: ``[B]`` integer labels in ``[0, C)``.
        log_priors: ``[C]`` log training-set class priors (see :func:`class_priors`).
        tau: adjustment strength τ ≥ 0 (0 gives plain cross-entropy).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        Scalar loss, or ``[B]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> log_priors = class_priors([9, 1]).log()
        >>> logits = torch.zeros(2, 2)
        >>> round(logit_adjusted_loss(logits, torch.tensor([0, 1]), log_priors).item(), 4)
        1.2039
    """
    targets = _check_logits_targets(logits, targets, log_priors.shape[-1])
    adjusted = logits.float() + tau * log_priors.to(device=logits.device, dtype=torch.float32)
    return F.cross_entropy(adjusted, targets, reduction=_check_reduction(reduction, logits))


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class focal loss ``−α_y (1 − p_y)^γ log p_y`` (Lin et al., ICCV 2017).

    With γ = 0 it is cross-entropy; with ``alpha`` the mean is normalised by ``Σ α_y`` exactly as
    :func:`torch.nn.functional.cross_entropy` does with ``weight``, so γ = 0 reproduces weighted CE.

    Args:
        logits: ``[B, C]`` raw classifier outputs.
        targets: ``[B]`` integer labels in ``[0, C)``.
        gamma: focusing parameter γ ≥ 0.
        alpha: optional ``[C]`` per-class weights (e.g. :func:`class_balanced_weights`).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        Scalar loss, or ``[B]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> logits, targets = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
        >>> round(focal_loss(logits, targets, gamma=2.0).item(), 4)
        0.8259
    """
    targets = _check_logits_targets(logits, targets)
    reduction = _check_reduction(reduction, logits)
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    loss = -((1.0 - log_p.exp()).clamp_min(0.0) ** gamma) * log_p
    weight = None
    if alpha is not None:
        if not isinstance(alpha, Tensor) or alpha.shape != (logits.shape[1],):
            shape = list(alpha.shape) if isinstance(alpha, Tensor) else type(alpha).__name__
            raise ValueError(f"alpha must have shape [C] = [{logits.shape[1]}], got {shape}")
        weight = alpha.to(device=logits.device, dtype=torch.float32)[targets]
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (weight.sum() if weight is not None else len(loss))


def _check_nonnegative(name: str, value: float) -> float:
    if not is_real(value) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy with the training-set priors stored as a buffer.

    ``log_priors`` is a registered buffer, so it follows ``.to(device)`` and is saved in the
    state dict. See :func:`logit_adjusted_loss`.

    Args:
        class_counts: ``[C]`` positive training-set image counts per class.
        tau: adjustment strength τ ≥ 0 (1.0 = Balanced Softmax).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shapes:
        logits ``[B, C]``, targets ``[B]`` → scalar (or ``[B]``).

    Example:
        >>> import torch
        >>> criterion = LogitAdjustedLoss([273, 10, 10, 10, 10], tau=1.0)
        >>> criterion(torch.randn(4, 5), torch.tensor([0, 1, 2, 3])).dim()
        0
    """

    log_priors: Tensor

    def __init__(self, class_counts: CountsLike, tau: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.tau = _check_nonnegative("tau", tau)
        self.reduction = _check_reduction(reduction)
        self.register_buffer("log_priors", class_priors(class_counts).log())

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of ``logits`` ``[B, C]`` against ``targets`` ``[B]``: a scalar, or ``[B]`` with ``"none"``."""
        return logit_adjusted_loss(logits, targets, self.log_priors, self.tau, self.reduction)

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"num_classes={self.log_priors.numel()}, tau={self.tau}"


class FocalLoss(nn.Module):
    """Focal loss as a module; see :func:`focal_loss`.

    Args:
        gamma: focusing parameter γ ≥ 0.
        alpha: optional ``[C]`` per-class weights, stored as a buffer.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shapes:
        logits ``[B, C]``, targets ``[B]`` → scalar (or ``[B]``).

    Example:
        >>> import torch
        >>> FocalLoss(gamma=2.0)(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).dim()
        0
    """

    alpha: Optional[Tensor]

    def __init__(self, gamma: float = 2.0, alpha: Optional[CountsLike] = None, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = _check_nonnegative("gamma", gamma)
        self.reduction = _check_reduction(reduction)
        if alpha is not None:
            alpha = torch.as_tensor(alpha, dtype=torch.float32)
            if alpha.dim() != 1 or not bool(torch.isfinite(alpha).all()) or bool((alpha < 0).any()):
                raise ValueError(
                    f"alpha must be a 1-D sequence of finite non-negative class weights, got {alpha.tolist()}"
                )
        self.register_buffer("alpha", alpha)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of ``logits`` ``[B, C]`` against ``targets`` ``[B]``: a scalar, or ``[B]`` with ``"none"``."""
        return focal_loss(logits, targets, self.gamma, self.alpha, self.reduction)

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"gamma={self.gamma}"
