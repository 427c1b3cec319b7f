"""Background field removal: V-SHARP and PDF on harmonic fields and on the head phantom."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.background import pdf, smv_kernel_rfft, vsharp
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.forward import forward_field
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from phantoms import CONFIGS, _ellipsoid, _sphere_pv, local_field_error_ratio, phantom_case


def test_smv_kernel_is_normalised_and_real():
    k = smv_kernel_rfft((32, 30, 20), (1.0, 1.2, 2.0), 4.0)
    assert k.shape == (32, 30, 11)
    assert k[0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    assert np.abs(k).max() <= 1.0 + 1e-6


def _harmonic_setup(oblique_affine):
    shape, vs_in = (40, 44, 32), (1.0, 1.0, 1.5)
    aff = oblique_affine(shape, vs_in)
    vs = voxel_sizes(aff)
    c = (np.asarray(shape) - 1) / 2 * vs
    mask = _ellipsoid(shape, vs, c, np.array([15.0, 17.0, 18.0]))
    g = np.indices(shape).astype(float) * vs[:, None, None, None] - c[:, None, None, None]
    x, y, z = g
    harmonic = 0.3 * x / 10 - 0.2 * z / 10 + 0.5 * (x**2 - y**2) / 100 + 0.4 * x * z / 100 + 0.7
    return shape, aff, vs, mask, harmonic.astype(np.float32)


def test_vsharp_removes_harmonic_field_and_keeps_local(oblique_affine):
    shape, aff, vs, mask, harmonic = _harmonic_setup(oblique_affine)
    chi = 0.8 * _sphere_pv(shape, vs, (np.asarray(shape) - 1) / 2 + 1.5, 3.0)
    local_true = forward_field(chi, vs, b0_direction(aff))
    local, eroded = vsharp(harmonic + local_true, mask, vs)
    assert eroded.sum() > 0.4 * mask.sum() and not (eroded & ~mask).any()
    assert np.all(local[~eroded] == 0)
    d = (local - local_true)[eroded]
    assert np.std(d) < 0.03 * np.std(harmonic[eroded])
    assert np.std(d) < 0.1 * np.std(local_true[eroded])


def test_vsharp_radii_and_input_errors():
    m = np.zeros((20, 20, 20), bool)
    m[5:15, 5:15, 5:15] = True
    with pytest.raises(InputError):
        vsharp(np.zeros((20, 20, 20)), m, (3.0, 3.0, 3.0), radii_mm=(2.0, 1.0))
    with pytest.raises(InputError):
        vsharp(np.zeros((20, 20, 20)), np.zeros((20, 20, 20), bool), (1.0, 1.0, 1.0))
    with pytest.raises(InputError):
        vsharp(np.zeros((20, 20, 19)), m, (1.0, 1.0, 1.0))
    f = np.full((20, 20, 20), np.nan, np.float32)
    with pytest.raises(InputError):
        vsharp(f, m, (1.0, 1.0, 1.0))


def test_pdf_removes_outside_sources_oblique(oblique_affine):
    shape, aff, vs, mask, _ = _harmonic_setup(oblique_affine)
    b0_dir = b0_direction(aff)
    centre = (np.asarray(shape) - 1) / 2
    outside = 9.4 * _sphere_pv(shape, vs, centre + np.array([0, 0, 14.5]) / vs, 4.0)  # air above
    inside = 0.8 * _sphere_pv(shape, vs, centre + np.array([2.0, -1.0, 0.0]), 3.0)
    bgf = forward_field(outside, vs, b0_dir)
    loc = forward_field(inside, vs, b0_dir)
    m = mask & (outside == 0)
    est = pdf(bgf + loc, m, vs, b0_dir)
    d = (est - loc)[m]
    d -= d.mean()
    b = bgf[m] - bgf[m].mean()
    assert np.std(b) / np.std(d) > 10


@pytest.mark.parametrize("case", list(CONFIGS))
def test_phantom_background_suppressed_20x(case):
    """Full chain on the wrapped, noisy phantom phase: the RMS of (estimated local - true local)
    over the eroded mask is >= 20x below the RMS of the true background field (means removed)."""
    p, maps = phantom_case(case)
    ratio = local_field_error_ratio(p, maps.local_field_ppm, maps.mask)
    assert np.std(p.background_field_ppm[maps.mask]) > 0.1  # a realistic, strong background
    assert ratio >= 20, f"{case}: background suppression only {ratio:.1f}x"
    assert maps.mask.sum() > 0.8 * p.mask.sum()


def test_vsharp_thick_slices_use_voxel_edge_radius(oblique_affine):
    """3 mm slices: radii below 3 mm are dropped and 3 mm becomes the smallest radius, so the mask
    is eroded by ~3 mm rather than 4 mm; a harmonic field is still removed."""
    shape, vs = (48, 48, 20), (1.0, 1.0, 3.0)
    aff = oblique_affine(shape, vs, (0.0, 0.0, 0.0))
    c = (np.asarray(shape) - 1) / 2 * np.asarray(vs)
    mask = _ellipsoid(shape, vs, c, np.array([20.0, 20.0, 26.0]))
    g = np.indices(shape).astype(float) * np.asarray(vs)[:, None, None, None] - c[:, None, None, None]
    harmonic = (0.02 * g[0] + 0.003 * (g[0] ** 2 - g[2] ** 2) / 10).astype(np.float32)
    local, eroded = vsharp(harmonic, mask, vs)
    _, eroded_4mm = vsharp(harmonic, mask, vs, radii_mm=(6.0, 4.0))
    assert eroded.sum() > eroded_4mm.sum() and not (eroded_4mm & ~eroded).any()
    assert np.std(local[eroded]) < 0.05 * np.std(harmonic[eroded])


def test_vsharp_radii_follow_the_in_plane_voxel_size():
    from cmbdetect.physics.background import DEFAULT_VSHARP_RADII_MM, vsharp_radii_mm

    assert vsharp_radii_mm((1.0, 1.0, 1.5)) == DEFAULT_VSHARP_RADII_MM
    assert vsharp_radii_mm((0.8, 0.8, 2.4)) == DEFAULT_VSHARP_RADII_MM      # thick slices keep the fixed radii
    assert vsharp_radii_mm((1.5, 3.0, 1.5)) == DEFAULT_VSHARP_RADII_MM      # at the limit (any slice axis)
    assert vsharp_radii_mm((3.0, 3.0, 3.0)) == (12.0, 8.0, 4.0)             # 4, 2.7, 1.3 voxels as at 1.5 mm


def test_lbv_removes_harmonic_field_keeps_local_and_erodes_one_voxel(oblique_affine):
    """LBV on the harmonic background + a sphere's field in an ellipsoidal mask: the harmonic part is removed to < 2 %
    of its RMS inside the interior (the mask less one voxel), the sphere's field is kept, and the interior is the mask
    less its boundary layer only (V-SHARP loses its smallest radius)."""
    from cmbdetect.physics.background import lbv

    shape, aff, vs, mask, harmonic = _harmonic_setup(oblique_affine)
    src = (np.asarray(shape) - 1) / 2 + 1.5
    chi = 0.8 * _sphere_pv(shape, vs, src, 3.0)
    local_true = forward_field(chi, vs, b0_direction(aff))
    bg_only, inner = lbv(harmonic, mask, vs)
    assert np.std(bg_only[inner]) < 0.02 * np.std(harmonic[inner])
    local, inner2 = lbv(harmonic + local_true, mask, vs)
    assert np.array_equal(inner, inner2) and np.all(local[~inner] == 0) and not (inner & ~mask).any()
    _, eroded_v = vsharp(harmonic, mask, vs)
    assert inner.sum() > 0.8 * mask.sum() > eroded_v.sum()
    near = inner & (np.linalg.norm((np.indices(shape).T - src).T * vs[:, None, None, None], axis=0) <= 8.0)
    d = (local - local_true)[near]
    assert np.std(d - d.mean()) < 0.03 * np.std(local_true[near])
    # deterministic
    assert np.array_equal(lbv(harmonic + local_true, mask, vs)[0], local)


def test_lbv_keeps_a_lesion_near_the_surface(oblique_affine):
    """A 2 mm-radius source 3 mm below the surface of a sphere mask: LBV keeps its centre and most of its field (its
    field on the boundary is the part taken for background); V-SHARP's 2 mm erosion and kernel lose more."""
    from cmbdetect.physics.background import lbv

    shape, vs = (40, 40, 40), np.array([1.0, 1.0, 1.0])
    c = (np.asarray(shape) - 1) / 2
    mask = _ellipsoid(shape, vs, c * vs, np.array([17.0, 17.0, 17.0]))
    src = c + np.array([0.0, 12.0, 0.0])  # surface 17 - 12 - 2 = 3 mm away
    local_true = forward_field(0.8 * _sphere_pv(shape, vs, src, 2.0), vs, (0.0, 0.0, 1.0))
    g = (np.indices(shape).T * vs - c * vs).T
    harmonic = (0.01 * g[2] + 0.002 * (g[0] ** 2 - g[1] ** 2) / 10).astype(np.float32)
    local, inner = lbv(harmonic + local_true, mask, vs)
    assert inner[tuple(np.rint(src).astype(int))]
    near = inner & (np.linalg.norm(g - ((src - c) * vs)[:, None, None, None], axis=0) <= 5.0)
    d = (local - local_true)[near]
    assert np.std(d - d.mean()) < 0.15 * np.std(local_true[near])


def test_lbv_input_errors():
    from cmbdetect.physics.background import lbv

    m = np.zeros((12, 12, 12), bool)
    m[5:7, 5:7, :] = True  # two voxels thick: no interior along x/y
    with pytest.raises(InputError):
        lbv(np.zeros((12, 12, 12)), m, (1.0, 1.0, 1.0))
    with pytest.raises(InputError):
        lbv(np.zeros((12, 12, 11)), m, (1.0, 1.0, 1.0))
