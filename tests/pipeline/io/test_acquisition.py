"""Acquisition validation: every bad input is a one-line InputError."""
import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.acquisition import Acquisition


def _acq(**over):
    rng = np.random.default_rng(0)
    kw = dict(mag=rng.random((2, 8, 8, 6)) + 0.1, phase=rng.uniform(-np.pi, np.pi, (2, 8, 8, 6)),
              te=[0.01, 0.02], b0=3.0, affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    kw.update(over)
    return Acquisition(**kw)


def test_valid_acquisition_and_derived_geometry():
    a = _acq()
    assert a.n_echoes == 2 and a.shape == (8, 8, 6)
    np.testing.assert_allclose(a.voxel_size, [1, 1, 2])
    np.testing.assert_allclose(a.b0_dir, [0, 0, 1])
    assert a.mag.dtype == np.float32


def test_single_echo_3d_is_promoted():
    a = _acq(mag=np.ones((8, 8, 6)), phase=np.zeros((8, 8, 6)), te=0.02)
    assert a.mag.shape == (1, 8, 8, 6) and a.te.shape == (1,)


@pytest.mark.parametrize("over, words", [
    (dict(phase=np.zeros((2, 8, 8, 5))), "does not match"),
    (dict(mag=np.ones((2, 8, 8, 1)), phase=np.zeros((2, 8, 8, 1))), "2D"),
    (dict(te=[0.01]), "echo times"),
    (dict(te=[10.0, 20.0]), "seconds"),
    (dict(te=[0.02, 0.01]), "increase"),
    (dict(b0=3000.0), "tesla"),
    (dict(affine=np.zeros((4, 4))), "affine"),
    (dict(mag=np.full((2, 8, 8, 6), np.nan)), "NaN"),
    (dict(phase=np.full((2, 8, 8, 6), 4095.0)), "radians"),
])
def test_bad_input_is_one_line_input_error(over, words):
    with pytest.raises(InputError) as e:
        _acq(**over)
    msg = str(e.value)
    assert words in msg and "\n" not in msg
