"""Rasterisation of a synthetic transistor scene, and one image end to end (:func:`render_image`).

Shapes are vectorised signed-distance fields over the pixel grid (negative inside); the coverage of a
pixel is a one-pixel linear ramp of the distance, which antialiases every edge. An image is the board,
then the part (shadow, leads, package, damage), then the camera-frame lighting, a blur and the sensor
noise.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch

from bcl.data.synthetic.scene import (
    CLASS_NAMES,
    GAP_DARK,
    GAP_WIDTH,
    HOLE_DARK,
    HOLE_ORIGIN,
    HOLE_RADIUS,
    LEAD_EDGE,
    PITCH,
    Blob,
    Part,
    Scene,
    apply_defect,
    sample_part,
    sample_scene,
)

__all__ = ["render_image"]

# A pixel belongs to the defect mask when the defect changes some channel by more than this (in [0, 1]
# units, about 4 grey levels): large enough to ignore the far tail of the blur, small enough that the
# discarded sub-threshold change is hidden by the sensor noise.
_MASK_THRESHOLD = 4.0 / 255.0


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


def _blob_distance(x: np.ndarray, y: np.ndarray, blob: Blob) -> np.ndarray:
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


def _to_part(x: np.ndarray, y: np.ndarray, part: Part) -> Tuple[np.ndarray, np.ndarray]:
    """Scene coordinates -> part coordinates (inverse of: rotate by theta about pivot, then shift)."""
    c, s = math.cos(part.theta), math.sin(part.theta)
    px, py = part.pivot
    x = x - part.shift[0] - px
    y = y - part.shift[1] - py
    return c * x + s * y + px, -s * x + c * y + py


def _part_distances(x: np.ndarray, y: np.ndarray, part: Part) -> Tuple[np.ndarray, np.ndarray]:
    """Signed distances of the package (with its notches) and distance to the lead axes, at part coordinates."""
    body = _rounded_box_distance(x, y, part.body_center, part.body_half, part.body_corner)
    for notch in part.notches:
        body = np.maximum(body, -_blob_distance(x, y, notch))
    segments = [tuple(p[i]) + tuple(p[i + 1]) for p in part.leads for i in range(len(p) - 1)]
    lead_axis = _segments_distance(x, y, segments)
    return body, lead_axis


def _silhouette(part: Part, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where the part (package or leads) covers the board, as a bool image."""
    if not part.present:
        return np.zeros(x.shape, dtype=bool)
    body, axis = _part_distances(*_to_part(x, y, part), part)
    return np.minimum(body, axis - part.lead_half_width) < 0


def _render_board(scene: Scene, x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    tex = np.zeros_like(x)
    nyquist = 0.5 / px  # cycles per scene unit
    for fx, fy, phase, amp in scene.texture:
        # Fade out texture the pixel grid cannot carry (it would alias into moire at small sizes).
        amp *= min(max(1.5 - 2.0 * math.hypot(fx, fy) / nyquist, 0.0), 1.0)
        if amp > 0:
            tex += amp * np.sin(2 * math.pi * (fx * x + fy * y) + phase)
    img = scene.copper_rgb[:, None, None] * (1.0 + tex)[None]
    ox, oy = HOLE_ORIGIN
    # Gaps between the copper strips, half-way between hole columns.
    gx = ox + PITCH / 2 + np.round((x - ox - PITCH / 2) / PITCH) * PITCH
    img = _lerp(img, GAP_DARK[:, None, None], _coverage(np.abs(x - gx) - GAP_WIDTH / 2, px)[None])
    # Holes: nearest grid point; dark inside, a thin bright copper rim on the side facing the light.
    hx = ox + np.round((x - ox) / PITCH) * PITCH
    hy = oy + np.round((y - oy) / PITCH) * PITCH
    r = np.hypot(x - hx, y - hy)
    facing = 0.5 + 0.5 * ((y - hy) / np.maximum(r, 1e-6))
    rim = 0.35 * facing * np.exp(-(((r - HOLE_RADIUS - 0.004) / 0.005) ** 2))
    img = img * (1.0 + rim)[None]
    inside = np.clip(r / HOLE_RADIUS, 0.0, 1.0)
    hole = HOLE_DARK[:, None, None] * (0.85 + 0.4 * inside**4)[None]
    img = _lerp(img, hole, _coverage(r - HOLE_RADIUS, px)[None])
    for dx, dy, rad, dark in scene.dust:
        img = img * (1.0 - dark * np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / rad**2))[None]
    return img


def _render_part(img: np.ndarray, scene: Scene, part: Part, x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
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
    lead = _lerp(part.lead_rgb[:, None, None] * shade[None], LEAD_EDGE[:, None, None], (t**3)[None])
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


def _lighting(img: np.ndarray, scene: Scene, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


def render_image(
    class_name: str, index: int, image_size: int, seed: int, with_defect: bool, nuisance: float
) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Renders image ``index`` of ``class_name`` from arguments already checked by the caller.

    The checked, documented entry point is :func:`bcl.data.synthetic.render_synthetic_transistor`.

    Args:
        class_name: One of :data:`~bcl.data.synthetic.scene.CLASS_NAMES`.
        index: Position of the image within its class, >= 0.
        image_size: Side length ``S`` in pixels.
        seed: Data set seed, >= 0.
        with_defect: Whether to draw the class's defect (else the same scene without it).
        nuisance: Scale of every nuisance jitter (0 = the canonical scene).

    Returns:
        ``(image, mask, variant)``: uint8 ``[3, S, S]``, bool ``[S, S]`` (all False for ``good`` or
        ``with_defect=False``) and a short description of the defect such as ``"cut_lead/left/gap"``.
    """
    class_index = CLASS_NAMES.index(class_name)
    scene_rng, part_rng, defect_rng, noise_rng = _image_rngs(seed, class_index, index)
    scene = sample_scene(scene_rng, nuisance)
    clean_part = sample_part(part_rng, nuisance)
    if class_name == "good":
        defect_part, variant = None, "good"
    else:
        defect_part, variant = apply_defect(clean_part, class_name, defect_rng)

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

    def finish(part: Part) -> np.ndarray:
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
