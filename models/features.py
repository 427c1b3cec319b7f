"""Physics features of stage-1 candidates, measured on the native grid of the PhysicsMaps.

Each candidate gets a crop (``crop_mm`` half-width) of chi, local field and magnitude, a region grown
around its centre (:func:`cmbdetect.models.classifier.candidate_region`), and
``physics.sources.lesion_features`` on that crop (integrated chi in ppm*mm^3, mean chi in ppm, dipole sign
+1 paramagnetic / -1 diamagnetic, diameter and volume in mm / mm^3, elongation, sphericity, blooming), plus
``chi_available`` (1 when the centre lies in the chi mask; 0 in the rim outside it, where chi is 0 and cannot
tell a bleed from a calcification), and ``moment_ppm_mm3`` / ``moment_sd_ppm_mm3``: the magnetic moment integrated
over a ball grown until it converges (:func:`cmbdetect.physics.moment.converged_moment`, independent of the
inversion's smoothing) and its uncertainty (not stage-2 inputs: ``registry.FEATURE_NAMES`` lists those).
"""
from __future__ import annotations

import numpy as np

from cmbdetect.models.channels import robust_centre_scale
from cmbdetect.models.classifier import candidate_region
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps


def candidate_features(maps: PhysicsMaps, centres_vox, *, crop_mm: float = 8.0) -> list[dict[str, float]]:
    """One feature dict per candidate centre (continuous voxel coordinates on ``maps``' grid)."""
    from cmbdetect.physics.moment import MOMENT_MAX_RADIUS_MM, MOMENT_START_RADIUS_MM, converged_moment
    from cmbdetect.physics.sources import lesion_features

    vs = voxel_sizes(maps.affine)
    b0_dir = b0_direction(maps.affine)
    mask = np.asarray(maps.mask, dtype=bool)
    chi_scale = max(robust_centre_scale(maps.chi_ppm[mask])[1], 1e-4) if mask.any() else 1e-3
    half = np.maximum(np.ceil(crop_mm / vs).astype(int), 2)
    shape = np.array(maps.shape)
    out: list[dict[str, float]] = []
    for c in np.asarray(centres_vox, dtype=float).reshape(-1, 3):
        ijk = np.clip(np.rint(c).astype(int), 0, shape - 1)
        lo = np.maximum(ijk - half, 0)
        hi = np.minimum(ijk + half + 1, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        chi = np.where(mask[sl], maps.chi_ppm[sl], 0.0).astype(np.float32)
        region = candidate_region(chi, c - lo, vs, chi_scale=chi_scale)
        feats = lesion_features(chi_ppm=chi, local_field_ppm=np.asarray(maps.local_field_ppm[sl], np.float32),
                                magnitude=np.asarray(maps.magnitude[sl], np.float32), region_mask=region,
                                voxel_size=vs, b0_dir=b0_dir)
        row = {k: float(v) for k, v in feats.items() if np.isscalar(v) or np.ndim(v) == 0}
        row["chi_available"] = float(mask[tuple(ijk)])  # 0: outside the chi mask, the sign is unknown
        start = float(np.clip(row["diameter_mm"] / 2 + 0.5 * vs.max(), MOMENT_START_RADIUS_MM, MOMENT_MAX_RADIUS_MM))
        mom = converged_moment(maps.chi_ppm, c, vs, mask=mask, start_mm=start)
        row["moment_ppm_mm3"], row["moment_sd_ppm_mm3"] = mom["moment_ppm_mm3"], mom["moment_sd_ppm_mm3"]
        out.append(row)
    return out
