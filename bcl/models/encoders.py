"""Encoders: torchvision ResNets with a CIFAR-style stem option, the CIFAR ResNet-32, EfficientNet-Lite0.

The encoder is the network with its classification layer removed, so it maps ``[B, 3, H, W]`` images
to ``[B, feature_dim]`` globally average-pooled features. Building one with
ImageNet or local weights is :func:`bcl.models.pretrained.build_encoder`.
"""

from __future__ import annotations

from typing import Dict

import torch
import torchvision
from torch import nn

from bcl.choices import ENCODERS

from . import efficientnet
from .resnet_cifar import resnet32

__all__ = ["ENCODER_NAMES", "CIFAR_ENCODERS", "Encoder", "check_encoder_name"]

_FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet32": 64,
                 efficientnet.EFFICIENTNET_LITE0: efficientnet.FEATURE_DIM}
#: Supported architectures (:data:`bcl.choices.ENCODERS`) and their pooled feature dimension.
ENCODER_NAMES: Dict[str, int] = {name: _FEATURE_DIMS[name] for name in ENCODERS}

#: The CIFAR ResNets of :mod:`bcl.models.resnet_cifar`: built for 32 px, no torchvision counterpart,
#: no ImageNet weights.
CIFAR_ENCODERS = ("resnet32",)


class Encoder(nn.Module):
    """A network without its classification layer.

    Args:
        name: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (torchvision), ``"resnet32"``
            (the CIFAR ResNet-32 of :mod:`bcl.models.resnet_cifar`, 64-d features) or
            ``"efficientnet_lite0"`` (timm's, 1280-d features: :mod:`bcl.models.efficientnet`).
        small_image_stem: Replace the 7x7/stride-2 conv and the max-pool by a 3x3/stride-1 conv
            (CIFAR-style), so ~32 px inputs keep enough spatial resolution (total stride 8, not 32).
            Torchvision ResNets only.

    Attributes:
        name: The architecture name.
        feature_dim: Size of the output features (512 for resnet18/34, 2048 for resnet50, 1280 for
            efficientnet_lite0).
        small_image_stem: Whether the CIFAR-style stem is used.
        backbone: The network, its classifier removed (a torchvision ResNet's ``fc`` is ``nn.Identity``).

    Shape:
        - Input: ``[B, 3, H, W]``.
        - Output: ``[B, feature_dim]``.

    Example:
        >>> enc = Encoder("resnet18", small_image_stem=True)
        >>> enc(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """

    in_channels = 3

    def __init__(self, name: str = "resnet18", small_image_stem: bool = False) -> None:
        super().__init__()
        check_encoder_name(name)
        self.name = name
        self.feature_dim = ENCODER_NAMES[name]
        self.small_image_stem = bool(small_image_stem)
        if name in CIFAR_ENCODERS:
            # Already a 32 px network (3x3 stride-1 stem, no max-pool): the stem option does not apply.
            self.small_image_stem = True
            self.backbone: nn.Module = resnet32()
            return
        if name == efficientnet.EFFICIENTNET_LITE0:
            if self.small_image_stem:
                raise ValueError(f"small_image_stem (model.small_image_stem) applies to the torchvision ResNets; "
                                 f"{name} keeps its own stem: set it to false")
            self.backbone = efficientnet.build_backbone()
            return
        backbone = getattr(torchvision.models, name)(weights=None)
        if self.small_image_stem:
            backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            # Same init torchvision applies to every other conv in the network.
            nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
            backbone.maxpool = nn.Identity()
        backbone.fc = nn.Identity()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            x: Images ``[B, 3, H, W]``.

        Returns:
            Features ``[B, feature_dim]``.
        """
        if x.ndim != 4:
            raise ValueError(f"Encoder expects images of shape [B, 3, H, W], got {tuple(x.shape)}")
        return self.backbone(x)

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"name={self.name!r}, feature_dim={self.feature_dim}, small_image_stem={self.small_image_stem}"


def check_encoder_name(name: str) -> None:
    """Raises ValueError unless ``name`` is one of :data:`ENCODER_NAMES`."""
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}")
