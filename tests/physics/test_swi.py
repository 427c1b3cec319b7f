"""SWI (homodyne high-pass phase, positive-phase mask) and sliding-slab minimum-intensity projection."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.forward import forward_field
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.swi import highpass_phase, minimum_intensity_projection, swi_from_phase, through_slice_axis
from phantoms import _sphere_pv


def _sphere_acq(oblique_affine, chi_value, rng):
    shape = (48, 48, 40)
    aff = oblique_affine(shape, (1.0, 1.0, 1.0), (10.0, 0.0, 0.0))
    vs = voxel_sizes(aff)
    b0_dir = b0_direction(aff)
    c = (np.asarray(shape) - 1) / 2
    pv = _sphere_pv(shape, vs, c, 3.0)
    field = forward_field(chi_value * pv, vs, b0_dir)
    g = np.indices(shape).astype(np.float32)
    background = 0.05 * (g[0] - c[0]) / 10 + 0.03 * (g[2] - c[2]) / 10  # slow background (ppm)
    phase = 2 * np.pi * GAMMA_BAR_HZ_PER_T * 3.0 * (field + background) * 1e-6 * 0.02
    sig = np.exp(1j * phase) + (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / 200
    offs = (np.indices(shape).reshape(3, -1).T - c) * vs
    r = np.linalg.norm(offs, axis=1).reshape(shape)
    cos = (offs @ b0_dir / np.maximum(np.linalg.norm(offs, axis=1), 1e-9)).reshape(shape)
    return np.abs(sig).astype(np.float32), np.angle(sig).astype(np.float32), vs, r, cos


def test_paramagnetic_sphere_darker_in_swi(oblique_affine, rng):
    mag, phase, vs, r, cos = _sphere_acq(oblique_affine, 1.0, rng)
    swi = swi_from_phase(mag, phase, n=4, voxel_size=vs)
    assert swi.shape == mag.shape and swi.dtype == np.float32
    assert np.all(swi <= mag + 1e-6)
    near = (r > 5.0) & (r < 8.0)  # |phase| < pi there at TE 20 ms (no wrap inside the lobes)
    poles = near & (np.abs(cos) > 0.9)  # positive field lobes of a paramagnetic sphere
    assert swi[near].mean() < 0.97 * mag[near].mean()
    assert swi[poles].mean() < 0.8 * mag[poles].mean()
    far = (r > 12.0) & (r < 18.0)  # away from the sphere and from the volume edges
    assert swi[far].mean() > 0.95 * mag[far].mean()  # background phase removed by the high-pass


def test_diamagnetic_sphere_poles_not_darkened(oblique_affine, rng):
    """Sign check: with chi < 0 the poles have negative phase and the mask leaves them alone."""
    mag, phase, vs, r, cos = _sphere_acq(oblique_affine, -1.0, rng)
    swi = swi_from_phase(mag, phase, n=4, voxel_size=vs)
    poles = (r > 5.0) & (r < 8.0) & (np.abs(cos) > 0.9)
    assert swi[poles].mean() > 0.9 * mag[poles].mean()
    hp = highpass_phase(mag, phase, vs)
    assert hp[poles].mean() < 0


def test_minimum_intensity_projection(rng):
    img = rng.random((12, 10, 20)).astype(np.float32)
    mip = minimum_intensity_projection(img, (1.0, 1.0, 2.0), slab_mm=6.0)  # 3 slices along axis 2
    assert mip.shape == img.shape
    assert np.all(mip <= img)
    k = 7
    np.testing.assert_allclose(mip[..., k], img[..., k - 1:k + 2].min(axis=-1))
    np.testing.assert_allclose(mip[..., 0], img[..., 0:2].min(axis=-1))  # truncated slab at the edge
    assert mip.min() == img.min()
    mip0 = minimum_intensity_projection(img, (1.0, 1.0, 1.0), slab_mm=5.0, axis=0)
    np.testing.assert_allclose(mip0[4], img[2:7].min(axis=0))


def test_projection_axis_choice():
    assert through_slice_axis((0.5, 0.5, 2.0)) == 2
    assert through_slice_axis((3.0, 1.0, 1.0)) == 0
    assert through_slice_axis((1.0, 1.0, 1.0), b0_dir=(0.1, 0.95, 0.2)) == 1
    assert through_slice_axis((1.0, 1.0, 1.0)) == 2


def test_swi_input_errors():
    with pytest.raises(InputError):
        swi_from_phase(np.ones((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(InputError):
        swi_from_phase(np.ones((4, 4, 4)), np.zeros((4, 4, 4)), n=0)
    with pytest.raises(InputError):
        minimum_intensity_projection(np.ones((4, 4)), (1, 1, 1))
