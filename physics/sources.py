"""Susceptibility sources: paramagnetic / diamagnetic parts and lesion-level physics features.

Units: chi in ppm (SI volume susceptibility relative to the tissue reference), fields ppm of B0,
R2*/R2/R2' in 1/s, lengths mm, volumes mm^3, magnetic moment (integrated chi) ppm*mm^3.
Sign: chi > 0 paramagnetic (blood products, iron), chi < 0 diamagnetic (calcium, myelin); a
paramagnetic source raises the local field along B0 (positive lobes at its poles).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError
from .forward import sphere_field

#: Relaxometric constant of chi-separation (Shin et al. 2021, NeuroImage 240:118371): 137 Hz/ppm at
#: 3 T, for both source signs; scaled linearly with B0 (static dephasing: R2' is proportional to
#: gamma*B0*|chi|, Yablonskiy & Haacke 1994).
DR_HZ_PER_PPM_3T: float = 137.0

#: Assumed tissue R2 (1/s) when no R2 map is available (brain parenchyma, average of grey and white
#: matter): T2 ~ 85 ms at 1.5 T, 75 ms at 3 T, 55 ms at 7 T; linear interpolation in B0 between these.
ASSUMED_R2_PER_S: dict[float, float] = {1.5: 11.8, 3.0: 13.3, 7.0: 18.2}


def split_by_sign(chi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chi_pos, chi_neg): ``max(chi, 0)`` and ``max(-chi, 0)`` (both >= 0, ppm, float32)."""
    c = np.asarray(chi, dtype=np.float32)
    return np.maximum(c, 0.0), np.maximum(-c, 0.0)


def assumed_r2(b0: float) -> float:
    """Assumed parenchymal R2 (1/s) at ``b0`` tesla (see :data:`ASSUMED_R2_PER_S`)."""
    keys = sorted(ASSUMED_R2_PER_S)
    return float(np.interp(float(b0), keys, [ASSUMED_R2_PER_S[k] for k in keys]))


def relaxometric_constant(b0: float) -> float:
    """chi-separation relaxometric constant Dr (Hz/ppm) at ``b0`` tesla: 137 * B0 / 3."""
    return DR_HZ_PER_PPM_3T * float(b0) / 3.0


def chi_separation(
    *,
    chi_ppm: np.ndarray,
    r2star: np.ndarray,
    mask: np.ndarray,
    b0: float,
    r2: np.ndarray | float | None = None,
    dr_pos: float | None = None,
    dr_neg: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Separate paramagnetic and diamagnetic susceptibility with R2' (after Shin et al. 2021).

    Model per voxel: ``chi = chi_pos - chi_neg`` (the QSM result) and
    ``R2' = R2* - R2 = Dr_pos * chi_pos + Dr_neg * chi_neg`` with ``chi_pos, chi_neg >= 0``.  This is
    the voxel-wise closed form given the QSM chi (Shin et al. solve jointly with the field; anchoring
    the difference to the QSM is the simplification used here):
    ``chi_pos = (R2' + Dr_neg chi) / (Dr_pos + Dr_neg)``, ``chi_neg = (R2' - Dr_pos chi) / (...)``,
    then projected onto the non-negative set keeping ``chi_pos - chi_neg = chi``.

    ``r2`` (1/s) defaults to :func:`assumed_r2` at ``b0``; ``dr_pos``/``dr_neg`` (Hz/ppm) default to
    :func:`relaxometric_constant`.  Returns (chi_pos, chi_neg), both >= 0 ppm, 0 outside ``mask``.
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    r2s = np.asarray(r2star, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if chi.shape != r2s.shape or chi.shape != m.shape:
        raise InputError("chi, R2* and mask must have the same shape for chi-separation")
    if b0 <= 0:
        raise InputError(f"field strength must be positive, got {b0} T")
    r2v = assumed_r2(b0) if r2 is None else np.asarray(r2, dtype=np.float32)
    dp = relaxometric_constant(b0) if dr_pos is None else float(dr_pos)
    dn = relaxometric_constant(b0) if dr_neg is None else float(dr_neg)
    r2p = np.maximum(np.nan_to_num(r2s - r2v), 0.0)
    pos = (r2p + dn * chi) / (dp + dn)
    neg = (r2p - dp * chi) / (dp + dn)
    pos, neg = np.where(neg < 0, chi, pos), np.where(neg < 0, 0.0, neg)
    pos, neg = np.where(pos < 0, 0.0, pos), np.where(pos < 0, -chi, neg)
    return np.where(m, pos, 0.0).astype(np.float32), np.where(m, neg, 0.0).astype(np.float32)


def _patch(region: np.ndarray, margin_vox) -> tuple[slice, ...]:
    idx = np.nonzero(region)
    return tuple(
        slice(max(int(i.min()) - mv, 0), min(int(i.max()) + mv + 1, s))
        for i, mv, s in zip(idx, margin_vox, region.shape)
    )


def _largest_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    ids = np.unique(lab[seed & mask])
    ids = ids[ids > 0]
    return np.isin(lab, ids) if ids.size else np.zeros_like(mask)


def _sphericity(region: np.ndarray, vs: np.ndarray, volume: float) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(region.astype(np.float32), 1)
    try:
        verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(vs))
    except (ValueError, RuntimeError):
        return float("nan")
    area = mesh_surface_area(verts, faces)
    if area <= 0:
        return float("nan")
    return float(min(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area, 1.0))


def lesion_features(
    *,
    chi_ppm: np.ndarray,
    local_field_ppm: np.ndarray,
    magnitude: np.ndarray | None,
    region_mask: np.ndarray,
    voxel_size,
    b0_dir,
    dilate_mm: float | None = None,
    shell_mm: float = 2.0,
) -> dict[str, float]:
    """Physics features of one lesion candidate given its voxel region.

    Keys (units):
    - ``integrated_chi_ppm_mm3``: magnetic moment, sum of (chi - local reference) * voxel volume over
      the region dilated by ``dilate_mm`` (default max(2 mm, 1.5 voxel edges)) to capture partial
      volume and the blooming of the inversion (docs/qsm_lesion_fidelity.md); the local reference is the median
      chi in a ``shell_mm`` shell around the dilated region.  Sign: > 0 paramagnetic.
    - ``mean_chi_ppm``: mean of (chi - reference) over the region itself.
    - ``dipole_sign``: +1 if the local field around the lesion correlates positively with the unit
      paramagnetic sphere pattern ``(a/r)^3 (3 cos^2 - 1)/3`` for B0 (``b0_dir`` in voxel axes), -1
      if negatively, 0 if undetermined; ``dipole_corr``: the correlation coefficient.
    - ``diameter_mm`` (equivalent sphere), ``volume_mm3``, ``elongation`` (sqrt of largest / smallest
      inertia eigenvalue, 1 for a sphere, large for a vein), ``sphericity`` (pi^1/3 (6V)^2/3 / area,
      marching-cubes surface; ~0.9 for a voxelised sphere), ``blooming_ratio`` (equivalent diameter
      of the connected hypointense magnitude blob, < 0.7 x the surrounding median, divided by that of
      the chi blob, |chi - ref| >= half the peak; NaN without magnitude).
    - ``void_mean_chi_ppm``: mean of (chi - reference) over that hypointense magnitude blob (ppm; NaN without
      magnitude or blob).  The sign of the source that makes the void: on thick slices the inversion leaves
      positive streaks beside a calcification, whose own void still holds negative chi.
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    fld = np.asarray(local_field_ppm, dtype=np.float32)
    reg = np.asarray(region_mask, dtype=bool)
    if chi.shape != reg.shape or fld.shape != reg.shape:
        raise InputError("chi, local field and region mask must have the same shape")
    if not reg.any():
        raise InputError("lesion region is empty")
    vs = np.asarray(voxel_size, dtype=float)
    vv = float(np.prod(vs))
    volume = float(reg.sum()) * vv
    radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    dil = max(2.0, 1.5 * float(vs.max())) if dilate_mm is None else float(dilate_mm)
    reach = max(dil + shell_mm, 2.0 * radius + 4.0) + vs.max()
    sl = _patch(reg, [int(np.ceil(reach / d)) for d in vs])
    r = reg[sl]
    c = chi[sl]
    f = fld[sl]
    dist = ndimage.distance_transform_edt(~r, sampling=vs)
    dilated = dist <= dil
    shell = (dist > dil) & (dist <= dil + shell_mm)
    ref = float(np.median(c[shell])) if shell.any() else 0.0
    cr = c - ref
    feats: dict[str, float] = {
        "integrated_chi_ppm_mm3": float(cr[dilated].sum() * vv),
        "mean_chi_ppm": float(cr[r].mean()),
        "volume_mm3": volume,
        "diameter_mm": 2.0 * radius,
    }
    # Dipole pattern of a unit paramagnetic sphere at the region centroid, in the orthonormal
    # voxel-axis frame (mm) where b0_dir is expressed.
    ctr = np.array([i.mean() for i in np.nonzero(r)])
    grid = np.indices(r.shape, dtype=np.float64).reshape(3, -1).T
    offs = ((grid - ctr) * vs).reshape(*r.shape, 3)
    templ = sphere_field(1.0, radius, offs, b0_dir)
    ring = (dist > vs.max()) & (dist <= 2.0 * radius + 4.0)
    ring &= f != 0
    corr = 0.0
    if ring.sum() > 8:
        a = f[ring] - f[ring].mean()
        b = templ[ring] - templ[ring].mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        corr = float((a * b).sum() / den) if den > 0 else 0.0
    feats["dipole_corr"] = corr
    feats["dipole_sign"] = float(np.sign(corr))
    # Shape from the inertia (covariance) of voxel centres, with each voxel's own extent d^2/12.
    pts = (np.array(np.nonzero(r)).T * vs)
    cov = np.cov(pts.T) if len(pts) > 1 else np.zeros((3, 3))
    cov = cov + np.diag(vs**2 / 12.0)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    feats["elongation"] = float(np.sqrt(ev[0] / max(ev[-1], 1e-12)))
    feats["sphericity"] = _sphericity(r, vs, volume)
    # Blooming: magnitude hypointensity vs chi extent.
    near = dist <= 1.5 * vs.max()
    peak_sign = 1.0 if feats["integrated_chi_ppm_mm3"] >= 0 else -1.0
    peak = float(np.max(peak_sign * cr[r]))
    chi_blob = _largest_touching((peak_sign * cr >= 0.5 * peak) & (dist <= reach), near) if peak > 0 else r
    bloom = void_chi = float("nan")
    if magnitude is not None:
        mg = np.asarray(magnitude, dtype=np.float32)
        if mg.shape != reg.shape:
            raise InputError("magnitude must have the region mask's shape")
        mg = mg[sl]
        outer = (dist > 2.0 * radius + 1.0) & (dist <= reach)
        if outer.any():
            thr = 0.7 * float(np.median(mg[outer]))
            hypo = _largest_touching((mg < thr) & (dist <= reach), near)
            n_chi = max(int(chi_blob.sum()), 1)
            bloom = float((hypo.sum() / n_chi) ** (1 / 3))
            if hypo.any():
                void_chi = float(cr[hypo].mean())
    feats["blooming_ratio"] = bloom
    feats["void_mean_chi_ppm"] = void_chi
    return feats
