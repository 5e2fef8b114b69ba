"""Heads on top of the encoder: projection MLP, cosine classifier, classifier-derived prototypes."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bcl._checks import is_int, is_real
from bcl._tensors import l2_normalize
from bcl.choices import CLASSIFIERS

__all__ = ["NormedLinear", "ProjectionHead", "PrototypeHead", "build_classifier"]


def _check_dim(name: str, value: object) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    # Same layout as the official BCL heads (Linear -> BN -> ReLU -> Linear).
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class ProjectionHead(nn.Module):
    """Two-layer MLP projecting encoder features onto the unit sphere for the contrastive loss.

    ``Linear(in_dim, hidden_dim) -> BatchNorm1d -> ReLU -> Linear(hidden_dim, out_dim) -> L2-normalise``.

    Args:
        in_dim: Feature dimension of the encoder.
        hidden_dim: Hidden width; defaults to ``in_dim``.
        out_dim: Embedding dimension D.

    Shape:
        - Input: ``[N, in_dim]`` (N >= 2 in training mode, because of BatchNorm).
        - Output: ``[N, out_dim]``, each row of unit L2 norm.

    Example:
        >>> head = ProjectionHead(16, out_dim=8)
        >>> z = head(torch.randn(4, 16))
        >>> z.shape, bool(torch.allclose(z.norm(dim=-1), torch.ones(4)))
        (torch.Size([4, 8]), True)
    """

    def __init__(self, in_dim: int, hidden_dim: Optional[int] = None, out_dim: int = 128) -> None:
        super().__init__()
        self.in_dim = _check_dim("in_dim", in_dim)
        self.hidden_dim = _check_dim("hidden_dim", in_dim if hidden_dim is None else hidden_dim)
        self.out_dim = _check_dim("out_dim", out_dim)
        self.mlp = _mlp(self.in_dim, self.hidden_dim, self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and normalise.

        Args:
            x: Features ``[N, in_dim]``.

        Returns:
            Unit-norm embeddings ``[N, out_dim]``.
        """
        return l2_normalize(self.mlp(x), dim=-1)


class NormedLinear(nn.Module):
    """Cosine classifier: ``logits = scale * normalize(x) @ normalize(weight).T``.

    Logits are bounded by ``±scale``. Row k of ``weight`` is class k's weight vector W_k, which
    :class:`PrototypeHead` maps to the class prototype.

    Args:
        in_features: Input feature dimension.
        out_features: Number of classes K.
        scale: Multiplier of the cosine similarities (30 in the BCL paper); must be > 0.

    Attributes:
        weight: ``[out_features, in_features]``, initialised to random unit rows (as in the BCL code).

    Shape:
        - Input: ``[N, in_features]``.
        - Output: ``[N, out_features]``.

    Example:
        >>> clf = NormedLinear(16, 3, scale=30.0)
        >>> logits = clf(torch.randn(4, 16))
        >>> logits.shape, bool(logits.abs().max() <= 30.0 + 1e-4)
        (torch.Size([4, 3]), True)
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 30.0) -> None:
        super().__init__()
        self.in_features = _check_dim("in_features", in_features)
        self.out_features = _check_dim("out_features", out_features)
        if not is_real(scale) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1, 1) rows rescaled to unit norm (the BCL/LDAM initialisation)."""
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.copy_(l2_normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity between features and class weights.

        Args:
            x: Features ``[N, in_features]``.

        Returns:
            Logits ``[N, out_features]`` in ``[-scale, scale]``.
        """
        return self.scale * F.linear(l2_normalize(x, dim=-1), l2_normalize(self.weight, dim=-1))

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


class PrototypeHead(ProjectionHead):
    """Maps classifier weight rows to unit-norm class prototypes: ``c_k = normalize(MLP(W_k))``.

    The same architecture as :class:`ProjectionHead` but a separate instance (not shared with the
    projection head), applied to the C class weight rows instead of N features. Nothing is
    detached, so a contrastive loss on the prototypes also trains the classifier (as in the BCL paper).

    Args:
        in_dim: Classifier input dimension (the encoder feature dimension).
        hidden_dim: Hidden width; defaults to ``in_dim``.
        out_dim: Prototype dimension; must equal the projection dimension D.

    Shape:
        - Input: classifier weights ``[C, in_dim]``, C >= 2 in training mode (BatchNorm over the classes).
        - Output: prototypes ``[C, out_dim]``, each row of unit L2 norm.

    Example:
        >>> head = PrototypeHead(16, 16, 8)
        >>> head(torch.randn(5, 16)).shape
        torch.Size([5, 8])
    """

    def forward(self, class_weights: torch.Tensor) -> torch.Tensor:
        """Compute prototypes.

        Args:
            class_weights: Classifier weight rows ``[C, in_dim]`` (row k = class k).

        Returns:
            Unit-norm prototypes ``[C, out_dim]``.

        Raises:
            ValueError: Wrong shape, or C < 2 in training mode.
        """
        if class_weights.ndim != 2 or class_weights.shape[1] != self.in_dim:
            raise ValueError(
                f"PrototypeHead expects class weights [C, {self.in_dim}], got {tuple(class_weights.shape)}"
            )
        if self.training and class_weights.shape[0] < 2:
            raise ValueError(
                "PrototypeHead needs at least 2 classes in training mode (its BatchNorm normalises over "
                f"the class rows), got {class_weights.shape[0]}"
            )
        return super().forward(class_weights)


def build_classifier(kind: str, in_features: int, num_classes: int, scale: float = 30.0) -> nn.Module:
    """The classifier a ``model.classifier`` setting names, for every model that has one.

    Args:
        kind: ``"cosine"`` (:class:`NormedLinear`, logits bounded by ``scale``) or ``"linear"`` (``nn.Linear``).
        in_features: Feature dimension F.
        num_classes: Number of classes K.
        scale: Logit scale of the cosine classifier (ignored for ``"linear"``).

    Returns:
        A module mapping ``[N, F]`` features to ``[N, K]`` logits.

    Example:
        >>> build_classifier("cosine", 16, 3)
        NormedLinear(in_features=16, out_features=3, scale=30.0)
    """
    if kind not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {kind!r}")
    if kind == "cosine":
        return NormedLinear(in_features, num_classes, scale=scale)
    return nn.Linear(in_features, num_classes)
