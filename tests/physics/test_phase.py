"""Phase units, sign and phase <-> field conversion."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.phase import (
    apply_phase_sign,
    detect_phase_units,
    field_ppm_to_phase,
    phase_to_field_ppm,
    rescale_phase,
    wrap_phase,
)


@pytest.fixture
def true_phase(rng):
    return rng.uniform(-np.pi, np.pi, size=(8, 9, 10))


def _close_mod_2pi(a, b, atol):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a, float) - b)))).max() < atol


def test_radians_auto_and_explicit(true_phase):
    out = rescale_phase(true_phase.astype(np.float32))
    assert out.dtype == np.float32
    assert out.min() >= -np.pi and out.max() < np.pi
    assert _close_mod_2pi(out, true_phase, 1e-5)
    assert detect_phase_units(true_phase) == "rad"
    # 0..2pi radians are recognised and wrapped
    assert _close_mod_2pi(rescale_phase(np.mod(true_phase, 2 * np.pi)), true_phase, 1e-5)
    assert _close_mod_2pi(rescale_phase(true_phase, units="rad"), true_phase, 1e-5)


def test_siemens_integer_range(true_phase):
    true_phase = true_phase.copy()
    true_phase.flat[0] = -np.pi  # raw Siemens phase (noise outside the head) spans the whole range
    raw = np.clip(np.round(true_phase / np.pi * 4096), -4096, 4095).astype(np.int16)
    assert detect_phase_units(raw) == "siemens"
    assert _close_mod_2pi(rescale_phase(raw), true_phase, np.pi / 4096 * 1.01)
    assert _close_mod_2pi(rescale_phase(raw.astype(np.float32), units="siemens"), true_phase, 1e-3)


def test_uint12_range(true_phase):
    raw = np.clip(np.round((true_phase + np.pi) / (2 * np.pi) * 4096), 0, 4095).astype(np.uint16)
    assert detect_phase_units(raw) == "uint12"
    assert _close_mod_2pi(rescale_phase(raw), true_phase, 2 * np.pi / 4096)
    assert _close_mod_2pi(rescale_phase(raw, units="uint12"), true_phase, 2 * np.pi / 4096)


def test_explicit_scale(true_phase):
    m = 0.0036744
    raw = (true_phase / np.pi * m).astype(np.float32)
    with pytest.raises(InputError, match="--phase-units"):
        rescale_phase(raw)  # a tiny range is not guessed
    assert _close_mod_2pi(rescale_phase(raw, units=f"scale:{m}"), true_phase, 1e-4)
    with pytest.raises(InputError, match="--phase-units"):
        rescale_phase(raw * 10, units=f"scale:{m}")


@pytest.mark.parametrize("bad_units", ["degrees", "scale:", "scale:-1", "scale:abc"])
def test_bad_units_raise(true_phase, bad_units):
    with pytest.raises(InputError, match="--phase-units"):
        rescale_phase(true_phase, units=bad_units)


@pytest.mark.parametrize("garbage", [np.arange(0, 65536, 7, dtype=np.float32).reshape(-1, 1, 1) * 1.0,
                                     np.full((4, 4, 4), 12.5, np.float32),
                                     np.linspace(-100.3, 77.1, 64, dtype=np.float32).reshape(4, 4, 4)])
def test_garbage_raises(garbage):
    with pytest.raises(InputError, match="--phase-units"):
        rescale_phase(garbage)


def test_out_of_range_for_declared_units():
    with pytest.raises(InputError, match="--phase-units"):
        rescale_phase(np.array([0, 5000, -3]), units="siemens")
    with pytest.raises(InputError, match="--phase-units"):
        rescale_phase(np.array([0, 4096 * 2]), units="uint12")
    with pytest.raises(InputError, match="NaN"):
        rescale_phase(np.array([0.0, np.nan]))


def test_sign_helper():
    p = np.array([0.5, -1.0], np.float32)
    np.testing.assert_array_equal(apply_phase_sign(p, -1), -p)
    np.testing.assert_array_equal(apply_phase_sign(p, 1), p)
    for bad in (0, 2, 0.5, "x"):
        with pytest.raises(InputError, match="--phase-sign"):
            apply_phase_sign(p, bad)


def test_phase_field_roundtrip_and_sign():
    b0, te = 3.0, 0.02
    field = np.array([0.0, 0.1, -0.05])
    ph = field_ppm_to_phase(field, te, b0)
    # +1 ppm at 3 T and 20 ms: 2*pi*42.58e6*3*1e-6*0.02 rad, positive (paramagnetic raises phase)
    expected = 2 * np.pi * GAMMA_BAR_HZ_PER_T * b0 * 1e-6 * te * field
    np.testing.assert_allclose(ph, expected, rtol=1e-6)
    assert ph[1] > 0
    np.testing.assert_allclose(phase_to_field_ppm(ph, te, b0), field, rtol=1e-5, atol=1e-9)
    # one TE per echo along the first axis
    tes = np.array([0.004, 0.008, 0.012])
    ph4 = field_ppm_to_phase(np.ones((2, 2, 2)) * 0.1, tes, b0)
    assert ph4.shape == (3, 2, 2, 2)
    np.testing.assert_allclose(phase_to_field_ppm(ph4, tes, b0), 0.1, rtol=1e-5)
    with pytest.raises(InputError):
        phase_to_field_ppm(ph, -0.01, b0)


def test_wrap_phase_range():
    x = np.linspace(-20, 20, 1001)
    w = wrap_phase(x)
    assert w.min() >= -np.pi and w.max() < np.pi
    assert _close_mod_2pi(w, x, 1e-5)


def test_normalised_plus_minus_one_is_not_guessed(true_phase):
    raw = (true_phase / np.pi).astype(np.float32)
    raw.flat[0], raw.flat[1] = 1.0, -1.0
    with pytest.raises(InputError, match="scale:1"):
        rescale_phase(raw)
    assert _close_mod_2pi(rescale_phase(raw, units="scale:1"), np.pi * raw, 1e-5)


def test_smooth_small_radian_phase_is_radians():
    """Simulated phase without wraps (|phase| < pi, no noise) is still recognised as radians."""
    x = np.linspace(-0.6, 0.9, 64, dtype=np.float32).reshape(4, 4, 4)
    np.testing.assert_allclose(rescale_phase(x), x, atol=1e-7)


def test_milliradian_range_is_ambiguous(true_phase):
    raw = np.round(true_phase * 1000).astype(np.int16)
    raw.flat[0] = 3141
    with pytest.raises(InputError, match="--phase-units"):
        rescale_phase(raw)
    assert _close_mod_2pi(rescale_phase(raw, units="scale:3141.59"), raw / 1000.0, 1e-3)


def test_milliradians():
    """Philips/GE milliradians: units "mrad", and auto-detected when the values are not integers (Philips
    RescaleSlope 1.53455 / RescaleIntercept -3142); integer +-3142 stays ambiguous with a Siemens range."""
    rng = np.random.default_rng(4)
    rad = rng.uniform(-np.pi, np.pi, 5000)
    stored = np.round((rad + np.pi) * 4095 / (2 * np.pi))
    mrad = stored * 1.53455 - 3142.0
    assert detect_phase_units(mrad) == "mrad"
    assert np.abs(np.angle(np.exp(1j * (rescale_phase(mrad) - rad)))).max() < 2e-3
    assert _close_mod_2pi(rescale_phase(np.round(rad * 1000), units="mrad"), rad, 1e-3)
    with pytest.raises(InputError, match="mrad or siemens"):
        detect_phase_units(np.round(rad * 1000))
    with pytest.raises(InputError, match="milliradian range"):
        rescale_phase(np.array([-4000.0, 10.0]), units="mrad")


def test_rad_per_ppm_is_the_closed_form_and_the_slope_of_field_to_phase():
    from cmbdetect.physics.phase import rad_per_ppm

    assert rad_per_ppm(0.02, 3.0) == pytest.approx(2 * np.pi * 42.577478e6 * 3.0 * 1e-6 * 0.02, rel=1e-12)
    tes = np.array([0.005, 0.01, 0.03])
    k = rad_per_ppm(tes, 7.0)
    assert k.shape == (3,)
    np.testing.assert_allclose(field_ppm_to_phase(np.ones(2), tes, 7.0)[:, 0], k, rtol=1e-6)
    with pytest.raises(InputError):
        rad_per_ppm(-0.01, 3.0)
    with pytest.raises(InputError):
        rad_per_ppm(0.01, 0.0)


def test_finite_array_is_the_one_array_check():
    from cmbdetect.physics.checks import finite_array

    x = finite_array(np.arange(4, dtype=np.int16), "phase", dtype=None)
    assert x.dtype == np.int16
    assert finite_array([1, 2], "m").dtype == np.float32
    with pytest.raises(InputError, match="^phase contains NaN or infinite values$"):
        finite_array([0.0, np.inf], "phase")
    with pytest.raises(InputError, match=r"^unwrapping needs 3D, got shape \(2,\)$"):
        finite_array([0.0, 1.0], "phase", ndim=3, what="unwrapping needs 3D")
    with pytest.raises(InputError, match=r"^local field must be 3D"):
        finite_array(np.zeros((2, 2)), "local field", ndim=3)
