"""ResNet encoders (torchvision) with a CIFAR-style stem option and offline weight loading.

The encoder is the torchvision ResNet with its ``fc`` layer replaced by ``nn.Identity``, so it maps
``[B, 3, H, W]`` images to ``[B, feature_dim]`` globally average-pooled features.

Weights are never downloaded: ``weights="imagenet"`` only reads torchvision's file from the torch hub
cache (``torch.hub.get_dir()/checkpoints``) and fails with instructions when it is not there, so a job on
an offline machine errors at once instead of hanging on a network timeout.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODER_NAMES",
    "Encoder",
    "PretrainedWeightsNotFoundError",
    "WeightsLoadError",
    "build_encoder",
    "imagenet_weights_path",
    "load_encoder_weights",
]

#: Supported architectures and their pooled feature dimension.
ENCODER_NAMES: Dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}

# Keys under which training checkpoints commonly nest the state dict, in order of preference.
_NESTED_KEYS = ("state_dict", "model", "encoder")
# Prefixes a checkpoint may put in front of every backbone key (our own Encoder saves "backbone.").
_STRIPPABLE_PREFIXES = ("module.", "encoder.", "backbone.")

WeightsSpec = Union[str, os.PathLike, None]


class WeightsLoadError(RuntimeError):
    """A weights file exists but cannot be used (unreadable, wrong content, wrong keys or shapes)."""


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """``weights="imagenet"`` was asked for but the file is not in the torch hub cache."""


class Encoder(nn.Module):
    """A torchvision ResNet without its classification layer.

    Args:
        name: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``.
        small_image_stem: Replace the 7x7/stride-2 conv and the max-pool by a 3x3/stride-1 conv
            (CIFAR-style), so ~32 px inputs keep enough spatial resolution (total stride 8, not 32).

    Attributes:
        name: The architecture name.
        feature_dim: Size of the output features (512 for resnet18/34, 2048 for resnet50).
        small_image_stem: Whether the CIFAR-style stem is used.
        backbone: The torchvision ResNet, ``fc`` replaced by ``nn.Identity``.

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
        _check_name(name)
        self.name = name
        self.feature_dim = ENCODER_NAMES[name]
        self.small_image_stem = bool(small_image_stem)
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
        return f"name={self.name!r}, feature_dim={self.feature_dim}, small_image_stem={self.small_image_stem}"


def build_encoder(name: str, weights: WeightsSpec = "none", small_image_stem: bool = False) -> Encoder:
    """Build a ResNet encoder and optionally load weights, without ever touching the network.

    Args:
        name: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``.
        weights: ``"none"`` (or ``None``) for random init; ``"imagenet"`` for torchvision's default
            ImageNet weights of that architecture, read from the torch hub cache only (see
            :func:`imagenet_weights_path`); or a path to a local file (see
            :func:`load_encoder_weights`). With ``small_image_stem=True`` the ImageNet 7x7 ``conv1``
            cannot fit the 3x3 stem: it is skipped with a logged warning and the rest is loaded.
        small_image_stem: Use the CIFAR-style stem (3x3 stride-1 conv1, no max-pool).

    Returns:
        The :class:`Encoder`, in training mode.

    Raises:
        ValueError: Unknown ``name`` or an unknown ``weights`` string.
        FileNotFoundError: A local weights file that does not exist.
        PretrainedWeightsNotFoundError: ``"imagenet"`` but the file is not cached
            (a ``FileNotFoundError``).
        WeightsLoadError: A weights file that cannot be loaded or does not fit the architecture.

    Example:
        >>> enc = build_encoder("resnet18", small_image_stem=True)
        >>> enc.feature_dim, enc(torch.zeros(1, 3, 32, 32)).shape
        (512, torch.Size([1, 512]))
    """
    _check_name(name)
    encoder = Encoder(name, small_image_stem=small_image_stem)
    if weights is None:
        return encoder
    if isinstance(weights, str) and weights.strip().lower() in ("none", "imagenet"):
        if weights.strip().lower() == "imagenet":
            _load_imagenet(encoder)
        return encoder
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.exists():
            accepted = "accepted forms: 'none', 'imagenet', or the path of an existing weights file"
            if isinstance(weights, str) and not _looks_like_path(weights):
                raise ValueError(f"unknown weights {weights!r} for {name}; {accepted}")
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist ({accepted})")
        load_encoder_weights(encoder, path)
        return encoder
    raise TypeError(
        f"weights must be 'none', 'imagenet', None, or a path (str or pathlib.Path), "
        f"got {type(weights).__name__}"
    )


def imagenet_weights_path(name: str) -> Tuple[Path, str, str]:
    """Where torchvision's default ImageNet weights for ``name`` live in the torch hub cache.

    Args:
        name: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``.

    Returns:
        ``(path, url, enum_name)``: the expected file, the URL it is downloaded from, and the
        torchvision weights name (e.g. ``"IMAGENET1K_V1"``).

    Example:
        >>> path, url, tag = imagenet_weights_path("resnet18")
        >>> path.name, tag
        ('resnet18-f37072fd.pth', 'IMAGENET1K_V1')
    """
    _check_name(name)
    enum = torchvision.models.get_model_weights(name).DEFAULT
    url = enum.url
    # torch.hub.load_state_dict_from_url names the cached file after the URL's last path component.
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, url, enum.name


def load_encoder_weights(encoder: Encoder, path: Union[str, os.PathLike]) -> None:
    """Load a local weights file into ``encoder`` in place (strict on keys and shapes).

    The file must be loadable with ``torch.load(path, map_location="cpu", weights_only=True)`` and hold
    either a plain state dict or a dict with a ``state_dict`` / ``model`` / ``encoder`` entry. ``module.``
    prefixes (DistributedDataParallel) are removed, then an ``encoder.`` / ``backbone.`` prefix shared by
    every key. If only some keys start with ``encoder.`` (a whole :class:`~bcl.models.BCLModel` state
    dict), those keys are used and the heads are ignored. ``fc.*`` keys are always ignored.

    Args:
        encoder: The encoder to fill.
        path: The weights file.

    Raises:
        FileNotFoundError: The file does not exist.
        WeightsLoadError: Not loadable, no state dict inside, or keys/shapes that do not fit.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist or is not a file")
    raw = _torch_load(path)
    state = _extract_state_dict(raw, path)
    state = _normalise_keys(state)
    _load_backbone_state(encoder, state, source=f"weights file {str(path)!r}")


def _check_name(name: str) -> None:
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or bool(Path(text).suffix)


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and format errors all mean "not a weights file"
        raise WeightsLoadError(
            f"could not load weights file {str(path)!r} with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _extract_state_dict(raw: object, path: Path) -> Dict[str, torch.Tensor]:
    if _is_state_dict(raw):
        return dict(raw)  # type: ignore[arg-type]
    if isinstance(raw, Mapping):
        for key in _NESTED_KEYS:
            if key in raw and _is_state_dict(raw[key]):
                return dict(raw[key])
    kind = f"dict with keys {sorted(map(str, raw))[:8]}" if isinstance(raw, Mapping) else type(raw).__name__
    raise WeightsLoadError(
        f"weights file {str(path)!r} holds a {kind}; expected a state dict (name -> tensor) or a dict "
        f"with one of the keys {list(_NESTED_KEYS)} holding one"
    )


def _normalise_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    changed = True
    while changed:
        changed = False
        for prefix in _STRIPPABLE_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    # A full BCLModel state dict: keep the encoder part, drop projection/classifier/prototype heads.
    if any(k.startswith("encoder.") for k in state) and not any(k.startswith("conv1.") for k in state):
        dropped = sorted({k.split(".", 1)[0] for k in state if not k.startswith("encoder.")})
        logger.info("using the 'encoder.' entries of the state dict, ignoring %s", dropped)
        state = _normalise_keys({k: v for k, v in state.items() if k.startswith("encoder.")})
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _load_backbone_state(
    encoder: Encoder, state: Dict[str, torch.Tensor], source: str, skip: Tuple[str, ...] = ()
) -> None:
    def kept(key: str) -> bool:
        return not any(key.startswith(prefix) for prefix in skip)

    expected = {k: v for k, v in encoder.backbone.state_dict().items() if kept(k)}
    state = {k: v for k, v in state.items() if kept(k)}
    # Keep the architecture's / file's own order: the first differing layers are the telling ones.
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched: List[str] = [
        f"{k}: file {tuple(v.shape)} vs {encoder.name} {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        stem = " with the small-image stem" if encoder.small_image_stem else ""
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys {_few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys {_few(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch for {len(mismatched)} keys {_few(mismatched)}")
        if missing or unexpected:
            hint = " (was it saved from a different architecture?)"
        elif all(m.startswith("conv1.") for m in mismatched):
            hint = " (was it saved with a different small_image_stem setting?)"
        else:
            hint = ""
        raise WeightsLoadError(
            f"{source} does not fit the expected architecture {encoder.name}{stem}: "
            + "; ".join(problems)
            + hint
        )
    encoder.backbone.load_state_dict(state, strict=not skip)


def _few(keys: List[str], n: int = 5) -> str:
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"


def _load_imagenet(encoder: Encoder) -> None:
    path, url, tag = imagenet_weights_path(encoder.name)
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(
            f"ImageNet weights for {encoder.name} ({tag}) are not in the torch hub cache: expected the file "
            f"{str(path)!r}. bcl never downloads weights. To get it, download {url} into "
            f"{str(path.parent)!r} (keep the file name), or on a machine with internet run "
            f"`python -c \"import torchvision; torchvision.models.{encoder.name}(weights='{tag}')\"` and copy "
            f"the file it writes (under ~/.cache/torch/hub/checkpoints/ by default) to {str(path)!r} "
            f"(TORCH_HOME or torch.hub.set_dir choose another cache location). Or use weights='none'."
        )
    state = _normalise_keys(_extract_state_dict(_torch_load(path), path))
    skip: Tuple[str, ...] = ()
    if encoder.small_image_stem:
        # The 7x7 ImageNet conv1 cannot become a 3x3 stride-1 conv; everything after it still transfers.
        logger.warning(
            "small_image_stem=True: ImageNet conv1 %s does not fit the 3x3 stem; keeping conv1 randomly "
            "initialised and loading all other %s weights",
            tuple(state["conv1.weight"].shape) if "conv1.weight" in state else "?",
            encoder.name,
        )
        skip = ("conv1.",)
    _load_backbone_state(encoder, state, source=f"ImageNet weights file {str(path)!r}", skip=skip)

