"""Is the field around a candidate that of a magnetised sphere (a bleed) or of a cylinder (a vein)?

Least-squares fits of the local field (ppm of B0) in a shell around a candidate to two closed forms, each with
a background nuisance (constant + linear gradient, the residue of background-field removal):

- **sphere** (point dipole outside a uniformly magnetised sphere, Lorentz corrected, SI):
  ``f = M / (4 pi) (3 (r.b)^2 - r^2) / r^5`` with ``M`` the moment ``chi * volume`` (ppm mm^3);
- **infinite cylinder** with axis ``u`` (free orientation) and moment per length ``L = chi * pi a^2``
  (ppm mm^2): outside ``f = L / (2 pi) (2 (r_perp.b_perp)^2 - |b_perp|^2 rho^2) / rho^4`` - i.e. the usual
  ``chi/2 sin^2(alpha) (a/rho)^2 cos(2 phi)`` - with ``rho`` the distance to the axis and ``b_perp`` the part of
  B0 across it; inside ``chi/6 (3 cos^2(alpha) - 1)``.

The centre (of the sphere; a point of the cylinder's axis) is refined on a +-1 voxel grid.  Geometry is that of
:func:`cmbdetect.physics.sources.lesion_features`: offsets in mm in the orthonormal voxel-axis frame, ``b0_dir``
in that frame (:func:`cmbdetect.physics.geometry.b0_direction`).  A bleed's field is the sphere's dipole; a
vein's is the cylinder's two-lobed pattern around its axis, constant along it, which no sphere reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


def sphere_dipole_field(moment_ppm_mm3: float, offsets_mm: np.ndarray, b0_dir) -> np.ndarray:
    """Field (ppm) of a magnetised sphere of moment ``moment_ppm_mm3`` at ``offsets_mm`` (..., 3) from its
    centre, outside it (point-dipole form; equals :func:`cmbdetect.physics.forward.sphere_field` there)."""
    r = np.asarray(offsets_mm, float)
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    r2 = np.maximum((r * r).sum(-1), 1e-12)
    return moment_ppm_mm3 / (4 * np.pi) * (3 * (r @ b) ** 2 - r2) / r2 ** 2.5


def cylinder_field(chi_ppm: float, radius_mm: float, axis, offsets_mm: np.ndarray, b0_dir) -> np.ndarray:
    """Field (ppm of B0) of an infinite, uniformly magnetised cylinder (susceptibility ``chi_ppm`` vs its
    surroundings, ``radius_mm``, unit ``axis``; SI, Lorentz corrected) at ``offsets_mm`` (..., 3) from a point
    of its axis: outside ``chi/2 sin^2(alpha) (a/rho)^2 cos(2 phi)``, inside ``chi/6 (3 cos^2(alpha) - 1)``."""
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    out, rho2 = _line_pattern(offsets_mm, u, b, 1e-12)
    inside = chi_ppm / 6 * (3 * (u @ b) ** 2 - 1)
    return np.where(rho2 > radius_mm ** 2, chi_ppm * radius_mm ** 2 / 2 * out, inside)


def _line_pattern(offsets_mm, u, b, rho2_min):
    """``(2 (r_perp.b_perp)^2 - |b_perp|^2 rho^2) / rho^4`` (mm^-2) and ``rho^2`` (clamped to ``rho2_min``)."""
    r = np.asarray(offsets_mm, float)
    rp = r - (r @ u)[..., None] * u
    bp = b - (b @ u) * u
    rho2 = np.maximum((rp * rp).sum(-1), rho2_min)
    return (2 * (rp @ bp) ** 2 - (bp @ bp) * rho2) / rho2 ** 2, rho2


def hemisphere_directions(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors on the upper hemisphere (Fibonacci lattice), shape (n, 3)."""
    k = np.arange(n) + 0.5
    z = k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    s = np.sqrt(1 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], -1)


@dataclass
class DipoleFit:
    """Result of :func:`fit_sphere_vs_cylinder`.  R^2 are fractions of the field variance left after the
    background nuisance (constant + gradient) that each model explains (1 perfect, 0 nothing)."""

    sphere_r2: float
    cylinder_r2: float
    sphere_moment_ppm_mm3: float
    cylinder_moment_ppm_mm2: float  # per mm of length
    cylinder_axis: np.ndarray  # unit vector, voxel-axis frame
    cylinder_b0_angle_deg: float
    sphere_rmse_ppm: float
    cylinder_rmse_ppm: float
    n_voxels: int

    def as_features(self) -> dict[str, float]:
        """Scalar features (``fit_*`` keys) for stage 2 and the vein gate."""
        return {"fit_sphere_r2": self.sphere_r2, "fit_cylinder_r2": self.cylinder_r2,
                "fit_sphere_moment_ppm_mm3": self.sphere_moment_ppm_mm3,
                "fit_cylinder_moment_ppm_mm2": self.cylinder_moment_ppm_mm2,
                "fit_cylinder_b0_angle_deg": self.cylinder_b0_angle_deg,
                "fit_sphere_rmse_ppm": self.sphere_rmse_ppm, "fit_cylinder_rmse_ppm": self.cylinder_rmse_ppm}


def _best_fit(y, cols):
    """Per column of ``cols`` (N, K) (already free of the nuisance): LS coefficient and RSS against ``y``."""
    gg = (cols * cols).sum(0)
    gy = cols.T @ y
    ok = gg > 1e-12 * max(float(gg.max()), 1e-30)
    coef = np.where(ok, gy / np.where(ok, gg, 1.0), 0.0)
    rss = float(y @ y) - np.where(ok, gy * coef, 0.0)
    return coef, rss


def fit_sphere_vs_cylinder(local_field_ppm: np.ndarray, centre_vox, voxel_size, b0_dir, *, r_in_mm: float,
                           r_out_mm: float, valid: np.ndarray | None = None, n_directions: int = 160,
                           refine_centre: bool = True, max_voxels: int = 800) -> DipoleFit | None:
    """Fit the field in the shell ``r_in_mm < |r - centre| <= r_out_mm`` (voxels of ``valid``, default those
    with a non-zero field; leave out the visible source - the chi of the candidate and of any tube through it,
    dilated by a voxel - whose inside field neither exterior form describes) to a sphere and to an infinite cylinder (axis searched over ``n_directions``
    directions, then refined).  ``centre_vox`` continuous voxel index in ``local_field_ppm``.  At most
    ``max_voxels`` shell voxels are used (a fixed pseudo-random subset).  None when fewer than 20 are usable."""
    f = np.asarray(local_field_ppm, float)
    vs = np.asarray(voxel_size, float)
    if f.ndim != 3 or len(vs) != 3:
        raise InputError("dipole fit needs a 3D field and three voxel sizes")
    if not 0 < r_in_mm < r_out_mm:
        raise InputError(f"shell radii must satisfy 0 < r_in < r_out, got {r_in_mm}, {r_out_mm}")
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    c = np.asarray(centre_vox, float)
    use = (f != 0) if valid is None else np.asarray(valid, bool)
    grid = np.indices(f.shape, dtype=float).reshape(3, -1).T
    base = (grid - c) * vs
    d = np.sqrt((base ** 2).sum(1))
    sel = (d > r_in_mm) & (d <= r_out_mm) & use.reshape(-1)
    if sel.sum() < 20:
        return None
    idx = np.flatnonzero(sel)
    if len(idx) > max_voxels:
        idx = np.sort(np.random.default_rng(0).choice(idx, max_voxels, replace=False))
    base = base[idx]
    y = f.reshape(-1)[idx]
    nuis = np.column_stack([np.ones(len(y)), base / r_out_mm])
    q, _ = np.linalg.qr(nuis)
    resid = lambda a: a - q @ (q.T @ a)  # noqa: E731
    yr = resid(y)
    tss = float(yr @ yr)
    if tss <= 0:
        return None
    shifts = [np.zeros(3)]
    if refine_centre:
        shifts = [np.array(s, float) * vs for s in np.ndindex(3, 3, 3)]
        shifts = [s - vs for s in shifts]
    dirs = hemisphere_directions(n_directions)
    rho2_min = (0.5 * float(vs.min())) ** 2

    def line(r, us):  # unit-moment cylinder fields (N, K) for the K axes ``us``
        us = np.asarray(us, float)
        ru, bu = r @ us.T, us @ b  # (N, K), (K,)
        rb = r @ b  # (N,)
        rp_bp = rb[:, None] - ru * bu[None]  # r_perp . b_perp = r.b - (r.u)(b.u)
        rho2 = np.maximum((r * r).sum(1)[:, None] - ru * ru, rho2_min)
        bp2 = 1.0 - bu * bu
        return (2 * rp_bp ** 2 - bp2[None] * rho2) / rho2 ** 2 / (2 * np.pi)
    best_s = (np.inf, 0.0, np.zeros(3))
    for s in shifts:  # sphere: refine the centre on the +-1 voxel grid
        g, rss = _best_fit(yr, resid(sphere_dipole_field(1.0, base - s, b)[:, None]))
        if rss[0] < best_s[0]:
            best_s = (float(rss[0]), float(g[0]), s)
    # cylinder: axis over the hemisphere through the centre, then the axis point, then the axis finely
    coef, rss = _best_fit(yr, resid(line(base, dirs)))
    k = int(np.argmin(rss))
    best_c = (float(rss[k]), float(coef[k]), dirs[k], np.zeros(3))
    for s in shifts:
        coef, rss = _best_fit(yr, resid(line(base - s, best_c[2][None])))
        if rss[0] < best_c[0]:
            best_c = (float(rss[0]), float(coef[0]), best_c[2], s)
    # continuous refinement (Nelder-Mead) of the sphere centre, and of the cylinder axis and axis point
    from scipy.optimize import minimize

    lim = 1.5 * vs if refine_centre else np.zeros(3)

    def rss_sphere(x):
        return _best_fit(yr, resid(sphere_dipole_field(1.0, base - np.clip(x, -lim, lim), b)[:, None]))[1][0]

    def rss_cyl(x):
        u = np.array([np.sin(x[0]) * np.cos(x[1]), np.sin(x[0]) * np.sin(x[1]), np.cos(x[0])])
        return _best_fit(yr, resid(line(base - np.clip(x[2:], -lim, lim), u[None])))[1][0]

    opt = {"xatol": 1e-2, "fatol": 1e-6 * tss, "maxfev": 80}
    def simplex(x0, steps):  # initial simplex of sensible size (the default is 5 % of x0: nothing at 0)
        return np.vstack([x0] + [x0 + np.eye(len(x0))[i] * steps[i] for i in range(len(x0))])

    res = minimize(rss_sphere, best_s[2], method="Nelder-Mead",
                   options=dict(opt, initial_simplex=simplex(best_s[2], 0.4 * vs)))
    if res.fun < best_s[0]:
        sh = np.clip(res.x, -lim, lim)
        g, rss = _best_fit(yr, resid(sphere_dipole_field(1.0, base - sh, b)[:, None]))
        best_s = (float(rss[0]), float(g[0]), sh)
    u0, s = best_c[2], best_c[3]
    th, ph = np.arccos(np.clip(u0[2], -1, 1)), np.arctan2(u0[1], u0[0])
    x0 = np.r_[th, ph, s]
    res = minimize(rss_cyl, x0, method="Nelder-Mead", options=dict(opt, initial_simplex=simplex(x0, np.r_[0.08, 0.08, 0.4 * vs])))
    if res.fun < best_c[0]:
        u = np.array([np.sin(res.x[0]) * np.cos(res.x[1]), np.sin(res.x[0]) * np.sin(res.x[1]), np.cos(res.x[0])])
        sh = np.clip(res.x[2:], -lim, lim)
        coef, rss = _best_fit(yr, resid(line(base - sh, u[None])))
        best_c = (float(rss[0]), float(coef[0]), u, sh)
    n = int(len(y))
    axis = best_c[2] / np.linalg.norm(best_c[2])
    return DipoleFit(sphere_r2=float(1 - best_s[0] / tss), cylinder_r2=float(1 - best_c[0] / tss),
                     sphere_moment_ppm_mm3=best_s[1], cylinder_moment_ppm_mm2=best_c[1], cylinder_axis=axis,
                     cylinder_b0_angle_deg=float(np.degrees(np.arccos(min(abs(float(axis @ b)), 1.0)))),
                     sphere_rmse_ppm=float(np.sqrt(max(best_s[0], 0) / n)),
                     cylinder_rmse_ppm=float(np.sqrt(max(best_c[0], 0) / n)), n_voxels=n)
