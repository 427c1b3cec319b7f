"""The vein model (models/vein_model.py): fit, apply, metadata, and its place in detect."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmbdetect.models import vein_model as vm
from cmbdetect.models.detection import CLASSES
from cmbdetect.models.features import vein_features
from test_vein_gate import _maps  # noqa: E402  (a ball and a tortuous vein on a tiny oblique grid)

MB, VEIN = CLASSES.index("microbleed"), CLASSES.index("vein")
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "default"


def _rows(n=400, seed=0):
    """Synthetic candidate rows: microbleeds are balls (high blob ratio, short continuation), veins tubes; the
    stage-2 probability is uninformative (0.5-0.99 for both)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    feats = []
    for yy in y:
        w = rng.uniform(1.5, 3.0)
        blob = rng.uniform(0.45, 0.9) if yy else rng.uniform(0.02, 0.3)
        go = w * (rng.uniform(0.3, 1.2) if yy else rng.uniform(2.5, 6.0))
        feats.append({"chi_blob_ratio": blob, "void_blob_ratio": blob, "chi_width_mm": w, "void_width_mm": w,
                      "chi_continuation_mm": go, "chi_continuation_long_mm": go * 1.3,
                      "void_continuation_mm": go, "void_continuation_long_mm": go * 1.3, "chi_peak": 0.5,
                      "integrated_chi_ppm_mm3": 10.0, "fit_sphere_r2": 0.5, "fit_cylinder_r2": 0.4})
    return feats, rng.uniform(0.5, 0.99, n), y.astype(float)


def test_fit_recovers_a_separable_rule_and_is_deterministic():
    feats, p, y = _rows()
    sec = vm.fit_vein_model(feats, p, y, l2=1.0)
    again = vm.fit_vein_model(feats, p, y, l2=1.0)
    assert json.dumps(sec) == json.dumps(again)
    q = vm.predict_vein_model(sec, *_rows(200, seed=1)[:2])
    y_test = _rows(200, seed=1)[2]
    assert ((q >= 0.5) == (y_test > 0)).mean() == 1.0
    coef = dict(zip(sec["features"], sec["coef"]))
    assert coef["chi_blob_ratio"] > 0 and coef["void_continuation_ratio"] < 0
    assert coef["stage2_logit"] >= 0  # held non-negative


def test_nonneg_constraint_and_l2_shrinks():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 2))
    y = (z[:, 0] - z[:, 1] + 0.3 * rng.normal(size=300) > 0).astype(float)
    coef, _ = vm.fit_logistic(z, y, l2=0.01, nonneg=[1])
    assert coef[1] == 0 and coef[0] > 0
    strong, _ = vm.fit_logistic(z, y, l2=1000.0)
    weak, _ = vm.fit_logistic(z, y, l2=0.01)
    assert np.abs(strong).sum() < 0.2 * np.abs(weak).sum()


def test_set_microbleed_mean_keeps_rows_normalised():
    rng = np.random.default_rng(0)
    hp = rng.dirichlet(np.ones(len(CLASSES)), size=(5, 3))
    new = np.array([0.0, 0.1, hp[2, :, MB].mean(), 0.95, 1.0])
    out = vm.set_microbleed_mean(hp, new)
    np.testing.assert_allclose(out.sum(-1), 1.0)
    np.testing.assert_allclose(out[..., MB].mean(axis=1), new, atol=1e-12)
    assert (out >= 0).all()
    assert (out[1, :, VEIN] >= hp[1, :, VEIN]).all()  # lowered: the mass goes to vein


def test_apply_without_vein_model_is_the_vein_gate():
    from cmbdetect.models.inference import apply_vein_gate

    maps, centre = _maps("vein")
    hp = np.zeros((2, 3, len(CLASSES)))
    hp[:, :, MB], hp[:, :, VEIN] = 0.9, 0.1
    f1, f2 = [{}, {}], [{}, {}]
    a = vm.apply_vein_model(maps, [centre, centre], f1, hp, {"inference": {}})
    b = apply_vein_gate(maps, [centre, centre], f2, hp, {"inference": {}})
    np.testing.assert_array_equal(a, b)
    assert f1 == f2


def _section_from_rows(gate="none"):
    feats, p, y = _rows()
    sec = vm.fit_vein_model(feats, p, y, l2=1.0)
    sec["gate"] = gate
    return sec


@pytest.mark.parametrize("gate", ["none", "veto"])
def test_ball_keeps_its_probability_and_tube_is_lowered(gate):
    """Features measured by physics/vesselness + dipole_fit on tiny synthetic volumes, a model fitted on the
    synthetic rule: the ball stays callable, the tortuous vein does not."""
    sec = _section_from_rows(gate)
    out = {}
    for kind in ("ball", "vein"):
        maps, centre = _maps(kind)
        hp = np.zeros((1, 2, len(CLASSES)))
        hp[0, :, MB], hp[0, :, VEIN] = 0.9, 0.1
        feats = [{"integrated_chi_ppm_mm3": 10.0}]
        res = vm.apply_vein_model(maps, [centre], feats, hp, {"vein_model": sec, "inference": {}})
        out[kind] = res[0, :, MB].mean()
        assert feats[0]["microbleed_p_before_vein_model"] == pytest.approx(0.9)
        assert feats[0]["vein_model_p"] == pytest.approx(out[kind]) or gate == "veto"
        np.testing.assert_allclose(res.sum(-1), 1.0)
    assert out["ball"] >= 0.5
    assert out["vein"] < 0.2


def test_rescore_matches_apply():
    sec = _section_from_rows("veto")
    maps, centre = _maps("ball")
    f = vein_features(maps, centre, chi_scale=0.005)
    f["integrated_chi_ppm_mm3"] = 10.0
    hp = np.zeros((1, 1, len(CLASSES)))
    hp[0, 0, MB], hp[0, 0, VEIN] = 0.7, 0.3
    a = vm.apply_vein_model(maps, [centre], [{"integrated_chi_ppm_mm3": 10.0}], hp, {"vein_model": sec})
    b = vm.rescore(sec, [f], [0.7], gate=True)
    assert a[0, 0, MB] == pytest.approx(b[0], abs=1e-9)


def test_metadata_round_trip(tmp_path, tiny_random_model):
    from cmbdetect.models.registry import load_model
    from cmbdetect.models.vein_model_train import write_vein_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_random_model, folder)
    sec = _section_from_rows("veto")
    write_vein_model(folder, sec)
    meta = load_model(folder).metadata
    assert meta["vein_model"] == json.loads(json.dumps(sec))
    feats, p, _ = _rows(50, seed=4)
    np.testing.assert_array_equal(vm.predict_vein_model(meta["vein_model"], feats, p),
                                  vm.predict_vein_model(sec, feats, p))


def test_label_candidates_one_positive_per_microbleed():
    from types import SimpleNamespace

    from cmbdetect.models.vein_model_train import label_candidates

    subj = SimpleNamespace(maps=SimpleNamespace(affine=np.eye(4)), lesion_vox=np.array([[10., 10, 10], [30, 30, 30]]),
                           lesion_kinds=["microbleed", "calcification"])
    rows = [{"centre_vox": [10, 10, 11], "p": 0.6}, {"centre_vox": [10, 12, 10], "p": 0.9},
            {"centre_vox": [30, 30, 30], "p": 0.9}, {"centre_vox": [50, 50, 50], "p": 0.9}]
    y, w = label_candidates(rows, subj)
    assert y.tolist() == [0, 1, 0, 0] and w.tolist() == [0, 1, 1, 1]


def test_shipped_vein_model_loads_and_runs_in_detect(tiny_random_model, oblique_affine):
    """The shipped ``vein_model`` section in a tiny end-to-end ``detect`` (tiny random networks, so every
    candidate reaches the vein step): the candidates that reach it carry the model's outputs."""
    from cmbdetect.models.inference import detect
    from cmbdetect.models.registry import load_model
    from test_models_inference import tiny_maps

    shipped = json.loads((SHIPPED / "metadata.json").read_text())
    if "vein_model" not in shipped:
        pytest.fail("the shipped model has no vein_model section")
    sec = shipped["vein_model"]
    assert sec["held_out_family"] == ["tortuous"] and "tortuous" not in sec["training_families"]
    assert len(sec["coef"]) == len(sec["features"]) == len(sec["mean"]) == len(sec["std"])
    assert set(sec["features"]) <= set(vm.VEIN_MODEL_FEATURES)
    model = load_model(tiny_random_model)
    with_vm = model.with_metadata(dict(copy.deepcopy(model.metadata), vein_model=sec))
    maps = tiny_maps(oblique_affine())
    plain = detect(maps, model=model)
    dets = detect(maps, model=with_vm)
    reached = [d for d in dets if "vein_model_p" in d.features]
    assert plain and reached
    for d in reached:
        p_gate = vm.rescore(sec, [d.features], [d.features["microbleed_p_before_vein_model"]],
                            gate=sec.get("gate") == "veto")[0]
        assert d.probabilities["microbleed"] == pytest.approx(p_gate, abs=1e-6)
