"""The public API of the synthetic transistor data: argument checks, one image, the data set."""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from bcl._checks import is_int, is_real
from bcl.data.base import ImageClassificationDataset, Sample
from bcl.data.synthetic.raster import render_image
from bcl.data.synthetic.scene import CLASS_NAMES

__all__ = ["DEFAULT_COUNTS", "MAX_NUISANCE", "MIN_IMAGE_SIZE", "SyntheticTransistor", "render_synthetic_transistor"]

logger = logging.getLogger(__name__)

#: The long tail of the real MVTec AD transistor category (213 train + 60 test good, 10 per defect).
DEFAULT_COUNTS: Dict[str, int] = {
    "good": 273,
    "bent_lead": 10,
    "cut_lead": 10,
    "damaged_case": 10,
    "misplaced": 10,
}

MIN_IMAGE_SIZE = 32
MAX_NUISANCE = 2.0


def _check_image_size(image_size) -> int:
    if not is_int(image_size):
        raise TypeError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size}")
    return int(image_size)


def _check_seed(seed) -> int:
    if not is_int(seed):
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return int(seed)


def _check_nuisance(nuisance) -> float:
    # Above MAX_NUISANCE the jitter would reach nonsense (e.g. negative exposure), so it is refused.
    if not is_real(nuisance):
        raise TypeError(f"nuisance must be a number in [0, {MAX_NUISANCE}], got {nuisance!r}")
    if not 0.0 <= nuisance <= MAX_NUISANCE:
        raise ValueError(f"nuisance must be a number in [0, {MAX_NUISANCE}], got {nuisance}")
    return float(nuisance)


def _check_class_name(class_name) -> str:
    if class_name not in CLASS_NAMES:
        raise ValueError(f"class_name must be one of {list(CLASS_NAMES)}, got {class_name!r}")
    return class_name


def _check_counts(counts) -> Dict[str, int]:
    if counts is None:
        return dict(DEFAULT_COUNTS)
    if isinstance(counts, Mapping):
        unknown = [name for name in counts if name not in CLASS_NAMES]
        if unknown:
            raise ValueError(f"counts has unknown class name(s) {unknown}; valid names are {list(CLASS_NAMES)}")
        items = {name: counts.get(name, 0) for name in CLASS_NAMES}
    elif isinstance(counts, (list, tuple)):
        if len(counts) != len(CLASS_NAMES):
            raise ValueError(
                f"counts as a list needs {len(CLASS_NAMES)} ints, one per class {list(CLASS_NAMES)}; got {len(counts)}"
            )
        items = dict(zip(CLASS_NAMES, counts))
    else:
        raise TypeError(
            f"counts must be None, a dict class_name -> int or a list of {len(CLASS_NAMES)} ints, "
            f"got {type(counts).__name__}"
        )
    for name, n in items.items():
        if not is_int(n) or n < 0:
            raise ValueError(f"counts[{name!r}] must be a non-negative int, got {n!r}")
    if sum(items.values()) == 0:
        raise ValueError("counts asks for no images at all; give at least one class a positive count")
    return {name: int(n) for name, n in items.items()}


def render_synthetic_transistor(
    class_name: str,
    index: int,
    image_size: int = 128,
    seed: int = 0,
    with_defect: bool = True,
    nuisance: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Renders one synthetic image, exactly as :class:`SyntheticTransistor` does.

    With ``with_defect=False`` the same scene is rendered without its defect (same pose, lighting,
    blur and noise): it equals the defect image outside the mask, pixel for pixel.

    Args:
        class_name: One of :data:`CLASS_NAMES`.
        index: Position of the image within its class (any int >= 0).
        image_size: Side length in pixels (>= 32).
        seed: Data set seed (int >= 0).
        with_defect: Whether to draw the class's defect.
        nuisance: Scale of every nuisance jitter in [0, 2] (1 = default, 0 = the canonical scene).

    Returns:
        ``(image, mask, variant)``: uint8 ``[3, S, S]`` image, bool ``[S, S]`` defect mask (all False
        for ``good`` or ``with_defect=False``) and a short description such as ``"cut_lead/left/gap"``.

    Example:
        >>> image, mask, variant = render_synthetic_transistor("bent_lead", 0, image_size=32)
        >>> image.shape, image.dtype, mask.shape, bool(mask.any()), variant.split("/")[0]
        (torch.Size([3, 32, 32]), torch.uint8, torch.Size([32, 32]), True, 'bent_lead')
    """
    _check_class_name(class_name)
    if not is_int(index) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    image_size, seed, nuisance = _check_image_size(image_size), _check_seed(seed), _check_nuisance(nuisance)
    return render_image(class_name, int(index), image_size, seed, bool(with_defect), nuisance)


class SyntheticTransistor(ImageClassificationDataset):
    """Procedural transistor-on-stripboard images with the MVTec AD ``transistor`` defect classes.

    Synthetic data: it shows that a pipeline runs end to end and how methods compare on a long tail of
    small, local defects; it says nothing about accuracy on real photographs (see :mod:`bcl.data.synthetic`).

    Classes are :data:`CLASS_NAMES` (``"good"`` first). Image ``i`` of class ``c`` depends only on
    ``(seed, c, i)`` (and on ``image_size`` through the pixel grid and noise), so asking for more or
    fewer images of another class never changes it. Images are generated once, in ``__init__``.

    Args:
        counts: Images per class. ``None`` gives :data:`DEFAULT_COUNTS` (273 good, 10 of each defect,
            the real category's long tail). A dict ``{class_name: count}`` (classes left out get 0) or a
            list of 5 ints in :data:`CLASS_NAMES` order. A class may have 0 images -- it keeps its
            index in ``class_names``, so labels stay comparable -- but not all of them.
        image_size: Side length in pixels, an int >= 32.
        seed: Int >= 0; everything is drawn from it, never from the global RNGs.
        transform: Optional callable applied to the uint8 ``[3, S, S]`` image in ``__getitem__``.
        nuisance: Scale of the nuisance jitter (pose, lighting, colour, texture, dust, blur, noise,
            the exact lead shapes), in [0, 2]; 1.0 is the default, 0.0 renders every good image as the
            same canonical, noise-free scene (useful to check that a model reads the defect at all).

    Attributes:
        masks: ``list[torch.Tensor]``, bool ``[S, S]`` per image: the pixels the defect changed
            (all False for ``good``).
        variants: ``list[str]``, the kind of defect per image, e.g. ``"misplaced/absent"``.
        counts: ``dict[str, int]``, images per class as generated.

    Raises:
        ValueError: An unknown class name, a negative count, all counts zero, a wrong list length,
            ``image_size < 32``, a negative ``seed``, ``nuisance`` outside [0, 2].
        TypeError: ``image_size`` or ``seed`` not an int, ``nuisance`` not a number, ``counts`` of an
            unsupported type.

    Example:
        >>> ds = SyntheticTransistor(counts={"good": 3, "cut_lead": 2}, image_size=32, seed=1)
        >>> len(ds), ds.class_names[0], ds.targets
        (5, 'good', [0, 0, 0, 2, 2])
        >>> image, target = ds[3]
        >>> tuple(image.shape), image.dtype, target, ds.samples[3].path
        ((3, 32, 32), torch.uint8, 2, 'synthetic://cut_lead/0000')
        >>> bool(ds.masks[0].any()), bool(ds.masks[3].any())
        (False, True)
    """

    def __init__(
        self,
        counts: Optional[Union[Mapping[str, int], Sequence[int]]] = None,
        image_size: int = 128,
        seed: int = 0,
        transform: Optional[Callable] = None,
        nuisance: float = 1.0,
    ) -> None:
        self.counts = _check_counts(counts)
        self.image_size = _check_image_size(image_size)
        self.seed = _check_seed(seed)
        self.nuisance = _check_nuisance(nuisance)
        start = time.perf_counter()
        samples: List[Sample] = []
        images: List[torch.Tensor] = []
        self.masks: List[torch.Tensor] = []
        self.variants: List[str] = []
        for class_index, name in enumerate(CLASS_NAMES):
            for i in range(self.counts[name]):
                image, mask, variant = render_image(name, i, self.image_size, self.seed, True, self.nuisance)
                samples.append(Sample(f"synthetic://{name}/{i:04d}", "synthetic", name, class_index, None))
                images.append(image)
                self.masks.append(mask)
                self.variants.append(variant)
        super().__init__(CLASS_NAMES, samples, images, transform)
        logger.info(
            "generated %d synthetic transistor images %s at %d px (seed %d) in %.2f s",
            len(images), self.counts, self.image_size, self.seed, time.perf_counter() - start,
        )
