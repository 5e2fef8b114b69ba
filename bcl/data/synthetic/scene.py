"""The scene model of the synthetic transistor images: canonical layout, nuisance sampling, defect geometry.

A scene is drawn as plain parameters, no pixels: :class:`Scene` (camera, board, lighting, blur, noise)
from :func:`sample_scene`, the defect-free :class:`Part` from :func:`sample_part`, and a copy of the
part with one defect from :func:`apply_defect`. :mod:`bcl.data.synthetic.raster` turns them into pixels.
Coordinates are scene units: the image is the unit square, y pointing down.
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

__all__ = ["CLASS_NAMES", "Blob", "Part", "Scene", "apply_defect", "sample_part", "sample_scene"]

#: Class names in label order, ``"good"`` first (the defect types of MVTec AD ``transistor``).
CLASS_NAMES: Tuple[str, ...] = ("good", "bent_lead", "cut_lead", "damaged_case", "misplaced")

# Canonical layout, in scene units (the image is the unit square, y pointing down), measured on the
# real 1024 px photos downscaled to 256 px: hole pitch ~56 px, hole diameter ~22 px, package ~105 px
# wide from y ~36 to ~139 px, leads ~8 px wide ending in the bottom hole row at y ~226 px.
PITCH = 0.22
HOLE_ORIGIN = (0.5, 0.885)  # the hole the middle lead goes into
HOLE_RADIUS = 0.043
GAP_WIDTH = 0.019  # dark gaps between the copper strips, half-way between hole columns
BODY_CENTER = (0.5, 0.337)
BODY_HALF = (0.205, 0.2)
LEAD_HALF_WIDTH = 0.018
COPPER = np.array([0.62, 0.44, 0.37])
HOLE_DARK = np.array([0.095, 0.080, 0.083])
GAP_DARK = np.array([0.14, 0.10, 0.10])
LEAD_SILVER = np.array([0.80, 0.80, 0.76])
LEAD_EDGE = np.array([0.43, 0.36, 0.30])
BODY_BLACK = np.array([0.078, 0.066, 0.066])


@dataclass
class Blob:
    """An irregular round shape: a circle whose radius wobbles with the angle (a few harmonics)."""

    cx: float
    cy: float
    radius: float
    harmonics: List[Tuple[int, float, float]]  # (order, relative amplitude, phase)
    stretch: Tuple[float, float] = (1.0, 1.0)  # elongation along x and y (chips run along an edge)


@dataclass
class Part:
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
    chips: List[Blob] = field(default_factory=list)  # lighter exposed material on the package
    chip_rgb: np.ndarray = field(default_factory=lambda: np.zeros(3))
    notches: List[Blob] = field(default_factory=list)  # pieces missing from the package
    scratches: List[Tuple[float, float, float, float]] = field(default_factory=list)
    scratch_half_width: float = 0.004
    scratch_rgb: np.ndarray = field(default_factory=lambda: np.zeros(3))


@dataclass
class Scene:
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


def sample_scene(rng: np.random.Generator, k: float) -> Scene:
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
    return Scene(
        cam_scale=1.0 + _u(rng, 0.05, k),
        cam_rot=math.radians(_u(rng, 3.0, k)),
        cam_shift=(_u(rng, 0.035, k), _u(rng, 0.035, k)),
        copper_rgb=COPPER * (1.0 + np.array([_u(rng, 0.035, k) for _ in range(3)])),
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


def sample_part(rng: np.random.Generator, k: float) -> Part:
    """The defect-free part with its own nuisance (lead shapes, small placement error, appearance)."""
    ox, oy = HOLE_ORIGIN
    top = BODY_CENTER[1] + BODY_HALF[1] - 0.015  # leads start under the package
    mid_kink = _u(rng, 0.008, k)
    leads = [
        np.array([[ox + _u(rng, 0.004, k), top], [ox + mid_kink, 0.5 * (top + oy)], [ox, oy]]),
    ]
    for side in (-1.0, 1.0):
        x_top = ox + side * (0.105 + _u(rng, 0.01, k))
        knee = top + 0.07 + _u(rng, 0.025, k)
        elbow = knee + 0.13 + _u(rng, 0.03, k)
        x_elbow = ox + side * (PITCH + _u(rng, 0.012, k))
        leads.append(np.array([[x_top, top], [x_top, knee], [x_elbow, elbow], [ox + side * PITCH, oy]]))
    leads = [leads[1], leads[0], leads[2]]  # left, middle, right
    # Three reflections on the curved face of the package, canonically at its left, middle and right.
    sheen = [
        (centre + _u(rng, 0.35, k), max(0.12 + _u(rng, 0.08, k), 0.02), max(0.1 + _u(rng, 0.065, k), 0.0))
        for centre in (-0.6, 0.0, 0.6)
    ]
    return Part(
        present=True,
        body_center=(BODY_CENTER[0] + _u(rng, 0.008, k), BODY_CENTER[1] + _u(rng, 0.008, k)),
        body_half=(BODY_HALF[0] * (1 + _u(rng, 0.04, k)), BODY_HALF[1] * (1 + _u(rng, 0.04, k))),
        body_corner=max(0.022 + _u(rng, 0.01, k), 0.004),
        leads=leads,
        lead_half_width=LEAD_HALF_WIDTH * (1 + _u(rng, 0.12, k)),
        theta=math.radians(_u(rng, 1.5, k)),
        pivot=BODY_CENTER,
        shift=(_u(rng, 0.008, k), _u(rng, 0.008, k)),
        body_rgb=BODY_BLACK * (1 + _u(rng, 0.25, k)) + np.array([0.0, 0.0, abs(_u(rng, 0.006, k))]),
        lead_rgb=LEAD_SILVER * (1 + _u(rng, 0.08, k)),
        sheen=sheen,
        logo_strength=0.045 + _u(rng, 0.02, k),
    )


def _random_blob(
    rng: np.random.Generator, cx: float, cy: float, radius: float, stretch: Tuple[float, float] = (1.0, 1.0)
) -> Blob:
    harmonics = [(order, float(rng.uniform(0.0, 0.28)), float(rng.uniform(0, 2 * math.pi))) for order in (2, 3, 5)]
    return Blob(cx, cy, radius, harmonics, stretch)


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


def _edge_point(rng: np.random.Generator, part: Part) -> Tuple[float, float, float, float]:
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


def apply_defect(part: Part, class_name: str, rng: np.random.Generator) -> Tuple[Part, str]:
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
