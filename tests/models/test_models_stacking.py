"""Stacking of the stage-1 score into the stage-2 microbleed probability."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.models.stacking import apply_stacking, fit_stacking


def test_fit_recovers_a_known_logistic_model():
    """Candidates drawn from logit p' = 0.8 logit p + 1.2 logit s1 - 1: the fit finds those weights."""
    rng = np.random.default_rng(0)
    n = 20000
    p = rng.uniform(0.01, 0.99, n)
    s1 = rng.uniform(0.02, 0.98, n)
    z = 0.8 * np.log(p / (1 - p)) + 1.2 * np.log(s1 / (1 - s1)) - 1.0
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    st = fit_stacking(p, s1, y, l2=0.0)
    assert st["a"] == pytest.approx(0.8, abs=0.06) and st["b"] == pytest.approx(1.2, abs=0.06)
    assert st["c"] == pytest.approx(-1.0, abs=0.1) and st["n"] == n and st["n_microbleed"] == int(y.sum())
    assert fit_stacking(p[:50], s1[:50], np.zeros(50, bool)) is None  # no microbleed: nothing to fit


def test_identity_weights_change_nothing_and_rows_stay_distributions():
    probs = np.array([[[0.6, 0.1, 0.2, 0.1], [0.3, 0.3, 0.2, 0.2]], [[0.05, 0.05, 0.1, 0.8], [1.0, 0, 0, 0]]])
    s1 = np.array([0.9, 0.1])
    same = apply_stacking(probs, s1, {"a": 1.0, "b": 0.0, "c": 0.0})
    np.testing.assert_allclose(same, probs, atol=2e-6)  # logits are clipped at 1e-6 from 0 and 1
    out = apply_stacking(probs, s1, {"a": 1.0, "b": 1.0, "c": 0.0})
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-9)
    assert out[0, 0, 0] > probs[0, 0, 0] and out[1, 0, 0] < probs[1, 0, 0]  # strong / weak stage-1 peak
    # the other classes keep their ratios
    assert out[0, 0, 2] / out[0, 0, 3] == pytest.approx(2.0)
    # hand value: logit p' = logit 0.6 + logit 0.9
    lo = np.log(0.6 / 0.4) + np.log(0.9 / 0.1)
    assert out[0, 0, 0] == pytest.approx(1 / (1 + np.exp(-lo)))
    np.testing.assert_array_equal(apply_stacking(probs, s1, None), probs)
