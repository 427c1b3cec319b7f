"""The shipped default model: registered by name, small, loadable with weights_only=True, documented
(training command, seeds, data, metrics), and runnable end to end on a tiny oblique subject."""
from __future__ import annotations

import torch
from test_models_inference import tiny_maps

from cmbdetect.models.ensemble import stage2_fitted_budget
from cmbdetect.models.inference import detect
from cmbdetect.models.registry import WEIGHTS_DIR, load_model


def test_shipped_default_model_is_small_documented_and_runs(oblique_affine):
    folder = WEIGHTS_DIR / "default"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    for p in files:
        if p.suffix == ".pt":
            state = torch.load(p, map_location="cpu", weights_only=True)
            assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    m = load_model("default")
    meta = m.metadata
    assert meta["name"] == "default" and "cmbdetect train" in meta["training"]["command"]
    assert len(m.parts) == len(meta["ensemble"]["members"]) >= 1
    for part in m.parts:
        pm = part.metadata
        assert pm["training"]["seed"] in meta["training"]["seeds"]
        assert pm["training"]["data"]["n_subjects"] >= 20 and "stage1_recall_focal_lesions" in pm["metrics"]
        assert pm["channels"] == meta["channels"] and pm["inference"]["stage2_tta"] is True
    # the operating point: the budget that reached 0.98 stage-1 recall on the held-out validation cohort, and
    # the lower prior of the candidates beyond the budget stage 2 was fitted on, measured there
    val = meta["metrics"]["held_out_validation"]
    assert val["stage1_recall_microbleeds"] >= 0.98 and meta["thresholds"]["max_candidates"] == val["max_candidates"]
    assert meta["inference"]["low_rank_prior"] == val["low_rank_prior"]
    assert meta["inference"]["low_rank_prior"]["from_rank"] == stage2_fitted_budget(m) < val["max_candidates"]
    assert 0 < meta["inference"]["low_rank_prior"]["odds_ratio"] < 1
    dets = detect(tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5))), model=m)
    assert all(abs(sum(d.probabilities.values()) - 1) < 1e-6 for d in dets)
