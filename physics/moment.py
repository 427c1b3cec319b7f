"""Magnetic moment of a compact source from a chi map, independent of the inversion's smoothing.

A dipole inversion spreads a small source's susceptibility over a blurred blob (regularisation) and
adds zero-mean streaks along the magic-angle cone, but the *integral* of chi over a region that contains
the blob and a symmetric part of its streaks converges to the source's magnetic moment
``m = (chi_source - chi_surround) * volume`` (ppm * mm^3).  :func:`converged_moment` grows a ball around
the candidate's centre until that integral stops changing, so the estimate does not depend on how much
the inversion blurred the lesion (unlike an integral over a fixed, thresholded region).

Local reference: chi of the surrounding tissue is the median of chi in a shell just outside the ball
(subtracted per voxel, so a tissue offset does not grow with the ball's volume).  Sign: > 0 paramagnetic.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

#: Ball radii (mm) start at this, grow by :data:`MOMENT_STEP_MM`, stop at :data:`MOMENT_MAX_RADIUS_MM`.  Measured on
#: benchmarks/lesion_fidelity.py (weighted-TV chi, 1x1x2 mm / 1 mm, median |moment error| of 2-3 / 3-5 / 5-8 mm
#: lesions): step 0.5 mm, shell 1 mm, start = radius + half a voxel edge: 14 / 8 / 2.5 % and 10 / 4 / 3 %; step
#: 1 mm: 144 / 85 / 3 % and 20 / 7 / 6 %; start = radius + a voxel edge: 23 / 65 / 3 % and 12 / 5 / 5 % (a larger ball
#: sums more tissue texture and streaks).
MOMENT_START_RADIUS_MM = 1.5
MOMENT_STEP_MM = 0.5
MOMENT_MAX_RADIUS_MM = 10.0
#: Converged when the last two radius steps each change the moment by less than this fraction of it (or less
#: than its noise standard deviation, whichever is larger).
MOMENT_TOLERANCE = 0.05
#: Width (mm) of the reference shell just outside the ball.
MOMENT_SHELL_MM = 1.0


def converged_moment(
    chi_ppm: np.ndarray,
    centre_vox,
    voxel_size,
    *,
    mask: np.ndarray | None = None,
    start_mm: float = MOMENT_START_RADIUS_MM,
    step_mm: float = MOMENT_STEP_MM,
    max_radius_mm: float = MOMENT_MAX_RADIUS_MM,
    tol: float = MOMENT_TOLERANCE,
    shell_mm: float = MOMENT_SHELL_MM,
) -> dict[str, float]:
    """Integrated chi (ppm*mm^3) over a ball around ``centre_vox`` grown until it converges.

    ``chi_ppm``: susceptibility map (ppm); ``centre_vox``: continuous voxel index of the candidate centre;
    ``voxel_size``: mm; ``mask``: where chi is valid (voxels outside it are left out of the ball and the
    shell; default: all).  For radii ``start_mm, start_mm + step_mm, ..`` up to ``max_radius_mm`` the
    moment is ``sum over the ball of (chi - ref) * voxel volume`` with ``ref`` the median chi in the shell
    of ``shell_mm`` outside the ball.  The radius is the first one whose two previous steps each changed
    the moment by less than ``tol`` of its magnitude or its noise sd (below), else the largest one.

    Returns ``{"moment_ppm_mm3", "moment_sd_ppm_mm3", "radius_mm", "converged"}``: the moment at that
    radius; its uncertainty ``sqrt(spread^2 + noise^2)`` with ``spread`` the standard deviation of the
    moments of the last three radii and ``noise`` the shell's robust chi standard deviation (1.4826 MAD)
    times the voxel volume times sqrt(n_ball + n_ball^2 pi / (2 n_shell)) (voxel noise summed over the ball as if
    independent, plus the median reference's noise shared by every ball voxel); ``converged`` 1.0 or 0.0.  NaNs when the ball or
    shell holds no valid voxel.  A radius hint: ``start_mm`` = the candidate's radius plus half a voxel edge (the
    ball must first hold the blurred blob; smaller balls only add steps).
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    if chi.ndim != 3:
        raise InputError(f"chi map must be 3D, got shape {chi.shape}")
    vs = np.asarray(voxel_size, dtype=float)
    c = np.asarray(centre_vox, dtype=float)
    if vs.shape != (3,) or c.shape != (3,) or not np.all(vs > 0):
        raise InputError("voxel size and centre must be 3-vectors (voxel size > 0 mm)")
    if not (0 < start_mm <= max_radius_mm and step_mm > 0 and tol > 0 and shell_mm > 0):
        raise InputError("moment radii must satisfy 0 < start <= max, step > 0, tol > 0, shell > 0")
    m = np.ones(chi.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != chi.shape:
        raise InputError("mask must have the chi map's shape")
    reach = max_radius_mm + shell_mm
    lo = [max(int(np.floor(ci - reach / d)), 0) for ci, d in zip(c, vs)]
    hi = [min(int(np.ceil(ci + reach / d)) + 1, s) for ci, d, s in zip(c, vs, chi.shape)]
    nan = {"moment_ppm_mm3": float("nan"), "moment_sd_ppm_mm3": float("nan"), "radius_mm": float("nan"),
           "converged": 0.0}
    if any(h <= lo_ for lo_, h in zip(lo, hi)):
        return nan
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    g = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    r = np.sqrt(sum(((gi - ci) * d) ** 2 for gi, ci, d in zip(g, c, vs)))
    patch, valid = chi[sl].astype(np.float64), m[sl]
    vv = float(np.prod(vs))
    radii = np.arange(start_mm, max_radius_mm + 1e-9, step_mm)
    moments, sds = [], []
    chosen = None
    for n, rad in enumerate(radii):
        ball = (r <= rad) & valid
        shell = (r > rad) & (r <= rad + shell_mm) & valid
        if not ball.any() or not shell.any():
            if moments:
                break
            return nan
        sv = patch[shell]
        ref = float(np.median(sv))
        moments.append(float((patch[ball] - ref).sum() * vv))
        mad = 1.4826 * float(np.median(np.abs(sv - ref)))
        n_ball, n_shell = float(ball.sum()), float(shell.sum())
        # voxel noise summed over the ball, plus the noise of the median reference (variance pi/2 sd^2 / n)
        # that every ball voxel shares
        sds.append(mad * vv * np.sqrt(n_ball + n_ball**2 * (np.pi / 2) / n_shell))
        if n >= 2:
            scale = max(tol * abs(moments[-1]), sds[-1], 1e-12)
            if abs(moments[-1] - moments[-2]) < scale and abs(moments[-2] - moments[-3]) < scale:
                chosen = n
                break
    k = len(moments) - 1 if chosen is None else chosen
    spread = float(np.std(moments[max(k - 2, 0): k + 1]))
    return {"moment_ppm_mm3": moments[k], "moment_sd_ppm_mm3": float(np.hypot(spread, sds[k])),
            "radius_mm": float(radii[k]), "converged": 0.0 if chosen is None else 1.0}


#: The field fit (:func:`field_moment`) uses local-field voxels from ``FIELD_FIT_INNER_VOX`` voxel edges (the largest
#: edge) outside the lesion's radius (the inside and its partial-volume rim carry no exterior dipole field; a
#: blooming void carries none at all) out to ``FIELD_FIT_OUTER_FACTOR`` times the radius plus ``FIELD_FIT_OUTER_MM``.
FIELD_FIT_INNER_VOX = 0.5
FIELD_FIT_OUTER_FACTOR = 2.0
FIELD_FIT_OUTER_MM = 3.0
#: Relative model error of the field fit (the sphere model, its radius, the voxel averaging and the background residue
#: it does not describe), added to its statistical sd.  Measured on benchmarks/lesion_fidelity.py (1x1x2 mm and 1 mm at
#: 3 T, 80 lesions): |error| / sd had a median of 1.8-2.0 without it (half the errors within 2 sd); 0.03: 0.7-1.1
#: (72-80 %); 0.05: 0.44-0.69 (75-92 %).
FIELD_FIT_MODEL_SD_FRACTION = 0.05
#: Sub-voxel points per axis of the voxel-averaged sphere field in the fit.
FIELD_FIT_SUBVOXELS = 2


def field_moment(
    local_field_ppm: np.ndarray,
    centre_vox,
    voxel_size,
    b0_dir,
    *,
    radius_mm: float,
    mask: np.ndarray | None = None,
    inner_vox: float = FIELD_FIT_INNER_VOX,
    outer_factor: float = FIELD_FIT_OUTER_FACTOR,
    outer_mm: float = FIELD_FIT_OUTER_MM,
    refine_centre: bool = True,
) -> dict[str, float]:
    """Magnetic moment (ppm*mm^3) of a compact source by a least-squares fit of the sphere's dipole field to the local
    field around it: independent of any dipole inversion (its regularisation, its streaks, its erosion).

    ``local_field_ppm``: background-free field (ppm of B0); ``centre_vox``: continuous voxel index of the candidate
    centre; ``voxel_size`` mm; ``b0_dir``: unit B0 in the voxel-axis frame
    (:func:`cmbdetect.physics.geometry.b0_direction`); ``radius_mm``: the source's radius (e.g. half the candidate's
    diameter); ``mask``: where the field is valid (default: where it is non-zero).

    Model, on the valid voxels with ``radius + inner_vox * max edge < |r| <= outer_factor * radius + outer_mm``:
    ``f = m g(r) + c0 + c . r`` with ``g`` the voxel-averaged field of a uniformly magnetised sphere of unit moment
    (:func:`cmbdetect.physics.forward.sphere_field`, Lorentz corrected, SI; paramagnetic ``m > 0``), ``c0 + c . r``
    the residue of background removal.  The centre is refined on a half-voxel grid of +-1 voxel (the centre with the
    least residual wins).  The uncertainty is the delete-one-octant jackknife standard deviation of ``m`` (the eight
    octants around the centre; it covers spatially correlated misfit: tissue texture, a neighbouring source, a
    missing side at the mask edge) combined with the least-squares standard error and a model error of
    :data:`FIELD_FIT_MODEL_SD_FRACTION` of the moment.

    Returns ``{"moment_ppm_mm3", "moment_sd_ppm_mm3", "n_voxels", "r2"}`` (NaN moment when fewer than 12 voxels are
    usable or the fit is singular).
    """
    from .forward import sphere_field, subvoxel_offsets

    f = np.asarray(local_field_ppm, dtype=np.float64)
    if f.ndim != 3:
        raise InputError(f"local field must be 3D, got shape {f.shape}")
    vs = np.asarray(voxel_size, dtype=float)
    c = np.asarray(centre_vox, dtype=float)
    b = np.asarray(b0_dir, dtype=float)
    if vs.shape != (3,) or c.shape != (3,) or b.shape != (3,) or not np.all(vs > 0) or not np.linalg.norm(b) > 0:
        raise InputError("voxel size, centre and B0 direction must be 3-vectors (voxel size > 0 mm)")
    if not radius_mm > 0 or inner_vox < 0 or outer_factor <= 0 or outer_mm < 0:
        raise InputError("field moment needs radius > 0, inner >= 0, outer factor > 0 and outer >= 0")
    b = b / np.linalg.norm(b)
    m = (f != 0) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != f.shape:
        raise InputError("mask must have the local field's shape")
    nan = {"moment_ppm_mm3": float("nan"), "moment_sd_ppm_mm3": float("nan"), "n_voxels": 0.0, "r2": float("nan")}
    r_in = radius_mm + inner_vox * float(vs.max())
    r_out = outer_factor * radius_mm + outer_mm
    if r_out <= r_in:
        r_out = r_in + 2.0 * float(vs.max())
    reach = r_out + float(vs.max())
    lo = [max(int(np.floor(ci - reach / d)), 0) for ci, d in zip(c, vs)]
    hi = [min(int(np.ceil(ci + reach / d)) + 1, s) for ci, d, s in zip(c, vs, f.shape)]
    if any(h <= a for a, h in zip(lo, hi)):
        return nan
    sl = tuple(slice(a, z) for a, z in zip(lo, hi))
    idx = np.indices([z - a for a, z in zip(lo, hi)], dtype=float).reshape(3, -1).T + np.array(lo, float)
    y_all, ok = f[sl].reshape(-1), m[sl].reshape(-1)
    vol = 4.0 / 3.0 * np.pi * radius_mm**3
    sub = subvoxel_offsets(FIELD_FIT_SUBVOXELS)

    off0 = (idx - c) * vs
    d0 = np.sqrt((off0 * off0).sum(1))
    sel = ok & (d0 > r_in) & (d0 <= r_out)
    if sel.sum() < 12:
        return nan
    o, y = off0[sel], y_all[sel]
    nuis = np.column_stack([np.ones(len(o)), o / r_out])

    def design(shift_vox):  # the voxels stay; only the model's centre moves
        g = np.zeros(len(o))
        for s in sub:
            g += sphere_field(1.0 / vol, radius_mm, o + (s - shift_vox) * vs, b)
        return np.column_stack([g / len(sub), nuis])

    def fit(shift_vox):
        a = design(shift_vox)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        return float(((y - a @ coef) ** 2).sum()), coef, a

    best = (*fit(np.zeros(3)), np.zeros(3))
    if refine_centre:  # +-1 voxel: a 3^3 grid of half-voxel steps, then of quarter-voxel steps around the best
        grid = np.array(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 3, indexing="ij")).reshape(3, -1).T
        for step in (0.5, 0.25):
            centre = best[3]
            for g in grid:
                sh = np.clip(centre + step * g, -1.0, 1.0)
                if not g.any():
                    continue
                rss_, coef_, a_ = fit(sh)
                if rss_ < best[0]:
                    best = (rss_, coef_, a_, sh)
    rss, coef, a, _ = best
    n = len(y)
    ata = a.T @ a
    try:
        cov = np.linalg.inv(ata) * rss / max(n - a.shape[1], 1)
    except np.linalg.LinAlgError:
        return nan
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    octant = (o[:, 0] > 0).astype(int) * 4 + (o[:, 1] > 0).astype(int) * 2 + (o[:, 2] > 0).astype(int)
    jack = []
    for k in range(8):
        keep = octant != k
        if keep.sum() < 12 or keep.all():
            continue
        ck, *_ = np.linalg.lstsq(a[keep], y[keep], rcond=None)
        jack.append(float(ck[0]))
    jsd = float(np.sqrt((len(jack) - 1) / len(jack) * np.sum((np.array(jack) - np.mean(jack)) ** 2))) if len(jack) > 1 \
        else 0.0
    yc = y - y.mean()
    tss = float(yc @ yc)
    sd = float(np.sqrt(se**2 + jsd**2 + (FIELD_FIT_MODEL_SD_FRACTION * coef[0]) ** 2))
    return {"moment_ppm_mm3": float(coef[0]), "moment_sd_ppm_mm3": sd,
            "n_voxels": float(n),
            "r2": float(1 - rss / tss) if tss > 0 else float("nan")}
