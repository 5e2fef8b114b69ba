"""Models: encoders, projection / classifier / prototype heads, and the combined BCL model.

The encoders are ResNets and EfficientNet-Lite0 (:mod:`bcl.models.efficientnet`).

Example:
    >>> import torch
    >>> from bcl.models import build_model
    >>> model = build_model("resnet18", num_classes=3, small_image_stem=True, proj_dim=8)
    >>> model(torch.zeros(2, 3, 32, 32))["projections"].shape
    torch.Size([2, 8])
"""

from .bcl_model import CLASSIFIERS, PROTOTYPE_MODES, BCLModel, build_model
from .encoders import ENCODER_NAMES, Encoder
from .pretrained import (
    PretrainedWeightsNotFoundError,
    WeightsDownloadError,
    WeightsLoadError,
    build_encoder,
    fetch_imagenet_weights,
    imagenet_weights_path,
    load_encoder_weights,
)
from .heads import NormedLinear, ProjectionHead, PrototypeHead, build_classifier
from .probe import LinearProbeModel

__all__ = [
    "BCLModel",
    "CLASSIFIERS",
    "ENCODER_NAMES",
    "Encoder",
    "LinearProbeModel",
    "NormedLinear",
    "PROTOTYPE_MODES",
    "PretrainedWeightsNotFoundError",
    "ProjectionHead",
    "PrototypeHead",
    "WeightsDownloadError",
    "WeightsLoadError",
    "build_classifier",
    "build_encoder",
    "build_model",
    "fetch_imagenet_weights",
    "imagenet_weights_path",
    "load_encoder_weights",
]
