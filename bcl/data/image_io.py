"""Decoding image files to uint8 RGB tensors at a working resolution, with an optional on-disk cache.

Every bcl dataset decodes its files exactly once, through :func:`load_image` (or :func:`load_images`
for many files in a thread pool), into a uint8 ``[3, H, W]`` tensor. The rules are fixed here so that
every reader agrees on them:

* **Colour modes.** Every PIL mode becomes 8-bit RGB by its true meaning, never by clipping:

  - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``: PIL's own conversion to RGB
    (grey is replicated into the three channels, palettes are looked up).
  - Alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, and ``P`` with a ``transparency`` entry) is
    **composited on black**: ``rgb * alpha / 255``, rounded. Dropping alpha instead would expose
    whatever colour happens to be stored under fully transparent pixels (often garbage), whereas a
    black background is what the pixels look like and matches MVTec's dark surroundings.
  - 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) keeps its high byte: ``value >> 8``
    (65535 -> 255, 32768 -> 128, 255 -> 0). ``I`` (32-bit integer; older Pillow decodes 16-bit PNGs
    this way) is read as 16-bit data when all values lie in ``[0, 65535]`` and as 31-bit data
    (``value >> 23``) otherwise; negative values are an error. ``F`` (float) must lie in ``[0, 1]``
    and is scaled by 255.
  - ``LAB`` and other modes PIL cannot convert faithfully are an :class:`ImageDecodeError`.

* **Orientation.** An EXIF orientation tag (JPEG/TIFF) is applied, so the tensor looks like the image
  a viewer shows. PNG files (all of MVTec AD) have none.

* **Resolution.** ``image_size=None`` keeps the native size; an int ``S`` resizes to ``S x S`` with
  antialiasing (PIL LANCZOS, ``reducing_gap=3.0`` so that 1024 -> 64 px first box-reduces by an
  integer factor, which is faster and visually identical). A **non-square** image is resized to the
  square as well (aspect ratio not kept) with a warning logged once per source size: for defect
  classification a center crop could cut the defect out of the picture (a misplaced or bent lead at
  the border), while a mild squash keeps every pixel of evidence.

* **Errors.** A zero-byte file, a truncated file (the whole image is decoded with ``img.load()``;
  PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never turned on), and a file that is not an image are
  :class:`ImageDecodeError` (a ``ValueError``) naming the file. A missing file is the usual
  ``FileNotFoundError``.

Masks (:func:`load_mask`, :func:`load_masks`) are bool ``[H, W]``: ``> 0`` on the raw values is defect,
resized with nearest neighbour.

The cache (:class:`ImageCache`) stores decoded images and masks as ``.npy`` files keyed by the file's
absolute path, size, modification time (ns) and the working resolution, so a changed file is never served from
a stale entry; see its docstring.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from bcl._checks import is_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "ImageCache",
    "is_image_file",
    "is_os_litter",
    "load_image",
    "load_images",
    "load_mask",
    "load_masks",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
SizeLike = Union[int, Tuple[int, int], None]

#: File extensions (lower case) treated as images. Matching is case-insensitive.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Bump when decoding or resizing changes, so that cache entries written by older code are not used.
_CACHE_FORMAT_VERSION = 1

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes PIL converts to RGB correctly itself.
_PIL_RGB_MODES = ("1", "L", "P", "CMYK", "YCbCr", "HSV", "RGBX")

_warned_sizes: set = set()


class ImageDecodeError(ValueError):
    """A file could not be decoded as an image (empty, truncated, not an image, unsupported mode).

    Attributes:
        path: The offending file.
        reason: What went wrong, in words.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode image file {self.path}: {reason}")


def is_image_file(path: PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive). Reads nothing."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


# Files operating systems drop into folders; matched case-insensitively.
_OS_LITTER = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"}


def is_os_litter(name: str) -> bool:
    """True for an entry name that no dataset means: hidden, or an OS thumbnail or settings file.

    Hidden: ``.DS_Store``, AppleDouble ``._x.png``, ``.ipynb_checkpoints``; OS files: ``Thumbs.db``, ``desktop.ini``,
    the macOS folder icon file.
    """
    return name.startswith(".") or name.lower() in _OS_LITTER


def sorted_entries(folder: PathLike) -> List[os.DirEntry]:
    """The entries of ``folder`` sorted by name, so every listing (and so every dataset order) is reproducible."""
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _check_size(image_size: SizeLike) -> Optional[Tuple[int, int]]:
    """Normalise ``image_size`` to ``(H, W)`` or None, rejecting non-positive or non-integer sizes."""
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        h, w = image_size
    else:
        h = w = image_size
    for v in (h, w):
        if not is_int(v) or v <= 0:
            raise ValueError(f"image_size must be None, a positive int or a pair (H, W) of them, got {image_size!r}")
    return int(h), int(w)


def _open_fully(path: PathLike) -> Image.Image:
    """Open ``path`` and decode all of its pixels (so truncation is found now, not later)."""
    path = os.fspath(path)
    with open(path, "rb") as f:  # FileNotFoundError / PermissionError propagate unchanged
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageDecodeError(path, "the file is empty (0 bytes)")
        try:
            img = Image.open(f)
            img.load()  # full decode; raises on truncated data since LOAD_TRUNCATED_IMAGES is False
            # exif_transpose copies the image even when there is nothing to do; only call it when needed.
            if img.getexif().get(0x0112, 1) != 1:
                img = ImageOps.exif_transpose(img)
        except MemoryError:
            raise
        except ImageDecodeError:
            raise
        except Image.UnidentifiedImageError as e:
            raise ImageDecodeError(path, "not an image file (PIL cannot identify its format)") from e
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as e:
            raise ImageDecodeError(path, f"corrupt or truncated image data ({type(e).__name__}: {e})") from e
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(path, str(e)) from e
    return img


def _to_rgb_array(img: Image.Image, path: str) -> np.ndarray:
    """Any decoded PIL image -> uint8 ``[H, W, 3]`` (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in _UINT16_MODES:
        grey = (np.array(img).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "I":
        a = np.array(img, dtype=np.int64)
        if a.size and a.min() < 0:
            raise ImageDecodeError(path, "32-bit integer image with negative values; cannot map to 8 bits")
        shift = 8 if (not a.size or a.max() <= 0xFFFF) else 23
        grey = (a >> shift).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.array(img, dtype=np.float64)
        if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
            raise ImageDecodeError(path, "float image with values outside [0, 1]; cannot map to 8 bits")
        grey = np.rint(a * 255.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = np.array(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        # Composite on black, rounding to nearest: (c * a + 127) // 255.
        return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    if mode in _PIL_RGB_MODES:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    raise ImageDecodeError(path, f"unsupported image mode {mode!r}")


def _resize_rgb(arr: np.ndarray, size: Optional[Tuple[int, int]], path: str) -> np.ndarray:
    if size is None:
        return arr
    h, w = size
    src_h, src_w = arr.shape[:2]
    if (src_h, src_w) == (h, w):
        return arr
    if src_h != src_w and h == w and (src_w, src_h) not in _warned_sizes:
        # Warn once per source size, not once per file: a folder of 5000 same-size photos would flood the log.
        _warned_sizes.add((src_w, src_h))
        logger.warning(
            "non-square image %s (%dx%d, WxH) is resized to %dx%d without keeping the aspect ratio "
            "(no crop, so nothing at the border is cut off); further images of this size are not reported",
            path, src_w, src_h, w, h,
        )
    img = Image.fromarray(arr, "RGB").resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def _decode_rgb(path: PathLike, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """Decode once, convert, resize: uint8 ``[H, W, 3]``."""
    path = os.fspath(path)
    img = _open_fully(path)
    return _resize_rgb(_to_rgb_array(img, path), size, path)


def _hwc_to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_image(path: PathLike, image_size: SizeLike = None) -> torch.Tensor:
    """Decode an image file to uint8 RGB at the working resolution.

    Args:
        path: Image file (PNG, JPEG, BMP, TIFF, ... anything PIL reads).
        image_size: None (native size), ``S`` (resize to ``S x S``) or ``(H, W)``.

    Returns:
        uint8 tensor ``[3, H, W]``.

    Raises:
        ImageDecodeError: Empty, truncated or non-image file, or an unsupported mode.
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "grey.png")
        ...     Image.new("L", (40, 40), 200).save(p)
        ...     x = load_image(p, image_size=16)
        >>> x.dtype, tuple(x.shape), x[:, 0, 0].tolist()
        (torch.uint8, (3, 16, 16), [200, 200, 200])
    """
    return _hwc_to_tensor(_decode_rgb(path, _check_size(image_size)))


def load_mask(path: PathLike, image_size: SizeLike = None) -> torch.Tensor:
    """Decode a ground-truth mask: ``> 0`` is defect, resized with nearest neighbour.

    The threshold is applied to the raw pixel values (before any 8-bit conversion), so a 16-bit
    mask with value 1 still counts as defect; colour masks are converted to grey first.

    Args:
        path: Mask file.
        image_size: None (native size), ``S`` or ``(H, W)``.

    Returns:
        bool tensor ``[H, W]``.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "000_mask.png")
        ...     m = Image.new("L", (8, 8), 0); m.paste(255, (0, 0, 4, 8)); m.save(p)
        ...     mask = load_mask(p, image_size=4)
        >>> mask.dtype, tuple(mask.shape), mask[0].tolist()
        (torch.bool, (4, 4), [True, True, False, False])
    """
    return torch.from_numpy(_decode_mask(path, _check_size(image_size)))


def _decode_mask(path: PathLike, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """Decode a mask once: bool ``[H, W]`` (``> 0`` on the raw values), nearest-neighbour resized."""
    path = os.fspath(path)
    img = _open_fully(path)
    if img.mode in ("1", "L", "I", "F") + _UINT16_MODES:
        binary = np.array(img) > 0
    else:
        try:
            binary = np.array(img.convert("L")) > 0
        except ValueError as e:
            raise ImageDecodeError(path, f"unsupported mask mode {img.mode!r}") from e
    if size is not None and binary.shape != size:
        small = Image.fromarray(binary.astype(np.uint8) * 255, "L").resize((size[1], size[0]), Image.Resampling.NEAREST)
        binary = np.array(small) > 0
    return np.ascontiguousarray(binary)


class ImageCache:
    """On-disk cache of decoded images (uint8 ``[3, H, W]``) and masks (bool ``[H, W]``), one ``.npy`` each.

    The key is the SHA-256 of (kind, absolute path, file size, ``st_mtime_ns``, working resolution,
    cache format version). The file is stat-ed *before* it is decoded, so if it changes while being
    decoded the entry lands under the old key and is never served for the new content. A changed or
    touched file therefore misses (its old entry stays on disk, unused; delete the folder to reclaim
    space).

    Entries are written to a temporary file in the cache folder and renamed into place with
    ``os.replace`` (atomic on POSIX and Windows), so a killed run leaves either no entry or a complete
    one (plus, at worst, an orphaned ``.tmp-*`` file that is never read). An entry that cannot be read
    or has the wrong dtype/shape is treated as a miss: the file is decoded again and the entry
    rewritten. No ``fsync``: a power loss can at worst leave a damaged entry, which is a miss. A cache
    folder that cannot be written only costs a warning.

    Args:
        cache_dir: Folder for the entries (created if missing).

    Attributes:
        hits, misses: Counters since construction (thread-safe).

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "a.png")
        ...     Image.new("RGB", (32, 32), (10, 20, 30)).save(p)
        ...     cache = ImageCache(os.path.join(d, "cache"))
        ...     first = cache.load(p, 8)
        ...     second = cache.load(p, 8)
        >>> cache.misses, cache.hits, bool((first == second).all())
        (1, 1, True)
    """

    def __init__(self, cache_dir: PathLike) -> None:
        self.cache_dir = Path(cache_dir)
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise NotADirectoryError(f"cache_dir {self.cache_dir} exists and is not a folder")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ImageCache({str(self.cache_dir)!r}, hits={self.hits}, misses={self.misses})"

    def entry_path(self, path: PathLike, image_size: SizeLike = None, kind: str = "image") -> Path:
        """The cache file for ``path`` as it is now on disk (stat-ed here); ``kind`` is "image" or "mask"."""
        if kind not in ("image", "mask"):
            raise ValueError(f"kind must be 'image' or 'mask', got {kind!r}")
        return self._entry_path(kind, os.path.abspath(os.fspath(path)), os.stat(path), _check_size(image_size))

    def _entry_path(self, kind: str, abspath: str, st: os.stat_result, size: Optional[Tuple[int, int]]) -> Path:
        key = repr((_CACHE_FORMAT_VERSION, kind, abspath, st.st_size, st.st_mtime_ns, size))
        return self.cache_dir / (hashlib.sha256(key.encode("utf-8")).hexdigest() + ".npy")

    @staticmethod
    def _valid(kind: str, arr: np.ndarray, size: Optional[Tuple[int, int]]) -> bool:
        if kind == "image":
            ok = arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[0] == 3
        else:
            ok = arr.dtype == np.bool_ and arr.ndim == 2
        return ok and (size is None or tuple(arr.shape[-2:]) == size)

    def _read(self, kind: str, entry: Path, size: Optional[Tuple[int, int]]) -> Optional[np.ndarray]:
        try:
            arr = np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as e:  # any unreadable entry (truncated, garbage, wrong format) is a miss
            logger.warning("ignoring unreadable cache entry %s (%s: %s); decoding again", entry, type(e).__name__, e)
            return None
        if not self._valid(kind, arr, size):
            logger.warning(
                "ignoring cache entry %s with dtype %s shape %s; decoding again", entry, arr.dtype, arr.shape
            )
            return None
        return np.ascontiguousarray(arr)

    def _write(self, entry: Path, arr: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, entry)  # atomic: readers see the old entry, no entry, or the complete new one
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _load(self, kind: str, path: PathLike, image_size: SizeLike, decode: Callable) -> np.ndarray:
        path = os.fspath(path)
        size = _check_size(image_size)
        st = os.stat(path)  # before decoding: see the class docstring
        entry = self._entry_path(kind, os.path.abspath(path), st, size)
        arr = self._read(kind, entry, size)
        if arr is not None:
            with self._lock:
                self.hits += 1
            return arr
        arr = decode(path, size)
        try:
            self._write(entry, arr)
        except OSError as e:  # a full or read-only cache folder must not stop training
            logger.warning("could not write cache entry %s (%s); continuing without it", entry, e)
        with self._lock:
            self.misses += 1
        return arr

    def load(self, path: PathLike, image_size: SizeLike = None) -> torch.Tensor:
        """:func:`load_image` through the cache: read the entry, or decode and write it.

        Args:
            path: Image file.
            image_size: None, ``S`` or ``(H, W)``.

        Returns:
            uint8 tensor ``[3, H, W]``.

        Raises:
            ImageDecodeError: As :func:`load_image` (failures are not cached).
        """
        chw = lambda p, s: np.ascontiguousarray(_decode_rgb(p, s).transpose(2, 0, 1))  # noqa: E731
        return torch.from_numpy(self._load("image", path, image_size, chw))

    def load_mask(self, path: PathLike, image_size: SizeLike = None) -> torch.Tensor:
        """:func:`load_mask` through the cache. Returns bool ``[H, W]``."""
        return torch.from_numpy(self._load("mask", path, image_size, _decode_mask))


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _map_files(fn: Callable, paths: Sequence[PathLike], num_threads: Optional[int], return_exceptions: bool) -> list:
    """``[fn(p) for p in paths]`` in a thread pool, in order; ImageDecodeError raised or returned."""
    if num_threads is None:
        num_threads = _default_threads()
    if not is_int(num_threads) or num_threads < 1:
        raise ValueError(f"num_threads must be None or an int >= 1, got {num_threads!r}")

    def one(p: PathLike):
        try:
            return fn(p)
        except ImageDecodeError as e:
            if return_exceptions:
                return e
            raise

    paths = list(paths)
    if num_threads == 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    pool = ThreadPoolExecutor(max_workers=min(num_threads, len(paths)), thread_name_prefix="bcl-decode")
    try:
        futures = [pool.submit(one, p) for p in paths]
        return [f.result() for f in futures]
    finally:
        # On an error, don't decode the rest of a large folder just to throw it away.
        pool.shutdown(wait=True, cancel_futures=True)


def load_images(
    paths: Sequence[PathLike],
    image_size: SizeLike = None,
    cache: Optional[ImageCache] = None,
    num_threads: Optional[int] = None,
    return_exceptions: bool = False,
) -> List[Union[torch.Tensor, ImageDecodeError]]:
    """Decode many files in a thread pool (PIL releases the GIL while decoding), keeping their order.

    Args:
        paths: Image files.
        image_size: None, ``S`` or ``(H, W)``, as :func:`load_image`.
        cache: Optional :class:`ImageCache` to read from and fill.
        num_threads: Worker threads; None = ``min(8, cpu_count)``; 1 decodes in the calling thread.
        return_exceptions: False: raise the :class:`ImageDecodeError` of the first bad file (in the
            order of ``paths``) and cancel the work not yet started. True: put each file's
            :class:`ImageDecodeError` in its slot of the result instead.

    Returns:
        One uint8 ``[3, H, W]`` tensor per path, in order (or the error, see ``return_exceptions``).

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     ps = [os.path.join(d, f"{i}.png") for i in range(3)]
        ...     for i, p in enumerate(ps):
        ...         Image.new("RGB", (20, 20), (i, 0, 0)).save(p)
        ...     xs = load_images(ps, image_size=10, num_threads=2)
        >>> [int(x[0, 0, 0]) for x in xs], tuple(xs[0].shape)
        ([0, 1, 2], (3, 10, 10))
    """
    size = _check_size(image_size)
    fn = (lambda p: cache.load(p, size)) if cache is not None else (lambda p: load_image(p, size))
    return _map_files(fn, paths, num_threads, return_exceptions)


def load_masks(
    paths: Sequence[PathLike],
    image_size: SizeLike = None,
    cache: Optional[ImageCache] = None,
    num_threads: Optional[int] = None,
    return_exceptions: bool = False,
) -> List[Union[torch.Tensor, ImageDecodeError]]:
    """:func:`load_mask` for many files, as :func:`load_images`. Returns bool ``[H, W]`` tensors in order."""
    size = _check_size(image_size)
    fn = (lambda p: cache.load_mask(p, size)) if cache is not None else (lambda p: load_mask(p, size))
    return _map_files(fn, paths, num_threads, return_exceptions)
