"""MARS region heuristic on a synthetic ellipsoidal 'brain' in world coordinates (oblique grid)."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.geometry import voxel_to_world, world_to_voxel
from cmbdetect.pipeline.regions import assign_regions, brain_geometry

SEMI_AXES_MM = np.array([70.0, 85.0, 60.0])  # R, A, S half extents of an adult brain


def _brain(affine, shape):
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = voxel_to_world(affine, ijk)
    inside = ((xyz / SEMI_AXES_MM) ** 2).sum(axis=1) <= 1.0
    return inside.reshape(shape)


@pytest.fixture
def brain(oblique_affine):
    shape = (56, 60, 48)
    affine = oblique_affine(shape, (3.5, 3.5, 3.5), angles_deg=(8.0, 0.0, 5.0))
    return _brain(affine, shape), affine


def _at(affine, xyz):
    return world_to_voxel(affine, np.array(xyz, dtype=float))


def test_regions_of_known_points(brain):
    mask, affine = brain
    points = {
        "deep": [0, 0, 5],                  # centre of the brain
        "deep ": [25, 10, 10],              # halfway out, far from the surface
        "lobar": [60, 0, 10],               # lateral, near the cortex
        "lobar ": [0, 20, 52],              # vertex
        "infratentorial": [20, -45, -40],   # low and posterior (cerebellum)
        "infratentorial ": [0, 10, -45],    # low, midline (brainstem)
        "lobar  ": [40, 35, -38],           # low, anterior, lateral (temporal pole)
        "unknown": [80, 0, 0],              # outside the mask
    }
    got = assign_regions(np.array([_at(affine, p) for p in points.values()]), affine=affine, mask=mask)
    assert got == [name.strip() for name in points]


def test_slab_small_and_missing_masks_are_unknown(brain):
    mask, affine = brain
    slab = mask.copy()
    slab[:, :, :20] = False
    slab[:, :, 28:] = False  # 8 slices: touches no face, but a thin slab
    centre = _at(affine, [0, 0, 5])
    assert assign_regions([centre], affine=affine, mask=slab) == ["unknown"]
    cropped = mask[12:-12]  # field of view cuts the brain at both ends of axis 0
    geo = brain_geometry(cropped, affine)
    assert not geo.usable and "faces" in geo.reason
    assert assign_regions([centre], affine=affine, mask=None) == ["unknown"]
    tiny = np.zeros_like(mask)
    tiny[25:30, 25:30, 20:25] = True
    assert not brain_geometry(tiny, affine).usable
