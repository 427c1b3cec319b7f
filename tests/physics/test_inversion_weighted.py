"""Morphology-weighted TV inversion ("medi"): closed-form sphere moments, small-lesion signs, an independent
forward model (qsm-forward, test-only), edge weights and method dispatch."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.forward import forward_field, voxel_averaged_sphere_field
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.inversion import METHODS, invert_dipole, tv_admm
from cmbdetect.physics.inversion_weighted import edge_weights, medi_admm
from cmbdetect.physics.moment import converged_moment
from phantoms import _ellipsoid, _sphere_pv


def _small_lesions(oblique_affine, rng):
    """1x1x2 mm, 15 deg oblique: a 2.5 mm +1.0 ppm bleed and a 2.8 mm -0.56 ppm calcification (the two lesions the
    independent cohort lost), fields from the closed-form voxel-averaged sphere field, 3 T-like noise."""
    shape = (48, 48, 28)
    aff = oblique_affine(shape, (1.0, 1.0, 2.0), angles_deg=(15.0, 0.0, 0.0))
    vs, b0_dir = voxel_sizes(aff), b0_direction(aff)
    c = (np.asarray(shape) - 1) / 2
    lesions = [(c + np.array([-7.3, 0.4, 0.3]), 2.5, 1.0), (c + np.array([7.6, -0.3, -0.2]), 2.8, -0.56)]
    field = np.zeros(shape)
    chi = np.zeros(shape, np.float32)
    b0_world = np.array([0.0, 0.0, 1.0])
    for ctr, d, x in lesions:
        field += voxel_averaged_sphere_field(x, d / 2, shape, aff, ctr, b0_dir_world=b0_world, subsamples=3)
        chi += x * _sphere_pv(shape, vs, ctr, d / 2)
    mask = _ellipsoid(shape, vs, c * vs, np.array([21.0, 21.0, 24.0]))
    field = (field + rng.normal(size=shape) * 0.004) * mask  # ~SNR 30 at 3 T, TE 20 ms
    mag = np.where(mask, 1.0, 0.0) * (1 - 0.6 * np.clip(np.abs(chi), 0, 1))
    return field.astype(np.float32), mask, mag.astype(np.float32), vs, b0_dir, lesions


@pytest.mark.parametrize("use_magnitude", [True, False])
def test_small_lesions_keep_centre_sign_and_moment(oblique_affine, rng, use_magnitude):
    field, mask, mag, vs, b0_dir, lesions = _small_lesions(oblique_affine, rng)
    chi = medi_admm(field, mask, vs, b0_dir, magnitude=mag if use_magnitude else None)
    assert chi.dtype == np.float32 and np.all(chi[~mask] == 0)
    for ctr, d, x in lesions:
        ijk = tuple(int(round(v)) for v in ctr)
        assert np.sign(chi[ijk]) == np.sign(x), f"{d} mm {x:+} ppm: centre reads {chi[ijk]:+.3f}"
        truth = x * np.pi / 6 * d**3
        m = converged_moment(chi, ctr, vs, mask=mask, start_mm=d / 2 + 2.0)
        assert np.sign(m["moment_ppm_mm3"]) == np.sign(x)
        assert abs(m["moment_ppm_mm3"] / truth - 1) < 0.35, f"{d} mm: moment {m['moment_ppm_mm3']:.2f} vs {truth:.2f}"


def test_sphere_moments_closed_form(oblique_affine):
    """Noise-free, oblique anisotropic grid: integrated chi of a 6 mm and a 5 mm sphere within 10 %."""
    shape = (40, 40, 32)
    aff = oblique_affine(shape, (1.0, 1.0, 1.2))
    vs, b0_dir = voxel_sizes(aff), b0_direction(aff)
    c = (np.asarray(shape) - 1) / 2
    chi = 1.0 * _sphere_pv(shape, vs, c + 0.3, 3.0) - 0.6 * _sphere_pv(shape, vs, c + np.array([9.0, 0, 0]), 2.5)
    mask = _ellipsoid(shape, vs, c * vs, np.array([17.0, 17.0, 16.0]))
    field = forward_field(chi, vs, b0_dir) * mask
    mag = np.where(mask, 1.0 - 0.5 * np.abs(chi), 0.0).astype(np.float32)
    est = invert_dipole(field, mask, vs, b0_dir, method="medi", magnitude=mag)
    for ctr, x, a in ((c + 0.3, 1.0, 3.0), (c + np.array([9.0, 0, 0]), -0.6, 2.5)):
        truth = x * 4 / 3 * np.pi * a**3
        m = converged_moment(est, ctr, vs, mask=mask, start_mm=a + 1.2, max_radius_mm=a + 4.0)
        assert abs(m["moment_ppm_mm3"] / truth - 1) < 0.1, f"moment {m['moment_ppm_mm3']:.1f} vs {truth:.1f}"


def test_against_qsm_forward_field():
    """Field from an independent implementation (qsm-forward, GPL: tests only): smooth tissue + two spheres."""
    qf = pytest.importorskip("qsm_forward.qsm_forward")
    rng = np.random.default_rng(3)
    shape = (40, 44, 36)
    vs = np.array([1.0, 1.0, 1.0])
    c = (np.asarray(shape) - 1) / 2
    mask = _ellipsoid(shape, vs, c * vs, np.array([17.0, 19.0, 15.0]))
    tissue = ndimage.gaussian_filter(rng.normal(size=shape), 3.0) * 0.3 * mask
    spheres = [(c + np.array([-6.0, 2.0, 1.0]), 2.0, 1.2), (c + np.array([6.0, -3.0, -2.0]), 1.5, -0.8)]
    chi = tissue.copy()
    for ctr, a, x in spheres:
        chi += x * _sphere_pv(shape, vs, ctr, a)
    b = np.array([0.2, 0.1, 0.97])
    b /= np.linalg.norm(b)
    field = qf.generate_field(chi.astype(float), voxel_size=list(vs), B0_dir=list(b)).astype(np.float32) * mask
    mag = np.where(mask, 1.0, 0.0).astype(np.float32)
    for ctr, a, x in spheres:
        mag[_sphere_pv(shape, vs, ctr, a) > 0.5] = 0.4
    est = medi_admm(field, mask, vs, b, magnitude=mag)
    for ctr, a, x in spheres:
        truth = x * 4 / 3 * np.pi * a**3
        m = converged_moment(est, ctr, vs, mask=mask, start_mm=a + 1.0, max_radius_mm=a + 4.0)
        assert np.sign(m["moment_ppm_mm3"]) == np.sign(x)
        assert abs(m["moment_ppm_mm3"] / truth - 1) < 0.15, f"moment {m['moment_ppm_mm3']:.2f} vs {truth:.2f}"
    e_medi = np.linalg.norm((est - est[mask].mean() - (chi - chi[mask].mean()))[mask])
    tv = tv_admm(field, mask, vs, b)
    e_tv = np.linalg.norm((tv - tv[mask].mean() - (chi - chi[mask].mean()))[mask])
    assert e_medi < 1.05 * e_tv


def test_edge_weights_fraction_and_errors(rng):
    img = ndimage.gaussian_filter(rng.normal(size=(20, 22, 18)), 1.5).astype(np.float32)
    mask = np.ones(img.shape, bool)
    w = edge_weights(img, mask, (1.0, 1.0, 2.0), edge_fraction=0.2)
    assert w.shape == (3, *img.shape) and set(np.unique(w)) <= {0.0, 1.0}
    for a in range(3):
        assert abs((w[a][mask] == 0).mean() - 0.2) < 0.01
    assert np.all(edge_weights(img, mask, (1, 1, 1), edge_fraction=0.0) == 1)
    with pytest.raises(InputError):
        edge_weights(img, mask, (1, 1, 1), edge_fraction=1.0)


def test_dispatch_and_errors(oblique_affine, rng):
    field, mask, mag, vs, b0_dir, _ = _small_lesions(oblique_affine, rng)
    assert "medi" in METHODS
    np.testing.assert_array_equal(invert_dipole(field, mask, vs, b0_dir, method="medi", magnitude=mag),
                                  medi_admm(field, mask, vs, b0_dir, magnitude=mag))
    with pytest.raises(InputError):
        medi_admm(field, mask, vs, b0_dir, magnitude=mag[:-1])
    with pytest.raises(InputError):
        medi_admm(field, mask, vs, b0_dir, lam=0.0)


def test_field_noise_sd_and_adaptive_weight(rng):
    from cmbdetect.physics.inversion_weighted import MEDI_LAMBDA, field_noise_sd

    shape = (30, 32, 28)
    mask = _ellipsoid(shape, np.ones(3), (np.asarray(shape) - 1) / 2, np.array([13.0, 14.0, 12.0]))
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 4.0) * 0.5
    for sd in (0.001, 0.005):
        est = field_noise_sd((smooth + rng.normal(size=shape) * sd) * mask, mask)
        assert abs(est / sd - 1) < 0.1, (sd, est)
    assert field_noise_sd(smooth * mask, mask) < 2e-4
    assert field_noise_sd(smooth, np.zeros(shape, bool)) == 0.0
    # noisy field: the weight reaches its cap, so the default equals an explicit MEDI_LAMBDA
    noisy = ((smooth + rng.normal(size=shape) * 0.005) * mask).astype(np.float32)
    b = np.array([0.0, 0.0, 1.0])
    np.testing.assert_array_equal(medi_admm(noisy, mask, np.ones(3), b), medi_admm(noisy, mask, np.ones(3), b,
                                                                                     lam=MEDI_LAMBDA))


def test_chain_accepts_medi(oblique_affine, rng):
    """The chain's inversion option takes "medi" (``cmbdetect qsm --inversion medi``)."""
    from cmbdetect.physics.chain import invert_local_field

    field, mask, mag, vs, b0_dir, lesions = _small_lesions(oblique_affine, rng)
    aff = oblique_affine(field.shape, (1.0, 1.0, 2.0), angles_deg=(15.0, 0.0, 0.0))
    maps = invert_local_field(local_field_ppm=field, mask=mask, affine=aff, b0=3.0, inversion="medi")
    assert maps.meta["inversion"]["method"] == "medi"
    ijk = tuple(int(round(v)) for v in lesions[0][0])
    assert maps.chi_ppm[ijk] > 0
