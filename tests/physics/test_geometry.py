"""Voxel geometry: voxel sizes, B0 direction in voxel axes, RAS/LPS and voxel/world round trips."""
import numpy as np
import pytest

from cmbdetect.physics import geometry
from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T, hz_to_ppm, ppm_to_hz


def test_axial_affine_has_b0_along_third_axis():
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    np.testing.assert_allclose(geometry.voxel_sizes(aff), [0.5, 0.5, 2.0])
    np.testing.assert_allclose(geometry.b0_direction(aff), [0, 0, 1], atol=1e-12)


def test_flipped_axis_flips_b0_component():
    aff = np.diag([1.0, 1.0, -1.0, 1.0])
    np.testing.assert_allclose(geometry.b0_direction(aff), [0, 0, -1], atol=1e-12)


def test_sagittal_acquisition_has_b0_along_second_axis():
    # voxel axes: i -> anterior (y), j -> superior (z), k -> right (x)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[0, 0, 1.2], [0.9, 0, 0], [0, 0.9, 0]])
    np.testing.assert_allclose(geometry.b0_direction(aff), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(geometry.voxel_sizes(aff), [0.9, 0.9, 1.2])


@pytest.mark.parametrize("angle", [5.0, 15.0, 30.0])
def test_oblique_tilt_angle_is_recovered(angle):
    aff = geometry.oblique_affine((16, 16, 8), (1.0, 1.0, 2.0), angles_deg=(angle, 0.0, 0.0))
    b = geometry.b0_direction(aff)
    assert np.isclose(np.linalg.norm(b), 1.0)
    assert np.isclose(np.degrees(np.arccos(b[2])), angle)


def test_world_voxel_round_trip_and_lps(oblique_affine):
    aff = oblique_affine()
    ijk = np.array([[0, 0, 0], [3.5, 7.0, 11.25], [31, 31, 23]])
    np.testing.assert_allclose(geometry.world_to_voxel(aff, geometry.voxel_to_world(aff, ijk)), ijk, atol=1e-9)
    ras = geometry.voxel_to_world(aff, ijk)
    lps = geometry.ras_to_lps(ras)
    np.testing.assert_allclose(lps[:, :2], -ras[:, :2])
    np.testing.assert_allclose(lps[:, 2], ras[:, 2])


def test_ppm_hz_conversion_uses_gamma_bar():
    assert np.isclose(ppm_to_hz(1.0, 3.0), GAMMA_BAR_HZ_PER_T * 3.0 * 1e-6)
    assert np.isclose(hz_to_ppm(ppm_to_hz(0.37, 7.0), 7.0), 0.37)
