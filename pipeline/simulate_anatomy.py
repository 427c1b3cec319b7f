"""Procedural head anatomy, different for every seed (no atlas, nothing downloaded).

A head (scalp, dark diamagnetic skull, neck/face soft tissue, eyes, air sinuses and mastoid cells)
around a brain with a folded cortex (grey matter ribbon over white matter), sulcal and ventricular CSF,
an interhemispheric and Sylvian fissure, cerebellum with folia, brainstem and the iron-rich deep grey
nuclei.  Everything is built in head mm (see :mod:`simulate_geometry`) and evaluated at the voxel
centres of the acquisition grid, so oblique slabs and head tilt come for free.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cmbdetect.pipeline.simulate_geometry import (HeadFrame, LatticeNoise, ellipsoid_sdf, paint_tube,
                                                  random_rotation, segment_distance)

#: Tissue codes of :attr:`Anatomy.tissue` (index = code).
TISSUES: tuple[str, ...] = ("air", "soft", "scalp", "skull", "csf", "gm", "wm", "caudate", "putamen",
                            "pallidum", "thalamus", "nigra", "red_nucleus", "dentate", "eye")
T = {name: n for n, name in enumerate(TISSUES)}
#: Region codes of :attr:`Anatomy.region` (0 = not brain parenchyma).
REGIONS: tuple[str, ...] = ("none", "lobar", "deep", "infratentorial")


@dataclass
class Anatomy:
    """Tissue map of one head on the acquisition grid plus the landmarks the other steps need.

    ``tissue`` uint8 codes (:data:`TISSUES`); ``intracranial`` bool (brain + CSF inside the skull: the
    mask of the true local field); ``region`` uint8 (:data:`REGIONS`); ``landmarks`` head-mm points and
    shapes (ventricle paths, brain ellipsoid, calcification sites) for veins and lesions.
    """

    tissue: np.ndarray
    intracranial: np.ndarray
    region: np.ndarray
    frame: HeadFrame
    landmarks: dict = field(default_factory=dict)


def _mirror(p, side):
    return np.array([side * p[0], p[1], p[2]], float)


def _ventricle_paths(s: float, v: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Lateral ventricle centre lines (head mm) and radii for both sides; ``v`` scales the radii."""
    body = np.array([[4, 30, 12], [7, 18, 17], [9, 0, 20], [11, -20, 19], [16, -35, 12],
                     [14, -52, 8], [10, -64, 6]], float)
    rb = np.array([3.0, 5.0, 4.5, 4.5, 6.5, 3.5, 1.5])
    temporal = np.array([[16, -35, 12], [24, -30, -2], [29, -18, -14], [29, 0, -22]], float)
    rt = np.array([6.0, 3.5, 2.8, 1.8])
    out = {}
    for side, name in ((1, "right"), (-1, "left")):
        out[f"body_{name}"] = (np.array([_mirror(p, side) for p in body]) * s, rb * v * s)
        out[f"temporal_{name}"] = (np.array([_mirror(p, side) for p in temporal]) * s, rt * v * s)
    return out


def build_anatomy(frame: HeadFrame, rng: np.random.Generator) -> Anatomy:
    """Draw a head for ``rng`` and rasterise it on ``frame``'s grid."""
    s = rng.uniform(0.9, 1.07)  # head size
    vent = rng.uniform(0.7, 1.8)  # ventricle size (atrophy)
    csf_mm = rng.uniform(1.5, 3.0) + 1.5 * (vent - 0.7)  # subarachnoid CSF (atrophy)
    jit = lambda mm: rng.normal(0, mm, 3)  # noqa: E731
    X, Y, Z = frame.coords()
    n_low = LatticeNoise(rng, 30.0)
    n_mid = LatticeNoise(rng, 12.0)
    low = n_low(X, Y, Z)

    # --- cerebrum, cerebellum, brainstem as signed distances (mm, < 0 inside) ---
    c_axes = np.array([68.0, 86.0, 64.0]) * s * rng.uniform(0.95, 1.05, 3)
    c_cen = np.array([0.0, -8.0, 10.0]) * s + jit(1.0)
    sdf_c = ellipsoid_sdf(X, Y, Z, c_cen, c_axes) + 2.5 * low
    tw = (1 / (1 + np.exp(-(np.abs(X) - 26 * s) / 4))) * (1 / (1 + np.exp(-(Y + 30 * s) / 6))) \
        * (1 / (1 + np.exp(-(35 * s - Y) / 6)))
    floor = -18 * s - 22 * s * tw
    tent = -13 * s + 0.25 * (Y + 35 * s)  # tentorium height, sloping down posteriorly
    floor = np.where(Y < -35 * s, np.maximum(floor, tent + 2.0), floor)
    sdf_c = np.maximum(sdf_c, floor - Z)
    del tw
    cb_cen = np.array([0.0, -60.0, -38.0]) * s + jit(1.5)
    cb_axes = np.array([50.0, 28.0, 20.0]) * s * rng.uniform(0.92, 1.08, 3)
    sdf_cb = np.maximum(ellipsoid_sdf(X, Y, Z, cb_cen, cb_axes) + 1.5 * low, Z - (tent - 1.5))
    bs_top, bs_bot = np.array([0, -18, -6.0]) * s, np.array([0, -30, -90.0]) * s
    d_bs, t_bs = segment_distance(X, Y, Z, bs_top, bs_bot)
    r_bs = (12.0 + 3.5 * np.exp(-((t_bs - 0.35) / 0.12) ** 2)) * s  # pons bulge
    sdf_bs = d_bs - r_bs
    del d_bs, t_bs, r_bs
    sdf_brain = np.minimum(np.minimum(sdf_c, sdf_cb), sdf_bs)

    # --- head layers ---
    skull_t = rng.uniform(4.0, 6.5) + 1.0 * n_mid(X, Y, Z)
    scalp_t = rng.uniform(4.0, 7.0)
    intracranial = sdf_brain < csf_mm
    skull = ~intracranial & (sdf_brain < csf_mm + skull_t)
    head = sdf_brain < csf_mm + skull_t + scalp_t
    neck = ellipsoid_sdf(X, Y, Z, np.array([0, -5, -100.0]) * s, np.array([52, 62, 80.0]) * s) < 0
    face = ellipsoid_sdf(X, Y, Z, np.array([0, 38, -60.0]) * s, np.array([55, 48, 42.0]) * s) < 0
    tissue = np.zeros(frame.shape, np.uint8)
    tissue[head | neck | face] = T["soft"]
    tissue[head & ~(sdf_brain < csf_mm + skull_t)] = T["scalp"]
    tissue[skull | ((neck | face) & (sdf_brain < csf_mm + skull_t + 3))] = T["skull"]
    del skull, head, neck, face, skull_t
    for side in (1, -1):  # eyes
        e = ellipsoid_sdf(X, Y, Z, _mirror([32, 60, -32], side) * s + jit(1), np.full(3, 11.5 * s))
        tissue[(e < 0) & ~intracranial] = T["eye"]
    # air cavities (only outside the dura): frontal/sphenoid/ethmoid/maxillary sinuses, nasal cavity,
    # mastoid air cells (spongy), ear canals
    cav = [([0, 66, -6], [16, 7, 12], rng.uniform(0.3, 1.3)), ([0, 22, -40], [13, 11, 10], rng.uniform(0.6, 1.2)),
           ([0, 48, -34], [12, 14, 9], 1.0), ([0, 50, -60], [9, 24, 18], 1.0)]
    for side in (1, -1):
        cav += [(_mirror([30, 40, -62], side), [14, 17, 19], rng.uniform(0.7, 1.2)),
                (_mirror([52, -22, -42], side), [10, 12, 11], rng.uniform(0.5, 1.3)),
                (_mirror([66, -14, -44], side), [9, 3.5, 3.5], 1.0)]
    air_cells = n_mid(X * 2.5, Y * 2.5, Z * 2.5) > -0.2
    for n, (c, ax, f) in enumerate(cav):
        inside = ellipsoid_sdf(X, Y, Z, np.asarray(c) * s + jit(2), np.asarray(ax) * s * f) < 0
        inside &= ~intracranial & (sdf_brain > 1.5)
        if n >= 4 and (n - 4) % 3 == 1:  # mastoid: spongy
            inside &= air_cells
        tissue[inside] = T["air"]
    del air_cells
    tissue[intracranial] = T["csf"]

    # --- parenchyma: folds, fissures ---
    fold = LatticeNoise(rng, rng.uniform(6.5, 8.5))
    u = [(X - c_cen[0]) / c_axes[0], (Y - c_cen[1]) / c_axes[1], (Z - c_cen[2]) / c_axes[2]]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + 1e-6
    q = (0.7 + 0.3 * rho) / rho * 75.0  # radially compressed sampling -> mostly radial sulcal sheets
    depth_max = rng.uniform(12.0, 20.0) + 4.0 * n_low(X + 40, Y, Z)
    shell = (sdf_c < 0) & (sdf_c > -depth_max)
    nf = fold(u[0][shell] * q[shell], u[1][shell] * q[shell], u[2][shell] * q[shell])
    sulcus = np.zeros(frame.shape, bool)
    sulcus[shell] = np.abs(nf) < rng.uniform(0.1, 0.17) * (1 + 0.4 * (vent - 1))
    del u, rho, q, shell, nf, depth_max
    fiss_x = 2.0 * n_low(X, Y + 50, Z)
    cc = (np.abs(Y - (-3 * s)) < 36 * s) & (Z < (26 + 4 * n_low(X, Y, Z + 30)) * s)
    sulcus |= (np.abs(X - fiss_x) < 1.3) & ~cc  # interhemispheric fissure (above the corpus callosum)
    sylv = -10 * s + 0.3 * (Y - 5) + 3 * n_low(X + 20, Y, Z)
    sulcus |= (np.abs(X) > 36 * s) & (Y > -28 * s) & (Y < 32 * s) & (np.abs(Z - sylv) < 1.6)
    del fiss_x, cc, sylv
    cerebrum = (sdf_c < 0) & ~sulcus
    cerebellum = (sdf_cb < 0) & ~cerebrum & (sdf_bs > 0)
    brainstem = (sdf_bs < 0) & ~cerebrum
    del sulcus, sdf_bs
    paren = (cerebrum | cerebellum | brainstem) & intracranial
    tissue[paren] = T["wm"]

    # ventricles (CSF) and the caudate along their lateral walls
    vpaths = _ventricle_paths(s, vent)
    vmask = np.zeros(frame.shape, bool)
    for pts, rad in vpaths.values():
        paint_tube(frame, vmask, pts + jit(0.8), rad, soft=False)
    for c, ax in (([0, -8, -2], [2.0 + vent, 14, 9]), ([0, -44, -33], [6, 3 + vent, 7])):
        b = frame.box(np.asarray(c) * s, margin_mm=max(ax) * s + 2)
        if b is not None:
            x, y, z = frame.coords(b)
            vmask[b] |= ellipsoid_sdf(x, y, z, np.asarray(c) * s, np.asarray(ax) * s) < 0
    paren &= ~vmask

    # cortical grey matter: a ribbon of 2.3-3.2 mm below the outer CSF
    dist = ndimage.distance_transform_edt(paren | vmask, sampling=frame.voxel_size)
    ribbon = rng.uniform(2.3, 3.2) + 0.5 * n_mid(X, Y + 30, Z)
    gm = paren & (dist < ribbon) & ~(brainstem & ~cerebellum)
    del dist, ribbon
    # cerebellar folia: concentric lamellae, GM outside the arbor vitae
    ucb = ellipsoid_sdf(X, Y, Z, cb_cen, cb_axes * 0.55)
    lam = np.sin(2 * np.pi * (ucb / rng.uniform(2.6, 3.4)) + 2.0 * n_mid(X * 2, Y * 2, Z * 2))
    gm |= cerebellum & (ucb > 0) & ((lam > -0.2) | (sdf_cb > -3.0))
    paren &= ~(cerebellum & (lam < -0.75) & (ucb > 2))  # thin CSF between folia
    del ucb, lam
    tissue[paren] = T["wm"]
    tissue[gm & paren] = T["gm"]
    tissue[vmask & intracranial] = T["csf"]

    # deep grey nuclei (rotated, jittered ellipsoids); caudate follows the ventricle wall
    nuclei = [("thalamus", [10, -16, 5], [9, 15, 9]), ("putamen", [24, 3, 1], [5.5, 14, 9]),
              ("pallidum", [18, -1, -1], [3.5, 8, 5]), ("nigra", [9, -16, -15], [2.8, 7, 2.5]),
              ("red_nucleus", [5, -19, -11], [3.2, 3.4, 3.2]), ("dentate", [14, -56, -32], [7, 9, 6])]
    landmarks: dict = {"cerebrum_centre": c_cen, "cerebrum_axes": c_axes, "cerebellum_centre": cb_cen,
                       "cerebellum_axes": cb_axes, "scale": s, "ventricles": vpaths, "csf_mm": csf_mm}
    for side in (1, -1):
        name = "right" if side > 0 else "left"
        body, rb = vpaths[f"body_{name}"]
        cpts = body[:4] + np.array([side, 0, 0]) * (rb[:4, None] + 1.5)
        cm = np.zeros(frame.shape, bool)
        paint_tube(frame, cm, cpts, np.array([6.5, 5.0, 3.5, 2.2]) * s, soft=False)
        tissue[cm & paren & (tissue != T["gm"])] = T["caudate"]
        for tname, c, ax in nuclei:
            cen = _mirror(c, side) * s + jit(1.0)
            axes = np.asarray(ax) * s * rng.uniform(0.85, 1.15, 3)
            b = frame.box(cen, margin_mm=max(axes) + 2)
            if b is None:
                continue
            x, y, z = frame.coords(b)
            sd = ellipsoid_sdf(x, y, z, cen, axes, random_rotation(rng, 12.0))
            inside = (sd < 0) & paren[b]
            if tname == "dentate":  # a crenated ribbon, not a solid ellipsoid
                inside &= (sd > -2.2 - 0.8 * n_mid(x * 3, y * 3, z * 3))
            tissue[b][inside] = T[tname]
            landmarks[f"{tname}_{name}"] = cen

    # MARS regions
    region = np.zeros(frame.shape, np.uint8)
    region[paren] = 1
    deep = ellipsoid_sdf(X, Y, Z, np.array([0, -6, 5.0]) * s, np.array([30, 36, 20.0]) * s) < 0
    region[paren & deep & (tissue != T["gm"])] = 2
    region[paren & (cerebellum | brainstem) & ~cerebrum] = 3
    landmarks["tentorium"] = (-13 * s, 0.25, 35 * s)
    return Anatomy(tissue=tissue, intracranial=intracranial, region=region, frame=frame, landmarks=landmarks)
