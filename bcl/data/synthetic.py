"""A procedural, transistor-like defect data set: the embedded default that needs no download.

:class:`SyntheticTransistor` draws top-down scenes in the style of the MVTec AD ``transistor`` photos:
a copper stripboard (vertical copper strips with dark gaps, a regular grid of holes through which the
dark background shows), a black TO-92-like package with a moulded logo, and three silvery leads that
bend down into the holes of the bottom row. Four defect types follow the real category:

* ``bent_lead``: one lead bent sideways at a random point, by a random angle, in a random direction.
* ``cut_lead``: one lead cut short (its lower part missing, the hole visible) or cut through (a gap,
  with the stub left in the hole).
* ``damaged_case``: a chip of lighter material on the package edge or surface, a bite out of an edge
  (the board shows through), or scratches.
* ``misplaced``: the part is absent, strongly shifted, rotated, or put in upside down.

Every image gets the same *nuisance* distribution whatever its class -- camera shift, rotation and
scale, the exact shape of the leads, board and package colour, board texture, dust, brightness,
contrast, a lighting gradient, vignetting, a slight blur and sensor noise -- so the class is carried
only by the defect. Each image also has a defect mask: the scene is rendered a second time with the
same nuisance parameters but without the defect, and the mask is where the two renderings differ.

What this data *does* tell you: that a pipeline (data, augmentation, sampler, losses, training,
evaluation) runs end to end on a fresh machine, and how methods behave *relative to each other* on a
long-tailed problem whose minority classes are small, local defects on a cluttered, varying background.

What it does *not* tell you: accuracy on real photographs. The textures, the lighting, the optics and
the shapes and statistics of the defects are hand-made approximations (real bent leads are
three-dimensional, real chips have real fracture texture, real misplacements are physical), so a model
that does well here may still fail on the real images, and the absolute numbers carry no meaning for
MVTec AD. Use the real data (``BCL_MVTEC_ROOT``) for any claim about real defects.

Determinism: the scene of the ``i``-th image of a class is drawn from ``numpy.random.SeedSequence``
keyed by ``(seed, class, i)``, independent of the global RNGs, of the other classes' counts and of the
image size (only the pixel noise depends on the size). Images are bit-identical for a seed on a given
platform and numpy version.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from bcl._checks import is_int
from bcl.data.base import ImageClassificationDataset, Sample

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_COUNTS",
    "SyntheticTransistor",
    "render_synthetic_transistor",
]

logger = logging.getLogger(__name__)

#: Class names in label order, ``"good"`` first (the defect types of MVTec AD ``transistor``).
CLASS_NAMES: Tuple[str, ...] = ("good", "bent_lead", "cut_lead", "damaged_case", "misplaced")

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

# A pixel belongs to the defect mask when the defect changes some channel by more than this (in [0, 1]
# units, about 4 grey levels): large enough to ignore the far tail of the blur, small enough that the
# discarded sub-threshold change is hidden by the sensor noise.
_MASK_THRESHOLD = 4.0 / 255.0

# Canonical layout, in scene units (the image is the unit square, y pointing down), measured on the
# real 1024 px photos downscaled to 256 px: hole pitch ~56 px, hole diameter ~22 px, package ~105 px
# wide from y ~36 to ~139 px, leads ~8 px wide ending in the bottom hole row at y ~226 px.
_PITCH = 0.22
_HOLE_ORIGIN = (0.5, 0.885)  # the hole the middle lead goes into
_HOLE_RADIUS = 0.043
_GAP_WIDTH = 0.019  # dark gaps between the copper strips, half-way between hole columns
_BODY_CENTER = (0.5, 0.337)
_BODY_HALF = (0.205, 0.2)
_LEAD_HALF_WIDTH = 0.018
_COPPER = np.array([0.62, 0.44, 0.37])
_HOLE_DARK = np.array([0.095, 0.080, 0.083])
_GAP_DARK = np.array([0.14, 0.10, 0.10])
_LEAD_SILVER = np.array([0.80, 0.80, 0.76])
_LEAD_EDGE = np.array([0.43, 0.36, 0.30])
_BODY_BLACK = np.array([0.078, 0.066, 0.066])


# --------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------


@dataclass
class _Blob:
    """An irregular round shape: a circle whose radius wobbles with the angle (a few harmonics)."""

    cx: float
    cy: float
    radius: float
    harmonics: List[Tuple[int, float, float]]  # (order, relative amplitude, phase)
    stretch: Tuple[float, float] = (1.0, 1.0)  # elongation along x and y (chips run along an edge)


@dataclass
class _Part:
    """The transistor, in part coordinates (the canonical layout), plus where it is put on the board."""

    present: bool
    body_center: Tuple[float, float]
    body_half: Tuple[float, float]
    body_corner: float
    leads: List[np.ndarray]  # polylines, [n, 2] points each
    lead_half_width: float
    theta: float  # rotation (radians) about `pivot`, then translation by `shift`
    pivot: Tuple[float, float]
    shift: Tuple[float, float]
    body_rgb: np.ndarray
    lead_rgb: np.ndarray
    sheen: List[Tuple[float, float, float]]  # bright vertical bands: (centre in [-1, 1], width, amplitude)
    logo_strength: float
    chips: List[_Blob] = field(default_factory=list)  # lighter exposed material on the package
    chip_rgb: np.ndarray = field(default_factory=lambda: np.zeros(3))
    notches: List[_Blob] = field(default_factory=list)  # pieces missing from the package
    scratches: List[Tuple[float, float, float, float]] = field(default_factory=list)
    scratch_half_width: float = 0.004
    scratch_rgb: np.ndarray = field(default_factory=lambda: np.zeros(3))


@dataclass
class _Scene:
    """Everything about an image except the part: camera, board, lighting, blur and noise."""

    cam_scale: float
    cam_rot: float
    cam_shift: Tuple[float, float]
    copper_rgb: np.ndarray
    texture: List[Tuple[float, float, float, float]]  # sinusoids: (fx, fy, phase, amplitude)
    dust: List[Tuple[float, float, float, float]]  # (x, y, radius, darkening)
    shadow_strength: float
    brightness: float
    contrast: float
    channel_gain: np.ndarray
    gradient: Tuple[float, float]  # (amplitude, direction)
    vignette: float
    blur: float  # Gaussian sigma, scene units
    noise: float  # standard deviation, [0, 1] units


def _u(rng: np.random.Generator, amplitude: float, scale: float) -> float:
    """A jitter uniform in ``±amplitude * scale``; always consumes one draw so streams stay aligned."""
    return float(rng.uniform(-1.0, 1.0)) * amplitude * scale


def _sample_scene(rng: np.random.Generator, k: float) -> _Scene:
    """Nuisance parameters; ``k`` scales every deviation from the canonical scene (0 = none)."""
    texture = []
    # Low-frequency blotches of the copper, then fine horizontal "brushed" streaks.
    for _ in range(4):
        f = rng.uniform(1.0, 4.0)
        a = rng.uniform(0, 2 * math.pi)
        texture.append((f * math.cos(a), f * math.sin(a), k * rng.uniform(0, 2 * math.pi), 0.035 * k))
    for _ in range(2):
        texture.append((rng.uniform(-2, 2), rng.uniform(25, 60), k * rng.uniform(0, 2 * math.pi), 0.012 * k))
    dust = []
    for _ in range(int(rng.integers(0, 5))):
        x, y = rng.uniform(0, 1, size=2)
        dust.append((float(x), float(y), float(rng.uniform(0.003, 0.012)), float(rng.uniform(0.1, 0.35)) * k))
    return _Scene(
        cam_scale=1.0 + _u(rng, 0.05, k),
        cam_rot=math.radians(_u(rng, 3.0, k)),
        cam_shift=(_u(rng, 0.035, k), _u(rng, 0.035, k)),
        copper_rgb=_COPPER * (1.0 + np.array([_u(rng, 0.035, k) for _ in range(3)])),
        texture=texture,
        dust=dust,
        shadow_strength=0.25 + _u(rng, 0.1, k),
        brightness=1.0 + _u(rng, 0.17, k),
        contrast=1.0 + _u(rng, 0.12, k),
        channel_gain=1.0 + np.array([_u(rng, 0.025, k) for _ in range(3)]),
        gradient=(abs(_u(rng, 0.25, k)), float(rng.uniform(0, 2 * math.pi))),
        vignette=abs(_u(rng, 0.3, k)),
        blur=0.002 + _u(rng, 0.0012, k),
        noise=k * (0.012 + _u(rng, 0.008, 1.0)),
    )


def _sample_part(rng: np.random.Generator, k: float) -> _Part:
    """The defect-free part with its own nuisance (lead shapes, small placement error, appearance)."""
    ox, oy = _HOLE_ORIGIN
    top = _BODY_CENTER[1] + _BODY_HALF[1] - 0.015  # leads start under the package
    mid_kink = _u(rng, 0.008, k)
    leads = [
        np.array([[ox + _u(rng, 0.004, k), top], [ox + mid_kink, 0.5 * (top + oy)], [ox, oy]]),
    ]
    for side in (-1.0, 1.0):
        x_top = ox + side * (0.105 + _u(rng, 0.01, k))
        knee = top + 0.07 + _u(rng, 0.025, k)
        elbow = knee + 0.13 + _u(rng, 0.03, k)
        x_elbow = ox + side * (_PITCH + _u(rng, 0.012, k))
        leads.append(np.array([[x_top, top], [x_top, knee], [x_elbow, elbow], [ox + side * _PITCH, oy]]))
    leads = [leads[1], leads[0], leads[2]]  # left, middle, right
    # Three reflections on the curved face of the package, canonically at its left, middle and right.
    sheen = [
        (centre + _u(rng, 0.35, k), max(0.12 + _u(rng, 0.08, k), 0.02), max(0.1 + _u(rng, 0.065, k), 0.0))
        for centre in (-0.6, 0.0, 0.6)
    ]
    return _Part(
        present=True,
        body_center=(_BODY_CENTER[0] + _u(rng, 0.008, k), _BODY_CENTER[1] + _u(rng, 0.008, k)),
        body_half=(_BODY_HALF[0] * (1 + _u(rng, 0.04, k)), _BODY_HALF[1] * (1 + _u(rng, 0.04, k))),
        body_corner=max(0.022 + _u(rng, 0.01, k), 0.004),
        leads=leads,
        lead_half_width=_LEAD_HALF_WIDTH * (1 + _u(rng, 0.12, k)),
        theta=math.radians(_u(rng, 1.5, k)),
        pivot=_BODY_CENTER,
        shift=(_u(rng, 0.008, k), _u(rng, 0.008, k)),
        body_rgb=_BODY_BLACK * (1 + _u(rng, 0.25, k)) + np.array([0.0, 0.0, abs(_u(rng, 0.006, k))]),
        lead_rgb=_LEAD_SILVER * (1 + _u(rng, 0.08, k)),
        sheen=sheen,
        logo_strength=0.045 + _u(rng, 0.02, k),
    )


def _random_blob(
    rng: np.random.Generator, cx: float, cy: float, radius: float, stretch: Tuple[float, float] = (1.0, 1.0)
) -> _Blob:
    harmonics = [(order, float(rng.uniform(0.0, 0.28)), float(rng.uniform(0, 2 * math.pi))) for order in (2, 3, 5)]
    return _Blob(cx, cy, radius, harmonics, stretch)


def _polyline_length(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length at every vertex."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])


def _point_at(points: np.ndarray, s: float) -> Tuple[np.ndarray, int]:
    """The point at arc length ``s`` and the index of the segment it lies on."""
    cum = _polyline_length(points)
    i = int(np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(points) - 2))
    t = (s - cum[i]) / max(cum[i + 1] - cum[i], 1e-12)
    return points[i] + t * (points[i + 1] - points[i]), i


def _cut_polyline(points: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The piece of a polyline between arc lengths ``s0 < s1``."""
    cum = _polyline_length(points)
    p0, i0 = _point_at(points, s0)
    p1, i1 = _point_at(points, s1)
    inner = [points[j] for j in range(i0 + 1, i1 + 1) if s0 < cum[j] < s1]
    return np.array([p0, *inner, p1])


def _edge_point(rng: np.random.Generator, part: _Part) -> Tuple[float, float, float, float]:
    """A random point on the package outline (mostly the top edge, where real cases chip) and its outward normal."""
    (cx, cy), (hx, hy) = part.body_center, part.body_half
    side = rng.choice(4, p=[0.45, 0.2, 0.2, 0.15])
    t = float(rng.uniform(-0.9, 0.9))
    if side == 0:
        return cx + t * hx, cy - hy, 0.0, -1.0
    if side == 1:
        return cx - hx, cy + t * hy, -1.0, 0.0
    if side == 2:
        return cx + hx, cy + t * hy, 1.0, 0.0
    return cx + t * hx, cy + hy, 0.0, 1.0


def _apply_defect(part: _Part, class_name: str, rng: np.random.Generator) -> Tuple[_Part, str]:
    """A copy of ``part`` with one defect of ``class_name``, and a short description of the variant."""
    part = deepcopy(part)
    names = ("left", "middle", "right")
    if class_name == "bent_lead":
        which = int(rng.integers(3))
        lead = part.leads[which]
        length = _polyline_length(lead)[-1]
        s = float(rng.uniform(0.15, 0.55)) * length
        angle = math.radians(float(rng.uniform(40, 80))) * (1 if rng.random() < 0.5 else -1)
        pivot, _ = _point_at(lead, s)
        tail = _cut_polyline(lead, s, length) - pivot
        c, si = math.cos(angle), math.sin(angle)
        tail = tail @ np.array([[c, si], [-si, c]]) + pivot
        part.leads[which] = np.concatenate([_cut_polyline(lead, 0.0, s), tail[1:]])
        return part, f"bent_lead/{names[which]}/{math.degrees(angle):+.0f}deg"
    if class_name == "cut_lead":
        which = int(rng.integers(3))
        lead = part.leads[which]
        length = _polyline_length(lead)[-1]
        s = float(rng.uniform(0.2, 0.55)) * length
        if rng.random() < 0.5:
            part.leads[which] = _cut_polyline(lead, 0.0, s)
            return part, f"cut_lead/{names[which]}/short"
        gap = float(rng.uniform(0.12, 0.2))
        part.leads[which] = _cut_polyline(lead, 0.0, s)
        part.leads.append(_cut_polyline(lead, min(s + gap, length - 0.02), length))
        return part, f"cut_lead/{names[which]}/gap"
    if class_name == "damaged_case":
        part.chip_rgb = np.array([0.42, 0.37, 0.33]) * float(rng.uniform(1.0, 1.6))
        variant = rng.choice(["chip", "notch", "scratch"], p=[0.45, 0.3, 0.25])
        if variant == "scratch":
            (cx, cy), (hx, hy) = part.body_center, part.body_half
            x, y = cx + rng.uniform(-0.7, 0.7) * hx, cy + rng.uniform(-0.7, 0.7) * hy
            direction = rng.uniform(0, math.pi)
            for _ in range(int(rng.integers(2, 5))):
                a = direction + rng.normal(0, 0.25)
                half = rng.uniform(0.06, 0.11)
                mx, my = x + rng.normal(0, 0.02), y + rng.normal(0, 0.02)
                hx_, hy_ = half * math.cos(a), half * math.sin(a)
                part.scratches.append((mx - hx_, my - hy_, mx + hx_, my + hy_))
            part.scratch_half_width = float(rng.uniform(0.008, 0.012))
            part.scratch_rgb = part.chip_rgb
        elif variant == "chip":
            radius = float(rng.uniform(0.06, 0.1))
            stretch = float(rng.uniform(1.0, 2.0))
            if rng.random() < 0.75:
                x, y, nx, ny = _edge_point(rng, part)
                inset = float(rng.uniform(0.0, 0.5)) * radius
                x, y = x - nx * inset, y - ny * inset
                # Elongated along the edge, like a flake broken off the moulding.
                elongation = (stretch, 1.0) if ny != 0 else (1.0, stretch)
            else:
                (cx, cy), (hx, hy) = part.body_center, part.body_half
                x, y = cx + rng.uniform(-0.75, 0.75) * hx, cy + rng.uniform(-0.75, 0.75) * hy
                elongation = (stretch, 1.0) if rng.random() < 0.5 else (1.0, stretch)
            part.chips.append(_random_blob(rng, x, y, radius, elongation))
        else:
            radius = float(rng.uniform(0.06, 0.09))
            stretch = float(rng.uniform(1.0, 1.8))
            x, y, nx, ny = _edge_point(rng, part)
            offset = float(rng.uniform(-0.3, 0.3)) * radius
            elongation = (stretch, 1.0) if ny != 0 else (1.0, stretch)
            part.notches.append(_random_blob(rng, x + nx * offset, y + ny * offset, radius, elongation))
        return part, f"damaged_case/{variant}"
    if class_name == "misplaced":
        variant = rng.choice(["absent", "shifted", "rotated", "flipped"], p=[0.35, 0.25, 0.25, 0.15])
        dx, dy = part.shift
        if variant == "absent":
            part.present = False
        elif variant == "shifted":
            a = rng.uniform(0, 2 * math.pi)
            r = rng.uniform(0.12, 0.25)
            # Keep the package mostly in view, as in the real photos.
            part.shift = (
                float(np.clip(dx + r * math.cos(a), -0.25, 0.25)),
                float(np.clip(dy + r * math.sin(a), -0.15, 0.3)),
            )
        elif variant == "rotated":
            part.theta += math.radians(float(rng.uniform(15, 50))) * (1 if rng.random() < 0.5 else -1)
            part.shift = (dx + float(rng.uniform(-0.06, 0.06)), dy + float(rng.uniform(-0.03, 0.06)))
        else:
            part.theta += math.pi + math.radians(float(rng.uniform(-12, 12)))
            part.pivot = (0.5, 0.5)
            part.shift = (dx + float(rng.uniform(-0.05, 0.05)), dy + float(rng.uniform(-0.04, 0.04)))
        return part, f"misplaced/{variant}"
    raise ValueError(f"no defect is defined for class {class_name!r}")


# --------------------------------------------------------------------------------------------------
# Rendering (vectorised signed-distance shapes; coverage = a one-pixel linear ramp for antialiasing)
# --------------------------------------------------------------------------------------------------


def _coverage(d: np.ndarray, px: float) -> np.ndarray:
    """Antialiased inside-ness of a signed distance (negative inside): 1 inside, 0 outside, ramp over a pixel."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t


def _segments_distance(
    x: np.ndarray, y: np.ndarray, segments: Sequence[Tuple[float, float, float, float]]
) -> np.ndarray:
    """Distance from every point to the nearest of some line segments ``(ax, ay, bx, by)``."""
    # The hot loop of the generator: squared distances with in-place updates, one sqrt at the end.
    d2 = np.full(x.shape, np.inf, dtype=x.dtype)
    for ax, ay, bx, by in segments:
        dx, dy = bx - ax, by - ay
        ex, ey = x - ax, y - ay
        h = ex * dx
        h += ey * dy
        h *= 1.0 / max(dx * dx + dy * dy, 1e-12)
        np.clip(h, 0.0, 1.0, out=h)
        ex -= h * dx
        ey -= h * dy
        ex *= ex
        ey *= ey
        ex += ey
        np.minimum(d2, ex, out=d2)
    return np.sqrt(d2, out=d2)


def _blob_distance(x: np.ndarray, y: np.ndarray, blob: _Blob) -> np.ndarray:
    sx, sy = blob.stretch
    dx, dy = (x - blob.cx) / sx, (y - blob.cy) / sy
    angle = np.arctan2(dy, dx)
    radius = blob.radius * (1.0 + sum(a * np.sin(n * angle + p) for n, a, p in blob.harmonics))
    # Scaling back by the smaller stretch keeps it a (conservative) distance, good enough for antialiasing.
    return (np.hypot(dx, dy) - radius) * min(sx, sy)


def _rounded_box_distance(x, y, center, half, corner):
    qx = np.abs(x - center[0]) - (half[0] - corner)
    qy = np.abs(y - center[1]) - (half[1] - corner)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - corner


def _to_part(x: np.ndarray, y: np.ndarray, part: _Part) -> Tuple[np.ndarray, np.ndarray]:
    """Scene coordinates -> part coordinates (inverse of: rotate by theta about pivot, then shift)."""
    c, s = math.cos(part.theta), math.sin(part.theta)
    px, py = part.pivot
    x = x - part.shift[0] - px
    y = y - part.shift[1] - py
    return c * x + s * y + px, -s * x + c * y + py


def _part_distances(x: np.ndarray, y: np.ndarray, part: _Part) -> Tuple[np.ndarray, np.ndarray]:
    """Signed distances of the package (with its notches) and distance to the lead axes, at part coordinates."""
    body = _rounded_box_distance(x, y, part.body_center, part.body_half, part.body_corner)
    for notch in part.notches:
        body = np.maximum(body, -_blob_distance(x, y, notch))
    segments = [tuple(p[i]) + tuple(p[i + 1]) for p in part.leads for i in range(len(p) - 1)]
    lead_axis = _segments_distance(x, y, segments)
    return body, lead_axis


def _silhouette(part: _Part, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where the part (package or leads) covers the board, as a bool image."""
    if not part.present:
        return np.zeros(x.shape, dtype=bool)
    body, axis = _part_distances(*_to_part(x, y, part), part)
    return np.minimum(body, axis - part.lead_half_width) < 0


def _render_board(scene: _Scene, x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    tex = np.zeros_like(x)
    nyquist = 0.5 / px  # cycles per scene unit
    for fx, fy, phase, amp in scene.texture:
        # Fade out texture the pixel grid cannot carry (it would alias into moire at small sizes).
        amp *= min(max(1.5 - 2.0 * math.hypot(fx, fy) / nyquist, 0.0), 1.0)
        if amp > 0:
            tex += amp * np.sin(2 * math.pi * (fx * x + fy * y) + phase)
    img = scene.copper_rgb[:, None, None] * (1.0 + tex)[None]
    ox, oy = _HOLE_ORIGIN
    # Gaps between the copper strips, half-way between hole columns.
    gx = ox + _PITCH / 2 + np.round((x - ox - _PITCH / 2) / _PITCH) * _PITCH
    img = _lerp(img, _GAP_DARK[:, None, None], _coverage(np.abs(x - gx) - _GAP_WIDTH / 2, px)[None])
    # Holes: nearest grid point; dark inside, a thin bright copper rim on the side facing the light.
    hx = ox + np.round((x - ox) / _PITCH) * _PITCH
    hy = oy + np.round((y - oy) / _PITCH) * _PITCH
    r = np.hypot(x - hx, y - hy)
    facing = 0.5 + 0.5 * ((y - hy) / np.maximum(r, 1e-6))
    rim = 0.35 * facing * np.exp(-(((r - _HOLE_RADIUS - 0.004) / 0.005) ** 2))
    img = img * (1.0 + rim)[None]
    inside = np.clip(r / _HOLE_RADIUS, 0.0, 1.0)
    hole = _HOLE_DARK[:, None, None] * (0.85 + 0.4 * inside**4)[None]
    img = _lerp(img, hole, _coverage(r - _HOLE_RADIUS, px)[None])
    for dx, dy, rad, dark in scene.dust:
        img = img * (1.0 - dark * np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / rad**2))[None]
    return img


def _render_part(img: np.ndarray, scene: _Scene, part: _Part, x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    """Draws the part (shadow, leads, package, damage) over a rendered board."""
    if not part.present:
        return img
    hw = part.lead_half_width
    # Soft shadow, cast down and to the right in the scene frame (the light is above left).
    sx, sy = _to_part(x - 0.008, y - 0.012, part)
    body_s, axis_s = _part_distances(sx, sy, part)
    occluder = np.minimum(body_s, axis_s - hw)
    shadow = scene.shadow_strength * np.clip(0.5 - occluder / 0.03, 0.0, 1.0)
    img = img * (1.0 - shadow)[None]

    qx, qy = _to_part(x, y, part)
    body, axis = _part_distances(qx, qy, part)

    # Leads: a cylinder-like profile (bright along the axis, brown-grey at the edges), with a
    # slow sparkle along the wire.
    t = np.clip(axis / hw, 0.0, 1.0)
    spark = 1.0 + 0.12 * np.sin(37.0 * (qx + qy)) + 0.08 * np.sin(91.0 * qy)
    shade = (0.62 + 0.45 * (1.0 - t**2)) * spark
    lead = _lerp(part.lead_rgb[:, None, None] * shade[None], _LEAD_EDGE[:, None, None], (t**3)[None])
    img = _lerp(img, lead, _coverage(axis - hw, px)[None])

    # Package: near-black plastic with vertical sheen bands (it is a curved moulding), a lighter rim
    # along the outline, a bluish cast towards the bottom and a faint circular logo.
    (cx, cy), (hx, hy) = part.body_center, part.body_half
    xr, yr = (qx - cx) / hx, (qy - cy) / hy
    light = np.zeros_like(x)
    for centre, width, amp in part.sheen:
        light += amp * np.exp(-(((xr - centre) / width) ** 2))
    # The top of the moulding is bevelled and catches the light.
    light += 0.06 * np.exp(-((body / 0.008) ** 2)) + 0.12 * np.clip(-8.0 - 9.0 * yr, 0.0, 1.0)
    lr = np.hypot(qx - cx, qy - (cy - 0.005))
    logo = np.exp(-(((lr - 0.05) / 0.0045) ** 2))
    logo += ((np.abs(qx - cx) < 0.004) & (qy > cy - 0.03) & (qy < cy + 0.03)).astype(x.dtype)
    light += part.logo_strength * logo
    body_img = part.body_rgb[:, None, None] * (1.0 + 6.0 * light)[None]
    body_img[2] += 0.012 * np.clip(yr, 0.0, 1.0)

    # Damage drawn on the package only (clipped by its coverage below).
    if part.chips or part.notches or part.scratches:
        # Irregular grain of broken plastic: three sinusoids in unrelated directions.
        grain = 1.0 + 0.09 * (
            np.sin(97.0 * qx + 41.0 * qy) + np.sin(-53.0 * qx + 113.0 * qy + 1.0) + np.sin(71.0 * qx - 89.0 * qy + 2.0)
        )
        damage = part.chip_rgb[:, None, None] * grain[None]
        for chip in part.chips:
            d = _blob_distance(qx, qy, chip)
            body_img = _lerp(body_img, damage, _coverage(d, px)[None])
            # A dark crack line around the chip.
            body_img = body_img * (1.0 - 0.4 * np.exp(-((d / 0.004) ** 2)))[None]
        for notch in part.notches:
            # Exposed, lighter material along the broken edge.
            d = -_blob_distance(qx, qy, notch)
            edge = np.clip(1.0 - d / 0.012, 0.0, 1.0) * (d > -px)
            body_img = _lerp(body_img, damage, edge[None])
        if part.scratches:
            d = _segments_distance(qx, qy, part.scratches) - part.scratch_half_width
            scratch = part.scratch_rgb[:, None, None] * grain[None]
            body_img = _lerp(body_img, scratch, _coverage(d, px)[None])
    return _lerp(img, body_img, _coverage(body, px)[None])


def _lighting(img: np.ndarray, scene: _Scene, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Camera-frame effects: exposure, contrast, colour balance, a lighting gradient and vignetting."""
    amp, direction = scene.gradient
    gain = 1.0 + amp * ((u - 0.5) * math.cos(direction) + (v - 0.5) * math.sin(direction))
    gain *= 1.0 - scene.vignette * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
    img = img * (scene.brightness * gain)[None] * scene.channel_gain[:, None, None]
    return (img - 0.3) * scene.contrast + 0.3


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (a no-op below a quarter pixel)."""
    if sigma_px < 0.25:
        return img
    radius = int(math.ceil(2.5 * sigma_px))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    taps = (taps / taps.sum()).astype(img.dtype)
    size = img.shape[-1]
    padded = np.pad(img, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    img = sum(w * padded[:, :, i : i + size] for i, w in enumerate(taps))
    padded = np.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(w * padded[:, i : i + size, :] for i, w in enumerate(taps))


def _image_rngs(seed: int, class_index: int, index: int) -> Tuple[np.random.Generator, ...]:
    """Independent streams for the scene, the part, the defect and the pixel noise of one image."""
    return tuple(
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(class_index, index, stream)))
        for stream in range(4)
    )


def _render(class_name: str, index: int, image_size: int, seed: int, with_defect: bool, nuisance: float):
    class_index = CLASS_NAMES.index(class_name)
    scene_rng, part_rng, defect_rng, noise_rng = _image_rngs(seed, class_index, index)
    scene = _sample_scene(scene_rng, nuisance)
    clean_part = _sample_part(part_rng, nuisance)
    if class_name == "good":
        defect_part, variant = None, "good"
    else:
        defect_part, variant = _apply_defect(clean_part, class_name, defect_rng)

    # Pixel centres in image coordinates, then through the inverse camera into scene coordinates.
    coords = ((np.arange(image_size, dtype=np.float32) + 0.5) / image_size).astype(np.float32)
    u, v = np.meshgrid(coords, coords)
    c, s = math.cos(scene.cam_rot), math.sin(scene.cam_rot)
    x0, y0 = (u - 0.5) / scene.cam_scale, (v - 0.5) / scene.cam_scale
    x = (c * x0 + s * y0 + 0.5 - scene.cam_shift[0]).astype(np.float32)
    y = (-s * x0 + c * y0 + 0.5 - scene.cam_shift[1]).astype(np.float32)
    px = 1.0 / (image_size * scene.cam_scale)  # one pixel, in scene units

    board = _render_board(scene, x, y, px).astype(np.float32)
    sigma_px = scene.blur * image_size * scene.cam_scale

    def finish(part: _Part) -> np.ndarray:
        return _blur(_lighting(_render_part(board, scene, part, x, y, px), scene, u, v), sigma_px)

    img = finish(clean_part)
    mask = np.zeros((image_size, image_size), dtype=bool)
    if with_defect and defect_part is not None:
        defective = finish(defect_part)
        mask = np.abs(defective - img).max(axis=0) > _MASK_THRESHOLD
        if class_name == "misplaced":
            # As in MVTec AD's masks, a misplaced part is marked over the whole region where it
            # should be and where it is, including where package happens to overlap package.
            mask |= _silhouette(clean_part, x, y) | _silhouette(defect_part, x, y)
        # Outside the mask the defect image *is* the clean one, so "the defect changed exactly the
        # masked pixels" holds exactly (the dropped sub-threshold change is below the noise).
        img = np.where(mask[None], defective, img)
    # Sensor noise, mostly shared across channels (luminance) with a little chroma noise; drawn from
    # its own stream so the defect and clean renderings of an image get the very same noise.
    luma = noise_rng.standard_normal((1, image_size, image_size), dtype=np.float32)
    chroma = noise_rng.standard_normal((3, image_size, image_size), dtype=np.float32)
    img = img + scene.noise * (0.85 * luma + 0.5 * chroma)
    pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(pixels), torch.from_numpy(mask), variant


# --------------------------------------------------------------------------------------------------
# Argument checking and public API
# --------------------------------------------------------------------------------------------------


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
    if isinstance(nuisance, bool) or not isinstance(nuisance, numbers.Real):
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
    return _render(class_name, int(index), image_size, seed, bool(with_defect), nuisance)


class SyntheticTransistor(ImageClassificationDataset):
    """Procedural transistor-on-stripboard images with the MVTec AD ``transistor`` defect classes.

    Synthetic data: it shows that a pipeline runs end to end and how methods compare on a long tail of
    small, local defects; it says nothing about accuracy on real photographs (see the module docstring).

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
                image, mask, variant = _render(name, i, self.image_size, self.seed, True, self.nuisance)
                samples.append(Sample(f"synthetic://{name}/{i:04d}", "synthetic", name, class_index, None))
                images.append(image)
                self.masks.append(mask)
                self.variants.append(variant)
        super().__init__(CLASS_NAMES, samples, images, transform)
        logger.info(
            "generated %d synthetic transistor images %s at %d px (seed %d) in %.2f s",
            len(images), self.counts, self.image_size, self.seed, time.perf_counter() - start,
        )
