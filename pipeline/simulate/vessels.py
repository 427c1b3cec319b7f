"""Venous network of the simulator: dural sinuses, deep veins, cortical vein trees and medullary veins.

Veins are the main mimic of microbleeds: paramagnetic deoxygenated blood (chi +0.3...+0.6 ppm vs
tissue), dark on magnitude, and round where cut in cross-section.  Each vessel is a tube along a
polyline in head mm, rasterised with partial volume (:func:`simulate_geometry.paint_tube`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmbdetect.pipeline.simulate.anatomy import Anatomy
from cmbdetect.pipeline.simulate.geometry import paint_tube


@dataclass
class Veins:
    """Vein occupancy (float32 0..1 partial volume) and the per-voxel chi of the blood (ppm)."""

    occupancy: np.ndarray
    chi_ppm: np.ndarray
    #: the family and its per-subject parameters (``{"family": "trees"}`` for the default)
    params: dict | None = None


#: Vein-geometry families of :func:`build_veins` (hold one out of training, validate on it).
VEIN_FAMILIES: tuple[str, ...] = ("trees", "tortuous", "radial")


def build_arteries(anatomy: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Main cerebral arteries (carotids, basilar, circle of Willis, middle/anterior/posterior cerebral
    arteries and Sylvian branches): oxygenated blood, chi ~ 0, bright with inflow or dark flow voids
    with a flow phase -- round dark or bright spots that are *not* lesions.  Returns the occupancy
    (float32) and a per-voxel tag in [-1, 1] (the vessel's flow-phase factor)."""
    fr, s = anatomy.frame, anatomy.landmarks["scale"]
    occ = np.zeros(fr.shape, np.float32)
    tag = np.zeros(fr.shape, np.float32)

    def tube(points, radii):
        paint_tube(fr, occ, np.asarray(points, float) * s + rng.normal(0, 1.0, 3), radii, soft=True, value=tag,
                   tag=rng.uniform(-1, 1))

    tube([[0, -14, -60], [0, -12, -38], [0, -10, -24]], 1.6)  # basilar
    for side in (1, -1):
        tube([[side * 16, 6, -60], [side * 14, 10, -40], [side * 13, 8, -22]], 2.2)  # internal carotid
        tube([[side * 13, 8, -21], [side * 26, 9, -19], [side * 37, 8, -15]], 1.4)  # MCA M1
        for _ in range(int(rng.integers(2, 5))):  # M2/M3 branches up the insula and out of the fissure
            y0 = rng.uniform(-15, 25)
            tube([[side * 37, 8, -15], [side * 38, y0, -5], [side * rng.uniform(40, 50), y0 + rng.normal(0, 8), 15]],
                 [1.0, 0.8, 0.6])
        tube([[side * 10, 10, -20], [side * 3, 14, -18], [side * 2, 28, 0], [side * 2, 22, 26], [side * 2, -5, 34],
              [side * 2, -40, 30]], [1.2, 1.0, 1.0, 0.9, 0.8, 0.6])  # ACA over the corpus callosum
        tube([[0, -10, -24], [side * 8, -16, -21], [side * 20, -32, -12], [side * 18, -60, 0]], [1.3, 1.2, 1.0, 0.8])
    return occ, tag


def _surface_point(centre, axes, d, lift_mm):
    """Point on the ellipsoid (centre, axes) along unit direction ``d`` pushed out by ``lift_mm``."""
    d = d / np.linalg.norm(d)
    p = d * axes
    return centre + p * (1 + lift_mm / np.linalg.norm(p))


def _walk_on_surface(rng, centre, axes, d0, t0, *, n_steps, step_mm, lift_mm, stop):
    """Persistent random walk of a direction on an ellipsoid surface; returns head-mm points."""
    d, t = d0 / np.linalg.norm(d0), t0 / np.linalg.norm(t0)
    pts = [_surface_point(centre, axes, d, lift_mm)]
    r_mean = float(np.mean(axes))
    for _ in range(n_steps):
        t = t + rng.normal(0, 0.35, 3)
        t -= (t @ d) * d
        t /= np.linalg.norm(t) + 1e-9
        d = d + t * step_mm / r_mean
        d /= np.linalg.norm(d)
        p = _surface_point(centre, axes, d, lift_mm)
        if stop(p):
            break
        pts.append(p)
    return np.array(pts)


def _onto_surface(frame, sdf, pts, centre, depth_mm, n_iter: int = 3):
    """Move head-mm points radially (from ``centre``) until the brain signed distance ``sdf`` (grid,
    mm, 0 at the pial surface, > 0 in the CSF) equals ``depth_mm`` (points off the grid stay)."""
    pts = np.array(pts, float)
    for _ in range(n_iter):
        v = frame.head_to_vox(pts)
        ok = np.all((v >= 0) & (v <= np.asarray(frame.shape) - 1), axis=1)
        if not ok.any():
            break
        val = ndimage.map_coordinates(sdf, v[ok].T, order=1, mode="nearest")
        n = pts[ok] - centre
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-9
        pts[ok] -= n * np.clip(val - depth_mm, -8.0, 8.0)[:, None]
    return pts


def build_veins(anatomy: Anatomy, rng: np.random.Generator, *, family: str = "trees",
                density: float | None = None, near_mm=None) -> Veins:
    """Draw a venous network for this head and rasterise it on the acquisition grid.

    Both families share the dural sinuses and deep veins.  ``family`` "trees" (default): cortical vein trees
    walking on the convexity and straight radial medullary veins; "tortuous": random-walk veins of every
    orientation and calibre (:mod:`cmbdetect.pipeline.simulate.veins_tortuous`, held out of training); "radial":
    straight and gently curved segments, medullary fans, transcerebral, subependymal and sulcal veins, Y-branches
    (:mod:`cmbdetect.pipeline.simulate.veins_radial`).  ``density`` scales their number (None: random per
    subject; ignored by "trees"); ``near_mm`` (centre head mm, radius mm) of microbleeds ("radial" lays veins
    beside some of them)."""
    if family not in VEIN_FAMILIES:
        from cmbdetect.physics.errors import InputError

        raise InputError(f"unknown vein family {family!r}; use one of {', '.join(VEIN_FAMILIES)}")
    fr, lm = anatomy.frame, anatomy.landmarks
    s = lm["scale"]
    occ = np.zeros(fr.shape, np.float32)
    chi = np.zeros(fr.shape, np.float32)
    chi_lo, chi_hi = 0.3, 0.6
    vessel_chi = lambda: rng.uniform(chi_lo, chi_hi)  # noqa: E731
    c, ax = lm["cerebrum_centre"], lm["cerebrum_axes"]
    csf = lm["csf_mm"]

    def tube(points, radii, value=None):
        paint_tube(fr, occ, points, radii, soft=True, value=chi, tag=value if value is not None else vessel_chi())

    # superior sagittal sinus over the top of the midline, then the transverse and sigmoid sinuses
    th = np.linspace(np.deg2rad(15), np.deg2rad(195), 24)
    sss = np.stack([np.zeros_like(th), c[1] + (ax[1] + csf) * np.cos(th), c[2] + (ax[2] + csf) * np.sin(th)], 1)
    sss = sss[sss[:, 2] > -25 * s]
    tube(sss, np.linspace(1.6, 3.6, len(sss)) * rng.uniform(0.8, 1.2))
    torc = sss[-1]
    for side in (1, -1):
        tr = np.array([torc, [side * 30 * s, torc[1] + 6, torc[2] - 6], [side * 48 * s, -62 * s, -32 * s],
                       [side * 52 * s, -42 * s, -42 * s], [side * 46 * s, -32 * s, -62 * s]])
        tube(tr, np.array([3.4, 3.2, 3.0, 3.0, 3.2]) * rng.uniform(0.75, 1.15))
    galen = np.array([0, -38, 8.0]) * s
    tube(np.array([galen, (galen + torc) / 2 + [0, 0, 6], torc]), [2.0, 2.2, 2.6])  # straight sinus
    # deep veins: internal cerebral veins, thalamostriate veins, basal veins of Rosenthal
    for side in (1, -1):
        icv = np.array([[side * 2.5, 6, 13], [side * 2.5, -10, 13], [side * 2.0, -28, 10], [0, -38, 8]]) * s
        tube(icv, [0.9, 1.1, 1.3, 1.6])
        tsv = np.array([[side * 15, -22, 19], [side * 12, -8, 18], [side * 7, 2, 15], [side * 2.5, 6, 13]]) * s
        tube(tsv, [0.6, 0.7, 0.8, 0.9])
        bvr = np.array([[side * 22, 6, -12], [side * 22, -10, -12], [side * 16, -28, -6], [side * 6, -36, 3],
                        [0, -38, 8]]) * s
        tube(bvr, [0.8, 0.9, 1.0, 1.1, 1.4])
    if family == "tortuous":
        from cmbdetect.pipeline.simulate.veins_tortuous import add_tortuous_veins

        params = add_tortuous_veins(anatomy, rng, occ, chi, density=density)
        return Veins(occupancy=occ, chi_ppm=chi, params=params)
    if family == "radial":
        from cmbdetect.pipeline.simulate.veins_radial import add_radial_veins

        params = add_radial_veins(anatomy, rng, occ, chi, density=density, near_mm=near_mm)
        return Veins(occupancy=occ, chi_ppm=chi, params=params)
    # cortical vein trees draining into the SSS, walking down the lateral convexity
    floor_z = -20 * s
    stop = lambda p: p[2] < floor_z or p[1] < c[1] - 0.95 * ax[1] or p[1] > c[1] + 0.95 * ax[1]  # noqa: E731
    sdf = lm["sdf_brain"]
    on_surface = lambda p: _onto_surface(fr, sdf, p, c, rng.uniform(0.3, 0.9) * csf)  # noqa: E731
    for n_tree in range(int(rng.integers(16, 34))):
        side = rng.choice([-1, 1])
        if n_tree % 3 == 2:  # trees starting low on the convexity, draining up or back
            y0 = rng.uniform(-0.7, 0.8)
            d0 = np.array([side * rng.uniform(0.6, 0.95), y0, rng.uniform(-0.2, 0.3)])
            t0 = np.array([0.0, rng.normal(0, 1), 1.0])
        else:
            y0 = rng.uniform(-0.8, 0.8)
            d0 = np.array([side * 0.08, y0, np.sqrt(max(1 - y0 * y0, 0.05))])
            t0 = np.array([side, rng.normal(0, 0.4), -0.3])
        pts = _walk_on_surface(rng, c, ax, d0, t0, n_steps=int(rng.integers(10, 35)), step_mm=4.0,
                               lift_mm=0.0, stop=stop)
        if len(pts) < 2:
            continue
        pts = on_surface(pts)
        r = np.linspace(rng.uniform(0.9, 1.8), rng.uniform(0.35, 0.7), len(pts))
        tube(pts, r)
        for _b in range(int(rng.integers(0, 3))):  # side branches
            k = int(rng.integers(0, len(pts) - 1))
            d = (pts[k] - c) / ax
            tb = np.cross(d, pts[k + 1] - pts[k]) * rng.choice([-1, 1]) + rng.normal(0, 0.3, 3)
            br = _walk_on_surface(rng, c, ax, d, tb, n_steps=int(rng.integers(3, 10)), step_mm=3.5,
                                  lift_mm=0.0, stop=stop)
            if len(br) >= 2:
                br = on_surface(br)
                tube(br, np.linspace(r[k] * 0.7, 0.3, len(br)))
    # medullary veins: thin, straight-ish, radial from the lateral ventricle walls into the white matter
    for key, (vp, vr) in lm["ventricles"].items():
        if not key.startswith("body"):
            continue
        n = int(rng.integers(15, 45))
        seg = rng.integers(0, len(vp) - 1, n)
        for k, t in zip(seg, rng.uniform(0, 1, n)):
            p0 = vp[k] + t * (vp[k + 1] - vp[k])
            out = p0 - np.array([0, c[1], c[2] - 10])
            out = out + rng.normal(0, 0.35, 3) * np.linalg.norm(out)
            out /= np.linalg.norm(out)
            length = rng.uniform(15, 35) * s
            bend = rng.normal(0, 2.0, 3)
            pts = np.array([p0 + out * (vr[k] + u * length) + bend * u * u for u in np.linspace(0, 1, 5)])
            tube(pts, rng.uniform(0.2, 0.45))
    return Veins(occupancy=occ, chi_ppm=chi, params={"family": "trees"})
