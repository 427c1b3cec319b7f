"""MARS-style location of a candidate (lobar / deep / infratentorial) from the brain mask's geometry.

The Microbleed Anatomical Rating Scale (MARS) groups microbleeds as *lobar* (cortex and juxtacortical
white matter), *deep* (basal ganglia, thalamus, internal/external capsule, corpus callosum, deep and
periventricular white matter) and *infratentorial* (brainstem, cerebellum).  The distribution matters
clinically (lobar-only suggests cerebral amyloid angiopathy, deep/infratentorial hypertensive
arteriopathy).

This module decides the group **heuristically, from the brain mask and the affine alone** (no atlas, no
download, nothing fetched at run time):

* ``infratentorial``: in the lowest :data:`INFRATENTORIAL_FRACTION` of the mask's superior-inferior
  (world S) extent and either posterior of the mask centroid (cerebellum) or within
  :data:`BRAINSTEM_HALF_WIDTH_FRACTION` of the left-right width from the centroid (brainstem).  The
  temporal poles, which reach as low as the pons but lie anterior and lateral, stay supratentorial.
* ``deep``: inside a central ellipsoid (normalised radius :data:`DEEP_ELLIPSOID_RADIUS` of the
  brain's half extents along R, A, S) **and** at least :data:`DEEP_DEPTH_FRACTION` of the mean
  half extent below the mask surface (Euclidean distance in mm).
* ``lobar``: every other point inside the mask (near the cortex).
* ``unknown``: the point is outside the mask, or the mask cannot stand for a brain: smaller than
  :data:`MIN_BRAIN_VOLUME_ML`, shorter than :data:`MIN_EXTENT_MM` along a world axis (a thin slab),
  or cut by the field of view on both left-right or both anterior-posterior sides; with the top *and*
  the bottom cut, points in the low part are ``unknown`` (the tentorium level cannot be placed).
  A side cut by the field of view (common for SWI slabs) is completed with the typical adult extent
  :data:`TYPICAL_EXTENT_MM` and is not treated as brain surface for the depth.

Known limits (what an atlas registration, e.g. a MNI template with a MARS/Harvard-Oxford labelling
warped to the subject, would improve): the tentorium is not a horizontal plane and head tilt moves it;
the medial cortex along the interhemispheric fissure is far from the mask surface and may be called
``deep`` when it lies inside the central ellipsoid; large ventricles or atrophy shift the deep grey
nuclei; the mask is assumed to be roughly aligned with scanner axes (RAS) as in a normal head position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmbdetect.physics.geometry import voxel_sizes, voxel_to_world

#: MARS region names written in the candidate table.
REGIONS: tuple[str, ...] = ("lobar", "deep", "infratentorial", "unknown")

#: Fraction of the mask's S-I extent (from the bottom) treated as below the tentorium.
INFRATENTORIAL_FRACTION: float = 0.28
#: Half-width (fraction of L-R extent) around the centroid counted as brainstem in the low part.
BRAINSTEM_HALF_WIDTH_FRACTION: float = 0.12
#: Minimum depth below the mask surface for ``deep``, as a fraction of the brain's mean L-R/A-P
#: half extent (keeps the basal and medial surfaces, which are cortex, out of ``deep``).
DEEP_DEPTH_FRACTION: float = 0.1
#: Normalised radius of the central ellipsoid (1 = the mask's half extents) inside which ``deep`` lies.
DEEP_ELLIPSOID_RADIUS: float = 0.55
#: Smallest mask volume (mL) accepted as a whole brain (an adult brain is ~1000-1500 mL).
MIN_BRAIN_VOLUME_ML: float = 300.0
#: Smallest world extent (mm) of the mask along each of R, A, S.
MIN_EXTENT_MM: float = 70.0
#: Typical adult brain extent (mm) along R, A, S, used to complete a side cut by the field of view.
TYPICAL_EXTENT_MM: tuple[float, float, float] = (140.0, 170.0, 135.0)
#: A volume face cuts the brain when the mask covers this fraction of its largest cross-section there.
CUT_FRACTION: float = 0.08


@dataclass(frozen=True)
class BrainGeometry:
    """What the heuristic needs from one brain mask (world = scanner RAS, mm).

    ``usable`` is False (and ``reason`` says why) when regions cannot be decided for this mask;
    ``depth_mm`` is the distance of each mask voxel to the nearest non-mask voxel (0 outside; a face
    where the field of view cuts the brain is not a brain surface); ``lo``/``hi`` the estimated brain
    extent along R, A, S (completed with :data:`TYPICAL_EXTENT_MM` on a cut side); ``s_reliable`` False
    when both the top and the bottom are cut, so the tentorium level cannot be estimated.
    """

    usable: bool
    reason: str
    mask: np.ndarray
    affine: np.ndarray
    depth_mm: np.ndarray | None = None
    centroid: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    radius_mm: float = 0.0
    s_reliable: bool = True


def _cut_sides(mask: np.ndarray, affine: np.ndarray) -> tuple[list[tuple[int, int]], set[tuple[int, int]]]:
    """Faces (array axis, side 0/-1) where the field of view cuts the brain (the mask's footprint on
    the face exceeds :data:`CUT_FRACTION` of its largest cross-section along that axis), and the world
    (axis 0=R 1=A 2=S, sign) of their outward normals."""
    faces, world = [], set()
    directions = np.asarray(affine, float)[:3, :3]
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        largest = mask.sum(axis=other).max() if mask.any() else 0
        for side, sign in ((0, -1.0), (-1, 1.0)):
            if largest and np.take(mask, side, axis=axis).sum() > CUT_FRACTION * largest:
                faces.append((axis, side))
                normal = sign * directions[:, axis]
                w = int(np.argmax(np.abs(normal)))
                world.add((w, int(np.sign(normal[w]))))
    return faces, world


def brain_geometry(mask: np.ndarray | None, affine: np.ndarray) -> BrainGeometry:
    """Measure ``mask`` (bool ``[i, j, k]``) once so that many points can be located cheaply."""
    affine = np.asarray(affine, dtype=float)
    if mask is None:
        return BrainGeometry(False, "no brain mask", np.zeros((1, 1, 1), bool), affine)
    mask = np.asarray(mask, dtype=bool)
    vox = voxel_sizes(affine)
    volume_ml = float(mask.sum() * np.prod(vox) / 1000.0)
    if volume_ml < MIN_BRAIN_VOLUME_ML:
        return BrainGeometry(False, f"brain mask is {volume_ml:.0f} mL, too small for a whole brain",
                             mask, affine)
    faces, cut = _cut_sides(mask, affine)
    for w, name in ((0, "left-right"), (1, "anterior-posterior")):
        if (w, 1) in cut and (w, -1) in cut:
            return BrainGeometry(False, f"the field of view cuts the brain on both {name} sides", mask, affine)
    ijk = np.argwhere(mask)
    step = max(1, ijk.shape[0] // 200_000)  # a subsample is plenty for extents and centroid
    world = voxel_to_world(affine, ijk[::step])
    lo, hi = np.percentile(world, 0.5, axis=0), np.percentile(world, 99.5, axis=0)
    if np.any(hi - lo < MIN_EXTENT_MM):
        return BrainGeometry(False, f"brain mask extent {np.round(hi - lo).tolist()} mm is too small "
                                    "(a slab)", mask, affine)
    for w in range(3):  # complete a cut side with the typical adult extent
        missing = max(0.0, TYPICAL_EXTENT_MM[w] - (hi[w] - lo[w]))
        if (w, 1) in cut and (w, -1) not in cut:
            hi[w] += missing
        elif (w, -1) in cut and (w, 1) not in cut:
            lo[w] -= missing
    pad = [(0 if (a, 0) in faces else 1, 0 if (a, -1) in faces else 1) for a in range(3)]
    depth = ndimage.distance_transform_edt(np.pad(mask, pad), sampling=vox)
    depth = depth[tuple(slice(p[0], depth.shape[a] - p[1]) for a, p in enumerate(pad))]
    radius = float(np.mean((hi - lo)[:2]) / 2.0)  # R and A half extents: never cut on both sides
    return BrainGeometry(True, "", mask, affine, depth.astype(np.float32), world.mean(axis=0),
                         lo, hi, radius, s_reliable=not ((2, 1) in cut and (2, -1) in cut))


def region_of(geometry: BrainGeometry, ijk) -> str:
    """MARS group of the point at continuous voxel index ``ijk`` (one of :data:`REGIONS`)."""
    if not geometry.usable:
        return "unknown"
    idx = np.rint(np.asarray(ijk, dtype=float)).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.array(geometry.mask.shape)) or not geometry.mask[tuple(idx)]:
        return "unknown"
    xyz = voxel_to_world(geometry.affine, np.asarray(ijk, dtype=float))
    lo, hi, c = geometry.lo, geometry.hi, geometry.centroid
    height = (xyz[2] - lo[2]) / (hi[2] - lo[2])
    if height < INFRATENTORIAL_FRACTION:
        if not geometry.s_reliable:
            return "unknown"
        posterior = xyz[1] < c[1]
        midline = abs(xyz[0] - c[0]) < BRAINSTEM_HALF_WIDTH_FRACTION * (hi[0] - lo[0])
        if posterior or midline:
            return "infratentorial"
    half = (hi - lo) / 2.0
    centre = (hi + lo) / 2.0
    normalised = float(np.sqrt((((xyz - centre) / half) ** 2).sum()))
    depth = float(geometry.depth_mm[tuple(idx)])
    if depth >= DEEP_DEPTH_FRACTION * geometry.radius_mm and normalised <= DEEP_ELLIPSOID_RADIUS:
        return "deep"
    return "lobar"


def assign_regions(points_ijk, *, affine: np.ndarray, mask: np.ndarray | None) -> list[str]:
    """MARS group for each continuous voxel index in ``points_ijk`` (N x 3), measuring the mask once."""
    geometry = brain_geometry(mask, affine)
    return [region_of(geometry, p) for p in np.asarray(points_ijk, dtype=float).reshape(-1, 3)]
