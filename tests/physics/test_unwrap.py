"""Phase unwrapping: smooth fields with > 10 wraps, anisotropic voxels, masks with noise outside."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.unwrap import unwrap_exact, unwrap_laplacian

VS = (1.0, 0.8, 1.5)  # anisotropic voxels (mm)


def _grid(shape, vs):
    idx = np.indices(shape).astype(float)
    c = (np.asarray(shape) - 1) / 2.0
    return [(idx[n] - c[n]) * vs[n] for n in range(3)]


@pytest.fixture
def wrapped_case(rng):
    """A smooth field with > 10 wraps inside an ellipsoid mask, uniform noise outside."""
    shape = (48, 52, 40)
    x, y, z = _grid(shape, VS)
    true = 0.045 * x**2 + 0.09 * y**2 + 1.5 * z + 2 * np.sin(x / 6.0) * np.cos(y / 9.0)
    mask = (x / 20) ** 2 + (y / 19) ** 2 + (z / 26) ** 2 <= 1
    psi = np.angle(np.exp(1j * true)).astype(np.float32)
    psi[~mask] = rng.uniform(-np.pi, np.pi, (~mask).sum())
    assert np.ptp(true[mask]) / (2 * np.pi) > 10
    steps = [np.abs(np.diff(np.where(mask, true, np.nan), axis=a)) for a in range(3)]
    assert max(np.nanmax(s) for s in steps) < 0.9 * np.pi  # unwrappable in principle
    return true, psi, mask


def test_laplacian_recovers_smooth_field(wrapped_case):
    true, psi, mask = wrapped_case
    out = unwrap_laplacian(psi, VS, mask=mask)
    assert out.dtype == np.float32 and out.shape == psi.shape
    err = (out - true)[mask]
    err -= err.mean()
    assert np.abs(err).max() < 0.05
    assert np.all(out[~mask] == 0)
    # the global constant is fixed: the result agrees with the input modulo 2 pi
    assert np.abs(np.angle(np.exp(1j * (out - psi))))[mask].max() < 0.05


def test_laplacian_single_solve_is_smooth_error(wrapped_case):
    """max_iter=0 (one DCT solve): error inside the mask is smooth, not 2 pi jumps."""
    true, psi, mask = wrapped_case
    out = unwrap_laplacian(psi, VS, mask=mask, max_iter=0)
    err = np.where(mask, out - true, 0.0)
    both = mask[1:] & mask[:-1]
    assert np.abs(np.diff(err, axis=0)[both]).max() < 1.0


def test_laplacian_without_mask_is_exact():
    shape = (40, 36, 32)
    x, y, z = _grid(shape, VS)
    true = 0.05 * x**2 - 0.04 * y * z + 0.8 * z
    out = unwrap_laplacian(np.angle(np.exp(1j * true)), VS)
    err = out - true
    assert np.ptp(err) < 1e-3


def test_laplacian_bad_input():
    with pytest.raises(InputError):
        unwrap_laplacian(np.zeros((4, 4)), VS)
    with pytest.raises(InputError, match="mask"):
        unwrap_laplacian(np.zeros((4, 4, 4)), VS, mask=np.zeros((4, 4, 4), bool))
    with pytest.raises(InputError, match="NaN"):
        unwrap_laplacian(np.full((4, 4, 4), np.nan), VS)


@pytest.mark.parametrize("method", ["quality", "skimage"])
def test_exact_recovers_field_up_to_global_2pi(wrapped_case, method):
    true, psi, mask = wrapped_case
    out = unwrap_exact(psi, mask=mask, method=method)
    assert out.dtype == np.float32
    diff = (out - true)[mask]
    k = np.round(diff.mean() / (2 * np.pi))
    assert np.abs(diff - 2 * np.pi * k).max() < 1e-4
    # re-wraps to the input everywhere (outside the mask the input is returned)
    np.testing.assert_allclose(np.angle(np.exp(1j * out)), psi, atol=1e-4)
    ratio = (out - psi) / (2 * np.pi)
    assert np.abs(ratio - np.round(ratio)).max() < 1e-4


def test_exact_without_mask_anisotropic_oblique_field(oblique_affine):
    from cmbdetect.physics.geometry import voxel_to_world

    shape = (30, 28, 24)
    aff = oblique_affine(shape, (1.0, 1.0, 1.5))
    xyz = voxel_to_world(aff, np.moveaxis(np.indices(shape), 0, -1))
    true = 0.04 * xyz[..., 0] ** 2 + 0.9 * xyz[..., 2] - 0.03 * xyz[..., 1] * xyz[..., 2]
    out = unwrap_exact(np.angle(np.exp(1j * true)))
    diff = out - true
    assert np.ptp(diff) < 1e-4
    assert abs(diff.mean() / (2 * np.pi) - np.round(diff.mean() / (2 * np.pi))) < 1e-4


def test_exact_magnitude_guides_around_noisy_blob(rng, wrapped_case):
    """A dark, noisy blob inside the mask (e.g. air/vein): with the magnitude the good tissue
    around it stays exact."""
    true, psi, mask = wrapped_case
    x, y, z = _grid(psi.shape, VS)
    blob = ((x - 5) ** 2 + (y + 3) ** 2 + z**2) <= 5.0**2
    psi = psi.copy()
    psi[blob] = rng.uniform(-np.pi, np.pi, blob.sum())
    mag = np.where(blob, 0.05, 1.0).astype(np.float32) * (1 + 0.05 * rng.standard_normal(psi.shape))
    out = unwrap_exact(psi, mask=mask, magnitude=np.abs(mag))
    good = mask & ~blob
    diff = (out - true)[good]
    k = np.round(np.median(diff) / (2 * np.pi))
    assert np.mean(np.abs(diff - 2 * np.pi * k) < 1e-3) > 0.999


def test_exact_bad_method():
    with pytest.raises(InputError, match="method"):
        unwrap_exact(np.zeros((4, 4, 4)), method="magic")
