"""The stage-1 operating point fitted on held-out ranks (models/operating_point.py)."""
from __future__ import annotations

import json

import pytest

from cmbdetect.models.operating_point import (fit_operating_point, held_out_report, low_rank_odds_ratio,
                                              write_operating_point)
from cmbdetect.models.registry import create_random_model, load_model


def _rows():
    """Two subjects of 40 candidates each above threshold; 10 microbleeds ranked 0..8 and one at rank 25;
    one microbleed never found."""
    rows = [{"subject": f"d_sub-0{k % 2}", "rank": r, "score": 0.5, "cnr": 2.0, "voxel_mm": [1.0, 1.0, 1.5],
             "diameter_mm": 3.0, "subject_candidates": 40} for k, r in enumerate([0, 1, 2, 3, 4, 5, 6, 7, 8, 25])]
    rows.append({**rows[0], "rank": None, "score": None, "cnr": 0.5})
    return rows


def test_report_and_low_rank_ratio_by_hand():
    rep = held_out_report(_rows(), threshold=0.1, budget=10, target=0.9)
    assert rep["all"]["n"] == 11 and rep["all"]["operating_point"] == pytest.approx(9 / 11)
    assert rep["all"]["budget_for_0.9"] == 26 and rep["cnr>=1"]["n"] == 10
    assert rep["all"]["budget_for_0.9"] is not None
    assert held_out_report(_rows(), threshold=0.1, budget=10, target=1.0)["all"]["budget_for_1"] is None
    ratio, counts = low_rank_odds_ratio(_rows(), threshold=0.1, fitted=10, budget=30)
    assert counts == {"candidates_top": 20, "candidates_low": 40, "microbleeds_top": 9, "microbleeds_low": 1}
    p_top, p_low = 9.5 / 21, 1.5 / 41
    assert ratio == pytest.approx((p_low / (1 - p_low)) / (p_top / (1 - p_top)))


def test_fit_and_write_operating_point(tmp_path):
    folder = create_random_model(tmp_path / "m", seed=0)  # fitted budget 10 (thresholds.max_candidates)
    model = load_model(folder)
    point = fit_operating_point(model, _rows(), n_subjects=2, target=0.9, budget_step=20, screen_floor=0.05,
                                benchmark="test")
    assert point.max_candidates == 40 and 0 < point.low_rank_odds_ratio < 1
    assert point.validation["low_rank_prior"] == {"from_rank": 10, "odds_ratio": point.low_rank_odds_ratio}
    assert point.validation["stage1_recall_microbleeds"] == pytest.approx(10 / 11, abs=1e-4)
    write_operating_point(folder, point)
    again = load_model(folder)
    assert again.spec.thresholds.max_candidates == 40 and again.spec.low_rank_from == 10
    assert again.spec.inference.low_rank_odds_ratio == point.low_rank_odds_ratio
    assert json.loads((folder / "metadata.json").read_text())["metrics"]["held_out_validation"]["benchmark"] == "test"
    assert fit_operating_point(model, _rows(), n_subjects=2, target=1.0) is None
