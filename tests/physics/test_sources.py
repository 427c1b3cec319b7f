"""chi+/chi- split, chi-separation and lesion-level physics features."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.forward import forward_field
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.sources import (
    assumed_r2,
    chi_separation,
    lesion_features,
    relaxometric_constant,
    split_by_sign,
)
from phantoms import _sphere_pv


def test_split_by_sign():
    chi = np.array([-1.0, 0.0, 0.5], dtype=np.float32)
    pos, neg = split_by_sign(chi)
    np.testing.assert_array_equal(pos, [0, 0, 0.5])
    np.testing.assert_array_equal(neg, [1, 0, 0])
    np.testing.assert_array_equal(pos - neg, chi)


def test_chi_separation_recovers_mixture(rng):
    shape = (6, 6, 6)
    pos_t = rng.uniform(0, 0.2, shape).astype(np.float32)
    neg_t = rng.uniform(0, 0.2, shape).astype(np.float32)
    b0 = 3.0
    dr = relaxometric_constant(b0)
    assert dr == pytest.approx(137.0)
    assert relaxometric_constant(7.0) == pytest.approx(137.0 * 7 / 3)
    r2 = assumed_r2(b0)
    r2star = r2 + dr * (pos_t + neg_t)
    mask = np.ones(shape, bool)
    mask[0] = False
    pos, neg = chi_separation(chi_ppm=pos_t - neg_t, r2star=r2star, mask=mask, b0=b0)
    np.testing.assert_allclose(pos[mask], pos_t[mask], atol=1e-4)
    np.testing.assert_allclose(neg[mask], neg_t[mask], atol=1e-4)
    assert np.all(pos[~mask] == 0)
    # inconsistent data (R2' too small for |chi|): non-negative, difference kept
    pos, neg = chi_separation(chi_ppm=np.full(shape, 0.3, np.float32), r2star=np.full(shape, r2, np.float32),
                              mask=mask, b0=b0)
    assert np.all(pos >= 0) and np.all(neg >= 0)
    np.testing.assert_allclose((pos - neg)[mask], 0.3, atol=1e-6)
    assert 11 < assumed_r2(1.5) < assumed_r2(3.0) < assumed_r2(7.0) < 25
    with pytest.raises(InputError):
        chi_separation(chi_ppm=np.zeros(3), r2star=np.zeros(4), mask=np.ones(3, bool), b0=3.0)


def _lesion(oblique_affine, chi_value, radius=2.5):
    shape = (40, 40, 32)
    aff = oblique_affine(shape, (1.0, 1.0, 1.2))
    vs = voxel_sizes(aff)
    b0_dir = b0_direction(aff)
    c = (np.asarray(shape) - 1) / 2
    pv = _sphere_pv(shape, vs, c, radius)
    chi = (chi_value * pv).astype(np.float32)
    field = forward_field(chi, vs, b0_dir)
    return chi, field, pv >= 0.5, vs, b0_dir, pv


@pytest.mark.parametrize("chi_value", [0.8, -0.5])
def test_lesion_features_sphere(oblique_affine, chi_value):
    chi, field, region, vs, b0_dir, pv = _lesion(oblique_affine, chi_value)
    mag = np.where(pv > 0, 0.2, 1.0).astype(np.float32)
    f = lesion_features(chi_ppm=chi, local_field_ppm=field, magnitude=mag, region_mask=region,
                        voxel_size=vs, b0_dir=b0_dir)
    for key in ("integrated_chi_ppm_mm3", "mean_chi_ppm", "dipole_sign", "diameter_mm", "volume_mm3",
                "elongation", "sphericity", "blooming_ratio"):
        assert key in f and isinstance(f[key], float)
    truth = chi_value * pv.sum() * np.prod(vs)
    assert f["integrated_chi_ppm_mm3"] == pytest.approx(truth, rel=0.02)
    assert f["dipole_sign"] == np.sign(chi_value) and abs(f["dipole_corr"]) > 0.8
    assert f["diameter_mm"] == pytest.approx(5.0, rel=0.1)
    assert f["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 2.5**3, rel=0.15)
    assert f["elongation"] < 1.3 and 0.75 < f["sphericity"] <= 1.0
    assert np.sign(f["mean_chi_ppm"]) == np.sign(chi_value)
    assert 0.8 < f["blooming_ratio"] < 1.6


def test_blooming_and_elongation(oblique_affine):
    chi, field, region, vs, b0_dir, pv = _lesion(oblique_affine, 1.0, radius=2.0)
    c = (np.asarray(chi.shape) - 1) / 2
    big_dark = _sphere_pv(chi.shape, vs, c, 4.5) > 0.5  # magnitude blooming twice the chi size
    mag = np.where(big_dark, 0.1, 1.0).astype(np.float32)
    f = lesion_features(chi_ppm=chi, local_field_ppm=field, magnitude=mag, region_mask=region,
                        voxel_size=vs, b0_dir=b0_dir)
    assert f["blooming_ratio"] > 1.7
    # a vein-like cylinder is elongated and not spherical
    vein = np.zeros(chi.shape, bool)
    vein[20, 20, 4:28] = True
    vein[21, 20, 4:28] = True
    fv = lesion_features(chi_ppm=0.4 * vein.astype(np.float32), local_field_ppm=field, magnitude=None,
                         region_mask=vein, voxel_size=vs, b0_dir=b0_dir)
    assert fv["elongation"] > 5 and fv["sphericity"] < 0.7
    assert np.isnan(fv["blooming_ratio"])
    with pytest.raises(InputError):
        lesion_features(chi_ppm=chi, local_field_ppm=field, magnitude=None, region_mask=np.zeros_like(region),
                        voxel_size=vs, b0_dir=b0_dir)


def test_void_chi_sign_beside_a_streak(oblique_affine):
    """The chi of the magnitude void tells the source's sign even when the candidate region is a positive
    streak beside a diamagnetic source (a thick-slice inversion artefact next to a calcification)."""
    for chi_value in (0.8, -0.8):
        chi, field, region, vs, b0_dir, pv = _lesion(oblique_affine, chi_value)
        mag = np.where(pv > 0, 0.2, 1.0).astype(np.float32)
        f = lesion_features(chi_ppm=chi, local_field_ppm=field, magnitude=mag, region_mask=region,
                            voxel_size=vs, b0_dir=b0_dir)
        assert np.sign(f["void_mean_chi_ppm"]) == np.sign(chi_value)
    # calcification (chi -0.8) with a positive streak touching it along k: the candidate region is the streak
    streak = np.zeros(chi.shape, bool)
    ks = np.flatnonzero(region.any(axis=(0, 1)))
    streak[19:22, 19:22, ks.max() + 1:ks.max() + 4] = True
    chi2 = np.where(streak, 0.6, chi).astype(np.float32)
    fs = lesion_features(chi_ppm=chi2, local_field_ppm=field, magnitude=mag, region_mask=streak,
                         voxel_size=vs, b0_dir=b0_dir)
    assert fs["mean_chi_ppm"] > 0 and fs["void_mean_chi_ppm"] < 0
    assert np.isnan(lesion_features(chi_ppm=chi, local_field_ppm=field, magnitude=None, region_mask=region,
                                    voxel_size=vs, b0_dir=b0_dir)["void_mean_chi_ppm"])
