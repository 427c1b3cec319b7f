"""The vein features of stage-2 candidates (models/features.py) and the vein gate (models/classifier.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmbdetect.models.classifier import vein_evidence, vein_gate
from cmbdetect.models.detection import CLASSES
from cmbdetect.models.features import vein_features
from cmbdetect.models.inference import apply_vein_gate
from cmbdetect.physics.forward import forward_field
from cmbdetect.physics.geometry import b0_direction, oblique_affine
from cmbdetect.physics.maps import PhysicsMaps

MB, VEIN = CLASSES.index("microbleed"), CLASSES.index("vein")
VS = (0.9, 0.9, 2.0)
SHAPE = (48, 48, 24)


def _maps(kind: str, seed: int = 0) -> tuple[PhysicsMaps, np.ndarray]:
    """A brain-like block (oblique 15 deg, 0.9 x 0.9 x 2 mm) holding one ball (``kind`` "ball", 4 mm, +0.8 ppm)
    or one tortuous vein (``kind`` "vein", 1.6 mm calibre, +0.45 ppm, oblique through the slices) at the centre;
    chi blurred like an inversion, field from the forward model, magnitude void by partial volume."""
    rng = np.random.default_rng(seed)
    aff = oblique_affine(SHAPE, VS, angles_deg=(15.0, 0.0, 0.0))
    vs = np.asarray(VS)
    g = np.indices(SHAPE, dtype=float).reshape(3, -1).T * vs
    c = (np.asarray(SHAPE) - 1) / 2 * vs + [0.3, -0.2, 0.4]
    if kind == "ball":
        d = np.linalg.norm(g - c, axis=1)
        occ, chi0 = np.clip(2.0 - d + 0.5, 0, 1), 0.8
    else:
        t = np.linspace(-1, 1, 80)
        pts = c + np.stack([4 * np.sin(2 * t), 25 * t, 14 * t + 3 * (np.cos(3 * t) - 1)], 1)
        d = np.full(len(g), np.inf)
        for a, b in zip(pts[:-1], pts[1:]):
            v = b - a
            s = np.clip(((g - a) @ v) / (v @ v), 0, 1)
            d = np.minimum(d, np.linalg.norm(g - a - s[:, None] * v, axis=1))
        occ, chi0 = np.clip(0.8 - d + 0.5, 0, 1), 0.45
    occ = occ.reshape(SHAPE)
    chi = occ * chi0
    field = forward_field(chi, VS, b0_direction(aff), pad=16)
    chi_map = ndimage.gaussian_filter(chi, (0.6, 0.6, 0.3)) + rng.normal(0, 0.005, SHAPE)
    mag = 100 * (1 - 0.9 * ndimage.gaussian_filter(occ, 0.5)) + rng.normal(0, 2, SHAPE)
    mask = np.ones(SHAPE, bool)
    maps = PhysicsMaps(mask=mask, magnitude=mag.astype(np.float32), field_ppm=field, local_field_ppm=field,
                       chi_ppm=chi_map.astype(np.float32), chi_pos=np.clip(chi_map, 0, None),
                       chi_neg=np.clip(-chi_map, 0, None), swi=mag, mip=mag, affine=aff, b0=3.0)
    return maps, c / vs


@pytest.mark.parametrize("kind", ["ball", "vein"])
def test_vein_features_tell_a_ball_from_a_tortuous_vein(kind):
    maps, centre = _maps(kind)
    f = vein_features(maps, centre, chi_scale=0.005)
    probs = np.zeros((1, len(CLASSES)))
    probs[0, MB] = 0.9
    probs[0, VEIN] = 0.1
    p, gated = vein_gate(probs, [f])
    if kind == "ball":
        assert f["void_blob_ratio"] > 0.3 and f["chi_blob_ratio"] > 0.3
        assert f["void_continuation_mm"] < 4.0
        assert f["fit_sphere_r2"] > f["fit_cylinder_r2"]
        assert not gated[0] and p[0, MB] == pytest.approx(0.9)
    else:
        assert f["void_continuation_mm"] >= 2 * f["void_width_mm"]
        assert f["chi_continuation_mm"] >= 2 * f["chi_width_mm"]
        assert f["fit_cylinder_r2"] > f["fit_sphere_r2"]
        assert gated[0] and p[0, MB] == 0 and p[0, VEIN] == pytest.approx(1.0)


def test_gate_rules_on_features():
    nan = float("nan")
    ball = {"void_continuation_mm": 1.5, "void_continuation_long_mm": 2.5, "void_width_mm": 4.0,
            "chi_continuation_mm": 1.5, "chi_continuation_long_mm": 2.0, "chi_width_mm": 3.5, "chi_peak": 0.8,
            "fit_sphere_r2": 0.9, "fit_cylinder_r2": 0.3}
    tube = dict(ball, void_continuation_mm=9.0, void_continuation_long_mm=12.0, void_width_mm=2.0,
                chi_continuation_mm=8.0, chi_continuation_long_mm=12.0, chi_width_mm=2.0)
    one_sided = dict(tube, void_continuation_mm=1.0, chi_peak=nan)  # a vein that bends or ends at the candidate
    beside = dict(ball, void_continuation_mm=9.0, void_continuation_long_mm=12.0, void_width_mm=2.0)  # bleed + vein
    thin = dict(tube, chi_peak=nan, chi_continuation_mm=nan, chi_continuation_long_mm=nan, chi_width_mm=nan)
    cylinder = dict(ball, fit_sphere_r2=0.2, fit_cylinder_r2=0.8)
    short = dict(tube, void_continuation_mm=3.0, void_continuation_long_mm=3.5, void_width_mm=1.0)
    unknown = {}
    feats = [ball, tube, one_sided, beside, thin, cylinder, short, unknown]
    tube_void, ball_chi, cyl = vein_evidence(feats)
    assert tube_void.tolist() == [False, True, True, True, True, False, False, False]
    assert ball_chi.tolist() == [True, False, False, True, False, True, False, False]
    assert cyl.tolist() == [False, False, False, False, False, True, False, False]
    probs = np.full((len(feats), 3, len(CLASSES)), 1.0 / len(CLASSES))
    p, gated = vein_gate(probs, feats)
    assert gated.tolist() == [False, True, True, False, True, True, False, False]
    np.testing.assert_allclose(p.sum(-1), 1.0)
    assert (p[gated][..., MB] == 0).all()
    np.testing.assert_array_equal(p[~gated], probs[~gated])


def test_apply_vein_gate_only_for_callable_candidates_and_switch():
    maps, centre = _maps("vein")
    feats = [{}, {}]
    head_p = np.zeros((2, 3, len(CLASSES)))
    head_p[0, :, MB], head_p[0, :, VEIN] = 0.9, 0.1
    head_p[1, :, MB], head_p[1, :, VEIN] = 0.01, 0.99  # cannot be called: no features computed
    out = apply_vein_gate(maps, [centre, centre], feats, head_p, {"inference": {}})
    assert feats[0]["vein_gate"] == 1.0 and feats[0]["microbleed_p_before_vein_gate"] == pytest.approx(0.9)
    assert "vein_gate" not in feats[1]
    assert out[0, :, MB].max() == 0
    np.testing.assert_array_equal(out[1], head_p[1])
    off = apply_vein_gate(maps, [centre, centre], [{}, {}], head_p, {"inference": {"vein_gate": False}})
    np.testing.assert_array_equal(off, head_p)
