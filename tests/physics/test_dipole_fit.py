"""Sphere-versus-cylinder field fits (physics/dipole_fit.py) against closed forms and the FFT forward model."""
import numpy as np
import pytest

from cmbdetect.physics.dipole_fit import (cylinder_field, fit_sphere_vs_cylinder, hemisphere_directions,
                                          sphere_dipole_field)
from cmbdetect.physics.forward import forward_field, sphere_field
from cmbdetect.physics.geometry import b0_direction

VS = (0.9, 0.9, 2.0)  # anisotropic, thick slices


def _offsets(shape, centre):
    idx = np.indices(shape, dtype=float).reshape(3, -1).T
    return ((idx - np.asarray(centre)) * np.asarray(VS)).reshape(*shape, 3)


def _b0(oblique_affine, shape):
    return b0_direction(oblique_affine(shape, VS, angles_deg=(15.0, 0.0, 10.0)))


def _rasterised_cylinder(shape, centre, axis, radius, sub=3):
    """Occupancy (sub-voxel averaged) of an infinite cylinder through ``centre`` along ``axis``."""
    f = (np.arange(sub) + 0.5) / sub - 0.5
    occ = np.zeros(shape)
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    for d in np.stack(np.meshgrid(f, f, f, indexing="ij"), -1).reshape(-1, 3):
        r = _offsets(shape, np.asarray(centre) - d)
        rp = r - (r @ u)[..., None] * u
        occ += (rp ** 2).sum(-1) <= radius ** 2
    return occ / sub ** 3


def test_sphere_dipole_matches_closed_form_sphere(oblique_affine):
    shape = (20, 20, 10)
    b0 = _b0(oblique_affine, shape)
    r = _offsets(shape, (9.6, 10.2, 4.7))
    a, chi = 1.5, 0.8
    ref = sphere_field(chi, a, r, b0)
    out = (r ** 2).sum(-1) > a * a
    got = sphere_dipole_field(chi * 4 / 3 * np.pi * a ** 3, r, b0)
    np.testing.assert_allclose(got[out], ref[out], rtol=1e-10, atol=1e-12)


def test_cylinder_closed_form_matches_fft_forward_model(oblique_affine):
    """The closed-form cylinder field agrees with the dipole-kernel forward model of a rasterised cylinder."""
    shape = (64, 64, 40)
    vs = (0.8, 0.8, 0.8)
    axis = np.array([1.0, 0.3, 0.4])
    b0 = np.array([0.1, 0.2, 1.0]) / np.linalg.norm([0.1, 0.2, 1.0])
    centre = np.array([31.7, 32.2, 19.6])
    global VS
    keep, VS = VS, vs
    try:
        occ = _rasterised_cylinder(shape, centre, axis, 1.6)
        r = _offsets(shape, centre)
    finally:
        VS = keep
    chi = 0.5
    fft = forward_field(occ * chi, vs, b0, pad=32)
    closed = cylinder_field(chi, 1.6, axis, r, b0)
    u = axis / np.linalg.norm(axis)
    rho = np.sqrt(((r - (r @ u)[..., None] * u) ** 2).sum(-1))
    along = np.abs(r @ u)
    sel = (rho > 3.5) & (rho < 8) & (along < 6)  # outside, away from the finite cylinder's ends
    err = np.abs(fft[sel] - closed[sel])
    assert np.median(err) < 0.1 * np.median(np.abs(closed[sel]))
    assert np.corrcoef(fft[sel], closed[sel])[0, 1] > 0.97


def test_sphere_field_fits_the_sphere_not_the_cylinder(oblique_affine):
    shape = (24, 24, 12)
    b0 = _b0(oblique_affine, shape)
    centre = (11.3, 12.6, 5.8)
    f = sphere_field(1.0, 1.5, _offsets(shape, centre), b0) + 0.002  # plus a background offset
    fit = fit_sphere_vs_cylinder(f, (11, 13, 6), VS, b0, r_in_mm=2.5, r_out_mm=9.0)
    assert fit.sphere_r2 > 0.97
    assert fit.sphere_r2 - fit.cylinder_r2 > 0.3
    assert fit.sphere_moment_ppm_mm3 == pytest.approx(4 / 3 * np.pi * 1.5 ** 3, rel=0.15)


def test_cylinder_field_fits_the_cylinder_and_finds_its_axis(oblique_affine):
    shape = (24, 24, 12)
    b0 = _b0(oblique_affine, shape)
    axis = np.array([0.2, 0.9, 0.8])  # oblique, mostly through-plane and along y
    axis /= np.linalg.norm(axis)
    centre = (11.6, 12.3, 6.2)
    r = _offsets(shape, centre)
    f = cylinder_field(0.4, 0.8, axis, r, b0) - 0.001
    rho = np.sqrt(((r - (r @ axis)[..., None] * axis) ** 2).sum(-1))
    body = rho <= 0.8 + 1.0  # the vein itself (the caller leaves out its visible chi, dilated)
    fit = fit_sphere_vs_cylinder(f, (12, 12, 6), VS, b0, r_in_mm=2.0, r_out_mm=9.0, valid=~body)
    assert fit.cylinder_r2 > 0.95
    assert fit.cylinder_r2 - fit.sphere_r2 > 0.3
    assert abs(float(fit.cylinder_axis @ axis)) > np.cos(np.radians(8))
    assert fit.cylinder_moment_ppm_mm2 == pytest.approx(0.4 * np.pi * 0.8 ** 2, rel=0.2)


def test_fft_cylinder_field_fits_the_cylinder(oblique_affine):
    """A vein simulated through the FFT forward model (not the closed form) is recognised as a cylinder."""
    shape = (40, 40, 20)
    aff = oblique_affine(shape, VS, angles_deg=(15.0, 0.0, 10.0))
    b0 = b0_direction(aff)
    axis = np.array([0.7, 0.2, 0.7])
    centre = np.array([19.4, 20.1, 9.7])
    occ = _rasterised_cylinder(shape, centre, axis, 0.9)
    f = forward_field(occ * 0.45, VS, b0, pad=16)
    from scipy import ndimage

    body = ndimage.binary_dilation(occ > 0.05)
    fit = fit_sphere_vs_cylinder(f, np.rint(centre), VS, b0, r_in_mm=2.5, r_out_mm=8.0, valid=~body)
    assert fit.cylinder_r2 > 0.8
    assert fit.cylinder_r2 - fit.sphere_r2 > 0.2


def test_too_few_voxels_and_bad_radii():
    from cmbdetect.physics.errors import InputError

    f = np.zeros((6, 6, 6))
    assert fit_sphere_vs_cylinder(f, (3, 3, 3), (1, 1, 1), (0, 0, 1), r_in_mm=1, r_out_mm=3) is None
    with pytest.raises(InputError):
        fit_sphere_vs_cylinder(f, (3, 3, 3), (1, 1, 1), (0, 0, 1), r_in_mm=3, r_out_mm=2)


def test_hemisphere_directions_are_unit_and_spread():
    d = hemisphere_directions(100)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert (d[:, 2] > 0).all()
    cos = d @ d.T - 2 * np.eye(100)
    assert np.degrees(np.arccos(cos.max())) > 5  # no two directions closer than 5 degrees
