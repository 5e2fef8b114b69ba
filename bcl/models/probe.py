"""An encoder with a classifier on top: the linear probe (frozen encoder) and the fine-tuned baselines."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .encoders import Encoder
from .heads import build_classifier

__all__ = ["LinearProbeModel"]


class LinearProbeModel(nn.Module):
    """An encoder plus a classifier; with ``frozen`` the encoder stays in eval mode and gets no gradients.

    Args:
        encoder: An :class:`~bcl.models.Encoder` (its ``feature_dim`` F sizes the classifier).
        num_classes: Number of classes K.
        classifier: ``"linear"`` or ``"cosine"`` (see :func:`~bcl.models.heads.build_classifier`).
        frozen: Keep the encoder's weights and BatchNorm statistics fixed (a linear probe).

    Example:
        >>> from bcl.models import build_encoder
        >>> probe = LinearProbeModel(build_encoder("resnet18", small_image_stem=True), num_classes=3)
        >>> out = probe.train()(torch.zeros(2, 3, 32, 32))
        >>> tuple(out["features"].shape), tuple(out["logits"].shape), probe.encoder.training
        ((2, 512), (2, 3), False)
    """

    def __init__(self, encoder: Encoder, num_classes: int, classifier: str = "linear", frozen: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.frozen = frozen
        self.classifier = build_classifier(classifier, encoder.feature_dim, num_classes)
        if frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "LinearProbeModel":
        """Sets training mode; a frozen encoder stays in eval mode (its BatchNorm statistics must not move)."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features ``[N, F]`` and logits ``[N, K]`` of images ``[N, 3, H, W]``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.encoder(images)
        return {"features": features, "logits": self.classifier(features)}
