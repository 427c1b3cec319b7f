"""Tube-versus-blob measures in mm (physics/vesselness.py) on anisotropic grids."""
import numpy as np
import pytest

from cmbdetect.physics.vesselness import (continuation_mm, cross_width_mm, hessian_shape, peak_near,
                                          void_image)

VS = np.array([0.9, 0.9, 2.0])


def _grid(shape):
    return np.indices(shape, dtype=float).reshape(3, -1).T * VS


def _ball(shape, centre_mm, radius):
    d = np.linalg.norm(_grid(shape) - centre_mm, axis=1).reshape(shape)
    return np.clip(radius - d + 0.5, 0, 1)


def _polyline_tube(shape, pts_mm, radius):
    g = _grid(shape)
    d = np.full(len(g), np.inf)
    for a, b in zip(pts_mm[:-1], pts_mm[1:]):
        v = b - a
        t = np.clip(((g - a) @ v) / (v @ v), 0, 1)
        d = np.minimum(d, np.linalg.norm(g - a - t[:, None] * v, axis=1))
    return np.clip(radius - d.reshape(shape) + 0.5, 0, 1)


SHAPE = (40, 40, 20)
C = np.array([18.0, 18.0, 20.0])  # mm, centre of the grid
C_VOX = C / VS


def test_ball_is_a_blob_and_does_not_continue():
    img = _ball(SHAPE, C, 2.0)
    hs = hessian_shape(img, np.rint(C_VOX).astype(int), VS)
    assert hs.blob_ratio > 0.6
    long, short = continuation_mm(img, C_VOX, VS, hs.axis, threshold=0.5)
    w = cross_width_mm(img, C_VOX, VS, hs.axis)
    assert w == pytest.approx(4.0, abs=1.2)
    assert long < 3.5 and short < 3.5


@pytest.mark.parametrize("axis", [(0.0, 0.0, 1.0), (0.6, 0.3, 0.74), (1.0, 0.2, 0.0)])
def test_straight_tube_of_any_orientation(axis):
    """Through-plane, oblique and in-plane tubes: low blob ratio, the axis found, continuation both ways."""
    u = np.asarray(axis) / np.linalg.norm(axis)
    img = _polyline_tube(SHAPE, np.array([C - 30 * u, C + 30 * u]), 0.8)
    p = peak_near(img, C_VOX, VS, 1.5)
    hs = hessian_shape(img, p, VS)
    assert hs.blob_ratio < 0.35
    assert abs(hs.axis @ u) > 0.9
    long, short = continuation_mm(img, p, VS, hs.axis, threshold=0.5, max_mm=12.0)
    w = cross_width_mm(img, p, VS, hs.axis)
    assert w < 3.0
    assert short >= 2 * w and short >= 5.0


def test_tortuous_tube_is_followed():
    t = np.linspace(-1, 1, 60)
    pts = C + np.stack([6 * np.sin(3 * t), 6 * np.cos(3 * t) - 6, 16 * t], 1)  # a helix, mostly through-plane
    img = _polyline_tube(SHAPE, pts, 0.9)
    p = peak_near(img, C_VOX, VS, 2.0)
    hs = hessian_shape(img, p, VS)
    long, short = continuation_mm(img, p, VS, hs.axis, threshold=0.5, max_mm=12.0)
    assert short >= 8.0


def test_void_image_and_peak():
    mag = np.full((10, 10, 10), 100.0)
    mag[5, 5, 5] = 10.0
    v = void_image(mag)
    assert v[5, 5, 5] == pytest.approx(0.9)
    assert v[0, 0, 0] == 0
    assert tuple(peak_near(v, (4.6, 5.2, 5.4), (1, 1, 1), 1.5)) == (5, 5, 5)
