"""Converged-ball magnetic moment: independent of blur, offset-free, uncertainty covers the noise."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.moment import converged_moment
from phantoms import _sphere_pv

VS = np.array([1.0, 1.0, 2.0])
SHAPE = (40, 40, 24)
CTR = np.array([19.3, 20.2, 11.6])


@pytest.mark.parametrize("sigma_mm", [0.0, 1.0, 2.0])
def test_moment_independent_of_blur_and_offset(sigma_mm):
    chi = 1.3 * _sphere_pv(SHAPE, VS, CTR, 2.0)
    truth = 1.3 * 4 / 3 * np.pi * 8.0
    if sigma_mm:
        chi = ndimage.gaussian_filter(chi, sigma_mm / VS)
    m = converged_moment(chi + 0.05, CTR, VS, start_mm=3.0)
    assert m["converged"] == 1.0
    assert abs(m["moment_ppm_mm3"] / truth - 1) < 0.03, m
    # a fixed, thresholded region loses what the blur spread out
    region = chi >= 0.5 * chi.max()
    assert sigma_mm < 2 or chi[region].sum() * VS.prod() < 0.8 * truth


def test_uncertainty_covers_noise_and_sign(rng):
    truth = -0.6 * 4 / 3 * np.pi * 2.5**3
    errs = []
    for _ in range(12):
        chi = -0.6 * _sphere_pv(SHAPE, VS, CTR, 2.5) + rng.normal(size=SHAPE) * 0.03
        m = converged_moment(chi, CTR, VS, start_mm=3.5)
        assert m["moment_ppm_mm3"] < 0 and m["moment_sd_ppm_mm3"] > 0
        errs.append((m["moment_ppm_mm3"] - truth) / m["moment_sd_ppm_mm3"])
    assert np.max(np.abs(errs)) < 3.0


def test_mask_edges_and_errors():
    chi = _sphere_pv(SHAPE, VS, CTR, 2.0)
    mask = np.zeros(SHAPE, bool)
    m = converged_moment(chi, CTR, VS, mask=mask)
    assert np.isnan(m["moment_ppm_mm3"]) and m["converged"] == 0.0
    assert np.isnan(converged_moment(chi, (500.0, 0.0, 0.0), VS)["moment_ppm_mm3"])
    with pytest.raises(InputError):
        converged_moment(chi[0], CTR, VS)
    with pytest.raises(InputError):
        converged_moment(chi, CTR, VS, start_mm=5.0, max_radius_mm=2.0)
    with pytest.raises(InputError):
        converged_moment(chi, CTR, VS, mask=mask[:-1])


def test_candidate_features_carry_moment(oblique_affine):
    """models.features adds moment_ppm_mm3 / moment_sd_ppm_mm3 per candidate, also for a candidate larger
    than the largest ball."""
    from cmbdetect.models.features import candidate_features
    from cmbdetect.physics.geometry import voxel_sizes
    from cmbdetect.physics.maps import PhysicsMaps

    shape = (40, 40, 24)
    aff = oblique_affine(shape, (1.0, 1.0, 2.0))
    vs = voxel_sizes(aff)
    chi = 1.0 * _sphere_pv(shape, vs, np.array([7.2, 20.0, 11.5]), 2.5)
    chi -= 0.5 * (np.linalg.norm((np.indices(shape).T - np.array([29.0, 20.0, 12.0])) * vs, axis=-1).T <= 9.0)
    ones = np.ones(shape, np.float32)
    maps = PhysicsMaps(mask=np.ones(shape, bool), magnitude=ones, field_ppm=0 * ones, local_field_ppm=0 * ones,
                       chi_ppm=chi.astype(np.float32), chi_pos=np.maximum(chi, 0), chi_neg=np.maximum(-chi, 0),
                       swi=ones, mip=ones, affine=aff, b0=3.0, r2star=None, meta={})
    small, large = candidate_features(maps, [[7.2, 20.0, 11.5], [29.0, 20.0, 12.0]])
    assert abs(small["moment_ppm_mm3"] / (np.pi / 6 * 5.0**3) - 1) < 0.1
    assert small["moment_sd_ppm_mm3"] >= 0
    assert large["moment_ppm_mm3"] < 0


def _sphere_local_field(shape, vs, centre, radius, chi, b0_dir):
    from cmbdetect.physics.forward import sphere_field, subvoxel_offsets

    idx = np.indices(shape, dtype=float).reshape(3, -1).T
    acc = sum(sphere_field(chi, radius, (idx + d - centre) * vs, b0_dir) for d in subvoxel_offsets(2))
    return (acc / 8).reshape(shape)


@pytest.mark.parametrize("chi,radius,b0_dir", [(0.4, 1.0, (0.0, 0.0, 1.0)), (-0.7, 1.25, (0.0, 0.26, 0.966)),
                                               (0.3, 1.6, (0.0, 0.0, 1.0))])
def test_field_moment_of_tiny_spheres_sign_and_error(rng, chi, radius, b0_dir):
    """2-3.2 mm spheres (1x1x2 mm voxels) in noise, tissue texture and a background-removal residue (offset +
    gradient): the field fit gives the right sign and the moment within 5 %, and its sd covers the error."""
    from cmbdetect.physics.moment import field_moment

    b = np.asarray(b0_dir) / np.linalg.norm(b0_dir)
    f = _sphere_local_field(SHAPE, VS, CTR, radius, chi, b)
    g = (np.indices(SHAPE).T * VS).T
    f += 0.003 + 2e-4 * g[0] - 1e-4 * g[2]
    f += ndimage.gaussian_filter(rng.normal(size=SHAPE), 3.0 / VS) * 0.01 + rng.normal(size=SHAPE) * 0.002
    truth = chi * 4 / 3 * np.pi * radius**3
    m = field_moment(f, CTR + np.array([0.3, -0.2, 0.0]), VS, b, radius_mm=radius)
    assert np.sign(m["moment_ppm_mm3"]) == np.sign(chi)
    assert abs(m["moment_ppm_mm3"] / truth - 1) < 0.05, m
    assert 0 < m["moment_sd_ppm_mm3"] and abs(m["moment_ppm_mm3"] - truth) < 3 * m["moment_sd_ppm_mm3"]
    # deterministic
    assert m == field_moment(f, CTR + np.array([0.3, -0.2, 0.0]), VS, b, radius_mm=radius)


def test_field_moment_near_the_mask_edge():
    """A 2.5 mm sphere whose surface is 1 mm from the mask edge (half its field outside the mask, where the chi map
    and a chi integral have nothing): the fit on the side that is left still gives the moment within 5 %."""
    from cmbdetect.physics.moment import field_moment

    f = _sphere_local_field(SHAPE, VS, CTR, 1.25, -1.0, (0.0, 0.0, 1.0))
    mask = np.zeros(SHAPE, bool)
    mask[: int(CTR[0] + 2.25) + 1] = True  # the edge 1 mm beyond the sphere's surface along x
    truth = -1.0 * 4 / 3 * np.pi * 1.25**3
    m = field_moment(np.where(mask, f, 0), CTR, VS, (0.0, 0.0, 1.0), radius_mm=1.25, mask=mask)
    assert abs(m["moment_ppm_mm3"] / truth - 1) < 0.05, m


def test_field_moment_errors():
    from cmbdetect.physics.moment import field_moment

    f = np.zeros(SHAPE)
    with pytest.raises(InputError):
        field_moment(f[0], CTR, VS, (0, 0, 1), radius_mm=1.0)
    with pytest.raises(InputError):
        field_moment(f, CTR, VS, (0, 0, 1), radius_mm=0.0)
    with pytest.raises(InputError):
        field_moment(f, CTR, VS, (0, 0, 1), radius_mm=1.0, mask=np.ones((3, 3, 3), bool))
    assert np.isnan(field_moment(f, CTR, VS, (0, 0, 1), radius_mm=1.0)["moment_ppm_mm3"])  # no valid voxel
