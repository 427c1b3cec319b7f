"""Microbleeds and calcifications of the simulator: placement, and their physically integrated signal.

A lesion is a sphere, or a slightly irregular blob made of 2-4 overlapping spheres (chi adds where
they overlap), with a susceptibility ``chi_ppm`` relative to the tissue around it (microbleed +0.3 to
+2 ppm, calcification -0.3 to -2 ppm).  Its field is the closed-form sphere field
(:func:`cmbdetect.physics.forward.sphere_field` in float32, exact for a uniformly magnetised sphere, Lorentz
corrected) summed over the spheres.  Near the lesion, voxels are sub-sampled: the voxel signal is the
mean over sub-voxels of ``m(r) exp(i phi(r))`` with ``m`` the lesion's or the voxel's tissue
magnitude, so blooming and intravoxel dephasing follow from the physics and the slice thickness.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmbdetect.physics.forward import sphere_field, subvoxel_offsets
from cmbdetect.pipeline.simulate.anatomy import REGIONS, T, Anatomy

_PAREN = [T[n] for n in ("gm", "wm", "caudate", "putamen", "pallidum", "thalamus", "nigra", "red_nucleus",
                         "dentate")]


@dataclass
class LesionSpec:
    """A lesion to render: spheres (head mm centres, radii mm), chi (ppm vs tissue) and tissue values
    at 3 T (proton density, T1 s, R2* 1/s): microbleeds (hemosiderin) very high R2*, calcifications low
    proton density and moderately raised R2*; the ranges overlap so darkness alone does not tell them
    apart (the sign of the dipole field does)."""

    kind: str
    centres_head: np.ndarray  # (n, 3)
    radii_mm: np.ndarray  # (n,)
    chi_ppm: float
    region: str
    pd: float
    t1: float
    r2s_3t: float


def _blob(rng, centre, radius, irregular_p=0.4):
    cs, rs = [np.asarray(centre, float)], [radius]
    if rng.random() < irregular_p:
        for _ in range(int(rng.integers(1, 4))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            cs.append(cs[0] + d * radius * rng.uniform(0.4, 0.85))
            rs.append(radius * rng.uniform(0.35, 0.7))
    return np.array(cs), np.array(rs)


def draw_lesions(anatomy: Anatomy, rng: np.random.Generator, *, n_microbleeds: int | None,
                 n_calcifications: int | None) -> list[LesionSpec]:
    """Place microbleeds (0-15; lobar / deep / infratentorial) and calcifications (0-4; pallidum,
    choroid plexus, pineal or elsewhere) in this head.  ``None`` draws the number (lesion-free
    subjects included)."""
    fr, lm, s = anatomy.frame, anatomy.landmarks, anatomy.landmarks["scale"]
    if n_microbleeds is None:
        n_microbleeds = 0 if rng.random() < 0.2 else int(1 + 14 * rng.random() ** 2.2)
    if n_calcifications is None:
        n_calcifications = int(rng.choice(5, p=[0.35, 0.3, 0.17, 0.1, 0.08]))
    margin = 2.0 + 6.0 / np.asarray(fr.voxel_size)
    out: list[LesionSpec] = []

    def free(c, r):
        v = fr.head_to_vox(c)
        if np.any(v < margin) or np.any(v > np.asarray(fr.shape) - 1 - margin):
            return False
        return all(np.linalg.norm(c - o.centres_head[0]) > r + o.radii_mm[0] + 3.0 for o in out)

    mix = rng.dirichlet([2.0, 1.5, 1.0])  # this subject's lobar/deep/infratentorial balance
    paren = np.isin(anatomy.tissue, _PAREN)
    cand = {code: np.argwhere((anatomy.region == code) & paren) for code in (1, 2, 3)}
    # lobar microbleeds sit mostly in the cortex and the juxtacortical white matter (within ~4 mm)
    near_cortex = ndimage.binary_dilation(anatomy.tissue == T["gm"],
                                          iterations=max(1, int(round(4.0 / float(np.mean(fr.voxel_size))))))
    juxta = np.argwhere((anatomy.region == 1) & paren & near_cortex)
    del paren, near_cortex
    if len(juxta):
        cand[1] = juxta
    tries = 0
    while sum(o.kind == "microbleed" for o in out) < n_microbleeds and tries < 200 * max(n_microbleeds, 1):
        tries += 1
        code = int(rng.choice(3, p=mix)) + 1
        if len(cand[code]) == 0:
            continue
        c = fr.vox_to_head_pts(cand[code][rng.integers(len(cand[code]))] + rng.uniform(-0.5, 0.5, 3))
        r = 0.5 * float(np.exp(rng.uniform(np.log(2.0), np.log(10.0))) if rng.random() < 0.5
                        else rng.uniform(2.0, 5.0))
        if not free(c, r):
            continue
        cs, rs = _blob(rng, c, r)
        out.append(LesionSpec("microbleed", cs, rs, float(rng.uniform(0.3, 2.0)), REGIONS[code],
                              pd=rng.uniform(0.1, 0.75), t1=rng.uniform(0.5, 1.3),
                              r2s_3t=float(np.exp(rng.uniform(np.log(150.0), np.log(800.0))))))
    tries = 0
    while sum(o.kind == "calcification" for o in out) < n_calcifications and tries < 400:
        tries += 1
        site = rng.choice(["pallidum", "choroid", "pineal", "elsewhere"], p=[0.3, 0.3, 0.15, 0.25])
        side = "right" if rng.random() < 0.5 else "left"
        if site == "pallidum":
            c, region = lm.get(f"pallidum_{side}", np.zeros(3)) + rng.normal(0, 1.5, 3), "deep"
        elif site == "choroid":
            c, region = lm["ventricles"][f"body_{side}"][0][4] + rng.normal(0, 2.0, 3), "deep"
        elif site == "pineal":
            c, region = np.array([0.0, -30.0, 2.0]) * s + rng.normal(0, 1.0, 3), "deep"
        else:
            code = int(rng.integers(1, 4))
            if len(cand[code]) == 0:
                continue
            c = fr.vox_to_head_pts(cand[code][rng.integers(len(cand[code]))])
            region = REGIONS[code]
        r = 0.5 * float(np.exp(rng.uniform(np.log(2.0), np.log(8.0))))
        if not free(c, r):
            continue
        cs, rs = _blob(rng, c, r, irregular_p=0.5)
        out.append(LesionSpec("calcification", cs, rs, -float(rng.uniform(0.3, 2.0)), region,
                              pd=rng.uniform(0.02, 0.5), t1=rng.uniform(0.4, 1.0),
                              r2s_3t=float(np.exp(rng.uniform(np.log(60.0), np.log(350.0))))))
    return out


def _subsamples_per_axis(voxel_size, step_mm: float = 0.45) -> list[int]:
    """Sub-voxel samples per axis near a lesion: one per ``step_mm`` of voxel edge, 3 to 6."""
    return [min(6, max(3, int(np.ceil(v / step_mm)))) for v in voxel_size]


def lesion_samples(frame, specs, box, *, sub: bool):
    """Field (ppm) of the lesions ``specs`` at the voxels of ``box``: at voxel centres (``sub`` False:
    returns an array of the box shape) or at sub-voxel samples (``sub`` True: returns ``(field, owner,
    chi)`` of shape (*box, n_sub): summed field, index of the lesion a sample lies in (-1: none; the
    last one wins where they overlap) and the summed chi of the lesions containing it)."""
    m = frame.vox_to_head[:3, :3].astype(np.float32)
    b0_head = np.linalg.inv(frame.pose)[:3, :3] @ np.array([0.0, 0.0, 1.0])
    pts = np.stack(frame.coords(box), -1)[..., None, :]  # (*box, 1, 3) head mm
    if sub:
        d = (subvoxel_offsets(_subsamples_per_axis(frame.voxel_size)) @ m.T).astype(np.float32)
    else:
        d = np.zeros((1, 3), np.float32)
    shp = tuple(b.stop - b.start for b in box) + (d.shape[0],)
    field = np.zeros(shp, np.float32)
    owner = np.full(shp, -1, np.int16) if sub else None
    chi = np.zeros(shp, np.float32) if sub else None
    for n, spec in enumerate(specs):
        for c, r in zip(spec.centres_head, spec.radii_mm):
            off = (pts - np.asarray(c, np.float32)) + d  # (*box, n_sub, 3) from the sphere centre
            field += sphere_field(spec.chi_ppm, r, off, b0_head, dtype=np.float32)
            if sub:
                ins = (off * off).sum(-1) <= np.float32(r * r)
                owner[ins] = n
                chi += ins * np.float32(spec.chi_ppm)
    if not sub:
        return field[..., 0]
    return field, owner, chi
