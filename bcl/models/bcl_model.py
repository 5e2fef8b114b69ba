"""The BCL model: encoder + projection head + classifier + (optional) class prototypes."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from einops import rearrange
from torch import nn

from bcl._checks import is_int
from bcl._tensors import l2_normalize
from bcl.choices import CLASSIFIERS, PROTOTYPE_MODES

from .pretrained import WeightsSpec, build_encoder
from .heads import ProjectionHead, PrototypeHead, build_classifier

__all__ = ["BCLModel", "build_model", "CLASSIFIERS", "PROTOTYPE_MODES"]



class BCLModel(nn.Module):
    """Encoder with a projection head, a classifier and class prototypes, for the BCL objectives.

    - ``prototypes="classifier"``: the paper's joint objective; prototypes are
      ``normalize(MLP(W_k))`` of the classifier weight rows (gradients reach the classifier).
    - ``prototypes="learned"``: a free ``[num_classes, proj_dim]`` parameter, returned L2-normalised
      (pure contrastive stage 1).
    - ``prototypes="none"``: no prototypes (plain SupCon).

    Args:
        encoder: Module mapping ``[N, 3, H, W]`` to ``[N, F]``, with an int attribute ``feature_dim`` = F
            (e.g. from :func:`~bcl.models.build_encoder`).
        num_classes: Number of classes K (>= 1; >= 2 with ``prototypes="classifier"``).
        proj_dim: Projection / prototype dimension D.
        proj_hidden_dim: Hidden width of the projection and prototype MLPs; defaults to F.
        classifier: ``"cosine"`` (:class:`NormedLinear` with ``scale``) or ``"linear"`` (``nn.Linear``).
        prototypes: ``"classifier"``, ``"learned"`` or ``"none"``.
        scale: Logit scale of the cosine classifier (ignored for ``"linear"``).

    Example:
        >>> from bcl.models import build_encoder
        >>> model = BCLModel(build_encoder("resnet18", small_image_stem=True), num_classes=3, proj_dim=8)
        >>> out = model(torch.zeros(2, 2, 3, 32, 32))  # [B, V, 3, H, W]
        >>> [tuple(out[k].shape) for k in ("features", "projections", "logits", "prototypes")]
        [(2, 2, 512), (2, 2, 8), (2, 2, 3), (3, 8)]
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        proj_dim: int = 128,
        proj_hidden_dim: Optional[int] = None,
        classifier: str = "cosine",
        prototypes: str = "classifier",
        scale: float = 30.0,
    ) -> None:
        super().__init__()
        feature_dim = getattr(encoder, "feature_dim", None)
        if not is_int(feature_dim) or feature_dim < 1:
            raise ValueError(
                f"encoder must expose a positive int attribute feature_dim (got {feature_dim!r}); "
                "use bcl.models.build_encoder"
            )
        if classifier not in CLASSIFIERS:  # checked before any layer is built
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if prototypes not in PROTOTYPE_MODES:
            raise ValueError(f"prototypes must be one of {PROTOTYPE_MODES}, got {prototypes!r}")
        min_classes = 2 if prototypes == "classifier" else 1
        if not is_int(num_classes) or num_classes < min_classes:
            raise ValueError(
                f"num_classes must be an int >= {min_classes}"
                + (" with prototypes='classifier' (BatchNorm over class rows)" if min_classes == 2 else "")
                + f", got {num_classes!r}"
            )
        if not is_int(proj_dim) or proj_dim < 1:
            raise ValueError(f"proj_dim must be an int >= 1, got {proj_dim!r}")
        if proj_hidden_dim is not None and (
            not is_int(proj_hidden_dim) or proj_hidden_dim < 1
        ):
            raise ValueError(f"proj_hidden_dim must be None or an int >= 1, got {proj_hidden_dim!r}")

        self.encoder = encoder
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.proj_dim = proj_dim
        self.classifier_type = classifier
        self.prototype_mode = prototypes
        self.projection_head = ProjectionHead(feature_dim, proj_hidden_dim, proj_dim)
        self.classifier = build_classifier(classifier, feature_dim, num_classes, scale=scale)
        self.prototype_head: Optional[PrototypeHead] = None
        self.prototype_embeddings: Optional[nn.Parameter] = None
        if prototypes == "classifier":
            self.prototype_head = PrototypeHead(feature_dim, proj_hidden_dim, proj_dim)
        elif prototypes == "learned":
            self.prototype_embeddings = nn.Parameter(torch.randn(num_classes, proj_dim))

    def prototypes(self) -> Optional[torch.Tensor]:
        """Current class prototypes.

        Returns:
            Unit-norm prototypes ``[num_classes, proj_dim]``, or ``None`` with ``prototypes="none"``.
        """
        if self.prototype_head is not None:
            return self.prototype_head(self.classifier.weight)
        if self.prototype_embeddings is not None:
            return l2_normalize(self.prototype_embeddings, dim=-1)
        return None

    def forward(self, images: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        """Encode, project and classify one or several views.

        All views go through the encoder as one batch (so BatchNorm sees B·V samples in training mode).

        Args:
            images: ``[B, 3, H, W]`` (one view) or ``[B, V, 3, H, W]`` (V views).

        Returns:
            Dict with ``features`` ``[B, F]`` / ``[B, V, F]``, ``projections`` (unit-norm) ``[B, D]`` /
            ``[B, V, D]``, ``logits`` ``[B, K]`` / ``[B, V, K]``, and ``prototypes`` ``[K, D]`` or ``None``.

        Raises:
            ValueError: ``images`` has neither accepted shape.
        """
        channels = getattr(self.encoder, "in_channels", None)
        ok_channels = channels is None or (images.ndim >= 3 and images.shape[-3] == channels)
        if images.ndim not in (4, 5) or not ok_channels:
            c = "C" if channels is None else str(channels)
            raise ValueError(
                f"BCLModel expects images [B, {c}, H, W] (one view) or [B, V, {c}, H, W] (V views), "
                f"got shape {tuple(images.shape)}"
            )
        multi_view = images.ndim == 5
        num_views = images.shape[1] if multi_view else 1
        flat = rearrange(images, "b v c h w -> (b v) c h w") if multi_view else images
        features = self.encoder(flat)
        projections = self.projection_head(features)
        logits = self.classifier(features)
        if multi_view:
            features, projections, logits = (
                rearrange(t, "(b v) d -> b v d", v=num_views) for t in (features, projections, logits)
            )
        return {
            "features": features,
            "projections": projections,
            "logits": logits,
            "prototypes": self.prototypes(),
        }

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return (
            f"num_classes={self.num_classes}, proj_dim={self.proj_dim}, "
            f"classifier={self.classifier_type!r}, prototypes={self.prototype_mode!r}"
        )


def build_model(
    encoder_name: str,
    num_classes: int,
    weights: WeightsSpec = "none",
    small_image_stem: bool = False,
    **kwargs: Any,
) -> BCLModel:
    """Build an encoder with :func:`~bcl.models.build_encoder` and wrap it in a :class:`BCLModel`.

    Args:
        encoder_name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        num_classes: Number of classes K.
        weights: ``"none"``, ``"imagenet"`` (hub cache only) or a local weights file.
        small_image_stem: CIFAR-style stem for ~32 px images.
        **kwargs: Passed to :class:`BCLModel` (``proj_dim``, ``proj_hidden_dim``, ``classifier``,
            ``prototypes``, ``scale``).

    Returns:
        The model.

    Example:
        >>> model = build_model("resnet18", 5, small_image_stem=True, proj_dim=16, prototypes="learned")
        >>> model.eval()(torch.zeros(1, 3, 32, 32))["logits"].shape
        torch.Size([1, 5])
    """
    encoder = build_encoder(encoder_name, weights=weights, small_image_stem=small_image_stem)
    return BCLModel(encoder, num_classes, **kwargs)
