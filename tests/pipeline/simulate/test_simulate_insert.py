"""Lesion insertion into acquired GRE data: closed-form field in the phase, signal void, sign, sites; and the
whole tool on real in-vivo data with inserted lesions (needs ../shared)."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T
from cmbdetect.physics.forward import sphere_field, voxel_offsets_mm
from cmbdetect.physics.geometry import voxel_sizes
from cmbdetect.physics.phase import wrap_phase
from cmbdetect.pipeline.simulate.insert import acquire_coarser, draw_insertion_sites, insert_spheres
from cmbdetect.pipeline.io.truth import Lesion

TE = (0.005, 0.015, 0.025)


def _lesion(kind, centre, d, chi):
    return Lesion(kind=kind, centre_vox=tuple(centre), centre_ras=(0.0, 0.0, 0.0), diameter_mm=d, chi_ppm=chi,
                  region="inserted")


def _flat(shape, phase0=0.3):
    mag = np.full((len(TE),) + shape, 100.0, np.float32)
    return mag, np.full_like(mag, phase0)


def test_phase_is_the_closed_form_field_and_the_sphere_gives_no_signal(oblique_affine):
    shape = (40, 40, 30)
    aff = oblique_affine(shape, (0.8, 0.8, 1.2))
    centre = np.array([19.3, 20.1, 14.6])
    mag, phase = _flat(shape)
    m2, p2 = insert_spheres(mag, phase, te=TE, b0=3.0, affine=aff, lesions=[_lesion("microbleed", centre, 4.0, 1.0)])
    off = voxel_offsets_mm(shape, aff, centre)
    r = np.linalg.norm(off, axis=-1)
    far = (r > 4.0 * 2.0 + 2 * 1.2 + 0.5) & (r < 15)  # beyond the sub-voxel zone: voxel-centre closed form
    for e, t in enumerate(TE):
        want = wrap_phase(0.3 + 2 * np.pi * GAMMA_BAR_HZ_PER_T * 3.0 * t * 1e-6 * sphere_field(1.0, 2.0, off))
        np.testing.assert_allclose(p2[e][far], want[far], atol=1e-4)
        np.testing.assert_allclose(m2[e][far], 100.0, rtol=1e-4)
    deep = r < 2.0 - 0.5 * np.linalg.norm(voxel_sizes(aff))  # voxels wholly inside the sphere
    assert deep.sum() >= 1 and m2[:, deep].max() < 1e-3
    void = [(m2[e] < 50).sum() for e in range(len(TE))]  # blooming grows with the echo time
    assert void[0] < void[1] < void[2]
    # paramagnetic: phase up along B0 (scanner z), down in the equatorial plane, at 2 radii
    cos = off[..., 2] / np.maximum(r, 1e-9)
    ring = (r > 3.5) & (r < 4.5)
    d_last = wrap_phase(p2[-1] - 0.3)
    assert d_last[ring & (np.abs(cos) > 0.95)].mean() > 0.05 > -0.05 > d_last[ring & (np.abs(cos) < 0.1)].mean()


def test_calcification_flips_the_field_and_lesions_add(oblique_affine):
    shape = (36, 36, 28)
    aff = oblique_affine(shape, (1.0, 1.0, 1.0))
    mag, phase = _flat(shape, 0.0)
    a = _lesion("microbleed", (12.0, 18.0, 14.0), 3.0, 0.8)
    b = _lesion("calcification", (26.0, 18.0, 14.0), 3.0, -0.8)
    _, pa = insert_spheres(mag, phase, te=TE, b0=3.0, affine=aff, lesions=[a])
    _, pb = insert_spheres(mag, phase, te=TE, b0=3.0, affine=aff, lesions=[b])
    _, pab = insert_spheres(mag, phase, te=TE, b0=3.0, affine=aff, lesions=[a, b])
    # the calcification's phase mirrors the microbleed's (same geometry, shifted by 14 voxels along i)
    np.testing.assert_allclose(pb[:, 16:36], -pa[:, 2:22], atol=1e-3)
    far = np.ones(shape, bool)
    far[4:34, 10:27, 6:23] = False  # away from both sub-voxel zones the small fields add
    np.testing.assert_allclose(wrap_phase(pab - pa - pb)[:, far], 0.0, atol=1e-4)


def test_insert_checks_shapes():
    mag, phase = _flat((8, 8, 8))
    with pytest.raises(ValueError):
        insert_spheres(mag, phase[:2], te=TE, b0=3.0, affine=np.eye(4), lesions=[])
    with pytest.raises(ValueError):
        insert_spheres(mag, phase, te=TE[:2], b0=3.0, affine=np.eye(4), lesions=[])


def test_insertion_sites_respect_margin_separation_and_sign(oblique_affine):
    shape = (50, 50, 40)
    aff = oblique_affine(shape, (0.9, 0.9, 1.1))
    idx = np.indices(shape).astype(float)
    mask = (((idx - 24.5) ** 2).sum(0)) <= 20**2
    kinds = ["microbleed", "microbleed", "calcification"]
    les = draw_insertion_sites(mask, aff, np.random.default_rng(3), kinds=kinds, margin_mm=3.0,
                               min_separation_mm=8.0)
    again = draw_insertion_sites(mask, aff, np.random.default_rng(3), kinds=kinds, margin_mm=3.0,
                                 min_separation_mm=8.0)
    assert [l.kind for l in les] == kinds and les == again
    vs = voxel_sizes(aff)
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask, sampling=vs)
    for n, l in enumerate(les):
        assert (l.chi_ppm > 0) == (l.kind == "microbleed") and 0.5 <= abs(l.chi_ppm) <= 1.5
        assert depth[tuple(np.rint(l.centre_vox).astype(int))] >= 3.0 + l.diameter_mm / 2 - vs.max()
        for m in les[n + 1:]:
            assert np.linalg.norm((np.array(l.centre_vox) - np.array(m.centre_vox)) * vs) >= 8.0
    assert draw_insertion_sites(np.zeros(shape, bool), aff, np.random.default_rng(0), kinds=kinds) == []


def test_real_crop_with_inserted_lesions(real_crop):
    """Real in-vivo 3-echo GRE (no annotated lesion) with two microbleeds and a calcification inserted: the
    shipped model finds both microbleeds (p >= 0.5, within 5 mm), does not call the calcification a microbleed,
    and calls nothing else a microbleed; on the crop as acquired it calls nothing a microbleed."""
    from cmbdetect.models.inference import detect
    from cmbdetect.physics.chain import compute_physics_maps

    acq = real_crop
    clean = compute_physics_maps(mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0, affine=acq.affine)
    assert not [x for x in detect(clean) if x.probabilities["microbleed"] >= 0.5]
    les = draw_insertion_sites(clean.mask, acq.affine, np.random.default_rng(0),
                               kinds=["microbleed", "microbleed", "calcification"], diameter_mm=(2.5, 4.5))
    m2, p2 = insert_spheres(acq.mag, acq.phase, te=acq.te, b0=acq.b0, affine=acq.affine, lesions=les)
    dets = [x for x in detect(compute_physics_maps(mag=m2, phase=p2, te=acq.te, b0=acq.b0, affine=acq.affine))
            if x.probabilities["microbleed"] >= 0.5]
    vs = voxel_sizes(acq.affine)
    dist = np.array([[np.linalg.norm((np.array(x.centre_vox) - np.array(l.centre_vox)) * vs) for l in les]
                     for x in dets]).reshape(-1, len(les))
    assert len(dets) == 2 and all(x.label == "microbleed" for x in dets)
    assert (dist[:, :2] < 5.0).any(axis=0).all()  # both microbleeds hit
    assert (dist[:, 2] > 5.0).all()  # the calcification is not called microbleed


def test_acquire_coarser_keeps_positions_and_intensity(oblique_affine):
    shape = (41, 38, 30)
    aff = oblique_affine(shape, (0.5, 0.5, 1.0))
    idx = np.indices(shape).astype(float)
    c = np.array([20.3, 17.6, 13.2])
    blob = np.exp(-0.5 * (((idx - c[:, None, None, None]) * np.array([0.5, 0.5, 1.0])[:, None, None, None]) ** 2)
                  .sum(0) / 3.0**2)
    mag = np.stack([100 * blob, 60 * blob]).astype(np.float32)
    phase = np.stack([np.full(shape, 0.4), np.full(shape, -1.1)]).astype(np.float32)
    m2, p2, a2 = acquire_coarser(mag, phase, aff, (20, 19, 15))
    assert m2.shape == p2.shape == (2, 20, 19, 15)
    np.testing.assert_allclose(voxel_sizes(a2), voxel_sizes(aff) * np.array(shape) / (20, 19, 15), rtol=1e-9)
    from cmbdetect.physics.geometry import voxel_to_world

    i2 = np.indices(m2.shape[1:]).reshape(3, -1).astype(float)
    w = m2[0].reshape(-1)
    centroid_new = voxel_to_world(a2, (i2 * w).sum(1) / w.sum())
    np.testing.assert_allclose(centroid_new, voxel_to_world(aff, c), atol=0.05)  # same place in the scanner
    vol, vol2 = np.prod(voxel_sizes(aff)), np.prod(voxel_sizes(a2))  # the integral of the signal is kept
    np.testing.assert_allclose(m2.sum(axis=(1, 2, 3)) * vol2, mag.sum(axis=(1, 2, 3)) * vol, rtol=1e-3)
    np.testing.assert_allclose(p2[0][m2[0] > 20], 0.4, atol=1e-3)
    with pytest.raises(ValueError):
        acquire_coarser(mag, phase, aff, (50, 19, 15))
