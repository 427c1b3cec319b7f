"""Second vein-geometry family of the simulator: tortuous random-walk veins of every orientation.

The default family (:func:`cmbdetect.pipeline.simulate.vessels.build_veins`, ``"trees"``) draws smooth cortical
trees on the brain surface and straight radial medullary segments.  This family (``"tortuous"``) keeps the same
dural sinuses and deep veins but replaces the parenchymal veins by persistent random walks whose start points,
directions, tortuosity, calibre (0.3-3 mm), branching, density and blood oxygenation are drawn per subject:

- parenchymal veins anywhere in lobar white matter and cortex, deep grey matter and the posterior fossa,
  starting in any direction (uniform on the sphere: through-plane, in-plane and oblique to the slab alike);
- medullary veins radiating from the ventricle walls, wandering on their way out;
- subependymal veins following the ventricle walls;
- cortical veins in the sulcal CSF (walks kept near the pial surface).

Blood chi (ppm, SI, vs tissue) follows from the oxygenation ``Y`` and haematocrit ``Hct``:
``chi = Hct * (1 - Y) * DCHI_DEOXY_PPM`` (:data:`cmbdetect.physics.constants.DCHI_DEOXY_BLOOD_PPM`).
Kept apart from the default family so that one family can be held out of training (leave-one-generator-out).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdetect.physics.constants import DCHI_DEOXY_BLOOD_PPM
from cmbdetect.pipeline.simulate.anatomy import T, Anatomy
from cmbdetect.pipeline.simulate.geometry import paint_tube


def blood_chi_ppm(oxygenation: float, haematocrit: float) -> float:
    """Susceptibility (ppm, SI, relative to tissue) of venous blood of ``oxygenation`` Y (0-1) and
    ``haematocrit`` (0-1): ``Hct (1 - Y) DCHI_DEOXY_BLOOD_PPM``."""
    return float(haematocrit * (1.0 - oxygenation) * DCHI_DEOXY_BLOOD_PPM)


def _unit(v):
    return v / (np.linalg.norm(v) + 1e-12)


def random_walk(rng: np.random.Generator, start, direction, *, length_mm: float, step_mm: float,
                tortuosity: float, inside, pull=None) -> np.ndarray:
    """Persistent random walk (head mm points): each step turns the direction by Gaussian noise of
    ``tortuosity`` (radians per sqrt(mm)); ``pull(p) -> vector`` (optional) bends it towards a target;
    stops at ``length_mm`` or where ``inside(p)`` is False."""
    p, d = np.asarray(start, float), _unit(np.asarray(direction, float))
    pts = [p.copy()]
    for _ in range(int(length_mm / step_mm)):
        d = d + rng.normal(0, tortuosity * np.sqrt(step_mm), 3)
        if pull is not None:
            d = d + pull(p) * step_mm
        d = _unit(d)
        p = p + d * step_mm
        if not inside(p):
            break
        pts.append(p.copy())
    return np.array(pts)


def _sampler(anatomy: Anatomy, mask: np.ndarray):
    """Function rng -> a random head-mm point inside ``mask`` (None if the mask is empty)."""
    idx = np.argwhere(mask)
    fr = anatomy.frame

    def draw(rng):
        if len(idx) == 0:
            return None
        return fr.vox_to_head_pts(idx[rng.integers(len(idx))] + rng.uniform(-0.5, 0.5, 3))
    return draw


def _inside_fn(anatomy: Anatomy, allowed: np.ndarray):
    fr = anatomy.frame
    hi = np.asarray(fr.shape) - 1

    def inside(p):
        v = np.rint(fr.head_to_vox(p)).astype(int)
        return bool(np.all(v >= 0) and np.all(v <= hi) and allowed[tuple(v)])
    return inside


def add_tortuous_veins(anatomy: Anatomy, rng: np.random.Generator, occ: np.ndarray, chi: np.ndarray, *,
                       density: float | None = None) -> dict:
    """Paint this family's parenchymal veins into ``occ`` (partial volume 0..1) and ``chi`` (blood chi, ppm)
    in place.  ``density`` scales the number of veins (None: drawn per subject, 0.5-1.5; the mimic stress test
    uses 3).  Returns the subject's vein parameters (counts, oxygenation, haematocrit)."""
    fr, lm = anatomy.frame, anatomy.landmarks
    density = float(rng.uniform(0.5, 1.5) if density is None else density)
    y_mean = rng.uniform(0.5, 0.75)  # this subject's venous oxygenation
    hct = rng.uniform(0.36, 0.48)
    tissue = anatomy.tissue
    paren = (anatomy.region > 0) & anatomy.intracranial
    allowed = anatomy.intracranial & (tissue != T["air"])
    inside = _inside_fn(anatomy, allowed)
    step = float(max(1.0, 0.5 * np.min(fr.voxel_size)))
    counts = {"parenchymal": 0, "medullary": 0, "subependymal": 0, "cortical": 0, "branches": 0}

    def calibre_radius():  # 0.3-3 mm calibre, log-uniform
        return 0.5 * float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))

    def vein_chi():
        return blood_chi_ppm(float(np.clip(y_mean + rng.normal(0, 0.05), 0.3, 0.9)), hct)

    def draw(pts, r0, *, branches: bool = True, depth: int = 0):
        if len(pts) < 2:
            return
        r = np.linspace(r0, max(0.15, r0 * rng.uniform(0.4, 1.0)), len(pts))
        paint_tube(fr, occ, pts, r, soft=True, value=chi, tag=vein_chi())
        if not branches or depth > 1:
            return
        for _ in range(int(rng.poisson(0.8))):
            k = int(rng.integers(0, len(pts)))
            d = _unit(rng.normal(size=3))
            br = random_walk(rng, pts[k], d, length_mm=rng.uniform(5, 25), step_mm=step,
                             tortuosity=rng.uniform(0.05, 0.4), inside=inside)
            counts["branches"] += 1
            draw(br, max(0.15, r[k] * rng.uniform(0.4, 0.8)), depth=depth + 1)

    # parenchymal veins of every orientation: lobar (WM + cortex), deep, infratentorial
    for code, n0 in ((1, 40), (2, 8), (3, 10)):
        pick = _sampler(anatomy, paren & (anatomy.region == code))
        for _ in range(int(rng.poisson(n0 * density))):
            p0 = pick(rng)
            if p0 is None:
                break
            walk = random_walk(rng, p0, rng.normal(size=3), length_mm=rng.uniform(8, 60), step_mm=step,
                               tortuosity=rng.uniform(0.02, 0.45), inside=inside)
            counts["parenchymal"] += 1
            draw(walk, calibre_radius())
    # medullary veins from the ventricle walls, wandering outwards; subependymal veins along the walls
    c = lm["cerebrum_centre"]
    for key, (vp, vr) in lm["ventricles"].items():
        if not key.startswith("body"):
            continue
        for _ in range(int(rng.poisson(20 * density))):
            k = int(rng.integers(0, len(vp) - 1))
            p0 = vp[k] + rng.uniform() * (vp[k + 1] - vp[k])
            out = _unit(_unit(p0 - np.array([0.0, c[1], c[2] - 10])) + rng.normal(0, 0.5, 3))
            start = p0 + out * (vr[k] + 0.5)
            walk = random_walk(rng, start, out, length_mm=rng.uniform(10, 40), step_mm=step,
                               tortuosity=rng.uniform(0.03, 0.3), inside=inside,
                               pull=lambda p, o=out: 0.05 * o)
            counts["medullary"] += 1
            draw(walk, 0.5 * float(np.exp(rng.uniform(np.log(0.3), np.log(1.2)))), branches=False)
        for _ in range(int(rng.poisson(3 * density))):
            k = int(rng.integers(0, len(vp) - 1))
            seg = []
            for u in np.linspace(0, 1, 6):
                q = vp[k] + u * (vp[k + 1] - vp[k])
                n = _unit(np.cross(vp[k + 1] - vp[k], rng.normal(size=3)))
                seg.append(q + n * (vr[k] + 0.7))
            counts["subependymal"] += 1
            draw(np.array(seg), 0.5 * rng.uniform(0.6, 2.0), branches=False)
    # cortical veins in the sulci: walks kept within the outer CSF / cortex (|sdf| small)
    sdf = lm["sdf_brain"]
    near_surface = allowed & (np.abs(sdf) < 3.0) & (tissue != T["skull"])
    inside_s = _inside_fn(anatomy, near_surface | (tissue == T["csf"]) & (sdf < 6.0))
    pick = _sampler(anatomy, near_surface & (tissue == T["csf"]))
    for _ in range(int(rng.poisson(15 * density))):
        p0 = pick(rng)
        if p0 is None:
            break
        walk = random_walk(rng, p0, rng.normal(size=3), length_mm=rng.uniform(10, 50), step_mm=step,
                           tortuosity=rng.uniform(0.1, 0.4), inside=inside_s)
        counts["cortical"] += 1
        draw(walk, 0.5 * float(np.exp(rng.uniform(np.log(0.6), np.log(3.0)))))
    return {"family": "tortuous", "density": density, "oxygenation": float(y_mean), "haematocrit": float(hct),
            **counts}


def add_iron_spots(anatomy: Anatomy, rng: np.random.Generator, chi_tissue: np.ndarray, *,
                   n: int | None = None) -> int:
    """Small irregular iron-rich spots in deep grey matter and the dentate (mimics, label "other"): 1.5-4 mm,
    chi +0.03...+0.12 ppm added to ``chi_tissue`` (ppm, in place), smoothed by half a voxel.  Returns how
    many were placed."""
    fr = anatomy.frame
    deep = np.isin(anatomy.tissue, [T[k] for k in ("caudate", "putamen", "pallidum", "thalamus", "dentate")])
    pick = _sampler(anatomy, deep)
    n = int(rng.integers(0, 6)) if n is None else int(n)
    spot = np.zeros(fr.shape, np.float32)
    placed = 0
    for _ in range(n):
        p0 = pick(rng)
        if p0 is None:
            break
        pts = p0 + rng.normal(0, 0.8, (3, 3))
        tmp = np.zeros(fr.shape, np.float32)
        paint_tube(fr, tmp, pts, 0.5 * rng.uniform(1.5, 4.0) / 1.6, soft=True)
        spot = np.maximum(spot, tmp * np.float32(rng.uniform(0.03, 0.12)))
        placed += 1
    if placed:
        chi_tissue += ndimage.gaussian_filter(spot, 0.5) * deep
    return placed
