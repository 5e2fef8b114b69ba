"""ResNet-32 for 32 px images, the backbone of the CIFAR-LT literature (LDAM, BCL, logit adjustment).

He et al. (2016, §4.2) describe the CIFAR ResNets as a 3x3 stem of 16 channels, then three stages of
``n`` basic blocks with 16, 32 and 64 channels (stride 1, 2, 2), global average pooling: ``6n + 2``
layers, so ResNet-32 has ``n = 5`` and a 64-d feature. Its shortcuts are the paper's "option A": where
the shape changes, the identity is subsampled by 2 and zero-padded to the new width, which adds no
parameters; that is the variant Cao et al. (LDAM) ship and the one the BCL CIFAR numbers were measured
with, about 0.46 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet", "resnet32"]


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.subsample = stride != 1 or in_channels != out_channels
        self.pad = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.subsample:
            return x
        # Option A: every other pixel, new channels zero (split evenly in front and behind).
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A ``6n + 2``-layer CIFAR ResNet without a classifier: ``[B, 3, H, W]`` → ``[B, 64]``.

    Args:
        blocks_per_stage: ``n``; 5 gives ResNet-32.

    Example:
        >>> net = CifarResNet(5)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
        (torch.Size([2, 64]), 463504)
    """

    widths = (16, 32, 64)

    def __init__(self, blocks_per_stage: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, self.widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        stages, in_channels = [], self.widths[0]
        for index, width in enumerate(self.widths):
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(_BasicBlock(in_channels, width, stride=2 if index > 0 and block == 0 else 1))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features ``[B, 64]`` of images ``x`` ``[B, 3, H, W]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def resnet32() -> CifarResNet:
    """ResNet-32 (``n = 5``): 64-d features, ~0.46 M parameters."""
    return CifarResNet(5)
