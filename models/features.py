"""Physics features of stage-1 candidates, measured on the native grid of the PhysicsMaps.

Each candidate gets a crop (``crop_mm`` half-width) of chi, local field and magnitude, a region grown
around its centre (:func:`cmbdetect.physics.domain.candidate_region`), and
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
from cmbdetect.physics.domain import candidate_region
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


#: Vein features are computed for candidates whose microbleed probability after stage 2 reaches this (the others
#: cannot be called microbleed anyway), which keeps detection fast.
VEIN_FEATURES_FROM_P: float = 0.05


def vein_features(maps: PhysicsMaps, centre_vox, *, chi_scale: float) -> dict[str, float]:
    """Tube-or-ball features of one candidate, in mm (native grid; :mod:`cmbdetect.physics.vesselness`,
    :mod:`cmbdetect.physics.dipole_fit`).

    For the paramagnetic structure (``chi_*``: chi+ in the chi mask) and the magnitude void (``void_*``:
    ``1 - magnitude / median``, inside the chi mask and the brain mask) at the candidate: ``*_peak`` (ppm /
    darkness), ``*_blob_ratio`` (Hessian, ~1 ball, ~0 tube), ``*_vesselness``, ``*_width_mm`` (FWHM across the
    axis), ``*_continuation_mm`` / ``*_continuation_long_mm`` (how far it goes on along its axis on the shorter /
    longer side, tracked through bends, up to ``VEIN_TRACK_MAX_MM``); NaN where there is no such structure
    (chi+ below 3 robust sigma, darkness below ``VEIN_MIN_VOID_DARKNESS``).  And the local-field fit
    (``fit_*``, :meth:`cmbdetect.physics.dipole_fit.DipoleFit.as_features`): R^2 of a magnetised sphere and of an
    infinite cylinder in a shell around the chi peak, the source itself (chi+ above half its peak) and the void
    (darkness > 0.3), both dilated by a voxel, left out."""
    from scipy import ndimage

    from cmbdetect.physics.constants import VEIN_MIN_VOID_DARKNESS, VEIN_TRACK_MAX_MM
    from cmbdetect.physics.dipole_fit import fit_sphere_vs_cylinder
    from cmbdetect.physics.vesselness import (continuation_mm, cross_width_mm, hessian_shape, peak_near,
                                              void_image)

    vs = voxel_sizes(maps.affine)
    c = np.asarray(centre_vox, float)
    half = np.ceil((VEIN_TRACK_MAX_MM + 4.0) / vs).astype(int)
    shape = np.array(maps.shape)
    ijk = np.clip(np.rint(c).astype(int), 0, shape - 1)
    lo, hi = np.maximum(ijk - half, 0), np.minimum(ijk + half + 1, shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    cl = c - lo
    mask = np.asarray(maps.mask[sl], bool)
    dom = mask | (np.asarray(maps.brain_plain[sl], bool) if maps.brain_plain is not None else False)
    chi_pos = np.where(mask, np.maximum(np.asarray(maps.chi_ppm[sl], np.float32), 0), 0).astype(np.float32)
    void = np.where(dom, void_image(np.asarray(maps.magnitude[sl], np.float32), dom), 0).astype(np.float32)
    out: dict[str, float] = {}
    chi_peak_vox, chi_thr = None, None
    for name, img, floor in (("chi", chi_pos, 3.0 * chi_scale), ("void", void, VEIN_MIN_VOID_DARKNESS)):
        keys = ("peak", "blob_ratio", "vesselness", "width_mm", "continuation_mm", "continuation_long_mm")
        out.update({f"{name}_{k}": float("nan") for k in keys})
        p = peak_near(img, cl, vs, 2.0)
        peak = float(img[tuple(p)])
        if peak < floor:
            continue
        hs = hessian_shape(img, p, vs)
        thr = max(0.5 * peak, floor)
        long, short = continuation_mm(img, p, vs, hs.axis, threshold=thr, max_mm=VEIN_TRACK_MAX_MM)
        out.update({f"{name}_peak": peak, f"{name}_blob_ratio": hs.blob_ratio, f"{name}_vesselness": hs.vesselness,
                    f"{name}_width_mm": cross_width_mm(img, p, vs, hs.axis), f"{name}_continuation_mm": short,
                    f"{name}_continuation_long_mm": long})
        if name == "chi":
            chi_peak_vox, chi_thr = p, thr
    fld = np.asarray(maps.local_field_ppm[sl], np.float32)
    valid = mask & (fld != 0) & ~ndimage.binary_dilation(void > 0.3)  # no signal there: no reliable field
    centre = cl
    if chi_peak_vox is not None:
        valid &= ~ndimage.binary_dilation(chi_pos >= chi_thr)
        centre = chi_peak_vox
    w = out.get("chi_width_mm")
    w = float(w) if w is not None and np.isfinite(w) else 2.0
    r_in = max(1.5 * float(vs.max()), 0.5 * w + 0.5 * float(vs.max()))
    fit = fit_sphere_vs_cylinder(fld, centre, vs, b0_direction(maps.affine), r_in_mm=r_in, r_out_mm=r_in + 7.0,
                                 valid=valid)
    nan = float("nan")
    out.update(fit.as_features() if fit is not None else
               {k: nan for k in ("fit_sphere_r2", "fit_cylinder_r2", "fit_sphere_moment_ppm_mm3",
                                 "fit_cylinder_moment_ppm_mm2", "fit_cylinder_b0_angle_deg", "fit_sphere_rmse_ppm",
                                 "fit_cylinder_rmse_ppm")})
    return out


def add_vein_features(maps: PhysicsMaps, centres_vox, feats: list[dict], p_microbleed, *,
                      from_p: float = VEIN_FEATURES_FROM_P) -> list[int]:
    """Add :func:`vein_features` to ``feats`` (in place) of the candidates with ``p_microbleed >= from_p``;
    returns their indices."""
    mask = np.asarray(maps.mask, dtype=bool)
    chi_scale = max(robust_centre_scale(maps.chi_ppm[mask])[1], 1e-4) if mask.any() else 1e-3
    idx = [n for n, p in enumerate(np.asarray(p_microbleed, float)) if p >= from_p]
    centres = np.asarray(centres_vox, float).reshape(-1, 3)
    for n in idx:
        feats[n].update(vein_features(maps, centres[n], chi_scale=chi_scale))
    return idx
