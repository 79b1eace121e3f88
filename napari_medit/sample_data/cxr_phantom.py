"""Procedural chest radiograph (PA) phantom generator.

This is a *procedural phantom*: every structure is drawn from simple
geometric primitives with seeded random parameters. It is not derived from
real anatomy data or patient images; it only has to read as a PA chest
radiograph at a glance (dense structures bright, lungs dark, air black) so
that the plugin has sample data and a small diffusion demo model has
something chest-like to learn from.

Rendering model
---------------
Each structure contributes a *projected thickness* map (chord length of an
ellipse/tube, or a square-root profile of an approximate signed distance).
Thicknesses are weighted by attenuation coefficients and summed to a line
integral ``A``; the detector sees the transmission ``exp(-A)`` with quantum
noise, and the displayed value is ``1 - transmission`` followed by a fixed
window and gamma. Dense structures are therefore bright and overlapping
structures add up with the right saturation (e.g. the spine is faint through
the heart).

Coordinates
-----------
All anatomy lives in a normalised *patient frame*: ``x`` in [-1, 1] from the
image's left to right edge, ``y`` in [-1, 1] from top to bottom, one unit is
half the field of view (about 20 cm). PA convention: the patient's right is
on the image's left, so patient-right structures have ``x < 0``. Per-side
geometry uses the lateral coordinate ``s = sign * x`` (``sign`` = -1 for the
patient's right), i.e. the distance from the midline. A slight random
rotation/shift maps the patient frame onto the pixel grid. Because geometry is
resolution independent, the same seed gives the same anatomy at every size,
and a finding never changes the anatomy it is drawn on (it uses its own
random stream), so ``seed`` with and without a finding is a matched pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["FINDINGS", "CXRPhantom", "generate_cxr_phantom", "to_uint8"]

FINDINGS = ("effusion", "cardiomegaly", "opacity", "pneumothorax", "chest_drain")
_SIDES = ("left", "right")
_EFFUSION_SIDES = ("left", "right", "both")
_OPACITY_KINDS = ("consolidation", "nodule")
_SIGN = {"right": -1.0, "left": 1.0}  # patient side -> sign of image x

# Attenuation per normalised length unit (~20 cm), tuned for a plausible
# display after the window below rather than for real keV values.
_MU_SOFT = 1.6
_MU_BONE = 5.0
_LUNG_AIR = 0.80  # air fraction of aerated lung (the rest is parenchyma/blood)
_PTX_AIR = 0.93  # pneumothorax: air without lung tissue
_COLLAPSED_AIR = 0.76  # collapsed lung holds a little less air
_RETROCARDIAC = 0.25  # lung still seen behind the heart/mediastinum
_WINDOW = (0.15, 0.9)  # raw intensity range mapped to [0, 1]
_GAMMA = 1.5
_PHOTONS_512 = 6000.0  # photons per pixel at 512 px (sets quantum noise)


@dataclass(frozen=True)
class CXRPhantom:
    """A rendered phantom.

    ``image`` is float32 (size, size) in [0, 1]. ``masks`` holds bool
    (size, size) arrays: always ``'lungs'``, ``'heart'``, ``'body'``,
    ``'finding'`` (union of all requested findings, incl. the enlarged heart
    for cardiomegaly and the drain) and ``'drain'``; plus ``'effusion'``,
    ``'opacity'`` and ``'pneumothorax'`` when drawn. ``findings`` is a
    JSON-serialisable description of what was drawn.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    findings: dict


# --------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """Maps between pixel indices and the (rotated, shifted) patient frame."""

    size: int
    angle: float
    dx: float
    dy: float

    @property
    def px(self) -> float:
        """Pixels per normalised unit."""
        return self.size / 2.0

    def coords(self, rows: slice = slice(None), cols: slice = slice(None)):
        """Patient-frame (x, y) of the pixel centres of a block."""
        idx = np.arange(self.size, dtype=np.float64)
        c = (idx[cols] + 0.5) / self.px - 1.0 - self.dx
        r = (idx[rows] + 0.5) / self.px - 1.0 - self.dy
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        x = ca * c[None, :] + sa * r[:, None]
        y = -sa * c[None, :] + ca * r[:, None]
        return x, y

    def to_pixel(self, x, y):
        """Patient-frame points -> fractional (row, col) pixel coordinates."""
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        gx = ca * np.asarray(x) - sa * np.asarray(y) + self.dx
        gy = sa * np.asarray(x) + ca * np.asarray(y) + self.dy
        return (gy + 1.0) * self.px - 0.5, (gx + 1.0) * self.px - 0.5

    def block(self, x, y, margin: float):
        """Pixel block (rows, cols) covering the patient-frame points plus margin."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        corners_x = [x.min() - margin, x.max() + margin]
        corners_y = [y.min() - margin, y.max() + margin]
        rr, cc = self.to_pixel(
            np.array([corners_x[0], corners_x[1], corners_x[0], corners_x[1]]),
            np.array([corners_y[0], corners_y[0], corners_y[1], corners_y[1]]),
        )
        r0, r1 = (
            int(np.clip(np.floor(rr.min()), 0, self.size)),
            int(np.clip(np.ceil(rr.max()) + 1, 0, self.size)),
        )
        c0, c1 = (
            int(np.clip(np.floor(cc.min()), 0, self.size)),
            int(np.clip(np.ceil(cc.max()) + 1, 0, self.size)),
        )
        return slice(r0, r1), slice(c0, c1)


def _ellipse_sd(dx, dy, a, b, power=2.0):
    """Approximate signed distance to an axis-aligned (super)ellipse, negative inside.

    First-order ``(F - 1) / |grad F|`` with ``F`` the normalised radius: exact on
    the boundary, smooth inside, and cheap -- good enough for soft profiles.
    ``power`` > 2 squares the shape off (broader lung apices).
    """
    u, v = np.abs(dx) / a, np.abs(dy) / b
    if power == 2.0:
        f = np.hypot(u, v)
        g = np.hypot(u / a, v / b)
    else:
        f = (u**power + v**power) ** (1.0 / power)
        g = np.hypot(u ** (power - 1.0) / a, v ** (power - 1.0) / b) * (f + 1e-12) ** (1.0 - power)
    eps = 1e-9
    return (f - 1.0) * (f + eps) / (g + eps / np.minimum(a, b))


def _smooth_min(a, b, k):
    """Smooth union of two signed distances (rounds the joint over ~k)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _rotate(x, y, cx, cy, angle):
    """Coordinates relative to (cx, cy) in a frame rotated by ``angle``."""
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return ca * dx + sa * dy, -sa * dx + ca * dy


def _chord(d, radius):
    """Projected chord length through a disc/tube of ``radius`` at distance ``d``."""
    return 2.0 * np.sqrt(np.clip(radius * radius - d * d, 0.0, None))


def _bone_profile(d, radius, pixel, cortex=0.3, marrow=0.45):
    """Chord through a hollow bone: dense cortex shell, lighter marrow.

    The shell is seen tangentially at the edges, which is what gives ribs and
    vertebrae their brighter cortical margins. Bones and shells thinner than a
    pixel (``pixel`` in normalised units) are widened with their integral kept
    (amplitude ~ radius^2), a cheap pre-filter against aliasing at small sizes.
    """
    wide = np.maximum(radius, 1.2 * pixel)
    inner = np.maximum(wide - np.maximum(cortex * wide, 0.8 * pixel), 0.0)
    return (radius / wide) ** 2 * (_chord(d, wide) - (1.0 - marrow) * _chord(d, inner))


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sqrt_profile(sd, depth):
    """0 outside, rising as sqrt of the inside distance, 1 beyond ``depth``.

    Mimics the chord of a rounded organ: steep at the border (sharp edge on
    the radiograph), flat in the middle.
    """
    return np.sqrt(np.clip(-sd / depth, 0.0, 1.0))


# --------------------------------------------------------------------------
# Anatomy parameters
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lung:
    """One lung envelope in lateral coordinates (s >= 0 is away from midline)."""

    sign: float
    apex_s: float  # lateral position of the apex
    apex_y: float
    wall_s: float  # lateral wall (widest extent)
    widest_y: float  # below this level the lateral wall is vertical
    medial_s: float
    dome_s: float
    dome_y: float
    dome_curvature: float
    sulcus_depth: float  # extra depth of the costophrenic sulcus
    sulcus_power: float  # larger -> sharper costophrenic angle

    def diaphragm_y(self, s):
        lateral = np.clip((s - self.dome_s) / (self.wall_s - self.dome_s), 0.0, None)
        return (
            self.dome_y
            + self.dome_curvature * (s - self.dome_s) ** 2
            + self.sulcus_depth * lateral**self.sulcus_power
        )

    def wall_at(self, y):
        """Lateral extent of the envelope at height y (ignoring the diaphragm)."""
        t = np.clip((self.widest_y - y) / (self.widest_y - self.apex_y), 0.0, 1.0)
        return self.apex_s + (self.wall_s - self.apex_s) * (1.0 - t**2.4) ** (1.0 / 2.4)

    def sd(self, s, y):
        """Approximate signed distance to the envelope (apex dome, walls, diaphragm)."""
        dy = np.minimum(y - self.widest_y, 0.0)
        ds = s - self.apex_s
        half_width = np.where(ds > 0, self.wall_s - self.apex_s, self.apex_s - self.medial_s)
        upper = _ellipse_sd(ds, dy, half_width, self.widest_y - self.apex_y, power=2.4)
        return np.maximum(upper, y - self.diaphragm_y(s))


@dataclass(frozen=True)
class _Heart:
    cx: float
    cy: float
    a: float  # long semi-axis
    b: float
    tilt: float  # long axis points down towards the patient's left

    def sd(self, x, y):
        u, v = _rotate(x, y, self.cx, self.cy, self.tilt)
        return _ellipse_sd(u, v, self.a, self.b)


@dataclass(frozen=True)
class _Anatomy:
    frame: _Frame
    lungs: dict  # side -> _Lung
    heart: _Heart
    mediastinum: tuple  # (right half-width, left half-width)
    aortic_knob: tuple  # (x, y, radius)
    body_half_width: float
    shoulder_y: float
    axilla_y: float
    vertebra_pitch: float
    t1_y: float
    ribs: tuple  # per rib level: (curvature height, width scale)
    clavicle: tuple  # (medial y, lateral y, S-curve amplitude)
    trachea: tuple  # (half-width, carina y)
    gastric_bubble: tuple | None  # (x, y, a, b) or None
    vessels: np.ndarray  # (n, 5): x0, y0, x1, y1, radius
    texture: np.ndarray  # coarse lung texture field (resolution independent)


def _sample_lung(rng, side, half_thorax, apex_y, dome_y) -> _Lung:
    wall_s = half_thorax * rng.uniform(0.98, 1.02)
    return _Lung(
        sign=_SIGN[side],
        apex_s=wall_s * rng.uniform(0.42, 0.5),
        apex_y=apex_y + rng.uniform(-0.015, 0.015),
        wall_s=wall_s,
        widest_y=dome_y - rng.uniform(0.02, 0.08),
        medial_s=0.02,
        dome_s=wall_s * rng.uniform(0.45, 0.55),
        dome_y=dome_y,
        dome_curvature=rng.uniform(0.7, 1.0),
        sulcus_depth=rng.uniform(0.06, 0.1),
        sulcus_power=rng.uniform(3.0, 4.0),
    )


def _sample_heart(rng, lungs, cardiomegaly) -> _Heart:
    # Both ratios are always drawn so the random stream (and hence every other
    # structure) is identical with and without cardiomegaly.
    ctr_normal = rng.uniform(0.41, 0.47)
    ctr_enlarged = rng.uniform(0.57, 0.66)
    tilt = math.radians(rng.uniform(38.0, 48.0))
    aspect = rng.uniform(0.74, 0.84)
    right_fraction = rng.uniform(0.34, 0.4)
    ctr = ctr_enlarged if cardiomegaly else ctr_normal

    thorax = lungs["right"].wall_s + lungs["left"].wall_s
    half_x = 0.5 * ctr * thorax
    # Horizontal half-extent of a rotated ellipse is a*sqrt(cos^2 + k^2 sin^2).
    a = half_x / math.sqrt(math.cos(tilt) ** 2 + (aspect * math.sin(tilt)) ** 2)
    b = aspect * a
    cx = half_x * (1.0 - 2.0 * right_fraction)
    # Put the leftmost-bulging point (the apex side) just above the left
    # hemidiaphragm so the full width is visible and the CTR is as drawn.
    widest_dy = (a * a - b * b) * math.sin(tilt) * math.cos(tilt) / half_x
    cy = lungs["left"].dome_y - 0.03 - widest_dy
    return _Heart(cx=cx, cy=cy, a=a, b=b, tilt=tilt)


def _sample_vessels(rng, lungs) -> np.ndarray:
    """Pulmonary vessel trees branching from each hilum, thinning outward.

    Grown generation by generation with array maths (a per-branch recursion
    dominated the runtime of small renders). Returns (n, 5) segments
    x0, y0, x1, y1, radius in the patient frame.
    """
    x, y, angle, length, radius, sign = [], [], [], [], [], []
    for side, lung in lungs.items():
        hilum_y = lung.dome_y - (0.42 if side == "left" else 0.36) * (lung.dome_y - lung.apex_y)
        hilum_s = 0.13 + rng.uniform(0.0, 0.02)
        # Trunk directions as angles from the lateral horizontal, counter-clockwise
        # when looking at the patient's side: upper lobe, middle, lower, basal.
        for trunk in (1.35, 0.65, 0.0, -0.7, -1.15):
            x.append(lung.sign * hilum_s)
            y.append(hilum_y)
            angle.append(trunk + rng.normal(0.0, 0.1))
            length.append(rng.uniform(0.09, 0.12))
            radius.append(rng.uniform(0.018, 0.024))
            sign.append(lung.sign)
    x, y, angle, length, radius, sign = map(np.asarray, (x, y, angle, length, radius, sign))

    segments = []
    for _ in range(6):
        keep = radius >= 0.0012
        x, y, angle, length, radius, sign = (a[keep] for a in (x, y, angle, length, radius, sign))
        n = x.size
        angle = angle + rng.normal(0.0, 0.12, n)
        x1 = x + sign * length * np.cos(angle)
        y1 = y - length * np.sin(angle)
        segments.append(np.column_stack([x, y, x1, y1, radius]))
        # Two children: the larger one deviates less (Murray-like split).
        spread, share = rng.uniform(0.3, 0.6, n), rng.uniform(0.35, 0.65, n)
        turns = np.concatenate([spread * share, -spread * (1.0 - share)])
        fractions = np.concatenate([1.0 - share, share])
        x, y, sign = np.tile(x1, 2), np.tile(y1, 2), np.tile(sign, 2)
        angle = np.tile(angle, 2) + turns
        radius = np.tile(radius, 2) * (0.55 + 0.35 * np.sqrt(fractions))
        length = np.tile(length, 2) * rng.uniform(0.68, 0.85, 2 * n)
    return np.vstack(segments)


def _sample_anatomy(rng, size: int, cardiomegaly: bool) -> _Anatomy:
    frame = _Frame(
        size=size,
        angle=math.radians(rng.uniform(-2.5, 2.5)),
        dx=rng.uniform(-0.03, 0.03),
        dy=rng.uniform(-0.03, 0.03),
    )
    half_thorax = rng.uniform(0.66, 0.74)
    apex_y = rng.uniform(-0.76, -0.68)
    right_dome = rng.uniform(0.3, 0.4)
    left_dome = right_dome + rng.uniform(0.03, 0.07)  # right hemidiaphragm is higher
    lungs = {
        "right": _sample_lung(rng, "right", half_thorax, apex_y, right_dome),
        "left": _sample_lung(rng, "left", half_thorax, apex_y, left_dome),
    }
    heart = _sample_heart(rng, lungs, cardiomegaly)
    mediastinum = (rng.uniform(0.09, 0.11), rng.uniform(0.085, 0.1))
    knob_r = rng.uniform(0.045, 0.06)
    aortic_knob = (mediastinum[1] + 0.3 * knob_r, heart.cy - heart.a - rng.uniform(0.0, 0.05), knob_r)
    pitch = rng.uniform(0.105, 0.118)
    ribs = tuple((rng.uniform(0.9, 1.1), rng.uniform(0.92, 1.08)) for _ in range(12))
    clavicle_med = apex_y + rng.uniform(0.15, 0.21)
    clavicle = (clavicle_med, apex_y - rng.uniform(0.06, 0.12), rng.uniform(0.015, 0.03))
    trachea = (rng.uniform(0.024, 0.03), apex_y + rng.uniform(0.33, 0.4))
    bubble = (
        (
            lungs["left"].dome_s * rng.uniform(0.8, 1.1),
            left_dome + rng.uniform(0.07, 0.1),
            rng.uniform(0.07, 0.1),
            rng.uniform(0.05, 0.07),
        )
        if rng.uniform() < 0.75
        else None
    )
    return _Anatomy(
        frame=frame,
        lungs=lungs,
        heart=heart,
        mediastinum=mediastinum,
        aortic_knob=aortic_knob,
        body_half_width=half_thorax + rng.uniform(0.1, 0.15),
        shoulder_y=apex_y - rng.uniform(0.12, 0.18),
        axilla_y=apex_y + rng.uniform(0.28, 0.36),
        vertebra_pitch=pitch,
        t1_y=apex_y + rng.uniform(-0.02, 0.03),
        ribs=ribs,
        clavicle=clavicle,
        trachea=trachea,
        gastric_bubble=bubble,
        vessels=_sample_vessels(rng, lungs),
        texture=rng.standard_normal((24, 24)),
    )


# --------------------------------------------------------------------------
# Structures: each returns a projected-thickness (or line-integral) map
# --------------------------------------------------------------------------


def _arm_axis(anat: _Anatomy):
    """Upper-arm axis (s, y) from the shoulder down, at the image edge."""
    s_top = anat.body_half_width + 0.22
    return (s_top, anat.shoulder_y + 0.12), (s_top + 0.08, 1.6)


def _body_thickness(anat: _Anatomy, x, y):
    """Soft-tissue path length through neck, torso, abdomen and upper arms.

    Cross-sections are treated as ellipses/cylinders, so thickness falls off as
    a square root towards the skin line; air beyond it stays black. The arms
    lie beside the torso, so their path lengths add.
    """
    neck, chest = 0.3, anat.body_half_width
    # Neck -> trapezius slope -> shoulder, then slightly narrower below the axilla.
    slope = np.clip((y - anat.shoulder_y + 0.22) / 0.3, 0.0, 1.0)
    shoulder = chest + 0.3  # the shoulder girdle reaches over the top of the arm
    half_width = (
        neck
        + (shoulder - neck) * np.sin(0.5 * np.pi * slope) ** 0.7
        - 0.3 * _smoothstep((y - anat.axilla_y + 0.12) / 0.3)
    )
    depth = (
        0.62 + 0.38 * _smoothstep((y - anat.shoulder_y + 0.05) / 0.3) + 0.12 * _smoothstep((y - 0.35) / 0.5)
    )
    torso = depth * np.sqrt(np.clip(1.0 - (x / half_width) ** 2, 0.0, None))
    (s0, y0), (s1, y1) = _arm_axis(anat)
    arms = sum(
        0.6 * _chord(_segment_distance(sign * x, y, s0, y0, s1, y1), 0.15) / 0.3 for sign in (-1.0, 1.0)
    )
    return torso + arms


def _lung_sds(anat: _Anatomy, x, y) -> dict:
    """Signed distance to each lung envelope, keyed by patient side."""
    return {side: lung.sd(lung.sign * x, y) for side, lung in anat.lungs.items()}


def _central_sd(anat: _Anatomy, x, y):
    """Signed distance to the cardiomediastinal silhouette (union of shapes)."""
    right_w, left_w = anat.mediastinum
    band = np.maximum(-right_w - x, x - left_w)
    kx, ky, kr = anat.aortic_knob
    knob = np.hypot(x - kx, y - ky) - kr
    heart = anat.heart
    # Main pulmonary artery: the small bulge between aortic knob and left ventricle.
    trunk_y = 0.5 * (ky + heart.cy - heart.b)
    trunk = _ellipse_sd(x - left_w - 0.01, y - trunk_y, 0.05, 0.06)
    vessels = _smooth_min(_smooth_min(band, knob, 0.04), trunk, 0.04)
    return _smooth_min(vessels, heart.sd(x, y), 0.05)


def _diaphragm_y(anat: _Anatomy, x):
    """Height of the hemidiaphragm under each image column."""
    right, left = anat.lungs["right"], anat.lungs["left"]
    return np.where(x < 0, right.diaphragm_y(-x), left.diaphragm_y(x))


def _lung_depth(lung: _Lung, sd, y):
    """Lung air thickness profile: sharp at the pleura, deeper towards the bases."""
    grade = 0.7 + 0.3 * np.clip((y - lung.apex_y) / (lung.dome_y - lung.apex_y), 0.0, 1.0)
    return _sqrt_profile(sd, 0.12) * grade


def _spine(anat: _Anatomy, x, y):
    """Vertebral bodies with endplates and disc spaces, pedicles and spinous processes."""
    pitch = anat.vertebra_pitch
    half_w = 0.055 + 0.025 * np.clip((y - anat.t1_y) / 1.3, 0.0, 1.0)
    v = np.mod((y - anat.t1_y) / pitch + 0.5, 1.0)  # 0..1 within one level, 0.5 = body centre
    disc = 0.12
    body_rows = _smoothstep((v - disc + 0.04) / 0.12) * _smoothstep((1.0 - disc + 0.04 - v) / 0.12)
    plate = max(0.035, 0.7 / (anat.frame.px * pitch))  # at least ~a pixel wide
    endplates = np.exp(-(((v - disc - 0.03) / plate) ** 2)) + np.exp(
        -(((1.0 - disc - 0.03 - v) / plate) ** 2)
    )
    body = (
        0.25
        * _bone_profile(np.abs(x), half_w, 1.0 / anat.frame.px, cortex=0.22)
        * body_rows
        * (1.0 + 0.25 * endplates)
    )

    def oval(cx, cv, ax, av):
        return np.sqrt(np.clip(1.0 - ((x - cx) / ax) ** 2 - ((v - cv) / av) ** 2, 0.0, None))

    pedicles = sum(
        oval(sign * 0.7 * half_w, 0.36, 0.3 * half_w, 0.2)
        - 0.75 * oval(sign * 0.7 * half_w, 0.36, 0.18 * half_w, 0.12)
        for sign in (-1.0, 1.0)
    )
    transverse = sum(oval(sign * 1.45 * half_w, 0.4, 0.55 * half_w, 0.13) for sign in (-1.0, 1.0))
    spinous = oval(0.0, 0.82, 0.16 * half_w, 0.3)
    return body + 0.015 * (pedicles + 0.6 * transverse + 0.8 * spinous)


def _posterior_rib(frame: _Frame, lung: _Lung, origin_y, spine_s, drop, width_scale, reach, bone):
    """One posterior rib: a squarish elliptic arc from the spine out to the lateral wall.

    The superellipse keeps the medial two thirds nearly level and turns down
    sharply at the chest wall, as posterior ribs do on a PA film. ``reach``
    < 1 shortens the arc (floating ribs). Returns the lateral end (s, y).
    """
    power = 2.6
    lateral_y = origin_y + drop
    wall = float(lung.wall_at(lateral_y)) + 0.035
    top_s = 0.25 * wall
    a = wall - top_s
    u_med = (spine_s - top_s) / a
    v_med = (1.0 - abs(u_med) ** power) ** (1.0 / power)
    b = drop / v_med
    phi_med = math.atan2(v_med, u_med)
    phi_end = phi_med - reach * (phi_med + 0.8)
    norm = (abs(math.cos(phi_end)) ** power + abs(math.sin(phi_end)) ** power) ** (1.0 / power)
    end = (top_s + a * math.cos(phi_end) / norm, lateral_y - b * math.sin(phi_end) / norm)

    xs = lung.sign * np.array([spine_s, wall])
    ys = np.array([lateral_y - b, end[1]])
    rows, cols = frame.block(xs, ys, 0.05)
    x, y = frame.coords(rows, cols)
    u, w = lung.sign * x - top_s, lateral_y - y
    phi = np.arctan2(w / b, u / a)
    d = np.abs(_ellipse_sd(u, w, a, b, power))
    # Thin where it leaves the spine, widening laterally; taper both ends.
    along = np.clip((phi_med - phi) / (phi_med - phi_end), 0.0, 1.0)
    radius = width_scale * (0.017 + 0.011 * np.sin(np.pi * np.clip(along * 1.2, 0.0, 1.0)))
    ends = _smoothstep(along / 0.06) * _smoothstep((1.0 - along) / (0.12 if reach == 1.0 else 0.5))
    inside_arc = (phi <= phi_med + 0.05) & (phi >= phi_end - 0.05)
    bone[rows, cols] += 0.45 * _bone_profile(d, radius, 1.0 / frame.px) * ends * inside_arc
    return end


def _anterior_rib(frame: _Frame, lung: _Lung, start, slope, bow, width_scale, bone):
    """One anterior rib: fainter, wider band running down and medially to the cartilage."""
    s_lat, y_lat = start
    s_med = 0.2 + 0.05 * width_scale
    span = s_lat - s_med
    xs = lung.sign * np.array([s_med, s_lat])
    ys = np.array([y_lat, y_lat + slope * span + bow * span * span])
    rows, cols = frame.block(xs, ys, 0.06)
    x, y = frame.coords(rows, cols)
    t = s_lat - lung.sign * x  # distance travelled medially
    centre = y_lat + slope * t + bow * t * t
    d = np.abs(y - centre) / np.sqrt(1.0 + (slope + 2.0 * bow * t) ** 2)
    fade = _smoothstep(t / 0.06) * _smoothstep((span - t) / (0.35 * span))  # costal cartilage is radiolucent
    bone[rows, cols] += (
        0.45
        * _bone_profile(d, 0.026 * width_scale, 1.0 / frame.px, cortex=0.35)
        * fade
        * (t >= 0)
        * (t <= span)
    )


def _ribs(anat: _Anatomy, bone):
    frame, pitch = anat.frame, anat.vertebra_pitch
    for lung in anat.lungs.values():
        for k, (curve, width) in enumerate(anat.ribs):
            origin_y = anat.t1_y + k * pitch
            # Upper ribs are short and tightly curved, lower ones long and sloping.
            drop = curve * (0.07 + 0.13 * min(k, 5) / 5 + 0.015 * max(k - 5, 0))
            reach = 1.0 if k < 10 else 0.45  # ribs 11 and 12 float short of the wall
            end = _posterior_rib(frame, lung, origin_y, 0.075, drop, width, reach, bone)
            if k < 7:  # lower anterior ends join the radiolucent costal margin
                _anterior_rib(frame, lung, end, 0.42 + 0.02 * k, -0.12, width, bone)


def _clavicles(anat: _Anatomy, bone):
    """S-shaped clavicles from the sternal notch rising to the acromion."""
    med_y, lat_y, bend = anat.clavicle
    s_med, s_lat = 0.06, anat.body_half_width + 0.05
    span = s_lat - s_med
    for sign in (-1.0, 1.0):
        xs = sign * np.array([s_med, s_lat])
        rows, cols = anat.frame.block(xs, np.array([med_y, lat_y]), 0.08)
        x, y = anat.frame.coords(rows, cols)
        t = (sign * x - s_med) / span
        centre = med_y + (lat_y - med_y) * t + bend * np.sin(2.0 * np.pi * t)
        slope = ((lat_y - med_y) + bend * 2.0 * np.pi * np.cos(2.0 * np.pi * t)) / span
        d = np.abs(y - centre) / np.sqrt(1.0 + slope**2)
        radius = 0.024 + 0.006 * np.abs(2.0 * t - 1.0)  # thicker at both ends
        ends = _smoothstep(t / 0.05) * _smoothstep((1.0 - t) / 0.05)
        bone[rows, cols] += 0.6 * _bone_profile(d, radius, 1.0 / anat.frame.px, cortex=0.3) * ends


def _humeri(anat: _Anatomy, x, y):
    """Humeral heads and proximal shafts in the upper arms at the image edges."""
    (s0, y0), (s1, y1) = _arm_axis(anat)
    total = np.zeros_like(x)
    for sign in (-1.0, 1.0):
        s = sign * x
        head = _bone_profile(np.hypot(s - s0 + 0.03, y - y0 - 0.02), 0.1, 1.0 / anat.frame.px, cortex=0.15)
        shaft = _bone_profile(
            _segment_distance(s, y, s0, y0 + 0.1, s1, y1), 0.045, 1.0 / anat.frame.px, cortex=0.35
        )
        total += 0.35 * np.maximum(head, shaft * _smoothstep((y0 + 0.7 - y) / 0.3))
    return total


def _segment_distance(x, y, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(x - x0 - t * dx, y - y0 - t * dy)


def _airways(anat: _Anatomy, x, y):
    """Trachea and main bronchi as air columns through the mediastinum."""
    half_w, carina_y = anat.trachea
    trachea = _chord(_segment_distance(x, y, 0.0, -1.2, 0.0, carina_y), half_w)
    right = _segment_distance(x, y, 0.0, carina_y, -0.1, carina_y + 0.15)
    left = _segment_distance(x, y, 0.0, carina_y, 0.14, carina_y + 0.12)
    bronchi = _chord(np.minimum(right, left), 0.75 * half_w)
    return np.maximum(trachea, bronchi)


def _gastric_bubble(anat: _Anatomy, x, y):
    """Air in the gastric fundus with a flat air-fluid level."""
    if anat.gastric_bubble is None:
        return np.zeros_like(x)
    s, cy, a, b = anat.gastric_bubble
    profile = np.sqrt(np.clip(1.0 - ((x - s) / a) ** 2 - ((y - cy) / b) ** 2, 0.0, None))
    return 2.0 * b * profile * (y < cy + 0.35 * b)


def _splat_vessels(frame: _Frame, segments: np.ndarray):
    """Render vessel segments as Gaussian-profile tubes.

    Segments are sampled densely, splatted bilinearly and blurred with a sigma
    matched to their radius (grouped into octaves), which is much cheaper than
    per-segment distance maps and stays resolution independent.
    """
    size, px = frame.size, frame.px
    out = np.zeros((size, size))
    if len(segments) == 0:
        return out
    x0, y0, x1, y1, radius = segments.T
    length_px = np.hypot(x1 - x0, y1 - y0) * px
    n = np.maximum(np.ceil(length_px / 0.5), 1).astype(int)
    sigma = np.maximum(0.6 * radius * px, 0.5)
    octave = np.round(np.log2(sigma / 0.5)).astype(int)
    sigma = 0.5 * 2.0**octave
    # Peak of a blurred line equals the tube's central chord 2r.
    weight = 2.0 * radius * sigma * math.sqrt(2.0 * math.pi) * length_px / n

    seg = np.repeat(np.arange(len(segments)), n)
    t = (np.arange(seg.size) - np.repeat(np.cumsum(n) - n, n) + 0.5) / n[seg]
    rows, cols = frame.to_pixel(x0[seg] + t * (x1 - x0)[seg], y0[seg] + t * (y1 - y0)[seg])
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    for level in np.unique(octave):
        pick = octave[seg] == level
        acc = np.zeros(size * size)
        for dr, dc, w in (
            (0, 0, (1 - fr) * (1 - fc)),
            (0, 1, (1 - fr) * fc),
            (1, 0, fr * (1 - fc)),
            (1, 1, fr * fc),
        ):
            rr, cc = r0 + dr, c0 + dc
            ok = pick & (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
            acc += np.bincount(rr[ok] * size + cc[ok], weights=(w * weight[seg])[ok], minlength=size * size)
        out += ndimage.gaussian_filter(acc.reshape(size, size), 0.5 * 2.0**level, mode="constant")
    return out


def _texture(anat: _Anatomy):
    """Smooth zero-mean field for lung parenchyma heterogeneity."""
    field = ndimage.zoom(
        anat.texture, anat.frame.size / anat.texture.shape[0], order=3, grid_mode=True, mode="reflect"
    )
    return field


# --------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------


def _effusion_fraction(lung: _Lung, x, y, size):
    """Fluid fraction of a pleural effusion with a concave-up meniscus.

    Fluid fills the costophrenic sulcus first and climbs highest along the
    lateral wall (the meniscus); its upper edge is hazy because the layer
    thins out towards the top.
    """
    s = lung.sign * x
    height = lung.dome_y - lung.apex_y
    lateral_level = lung.dome_y + lung.sulcus_depth - size * 0.8 * height
    sag = 0.1 + 0.15 * size
    meniscus = lateral_level + sag * (1.0 - np.clip(s / lung.wall_s, 0.0, 1.0) ** 2)
    below = y - meniscus
    return _smoothstep(below / 0.08) * (0.75 + 0.25 * _smoothstep(below / 0.25))


def _pick_lung_point(rng, anat: _Anatomy, lung: _Lung):
    """A point comfortably inside the visible part of one lung."""
    for _ in range(50):
        y = lung.apex_y + rng.uniform(0.25, 0.8) * (lung.dome_y - lung.apex_y)
        s = rng.uniform(0.3, 0.85) * float(lung.wall_at(y))
        if lung.sd(s, y) < -0.07 and _central_sd(anat, lung.sign * s, y) > 0.06:
            return lung.sign * s, y
    return lung.sign * 0.6 * lung.wall_s, 0.5 * (lung.apex_y + lung.dome_y)


def _nodule(rng, cx, cy, x, y):
    """Round, slightly lobulated soft-tissue nodule: returns (chord, mask)."""
    radius = rng.uniform(0.04, 0.065)
    theta = np.arctan2(y - cy, x - cx)
    lobes = 1.0 + sum(
        rng.uniform(0.02, 0.06) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    d = np.hypot(x - cx, y - cy) / lobes
    return _chord(d, radius), d < radius


def _consolidation(rng, cx, cy, x, y, texture):
    """Patchy airspace opacity: returns the fraction of air displaced (0..1)."""
    field = np.zeros_like(x)
    for _ in range(8):
        gx, gy = cx + rng.normal(0, 0.07), cy + rng.normal(0, 0.08)
        sigma = rng.uniform(0.025, 0.05)
        field += rng.uniform(0.6, 1.0) * np.exp(-((x - gx) ** 2 + (y - gy) ** 2) / (2 * sigma * sigma))
    field /= field.max()
    # Wide ramp and texture: airspace disease has ill-defined, patchy margins.
    return _smoothstep((field + 0.12 * texture - 0.05) / 0.5)


def _collapsed_lung_sd(lung: _Lung, x, y, shrink):
    """Signed distance to a lung shrunk towards its base (apical/lateral pneumothorax)."""
    anchor_s, anchor_y = 0.22, lung.dome_y
    k = 1.0 - shrink
    s = lung.sign * x
    return k * lung.sd(anchor_s + (s - anchor_s) / k, anchor_y + (y - anchor_y) / k)


def _collapse_vessels(segments, lung: _Lung, shrink):
    """Move one side's vessel tree with its collapsing lung."""
    out = segments.copy()
    side = np.sign(segments[:, 0]) == lung.sign
    anchor_s, anchor_y, k = 0.22, lung.dome_y, 1.0 - shrink
    for cx, cy in ((0, 1), (2, 3)):
        s = lung.sign * segments[side, cx]
        out[side, cx] = lung.sign * (anchor_s + k * (s - anchor_s))
        out[side, cy] = anchor_y + k * (segments[side, cy] - anchor_y)
    return out


def _drain_path(rng, anat: _Anatomy, lung: _Lung, target: str):
    """Centre line (patient frame) of a chest drain entering laterally."""
    entry_y = lung.dome_y - rng.uniform(0.12, 0.28)
    outside = np.array([1.25, entry_y + 0.3])
    skin = np.array([anat.body_half_width, entry_y + 0.03])
    pleura = np.array([lung.wall_s - 0.02, entry_y])
    if target == "apex":
        tip = np.array([lung.apex_s * rng.uniform(0.9, 1.2), lung.apex_y + rng.uniform(0.1, 0.16)])
        c1, c2 = pleura + np.array([-0.22, -0.03]), tip + np.array([0.08, 0.3])
    else:
        tip = np.array([lung.wall_s * rng.uniform(0.4, 0.55), lung.dome_y - rng.uniform(0.03, 0.07)])
        c1, c2 = pleura + np.array([-0.12, 0.0]), tip + np.array([0.12, -0.04])
    t = np.linspace(0.0, 1.0, 400)[:, None]
    bezier = (1 - t) ** 3 * pleura + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * tip
    straight = np.vstack([np.linspace(outside, skin, 100), np.linspace(skin, pleura, 60)])
    path = np.vstack([straight, bezier])
    path[:, 0] *= lung.sign
    return path


def _chest_drain(rng, anat: _Anatomy, lung: _Lung, target: str):
    """Radiopaque tube (two bright walls around a lumen): returns (thickness, mask)."""
    frame = anat.frame
    path = _drain_path(rng, anat, lung, target)
    # Keep the tube at least about two pixels wide so it survives small renders.
    radius = max(0.011, 1.1 / frame.px)
    # Resample so neighbouring centre-line points are well under a pixel apart.
    seg_len = np.hypot(*np.diff(path, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg_len)])
    fine = np.linspace(0.0, arc[-1], max(int(arc[-1] * frame.px * 4), 2))
    path = np.column_stack([np.interp(fine, arc, path[:, 0]), np.interp(fine, arc, path[:, 1])])

    rows, cols = frame.block(path[:, 0], path[:, 1], radius + 2.0 / frame.px)
    x, y = frame.coords(rows, cols)
    d, _ = cKDTree(path).query(np.column_stack([x.ravel(), y.ravel()]), distance_upper_bound=2 * radius)
    d = np.minimum(d, 2 * radius).reshape(x.shape)
    thickness = np.zeros((frame.size, frame.size))
    thickness[rows, cols] = _chord(d, radius) - _chord(d, 0.62 * radius)
    mask = np.zeros((frame.size, frame.size), bool)
    mask[rows, cols] = d <= radius
    return thickness, mask


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _check_choice(name, value, allowed):
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be None or one of {allowed} (patient side), got {value!r}")


def _check_fraction(name, value, low, high):
    if value is not None and not (isinstance(value, (int, float)) and low <= value <= high):
        raise ValueError(f"{name} must be None or a number in [{low}, {high}], got {value!r}")


def _validate(
    size,
    seed,
    effusion,
    cardiomegaly,
    opacity,
    pneumothorax,
    chest_drain,
    effusion_size,
    opacity_kind,
    pneumothorax_size,
    drain_target,
):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(cardiomegaly, (bool, np.bool_)):
        raise ValueError(f"cardiomegaly must be a bool, got {cardiomegaly!r}")
    _check_choice("effusion", effusion, _EFFUSION_SIDES)
    _check_choice("opacity", opacity, _SIDES)
    _check_choice("pneumothorax", pneumothorax, _SIDES)
    _check_choice("chest_drain", chest_drain, _SIDES)
    if opacity_kind is not None and opacity_kind not in _OPACITY_KINDS:
        raise ValueError(f"opacity_kind must be None or one of {_OPACITY_KINDS}, got {opacity_kind!r}")
    if drain_target is not None and drain_target not in ("apex", "base"):
        raise ValueError(f"drain_target must be None, 'apex' or 'base', got {drain_target!r}")
    _check_fraction("effusion_size", effusion_size, 0.1, 1.0)
    _check_fraction("pneumothorax_size", pneumothorax_size, 0.05, 0.5)


def _extent(mask) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


def generate_cxr_phantom(
    size: int = 512,
    seed: int = 0,
    *,
    effusion: str | None = None,
    cardiomegaly: bool = False,
    opacity: str | None = None,
    pneumothorax: str | None = None,
    chest_drain: str | None = None,
    effusion_size: float | None = None,
    opacity_kind: str | None = None,
    pneumothorax_size: float | None = None,
    drain_target: str | None = None,
) -> CXRPhantom:
    """Render a seeded procedural PA chest radiograph phantom.

    Side arguments name the *patient's* side ('left' appears on the image's
    right). ``effusion`` also accepts 'both'. Optional knobs (random when
    None): ``effusion_size`` in [0.1, 1] (1 ~ fluid up to mid-lung),
    ``opacity_kind`` ('consolidation' or 'nodule'), ``pneumothorax_size`` in
    [0.05, 0.5] (fraction by which the lung collapses), ``drain_target``
    ('apex' or 'base'; defaults to the base for an effusion on that side,
    the apex for a pneumothorax, otherwise random).

    Same arguments give bit-identical output. The anatomy depends only on
    ``seed`` (and on ``cardiomegaly`` for the heart and the lung borders next
    to it), so the same seed with and without a finding forms a matched pair.
    """
    _validate(
        size, seed, effusion, cardiomegaly, opacity, pneumothorax, chest_drain,
        effusion_size, opacity_kind, pneumothorax_size, drain_target,
    )  # fmt: skip
    size, seed, cardiomegaly = int(size), int(seed), bool(cardiomegaly)
    # Independent streams: a finding never perturbs anatomy, noise or another finding.
    anat_rng, noise_rng, eff_rng, opa_rng, ptx_rng, drain_rng = np.random.default_rng(seed).spawn(6)
    scene = _Scene.of(_sample_anatomy(anat_rng, size, cardiomegaly))
    scene.info.update(
        effusion=effusion, effusion_size=None, cardiomegaly=cardiomegaly, opacity=opacity, opacity_kind=None,
        pneumothorax=pneumothorax, pneumothorax_size=None, chest_drain=chest_drain, drain_target=None,
    )  # fmt: skip
    if effusion is not None:
        _add_effusion(scene, eff_rng, effusion, effusion_size)
    if opacity is not None:
        _add_opacity(scene, opa_rng, opacity, opacity_kind)
    if pneumothorax is not None:
        _add_pneumothorax(scene, ptx_rng, pneumothorax, pneumothorax_size)
    drain_mask = np.zeros_like(scene.lungs_mask)
    if chest_drain is not None:
        drain_mask = _add_drain(scene, drain_rng, chest_drain, drain_target, effusion, pneumothorax)
    image = _expose(np.clip(_line_integral(scene), 0.0, None), noise_rng, scene.anat.frame)
    masks, info = _anatomy_masks(scene, drain_mask, cardiomegaly), scene.info
    info["gastric_bubble"] = scene.anat.gastric_bubble is not None
    info["seed"], info["size"] = seed, size
    return CXRPhantom(image=image, masks=masks, findings=info)


@dataclass
class _Scene:
    """What rendering accumulates: the anatomy's fields, then what each finding changes in them."""

    anat: Any
    x: np.ndarray
    y: np.ndarray
    soft: np.ndarray  # body thickness
    lung_sd: dict  # signed distance to each lung
    central_sd: np.ndarray  # signed distance to the heart and mediastinum
    open_lung: np.ndarray
    aeration: dict  # per lung, 0 (filled) to 1 (aerated)
    lungs_mask: np.ndarray
    air_fraction: np.ndarray
    extra: np.ndarray  # line integral added by findings
    vessels: Any
    vessel_hidden: np.ndarray
    texture: np.ndarray
    masks: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @classmethod
    def of(cls, anat) -> _Scene:
        x, y = anat.frame.coords()
        lung_sd, central_sd = _lung_sds(anat, x, y), _central_sd(anat, x, y)
        # Lung air is partly hidden behind the heart and mediastinum, not removed.
        open_lung = _RETROCARDIAC + (1.0 - _RETROCARDIAC) * _sqrt_profile(-central_sd, 0.025)
        aeration = {
            side: _lung_depth(lung, lung_sd[side], y) * open_lung for side, lung in anat.lungs.items()
        }
        return cls(
            anat=anat, x=x, y=y, soft=_body_thickness(anat, x, y), lung_sd=lung_sd, central_sd=central_sd,
            open_lung=open_lung, aeration=aeration,
            lungs_mask=(np.minimum(lung_sd["right"], lung_sd["left"]) < 0) & (central_sd > 0),
            air_fraction=np.full_like(x, _LUNG_AIR), extra=np.zeros_like(x), vessels=anat.vessels,
            vessel_hidden=np.zeros_like(x, bool), texture=_texture(anat),
        )  # fmt: skip


def _add_effusion(scene: _Scene, rng, effusion: str, effusion_size: float | None) -> None:
    amount = float(effusion_size if effusion_size is not None else rng.uniform(0.25, 0.6))
    sides = _SIDES if effusion == "both" else (effusion,)
    mask = np.zeros_like(scene.lungs_mask)
    for side in sides:
        fluid = _effusion_fraction(scene.anat.lungs[side], scene.x, scene.y, amount)
        scene.aeration[side] = scene.aeration[side] * (1.0 - 0.97 * fluid)
        mask |= (fluid > 0.5) & (scene.lung_sd[side] < 0) & (scene.central_sd > 0)
    scene.masks["effusion"] = mask
    scene.info["effusion_size"] = round(amount, 4)


def _add_opacity(scene: _Scene, rng, opacity: str, opacity_kind: str | None) -> None:
    kind = opacity_kind or str(rng.choice(_OPACITY_KINDS))
    lung = scene.anat.lungs[opacity]
    cx, cy = _pick_lung_point(rng, scene.anat, lung)
    inside = (scene.lung_sd[opacity] < 0) & (scene.central_sd > 0)
    if kind == "nodule":
        chord, mask = _nodule(rng, cx, cy, scene.x, scene.y)
        scene.extra += _MU_SOFT * 2.0 * chord  # exaggerated a little so small nodules read
    else:
        filled = _consolidation(rng, cx, cy, scene.x, scene.y, scene.texture) * (scene.lung_sd[opacity] < 0)
        scene.aeration[opacity] = scene.aeration[opacity] * (1.0 - 0.8 * filled)
        mask = filled > 0.5
    scene.masks["opacity"] = mask & inside
    scene.info["opacity_kind"] = kind


def _add_pneumothorax(scene: _Scene, rng, pneumothorax: str, pneumothorax_size: float | None) -> None:
    shrink = float(pneumothorax_size if pneumothorax_size is not None else rng.uniform(0.15, 0.3))
    lung = scene.anat.lungs[pneumothorax]
    collapsed_sd = _collapsed_lung_sd(lung, scene.x, scene.y, shrink)
    in_lung = scene.lung_sd[pneumothorax] < 0
    gap = in_lung & (collapsed_sd > 0)
    scene.air_fraction[gap] = _PTX_AIR
    scene.air_fraction[in_lung & ~gap] = _COLLAPSED_AIR
    scene.vessel_hidden |= gap
    scene.vessels = _collapse_vessels(scene.vessels, lung, shrink)
    # Visceral pleura seen tangentially: a thin white line.
    line_w = max(0.003, 0.7 / scene.anat.frame.px)
    scene.extra += (
        _MU_SOFT
        * 0.05
        * np.exp(-((collapsed_sd / line_w) ** 2))
        * (scene.lung_sd[pneumothorax] < -line_w)
        * scene.open_lung
    )
    scene.masks["pneumothorax"] = gap & (scene.central_sd > 0)
    scene.info["pneumothorax_size"] = round(shrink, 4)


def _add_drain(scene: _Scene, rng, chest_drain: str, target, effusion, pneumothorax) -> np.ndarray:
    """A chest drain on ``chest_drain``'s side; its target defaults to what it would treat there."""
    if target is None:
        if effusion in (chest_drain, "both"):
            target = "base"
        elif pneumothorax == chest_drain:
            target = "apex"
        else:
            target = str(rng.choice(("apex", "base")))
    else:
        rng.uniform()  # keep the stream position independent of the argument
    tube, drain_mask = _chest_drain(rng, scene.anat, scene.anat.lungs[chest_drain], target)
    scene.extra += _MU_BONE * 3.0 * tube
    scene.info["drain_target"] = target
    return drain_mask


def _line_integral(scene: _Scene) -> np.ndarray:
    """Attenuation along each ray: soft tissue less the lungs' air, vessels, bone and the findings."""
    anat, x, y = scene.anat, scene.x, scene.y
    aerated = scene.aeration["right"] + scene.aeration["left"]
    bone = _spine(anat, x, y) + _humeri(anat, x, y)
    _ribs(anat, bone)
    _clavicles(anat, bone)
    vessel_map = _splat_vessels(anat.frame, scene.vessels) * np.where(
        scene.vessel_hidden, 0.0, np.clip(aerated, 0.0, 1.0)
    )
    return (
        _MU_SOFT * scene.soft * (1.0 - 0.72 * scene.air_fraction * aerated * (1.0 + 0.06 * scene.texture))
        - _MU_SOFT * 0.9 * (_airways(anat, x, y) + _gastric_bubble(anat, x, y)) * (scene.soft > 0)
        + _MU_SOFT * 2.0 * vessel_map
        + _MU_BONE * bone
        + scene.extra
    )


def _anatomy_masks(scene: _Scene, drain_mask: np.ndarray, cardiomegaly: bool) -> dict[str, np.ndarray]:
    """The findings' masks with the anatomy's, their union as ``finding``; the cardiothoracic ratio."""
    anat, masks = scene.anat, scene.masks
    heart_mask = (anat.heart.sd(scene.x, scene.y) < 0) & (scene.y < _diaphragm_y(anat, scene.x))
    masks["lungs"] = scene.lungs_mask
    masks["heart"] = heart_mask
    masks["body"] = scene.soft > 0
    masks["drain"] = drain_mask
    finding = np.zeros_like(scene.lungs_mask)
    for name in ("effusion", "opacity", "pneumothorax", "drain"):
        if name in masks:
            finding |= masks[name]
    if cardiomegaly:
        finding |= heart_mask
    masks["finding"] = finding
    thorax = _extent(scene.lungs_mask)
    scene.info["cardiothoracic_ratio"] = round(_extent(heart_mask) / thorax, 4) if thorax else None
    return masks


def _expose(line_integral, rng, frame: _Frame):
    """Detector model: transmission with quantum noise, blur, window and gamma."""
    transmission = np.exp(-line_integral)
    # Fewer photons per (larger) pixel at high resolution -> more noise per pixel.
    photons = _PHOTONS_512 * (512.0 / frame.size) ** 2
    transmission = transmission + np.sqrt(transmission / photons) * rng.standard_normal(transmission.shape)
    # Detector blur; never below ~half a pixel so small renders are anti-aliased.
    transmission = ndimage.gaussian_filter(transmission, max(0.6 * frame.size / 512.0, 0.45))
    low, high = _WINDOW
    intensity = np.clip((1.0 - transmission - low) / (high - low), 0.0, 1.0) ** _GAMMA
    return intensity.astype(np.float32)


def to_uint8(image) -> np.ndarray:
    """Map a [0, 1] float image to uint8 with rounding (values are clipped)."""
    return np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
