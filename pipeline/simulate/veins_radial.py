"""Third vein-geometry family of the simulator ("radial"): straight and gently curved segments, fans, Y-branches.

Neither the default ``"trees"`` family (cortical trees walking on the convexity, straight radial medullary
segments) nor the held-out ``"tortuous"`` family (persistent random walks) draws veins this way.  Here every
parenchymal vein is a straight line or a gentle parabolic arc (radius of curvature >= ~30 mm), built from
anatomical landmarks, with these kinds (counts scaled by a per-subject density):

- ``medullary``: fans of 3-8 veins leaving one point of the lateral ventricle wall and diverging in a cone
  (half angle 10-35 deg) through the white matter until they reach the cortex or the sulcal CSF;
- ``transcerebral``: long (30-80 mm) veins from the ventricle wall to the brain surface;
- ``subependymal``: veins following the lateral ventricle walls (body and temporal horn);
- ``sulcal``: cortical veins lying in the sulcal CSF (a tangent line snapped onto the nearest sulcal voxels);
- ``segment``: straight or gently curved segments of uniformly random 3D orientation (through-plane, in-plane
  and oblique to the slab alike) in lobar, deep and infratentorial parenchyma, a third of them Y-branching
  (daughters 15-45 deg off the parent axis, radii by Murray's law);
- ``near_bleed``: segments passing 0.5-3 mm beside a microbleed's surface.

Calibre 0.3-3 mm (log-uniform; medullary 0.3-1.2 mm).  Blood chi (ppm, SI, vs tissue) from the subject's venous
oxygenation ``Y`` (0.5-0.75, per vein +-0.05) and haematocrit (0.36-0.48):
:func:`cmbdetect.pipeline.simulate.veins_tortuous.blood_chi_ppm`.  Positions in head mm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmbdetect.pipeline.simulate.anatomy import T, Anatomy
from cmbdetect.pipeline.simulate.geometry import paint_tube
from cmbdetect.pipeline.simulate.veins_tortuous import blood_chi_ppm

#: Longest straight piece painted at once (mm): keeps the rasterisation boxes of oblique lines small.
_PIECE_MM = 6.0


@dataclass
class Vessel:
    """One vein: polyline ``points`` (n, 3) head mm, ``radii`` (n,) mm, blood ``chi_ppm`` and its ``kind``."""

    points: np.ndarray
    radii: np.ndarray
    chi_ppm: float
    kind: str


def _unit(v):
    v = np.asarray(v, float)
    return v / (np.linalg.norm(v) + 1e-12)


def _perpendicular(rng, d):
    """A random unit vector perpendicular to unit ``d``."""
    v = rng.normal(size=3)
    return _unit(v - (v @ d) * d)


def _cone(rng, axis, half_angle_rad):
    """Random unit direction within ``half_angle_rad`` of unit ``axis`` (uniform in solid angle)."""
    cos_t = rng.uniform(np.cos(half_angle_rad), 1.0)
    return _unit(cos_t * axis + np.sqrt(1 - cos_t * cos_t) * _perpendicular(rng, axis))


def arc(p0, direction, length_mm: float, *, curvature_per_mm: float = 0.0, bend=None, step_mm: float = 1.0):
    """Points every ``step_mm`` of a gentle arc (parabola ``p0 + s d + curvature s^2 / 2 b``, head mm) of
    ``length_mm`` along unit ``direction`` bending towards unit ``bend`` (perpendicular to it)."""
    d = _unit(direction)
    s = np.linspace(0.0, length_mm, max(2, int(np.ceil(length_mm / step_mm)) + 1))
    b = np.zeros(3) if bend is None else _unit(np.asarray(bend, float) - (np.asarray(bend, float) @ d) * d)
    return np.asarray(p0, float) + s[:, None] * d + 0.5 * curvature_per_mm * (s * s)[:, None] * b


class _Mask:
    """Nearest-voxel lookup of a boolean grid at head-mm points (False off the grid)."""

    def __init__(self, anatomy: Anatomy, mask: np.ndarray):
        self.fr, self.mask = anatomy.frame, mask
        self.hi = np.asarray(mask.shape) - 1

    def __call__(self, pts) -> np.ndarray:
        v = np.rint(self.fr.head_to_vox(np.atleast_2d(pts))).astype(int)
        ok = np.all((v >= 0) & (v <= self.hi), axis=1)
        out = np.zeros(len(v), bool)
        out[ok] = self.mask[tuple(v[ok].T)]
        return out


def _grad_at(grid: np.ndarray, v) -> np.ndarray:
    """Central-difference gradient of ``grid`` at voxel ``v`` per voxel step (one-sided at the edges)."""
    g = np.zeros(3)
    for ax in range(3):
        lo, hi = np.array(v), np.array(v)
        lo[ax], hi[ax] = max(v[ax] - 1, 0), min(v[ax] + 1, grid.shape[ax] - 1)
        g[ax] = (grid[tuple(hi)] - grid[tuple(lo)]) / max(hi[ax] - lo[ax], 1)
    return g


def clip_run(pts: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The first run of consecutive ``pts`` that are ``inside`` (leading outside points skipped)."""
    idx = np.flatnonzero(inside)
    if len(idx) == 0:
        return pts[:0]
    start = idx[0]
    stop = np.flatnonzero(~inside[start:])
    return pts[start:start + (stop[0] if len(stop) else len(pts) - start)]


def draw_radial_veins(anatomy: Anatomy, rng: np.random.Generator, *, density: float | None = None,
                      near_mm=None) -> tuple[list[Vessel], dict]:
    """Draw this family's parenchymal veins (geometry only; nothing painted).  ``density`` scales their
    number (None: drawn per subject, 0.5-1.5); ``near_mm`` optional list of (centre head mm, radius mm) of
    microbleeds, beside half of which a vein is laid.  Returns the vessels and the subject's parameters."""
    fr, lm = anatomy.frame, anatomy.landmarks
    density = float(rng.uniform(0.5, 1.5) if density is None else density)
    y_mean, hct = float(rng.uniform(0.5, 0.75)), float(rng.uniform(0.36, 0.48))
    tissue = anatomy.tissue
    paren = (anatomy.region > 0) & anatomy.intracranial
    in_paren = _Mask(anatomy, paren)
    in_head = _Mask(anatomy, anatomy.intracranial & (tissue != T["air"]))
    out: list[Vessel] = []

    def chi():
        return blood_chi_ppm(float(np.clip(y_mean + rng.normal(0, 0.05), 0.3, 0.9)), hct)

    def calibre(lo=0.3, hi=3.0):
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def add(pts, r0, kind, *, taper=(0.5, 1.0), min_mm=3.0):
        if len(pts) < 2 or np.linalg.norm(pts[-1] - pts[0]) < min_mm:
            return None
        r0 = float(np.clip(r0, 0.15, 1.5))  # calibre 0.3-3 mm
        r = np.linspace(r0, max(0.15, r0 * rng.uniform(*taper)), len(pts))
        v = Vessel(np.asarray(pts, float), r, chi(), kind)
        out.append(v)
        return v

    def gentle(p0, d, length, inside):
        return clip_run(a := arc(p0, d, length, curvature_per_mm=rng.uniform(0, 0.03),
                                 bend=_perpendicular(rng, _unit(d))), inside(a))

    c = lm["cerebrum_centre"]
    bodies = [(vp, vr) for key, (vp, vr) in lm["ventricles"].items() if key.startswith("body")]
    wall = lambda vp, vr, k, u, n: vp[k] + u * (vp[k + 1] - vp[k]) + n * (vr[k] + 0.6)  # noqa: E731
    for vp, vr in bodies:
        # medullary fans from the ventricle wall towards the cortex
        for _ in range(int(rng.poisson(7 * density))):
            k, u = int(rng.integers(0, len(vp) - 1)), rng.uniform()
            axis = _unit(_unit(vp[k] - np.array([0.0, c[1], c[2] - 10])) + rng.normal(0, 0.3, 3))
            p0 = wall(vp, vr, k, u, axis)
            half = np.deg2rad(rng.uniform(10, 35))
            r_fan = 0.5 * calibre(0.3, 1.2)
            for _v in range(int(rng.integers(3, 9))):
                add(gentle(p0, _cone(rng, axis, half), rng.uniform(20, 60), in_paren), r_fan * rng.uniform(0.7, 1.2),
                    "medullary")
        # transcerebral veins: ventricle wall to the brain surface
        for _ in range(int(rng.poisson(2.5 * density))):
            k, u = int(rng.integers(0, len(vp) - 1)), rng.uniform()
            axis = _cone(rng, _unit(vp[k] - np.array([0.0, c[1], c[2] - 25])), np.deg2rad(40))
            add(gentle(wall(vp, vr, k, u, axis), axis, rng.uniform(30, 80), in_head), 0.5 * calibre(0.6, 1.6),
                "transcerebral", taper=(0.8, 1.2))
    # subependymal veins following the ventricle walls (body and temporal horns)
    for vp, vr in lm["ventricles"].values():
        for _ in range(int(rng.poisson(1.5 * density))):
            k0 = int(rng.integers(0, len(vp) - 1))
            k1 = min(len(vp) - 1, k0 + int(rng.integers(1, 3)))
            n = _perpendicular(rng, _unit(vp[k1] - vp[k0]))
            line = np.concatenate([arc(vp[k], vp[k + 1] - vp[k], np.linalg.norm(vp[k + 1] - vp[k]), step_mm=2.0)
                                   for k in range(k0, k1)])
            rad = np.interp(np.linspace(k0, k1, len(line)), np.arange(len(vp)), vr)
            add(line + n * (rad[:, None] + 0.7), 0.5 * calibre(0.8, 2.5), "subependymal", taper=(0.8, 1.2))
    # cortical veins in the sulci: a tangent line at a sulcal voxel, snapped onto the nearest sulcal CSF
    sdf = lm["sdf_brain"]
    sulcal = (tissue == T["csf"]) & (sdf < 0) & (sdf > -15)
    if sulcal.any():
        sul_idx = np.argwhere(sulcal)
        _d, near_idx = ndimage.distance_transform_edt(~sulcal, sampling=fr.voxel_size, return_indices=True)
        for _ in range(int(rng.poisson(20 * density))):
            v0 = sul_idx[rng.integers(len(sul_idx))]
            n_head = _unit(fr.vox_to_head[:3, :3] @ (_grad_at(sdf, v0) / fr.voxel_size ** 2))  # outward normal
            p0 = fr.vox_to_head_pts(v0)
            line = arc(p0, _perpendicular(rng, n_head), rng.uniform(10, 35), curvature_per_mm=rng.uniform(0, 0.03),
                       bend=_perpendicular(rng, n_head), step_mm=1.5)
            line = line[in_head(line)]
            if len(line) < 3:
                continue
            vox = np.clip(np.rint(fr.head_to_vox(line)).astype(int), 0, np.asarray(fr.shape) - 1)
            snapped = fr.vox_to_head_pts(near_idx[(slice(None), *vox.T)].T.astype(float))
            snapped = ndimage.uniform_filter1d(snapped, 3, axis=0, mode="nearest")
            add(snapped, 0.5 * calibre(0.6, 3.0), "sulcal", taper=(0.6, 1.0))
    # straight / gently curved segments of any orientation, a third Y-branching
    for code, n0 in ((1, 35), (2, 6), (3, 8)):
        idx = np.argwhere(paren & (anatomy.region == code))
        if len(idx) == 0:
            continue
        for _ in range(int(rng.poisson(n0 * density))):
            p0 = fr.vox_to_head_pts(idx[rng.integers(len(idx))] + rng.uniform(-0.5, 0.5, 3))
            d = _unit(rng.normal(size=3))
            length, r0 = rng.uniform(6, 40), 0.5 * calibre()
            branch = rng.random() < 0.35
            parent = add(gentle(p0 - 0.5 * length * d, d, length * (0.6 if branch else 1.0), in_head), r0, "segment",
                         taper=(0.8, 1.0) if branch else (0.5, 1.0))
            if branch and parent is not None:
                tip, axis = parent.points[-1], _unit(parent.points[-1] - parent.points[-2])
                plane = _perpendicular(rng, axis)
                split = rng.uniform(0.3, 0.7)
                for sign, share in ((1, split), (-1, 1 - split)):
                    ang = np.deg2rad(rng.uniform(15, 45))
                    dd = _unit(np.cos(ang) * axis + sign * np.sin(ang) * plane)
                    add(gentle(tip, dd, length * rng.uniform(0.3, 0.7), in_head),
                        max(0.15, parent.radii[-1] * share ** (1 / 3)), "branch", min_mm=2.0)
    # veins beside microbleeds
    for centre, radius in (near_mm or []):
        if rng.random() < 0.5:
            continue
        d = _unit(rng.normal(size=3))
        r0 = 0.5 * calibre(0.4, 2.0)
        off = _perpendicular(rng, d) * (float(radius) + r0 + rng.uniform(0.5, 3.0))
        length = rng.uniform(10, 30)
        add(gentle(np.asarray(centre, float) + off - 0.5 * length * d, d, length, in_head), r0, "near_bleed",
            taper=(0.8, 1.0))
    counts = {k: sum(v.kind == k for v in out) for k in
              ("medullary", "transcerebral", "subependymal", "sulcal", "segment", "branch", "near_bleed")}
    return out, {"family": "radial", "density": density, "oxygenation": y_mean, "haematocrit": hct, **counts,
                 **vessel_stats(anatomy, out)}


def vessel_stats(anatomy: Anatomy, vessels: list[Vessel]) -> dict:
    """Length-weighted geometry of ``vessels``: total length (mm), fractions of length nearly along the slab
    normal (|cos| > 0.8, through-plane) and nearly in-plane (|cos| < 0.3), calibre (mm) range and median."""
    n_slab = _unit(anatomy.frame.vox_to_head[:3, 2])
    seg_len, cos, cal = [], [], []
    for v in vessels:
        d = np.diff(v.points, axis=0)
        ln = np.linalg.norm(d, axis=1)
        seg_len.append(ln)
        cos.append(np.abs(d @ n_slab) / np.maximum(ln, 1e-9))
        cal.append(v.radii[:-1] + v.radii[1:])  # 2 x mean radius of the piece = calibre
    if not seg_len:
        return {"length_mm": 0.0}
    ln, cs, cl = (np.concatenate(a) for a in (seg_len, cos, cal))
    order = np.argsort(cl)
    cum = np.cumsum(ln[order])
    return {"length_mm": float(ln.sum()), "through_plane_fraction": float(ln[cs > 0.8].sum() / ln.sum()),
            "in_plane_fraction": float(ln[cs < 0.3].sum() / ln.sum()),
            "calibre_mm": [float(cl.min()), float(cl[order][np.searchsorted(cum, 0.5 * cum[-1])]), float(cl.max())]}


def paint_vessels(anatomy: Anatomy, vessels: list[Vessel], occ: np.ndarray, chi: np.ndarray) -> None:
    """Rasterise ``vessels`` into ``occ`` (partial volume 0..1) and ``chi`` (blood chi ppm) in place, in pieces
    of at most :data:`_PIECE_MM`."""
    for v in vessels:
        seg = np.linalg.norm(np.diff(v.points, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        keep = np.unique(np.concatenate([np.searchsorted(s, np.arange(0, s[-1], _PIECE_MM)), [len(s) - 1]]))
        paint_tube(anatomy.frame, occ, v.points[keep], v.radii[keep], soft=True, value=chi, tag=v.chi_ppm)


def add_radial_veins(anatomy: Anatomy, rng: np.random.Generator, occ: np.ndarray, chi: np.ndarray, *,
                     density: float | None = None, near_mm=None) -> dict:
    """Draw (:func:`draw_radial_veins`) and paint this family's veins into ``occ`` / ``chi`` (ppm) in place;
    returns the subject's vein parameters (counts, oxygenation, haematocrit, length and orientation stats)."""
    vessels, params = draw_radial_veins(anatomy, rng, density=density, near_mm=near_mm)
    paint_vessels(anatomy, vessels, occ, chi)
    return params
