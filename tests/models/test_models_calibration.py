"""Temperature scaling, logit adjustment and Bayes prevalence re-weighting on hand-computed cases."""
import numpy as np
import pytest

from cmbdetect.models.calibration import (adjust_prevalence, fit_temperature, negative_log_likelihood,
                                          scale_prior_odds, softmax, undo_class_weights)
from cmbdetect.physics.errors import InputError


def test_prevalence_bayes_hand_case():
    # p = 0.5 at training prior 0.5 -> deploy prior 0.2: odds 1 * (0.25 / 1) = 0.25 -> p' = 0.2
    p = np.array([[0.5, 0.3, 0.1, 0.1]])
    out = adjust_prevalence(p, pi_train=0.5, pi_deploy=0.2)
    assert abs(out[0, 0] - 0.2) < 1e-12
    assert np.allclose(out[0, 1:], 0.8 * np.array([0.6, 0.2, 0.2]))
    assert np.allclose(out.sum(axis=1), 1)
    # same prior: unchanged; works on [N, H, C]
    same = adjust_prevalence(np.stack([p, p], axis=1), pi_train=0.3, pi_deploy=0.3)
    assert np.allclose(same[:, 0], p)
    with pytest.raises(InputError):
        adjust_prevalence(p, pi_train=0.5, pi_deploy=1.0)


def test_scale_prior_odds_hand_case():
    # microbleed (index 0) at p 0.5 -> odds 1; a prior with a third of the odds: 1/3 -> p' = 0.25, the other
    # classes share 0.75 in their proportions (0.25 : 0.25 : 0 of the rest); ratio 1 is the identity
    p = np.array([[[0.5, 0.25, 0.25, 0.0], [0.8, 0.0, 0.0, 0.2]]])
    out = scale_prior_odds(p, 1.0 / 3.0, index=0)
    assert np.allclose(out[0, 0], [0.25, 0.375, 0.375, 0.0])
    assert abs(out[0, 1, 0] - (4.0 / 3.0) / (1.0 + 4.0 / 3.0)) < 1e-12 and np.allclose(out.sum(axis=-1), 1)
    assert np.allclose(scale_prior_odds(p, 1.0), p)
    # the prevalence re-weighting is this rule with the odds ratio of the two priors
    assert np.allclose(adjust_prevalence(p, pi_train=0.5, pi_deploy=0.2), scale_prior_odds(p, 0.25))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError):
            scale_prior_odds(p, bad)


def test_undo_class_weights_restores_prior_shift():
    logits = np.log(np.array([[0.2, 0.8]]))
    adj = undo_class_weights(logits + np.log([4.0, 1.0]), [4.0, 1.0])
    assert np.allclose(softmax(adj), [[0.2, 0.8]])


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    n = 4000
    true_logits = rng.normal(0, 1.5, size=(n, 3))
    p = softmax(true_logits)
    labels = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(true_logits * 3.0, labels)   # overconfident by a factor 3
    assert 2.5 < t < 3.5
    assert negative_log_likelihood(true_logits * 3, labels, temperature=t) < \
        negative_log_likelihood(true_logits * 3, labels)
    assert fit_temperature(np.zeros((1, 3)), np.array([0])) == 1.0


def test_bias_temperature_absorbs_prior_shift():
    from cmbdetect.models.calibration import fit_bias_temperature

    rng = np.random.default_rng(1)
    n = 3000
    true_logits = rng.normal(0, 1.5, size=(n, 3))
    p = softmax(true_logits)
    labels = np.array([rng.choice(3, p=row) for row in p])
    shifted = 2.0 * true_logits + np.array([2.0, 0.0, -1.0])   # overconfident and prior-shifted
    t, b = fit_bias_temperature(shifted, labels)
    assert 1.7 < t < 2.3
    rec = softmax(shifted / t + b)
    assert np.abs(rec - p).mean() < 0.03
    assert negative_log_likelihood(shifted / t + b, labels) < negative_log_likelihood(
        shifted, labels, temperature=fit_temperature(shifted, labels))
