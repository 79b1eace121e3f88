"""Which noise each slice of a volume draws: independent, shared, or correlated along the slice axis.

A slice-wise edit runs one 2D sampler per slice. Every stochastic draw of a method (the
start noise, each step's noise, RePaint's known-region noise, the inversion's noise maps)
comes from a ``NoiseSource`` built from the slices' *mixtures*: a slice's noise is
``sum(weight * field)`` over standard normal fields, each field drawn from its own seeded
generator. So a slice's noise never depends on which slices share its batch.

- independent: one field per slice. Neighbours are unrelated, and a volume edit flickers
  from slice to slice.
- shared: the same field for every slice. The texture is the same everywhere, and a
  lesion becomes an extruded tube.
- correlated: Inter-Slice Consistent Stochasticity (ISCS, Du et al., ICLR 2026) puts the
  slices' noises on a spherical interpolation (SLERP) path between Gaussian fields, so
  neighbouring slices draw nearly the same noise while each slice's noise stays exactly
  standard normal. ISCS spans the whole volume with one quarter-circle arc between two
  fields, so its correlation depends on how many slices there are. Here the arc repeats
  every ``correlation_mm`` along the slice axis: anchor fields a_k sit at k L, and a slice
  at position p = k L + f L (0 <= f < 1) draws

      n(p) = cos(f pi/2) a_k + sin(f pi/2) a_{k+1}

  Independent anchors are orthogonal in expectation, so this is ISCS's SLERP with
  theta = pi/2, and cos^2 + sin^2 = 1 makes every element exactly N(0, 1). Two slices
  d mm apart in one interval correlate as cos(pi d / 2L). Across an anchor the
  correlation is higher, up to cos^2(pi d / 4L). At d = L it is at most 0.5, and slices
  2L or more apart share no anchor and are independent. The anchors' seeds are the
  independent mode's slice seeds, so a 2D image (one slice, at an anchor) draws exactly
  what it draws in the other modes.
"""

from __future__ import annotations

import math

import numpy as np

from ..catalogue import SliceNoise

Mixture = tuple[tuple[int, float], ...]  # ((seed of a standard normal field, weight), ...)


def slice_seed(seed: int, index: int) -> int:
    """Independent, reproducible seeds per slice or anchor (so batching never changes a slice's noise)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def slice_mixtures(
    mode: SliceNoise, seed: int, count: int, *, spacing_mm: float = 1.0, correlation_mm: float = 1.0
) -> list[Mixture]:
    """Each of ``count`` slices' noise as weighted standard normal fields (see the module docstring).

    ``spacing_mm``: the distance between neighbouring slices; ``correlation_mm``: L, the
    anchor spacing of correlated noise (both used by ``correlated`` only).
    """
    mode = SliceNoise(mode)
    if mode is SliceNoise.independent:
        return [((slice_seed(seed, i), 1.0),) for i in range(count)]
    if mode is SliceNoise.shared:
        return [((slice_seed(seed, 0), 1.0),)] * count
    if not (spacing_mm > 0 and correlation_mm > 0):
        raise ValueError(
            f"slice spacing and correlation length must be positive, got {spacing_mm} and {correlation_mm} mm"
        )
    mixtures = []
    for i in range(count):
        anchor, fraction = divmod(i * spacing_mm / correlation_mm, 1.0)
        k = int(anchor)
        if fraction == 0:  # on an anchor: its field alone
            mixtures.append(((slice_seed(seed, k), 1.0),))
            continue
        angle = fraction * math.pi / 2
        mixtures.append(((slice_seed(seed, k), math.cos(angle)), (slice_seed(seed, k + 1), math.sin(angle))))
    return mixtures


def correlation(first: Mixture, second: Mixture) -> float:
    """The correlation of two slices' noise elements (fields are independent, each N(0, 1))."""
    weights = dict(first)
    return sum(weights.get(seed, 0.0) * weight for seed, weight in second)
