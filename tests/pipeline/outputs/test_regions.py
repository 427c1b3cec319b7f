"""MARS region heuristic on a synthetic ellipsoidal 'brain' in world coordinates (oblique grid)."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.geometry import voxel_to_world, world_to_voxel
from cmbdetect.pipeline.outputs.regions import assign_regions, brain_geometry

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
    assert not geo.usable and "both left-right sides" in geo.reason
    assert assign_regions([centre], affine=affine, mask=None) == ["unknown"]
    tiny = np.zeros_like(mask)
    tiny[25:30, 25:30, 20:25] = True
    assert not brain_geometry(tiny, affine).usable


def test_field_of_view_cut_at_top_or_bottom(brain):
    """SWI slabs often cut the vertex or the cerebellum: the rest is still located."""
    mask, affine = brain
    # keep only what lies inside a slab of voxels (cut along array axis 2, roughly world S)
    k_low, k_high = 12, 36
    no_vertex = mask[:, :, :38]
    both = mask[:, :, k_low:k_high]
    both_affine = affine.copy()
    both_affine[:3, 3] += affine[:3, 2] * k_low
    assert np.take(both, 0, axis=2).any() and np.take(both, -1, axis=2).any()
    assert np.take(no_vertex, -1, axis=2).any()
    pts = {"deep": [0, 0, 5], "lobar": [60, 0, 10], "infratentorial": [20, -45, -40]}
    got = assign_regions([_at(affine, p) for p in pts.values()], affine=affine, mask=no_vertex)
    assert got == list(pts)
    got = assign_regions([_at(both_affine, p) for p in pts.values()], affine=both_affine, mask=both)
    assert got[:2] == ["deep", "lobar"]
    assert got[2] in ("unknown", "infratentorial")
    assert not brain_geometry(both, both_affine).s_reliable
    low_posterior = _at(both_affine, [20, -40, -20])  # inside the slab, in its lowest part
    assert assign_regions([low_posterior], affine=both_affine, mask=both) == ["unknown"]


@pytest.mark.slow
def test_agrees_with_the_simulated_anatomy():
    """On simulated heads (anatomical MARS labels, oblique and flipped grids) most lesions get the
    simulator's region and few get a wrong one (unknown is allowed).  ~1 min."""
    from cmbdetect.physics.mask import brain_mask
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    agree = wrong = total = 0
    for seed, oblique, flip in ((1, 0.0, False), (4, 15.0, False), (6, 20.0, True)):
        s = simulate_subject(seed=seed, shape=(96, 112, 48), n_microbleeds=15, n_calcifications=4,
                             oblique_deg=oblique, flip_lr=flip)
        mask = brain_mask(s.acq.mag[0], s.acq.voxel_size)
        got = assign_regions([les.centre_vox for les in s.truth.lesions], affine=s.acq.affine, mask=mask)
        for les, region in zip(s.truth.lesions, got):
            total += 1
            agree += region == les.region
            wrong += region not in (les.region, "unknown")
    assert agree >= 0.8 * total and wrong <= 0.1 * total
