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

from cmbdetect.pipeline.simulate.geometry import (HeadFrame, LatticeNoise, ellipsoid_sdf, paint_tube,
                                                  random_rotation, segment_distance, smooth_grid_field)

#: Tissue codes of :attr:`Anatomy.tissue` (index = code).
TISSUES: tuple[str, ...] = ("air", "soft", "scalp", "skull", "csf", "gm", "wm", "caudate", "putamen",
                            "pallidum", "thalamus", "nigra", "red_nucleus", "dentate", "eye", "marrow")
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


def _box_sdf(frame, centre, axes, rot=None):
    """(box, sdf) of an ellipsoid evaluated only in its bounding box (None if off the grid)."""
    b = frame.box(centre, margin_mm=float(np.max(axes)) + 2.0)
    if b is None:
        return None, None
    x, y, z = frame.coords(b)
    return b, ellipsoid_sdf(x, y, z, centre, axes, rot)


def build_anatomy(frame: HeadFrame, rng: np.random.Generator) -> Anatomy:
    """Draw a head for ``rng`` and rasterise it on ``frame``'s grid."""
    s = rng.uniform(0.9, 1.07)  # head size
    vent = rng.uniform(0.7, 1.8)  # ventricle size (atrophy)
    csf_mm = rng.uniform(1.5, 3.0) + 1.5 * (vent - 0.7)  # subarachnoid CSF (atrophy)
    jit = lambda mm: rng.normal(0, mm, 3)  # noqa: E731
    vs = frame.voxel_size
    noise = lambda corr: smooth_grid_field(rng, frame.shape, voxel_size=vs, corr_mm=corr)  # noqa: E731
    X, Y, Z = frame.coords()
    low = noise(30.0)

    # --- cerebrum, cerebellum, brainstem as signed distances (mm, < 0 inside) ---
    c_axes = np.array([68.0, 86.0, 64.0]) * s * rng.uniform(0.95, 1.05, 3)
    c_cen = np.array([0.0, -8.0, 10.0]) * s + jit(1.0)
    sdf_c = ellipsoid_sdf(X, Y, Z, c_cen, c_axes) + 2.5 * low
    tw = (1 / (1 + np.exp(-(np.abs(X) - 26 * s) / 4))) * (1 / (1 + np.exp(-(Y + 30 * s) / 6))) \
        * (1 / (1 + np.exp(-(35 * s - Y) / 6)))
    floor = -18 * s - 22 * s * tw
    del tw
    tent = -13 * s + 0.25 * (Y + 35 * s)  # tentorium height, sloping down posteriorly
    floor = np.where(Y < -35 * s, np.maximum(floor, tent + 2.0), floor)
    sdf_c = np.maximum(sdf_c, floor - Z)
    del floor
    cb_cen = np.array([0.0, -60.0, -38.0]) * s + jit(1.5)
    cb_axes = np.array([50.0, 28.0, 20.0]) * s * rng.uniform(0.92, 1.08, 3)
    sdf_cb = np.maximum(ellipsoid_sdf(X, Y, Z, cb_cen, cb_axes) + 1.5 * low, Z - (tent - 1.5))
    del tent
    bs_top, bs_bot = np.array([0, -18, -6.0]) * s, np.array([0, -30, -90.0]) * s
    d_bs, t_bs = segment_distance(X, Y, Z, bs_top, bs_bot)
    sdf_bs = d_bs - (12.0 + 3.5 * np.exp(-((t_bs - 0.35) / 0.12) ** 2)) * s  # pons bulge
    del d_bs, t_bs
    sdf_brain = np.minimum(np.minimum(sdf_c, sdf_cb), sdf_bs)

    # --- head layers ---
    skull_t = rng.uniform(4.0, 6.5) + 1.0 * noise(12.0)
    scalp_t = rng.uniform(4.0, 7.0)
    intracranial = sdf_brain < csf_mm
    inner_skull = sdf_brain < csf_mm + skull_t
    tissue = np.zeros(frame.shape, np.uint8)
    tissue[sdf_brain < csf_mm + 5.0 + scalp_t] = T["scalp"]
    tissue[inner_skull] = T["skull"]
    rel = (sdf_brain - csf_mm) / skull_t  # fatty marrow (diploe) between the two tables of a thick skull
    tissue[inner_skull & (rel > 0.3) & (rel < 0.7) & (skull_t > rng.uniform(4.5, 6.0))] = T["marrow"]
    del rel
    for c, ax in (([0, -5, -100.0], [52, 62, 80.0]), ([0, 38, -60.0], [55, 48, 42.0])):  # neck, face
        b, sd = _box_sdf(frame, np.asarray(c) * s, np.asarray(ax) * s)
        if b is not None:
            t = tissue[b]
            t[(sd < 0) & (t == T["air"])] = T["soft"]
            t[(sd < 0) & (t == T["scalp"]) & (sdf_brain[b] > csf_mm + 8.0)] = T["soft"]
    del inner_skull, skull_t
    for side in (1, -1):  # eyes
        b, sd = _box_sdf(frame, _mirror([32, 60, -32], side) * s + jit(1), np.full(3, 11.5 * s))
        if b is not None:
            tissue[b][(sd < 0) & ~intracranial[b]] = T["eye"]
    # air cavities (only outside the dura): frontal/sphenoid/ethmoid sinuses, nasal cavity,
    # maxillary sinuses, mastoid air cells (spongy), ear canals
    cav = [([0, 66, -6], [16, 7, 12], rng.uniform(0.3, 1.3), False),
           ([0, 22, -40], [13, 11, 10], rng.uniform(0.6, 1.2), False),
           ([0, 48, -34], [12, 14, 9], 1.0, False), ([0, 50, -60], [9, 24, 18], 1.0, False)]
    for side in (1, -1):
        cav += [(_mirror([30, 40, -62], side), [14, 17, 19], rng.uniform(0.7, 1.2), False),
                (_mirror([52, -22, -42], side), [10, 12, 11], rng.uniform(0.5, 1.3), True),
                (_mirror([66, -14, -44], side), [9, 3.5, 3.5], 1.0, False)]
    cells = LatticeNoise(rng, 5.0)
    for c, ax, f, spongy in cav:
        b, sd = _box_sdf(frame, np.asarray(c) * s + jit(2), np.asarray(ax) * s * f)
        if b is None:
            continue
        inside = (sd < 0) & (sdf_brain[b] > csf_mm + 1.5)  # bone between sinus and dura
        if spongy:
            inside &= cells(*frame.coords(b)) > -0.2
        tissue[b][inside] = T["air"]
    tissue[intracranial] = T["csf"]

    # --- parenchyma: folds, fissures ---
    fold = LatticeNoise(rng, rng.uniform(6.5, 8.5))
    depth_max = rng.uniform(12.0, 20.0) + 4.0 * noise(30.0)
    shell = (sdf_c < 0) & (sdf_c > -depth_max)
    del depth_max
    u = [((A[shell] - c_cen[n]) / c_axes[n]).astype(np.float32) for n, A in enumerate((X, Y, Z))]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + 1e-6
    q = (0.7 + 0.3 * rho) / rho * 75.0  # radially compressed sampling -> mostly radial sulcal sheets
    nf = fold(u[0] * q, u[1] * q, u[2] * q) + 0.45 * fold(u[0] * q * 2.1 + 40, u[1] * q * 2.1, u[2] * q * 2.1)
    sulcus = np.zeros(frame.shape, bool)
    sulcus[shell] = np.abs(nf) < rng.uniform(0.1, 0.17) * (1 + 0.4 * (vent - 1))
    del u, rho, q, shell, nf
    fiss_x = 2.0 * noise(40.0)
    cc = (np.abs(Y - (-3 * s)) < 36 * s) & (Z < (26 + 4 * low) * s)
    sulcus |= (np.abs(X - fiss_x) < 1.3) & ~cc  # interhemispheric fissure (above the corpus callosum)
    sylv = -10 * s + 0.3 * (Y - 5) + 3 * noise(30.0)
    sulcus |= (np.abs(X) > 36 * s) & (Y > -28 * s) & (Y < 32 * s) & (np.abs(Z - sylv) < 1.6)
    del fiss_x, cc, sylv
    cerebrum = (sdf_c < 0) & ~sulcus
    cerebellum = (sdf_cb < 0) & ~cerebrum & (sdf_bs > 0)
    brainstem = (sdf_bs < 0) & ~cerebrum
    del sulcus, sdf_bs, sdf_cb
    paren = (cerebrum | cerebellum | brainstem) & intracranial

    # ventricles (CSF)
    vpaths = _ventricle_paths(s, vent)
    vmask = np.zeros(frame.shape, bool)
    for pts, rad in vpaths.values():
        paint_tube(frame, vmask, pts + jit(0.8), rad, soft=False)
    for c, ax in (([0, -8, -2], [2.0 + vent, 14, 9]), ([0, -44, -33], [6, 3 + vent, 7])):
        b, sd = _box_sdf(frame, np.asarray(c) * s, np.asarray(ax) * s)
        if b is not None:
            vmask[b] |= sd < 0
    paren &= ~vmask

    # cortical grey matter: a ribbon of 2.3-3.2 mm below the outer CSF (distance inside the skull box)
    ib = _bounding_box(intracranial)
    dist = ndimage.distance_transform_edt((paren | vmask)[ib], sampling=vs).astype(np.float32)
    ribbon = rng.uniform(2.3, 3.2) + 0.5 * noise(12.0)
    gm = np.zeros(frame.shape, bool)
    gm[ib] = dist < ribbon[ib]
    gm &= paren & ~(brainstem & ~cerebellum)
    del dist, ribbon
    # cerebellar folia: thin transverse leaves (fissures radial in the sagittal plane, running left-right)
    # with grey cortex, a thin white core per folium and the white arbor vitae inside
    b = frame.box(cb_cen, margin_mm=float(cb_axes.max()) + 2.0)
    if b is not None:
        x, y, z = frame.coords(b)
        core = ellipsoid_sdf(x, y, z, cb_cen, cb_axes * rng.uniform(0.45, 0.6))
        ang = np.arctan2(z - cb_cen[2], y - cb_cen[1]) * np.float32(np.mean(cb_axes[1:]))  # arc length, mm
        lam = np.sin(2 * np.pi * ang / rng.uniform(3.2, 4.2) + 1.6 * cells(x * 0.5, y * 0.7, z * 0.7))
        cbl = cerebellum[b]
        depth = -sdf_brain[b]
        gm[b] |= cbl & (core > 0) & ~((np.abs(lam - 0.55) < 0.22) & (depth > 2.0))
        paren[b] &= ~(cbl & (lam < -0.82) & (core > 1.0))  # CSF in the fissures between folia
        del core, ang, lam, depth, x, y, z
    tissue[paren] = T["wm"]
    tissue[gm & paren] = T["gm"]
    tissue[vmask & intracranial] = T["csf"]

    # deep grey nuclei (rotated, jittered ellipsoids); caudate follows the ventricle wall
    nuclei = [("thalamus", [10, -16, 5], [9, 15, 9]), ("putamen", [24, 3, 1], [5.5, 14, 9]),
              ("pallidum", [18, -1, -1], [3.5, 8, 5]), ("nigra", [9, -16, -15], [2.8, 7, 2.5]),
              ("red_nucleus", [5, -19, -11], [3.2, 3.4, 3.2]), ("dentate", [14, -56, -32], [7, 9, 6])]
    landmarks: dict = {"cerebrum_centre": c_cen, "cerebrum_axes": c_axes, "cerebellum_centre": cb_cen,
                       "cerebellum_axes": cb_axes, "scale": s, "ventricles": vpaths, "csf_mm": csf_mm,
                       "sdf_brain": sdf_brain}
    for side in (1, -1):
        name = "right" if side > 0 else "left"
        body, rb = vpaths[f"body_{name}"]
        cpts = body[:4] + np.array([side, 0, 0]) * (rb[:4, None] + 1.5)
        cm = np.zeros(frame.shape, bool)
        paint_tube(frame, cm, cpts, np.array([6.5, 5.0, 3.5, 2.2]) * s, soft=False)
        tissue[cm & paren & (tissue != T["gm"])] = T["caudate"]
        for tname, c, ax in nuclei:
            cen = _mirror(c, side) * s + jit(1.0)
            b, sd = _box_sdf(frame, cen, np.asarray(ax) * s * rng.uniform(0.85, 1.15, 3), random_rotation(rng, 12.0))
            if b is None:
                continue
            inside = (sd < 0) & paren[b]
            if tname == "dentate":  # a crenated ribbon, not a solid ellipsoid
                inside &= (sd > -2.2 - 0.8 * cells(*frame.coords(b)))
            tissue[b][inside] = T[tname]
            landmarks[f"{tname}_{name}"] = cen

    # MARS regions
    region = np.zeros(frame.shape, np.uint8)
    region[paren] = 1
    b, sd = _box_sdf(frame, np.array([0, -6, 5.0]) * s, np.array([30, 36, 20.0]) * s)
    if b is not None:
        r = region[b]
        r[paren[b] & (sd < 0) & (tissue[b] != T["gm"])] = 2
    region[paren & (cerebellum | brainstem) & ~cerebrum] = 3
    return Anatomy(tissue=tissue, intracranial=intracranial, region=region, frame=frame, landmarks=landmarks)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Smallest box (slices) holding ``mask`` plus one voxel (the whole grid if empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for ax in range(3):
        a = np.any(mask, axis=tuple(i for i in range(3) if i != ax))
        idx = np.flatnonzero(a)
        out.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, mask.shape[ax])))
    return tuple(out)
