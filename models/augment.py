"""Training-time augmentation of normalised model inputs (both stages).

The channels are normalised per subject by robust spread (:mod:`channels`), so what varies between scanners,
protocols and simulators is the *contrast* of a lesion in those units: a short TE or a low field makes the
blooming shallower on magnitude and the field/chi peaks smaller relative to the tissue texture; a noisier
acquisition widens the spread.  :class:`IntensityAugmentation` draws, per patch,

- one log-uniform gain per channel group: appearance (``magnitude``, ``swi``), ``local_field``, and the
  susceptibility group (``chi``, ``chi_pos``, ``chi_neg`` share one gain, so the sign split stays consistent),
- additive Gaussian noise (in robust-spread units) inside the mask (voxels where every channel is 0, the
  outside, stay 0),

then re-applies the clip.  The sign of every channel is kept: a gain never turns paramagnetic into
diamagnetic, so the physics that separates microbleeds from calcifications is never contradicted.
Geometric augmentation (flips, and the in-plane axis swap of :func:`swap_xy`) lives with the batch builders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_GROUPS = {"magnitude": "appearance", "swi": "appearance", "local_field": "field",
           "chi": "chi", "chi_pos": "chi", "chi_neg": "chi"}


@dataclass(frozen=True)
class IntensityAugmentation:
    """``max_gain``: gains are log-uniform in ``[1/max_gain, max_gain]``; ``noise_sd``: largest standard
    deviation of the additive noise (drawn uniformly in ``[0, noise_sd]`` per patch); ``clip``: the channels'
    clip limit (model metadata ``normalisation.clip``)."""

    max_gain: float = 1.6
    noise_sd: float = 0.3
    clip: float = 12.0

    def __post_init__(self):
        if self.max_gain < 1.0 or self.noise_sd < 0.0 or self.clip <= 0.0:
            raise ValueError(f"invalid augmentation settings {self}")

    def apply(self, x: np.ndarray, channels, rng: np.random.Generator) -> np.ndarray:
        """Augmented copy of one patch ``[C, ...]`` (float32); ``channels``: the C channel names."""
        if len(channels) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} channels in the patch, {len(channels)} names")
        groups = sorted({_GROUPS.get(c, c) for c in channels})
        log_g = np.log(self.max_gain)
        gain = {g: float(np.exp(rng.uniform(-log_g, log_g))) for g in groups}
        scale = np.array([gain[_GROUPS.get(c, c)] for c in channels], dtype=np.float32)
        out = x * scale.reshape((-1,) + (1,) * (x.ndim - 1))
        if self.noise_sd > 0:
            inside = np.any(x != 0, axis=0)
            sd = np.float32(rng.uniform(0.0, self.noise_sd))
            noise = rng.standard_normal(out.shape, dtype=np.float32) * sd
            out += noise * inside
        np.clip(out, -self.clip, self.clip, out=out)
        return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ResolutionAugmentation:
    """A patch as a coarser acquisition would show it (stage 2).  With probability ``probability`` a target
    voxel size is drawn per patch, uniform between the grid's voxel and ``max_voxel_mm`` (one draw for the two
    in-plane axes, one for the third), and every channel is smoothed by a Gaussian of FWHM
    ``sqrt(target^2 - grid^2)`` per axis: the extra width of the coarser point spread.  Smoothing is linear and
    positive, so it never turns paramagnetic into diamagnetic; voxels outside the mask stay 0."""

    probability: float = 0.5
    max_voxel_mm: float = 3.0

    def __post_init__(self):
        if not 0.0 <= self.probability <= 1.0 or self.max_voxel_mm <= 0.0:
            raise ValueError(f"invalid resolution augmentation settings {self}")

    def apply(self, x: np.ndarray, voxel_size, rng: np.random.Generator) -> np.ndarray:
        """Augmented copy of one patch ``[C, X, Y, Z]`` on a grid of ``voxel_size`` mm (float32)."""
        from scipy import ndimage

        if rng.random() >= self.probability:
            return np.asarray(x, np.float32)
        vs = np.asarray(voxel_size, float)
        inplane = rng.uniform(min(vs[0], self.max_voxel_mm), self.max_voxel_mm)
        through = rng.uniform(min(vs[2], self.max_voxel_mm), self.max_voxel_mm)
        target = np.array([inplane, inplane, through])
        sigma_vox = np.sqrt(np.maximum(target**2 - vs**2, 0.0)) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / vs
        inside = np.any(x != 0, axis=0)
        out = np.stack([ndimage.gaussian_filter(ch.astype(np.float32), sigma_vox, mode="nearest") for ch in x])
        return (out * inside).astype(np.float32)


def swap_xy(a: np.ndarray, *, first_spatial_axis: int) -> np.ndarray:
    """Exchange the first two spatial axes (an in-plane 90-degree rotation combined with a flip; the dipole
    pattern is symmetric about B0, which stays the third axis).  Only valid when those two axes have the
    same voxel size."""
    return np.ascontiguousarray(np.swapaxes(a, first_spatial_axis, first_spatial_axis + 1))
