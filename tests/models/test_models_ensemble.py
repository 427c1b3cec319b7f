"""Ensemble model folders: written from member folders, loaded by path, combined at inference (mean heatmap,
pooled committee), hashed over the members, and refused when the members do not share their inputs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_models_inference import tiny_maps

from cmbdetect.models.ensemble import member_name, set_operating_point, stage2_fitted_budget, write_ensemble
from cmbdetect.models.inference import detect
from cmbdetect.models.registry import create_random_model, load_model
from cmbdetect.physics.errors import InputError


def _ensemble(tmp_path, seeds):
    out = tmp_path / "ens"
    for k, s in enumerate(seeds):
        create_random_model(out / member_name(k), seed=s)
    return write_ensemble(out, command="test")


def test_ensemble_of_identical_members_equals_the_member(tmp_path, oblique_affine):
    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    ens = load_model(_ensemble(tmp_path, [0, 0]))
    assert len(ens.parts) == 2 and ens.metadata["ensemble"]["members"] == ["member-0", "member-1"]
    single = detect(maps, model=str(tmp_path / "ens" / "member-0"))
    pooled = detect(maps, model=ens)
    assert len(single) == len(pooled) >= 1
    for a, b in zip(single, pooled):
        assert np.allclose(a.centre_vox, b.centre_vox)
        assert all(abs(a.probabilities[c] - b.probabilities[c]) < 1e-9 for c in a.probabilities)
        assert abs(a.uncertainty - b.uncertainty) < 1e-9


def test_ensemble_of_different_members_pools_them(tmp_path, oblique_affine):
    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    path = _ensemble(tmp_path, [0, 5])
    ens = load_model(path)
    dets = detect(maps, model=str(path))
    one = detect(maps, model=str(path / "member-0"))
    two = detect(maps, model=str(path / "member-1"))
    assert dets and one and two
    assert [d.probabilities for d in dets] != [d.probabilities for d in one]
    assert [d.probabilities for d in dets] != [d.probabilities for d in two]
    # the hash covers the members: changing one member's weights changes it
    before = ens.sha256
    shutil.rmtree(path / "member-1")
    create_random_model(path / "member-1", seed=6)
    assert load_model(path).sha256 != before


def test_ensemble_members_must_share_inputs(tmp_path):
    path = _ensemble(tmp_path, [0, 1])
    meta_path = path / "member-1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["channels"] = ["magnitude", "swi"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="channels"):
        load_model(path)
    with pytest.raises(InputError, match="differ"):
        write_ensemble(path)
    with pytest.raises(InputError, match="no member"):
        write_ensemble(tmp_path / "empty")


def test_set_operating_point_changes_the_budget_and_the_screen_and_records_why(tmp_path, oblique_affine):
    """The ensemble's stage-1 budget and stage-2 screen are set in its metadata (atomically) with the validation
    figures; detect() then returns up to that many candidates.  Bad values are refused."""
    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    path = _ensemble(tmp_path, [0, 5])
    meta = json.loads((path / "metadata.json").read_text())
    meta["thresholds"]["heatmap"] = 0.0
    (path / "metadata.json").write_text(json.dumps(meta))
    set_operating_point(path, max_candidates=2, screen_floor=0.02, validation={"recall": 0.9})
    m = load_model(path)
    assert m.metadata["thresholds"]["max_candidates"] == 2
    assert m.metadata["inference"]["stage2_screen"] == {"floor": 0.02}
    assert m.metadata["metrics"]["held_out_validation"] == {"recall": 0.9}
    assert "low_rank_prior" not in m.metadata["inference"]
    assert 1 <= len(detect(maps, model=m)) <= 2
    # the budget stage 2 was fitted on comes from the members' training options, not the changed threshold
    fitted = stage2_fitted_budget(m)
    assert fitted == json.loads((path / "member-0" / "metadata.json").read_text())["thresholds"]["max_candidates"]
    set_operating_point(path, max_candidates=40, screen_floor=0.02, validation={}, low_rank_odds_ratio=0.01)
    assert load_model(path).metadata["inference"]["low_rank_prior"] == {"odds_ratio": 0.01}
    assert stage2_fitted_budget(load_model(path)) == fitted == load_model(path).spec.low_rank_from
    for bad in (0.0, -1.0):
        with pytest.raises(InputError):
            set_operating_point(path, max_candidates=40, screen_floor=0.02, validation={}, low_rank_odds_ratio=bad)
    assert len(detect(maps, model=str(path))) > 2
    assert not list(path.glob(".metadata.json.*"))
    with pytest.raises(InputError):
        set_operating_point(path, max_candidates=0, screen_floor=0.02, validation={})
    with pytest.raises(InputError):
        set_operating_point(tmp_path / "nowhere", max_candidates=10, screen_floor=0.02, validation={})
