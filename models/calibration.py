"""Probability calibration and prevalence adjustment for the stage-2 classifier.

1. Logit adjustment: a classifier trained with class weights ``w_c`` learns scores shifted by ``log w_c``;
   :func:`undo_class_weights` subtracts it so the outputs reflect the training class frequencies again.
2. Temperature scaling (Guo et al. 2017): one scalar ``T`` minimising the validation negative
   log-likelihood of ``softmax(logits / T)`` (:func:`fit_temperature`); with a per-class bias
   (bias-corrected temperature scaling, Alexandari et al. 2020: ``softmax(logits / T + b)``,
   :func:`fit_bias_temperature`) it also absorbs the difference between the classifier's training-set
   class mix and the validation candidates' natural one.
3. Prevalence (Bayes' rule, Saerens et al. 2002): with training prior ``pi_train`` of the microbleed class
   among candidates and a deployment prior ``pi_deploy``,
   ``odds' = odds * (pi_deploy / (1 - pi_deploy)) / (pi_train / (1 - pi_train))``; the other classes keep
   their ratios and share ``1 - p'`` (:func:`adjust_prevalence`).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from cmbdetect.physics.errors import InputError


def softmax(logits: np.ndarray, *, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (last axis)."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def undo_class_weights(logits: np.ndarray, class_weights) -> np.ndarray:
    """Subtract ``log w_c`` from each class logit (classes with weight 0 are left unchanged)."""
    w = np.asarray(class_weights, dtype=float)
    shift = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0)
    return np.asarray(logits, dtype=float) - shift


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, *, temperature: float = 1.0) -> float:
    """Mean NLL of integer ``labels`` under ``softmax(logits / temperature)``."""
    p = softmax(logits, temperature=temperature)
    lab = np.asarray(labels, dtype=int)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(lab)), lab], 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds=(0.05, 20.0)) -> float:
    """Temperature minimising the validation NLL (1.0 when there are fewer than 2 samples)."""
    logits = np.asarray(logits, dtype=float)
    if len(logits) < 2:
        return 1.0
    res = minimize_scalar(lambda lt: negative_log_likelihood(logits, labels, temperature=float(np.exp(lt))),
                          bounds=tuple(np.log(bounds)), method="bounded")
    return float(np.exp(res.x))


def fit_bias_temperature(logits: np.ndarray, labels: np.ndarray, *, l2: float = 1e-2) -> tuple[float, np.ndarray]:
    """``(T, b)`` minimising the NLL of ``softmax(logits / T + b)`` (+ ``l2 * |b|^2``, which keeps the bias
    of a class absent from the validation set finite).  ``(1, 0)`` with fewer than 2 samples."""
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=float)
    lab = np.asarray(labels, dtype=int)
    c = z.shape[-1]
    if len(z) < 2:
        return 1.0, np.zeros(c)

    def nll(params):
        t, b = np.exp(params[0]), params[1:]
        p = softmax(z / t + b)
        return -np.mean(np.log(np.clip(p[np.arange(len(lab)), lab], 1e-12, 1.0))) + l2 * float(b @ b)

    res = minimize(nll, np.zeros(c + 1), method="L-BFGS-B",
                   bounds=[(np.log(0.05), np.log(20.0))] + [(-10.0, 10.0)] * c)
    b = res.x[1:] - res.x[1:].mean()
    return float(np.exp(res.x[0])), b


def adjust_prevalence(probs: np.ndarray, *, pi_train: float, pi_deploy: float, index: int = 0) -> np.ndarray:
    """Bayes re-weighting of class ``index`` (microbleed) from prior ``pi_train`` to ``pi_deploy``.

    ``probs`` ``(..., C)`` rows summing to 1.  Raises :class:`InputError` for priors outside (0, 1).
    """
    for name, v in (("prevalence", pi_deploy), ("training prevalence", pi_train)):
        if not (0.0 < float(v) < 1.0):
            raise InputError(f"{name} must be strictly between 0 and 1, got {v}")
    return scale_prior_odds(probs, (pi_deploy / (1 - pi_deploy)) / (pi_train / (1 - pi_train)), index=index)


def scale_prior_odds(probs: np.ndarray, odds_ratio, *, index: int = 0) -> np.ndarray:
    """Bayes' rule for a prior whose odds for class ``index`` are ``odds_ratio`` times those the probabilities
    were calibrated at: that class's odds are multiplied by it, the other classes share the rest in their
    proportions.  ``probs`` ``(N, ..., C)`` rows summing to 1; ``odds_ratio`` a number or one per row ``[N]``."""
    ratio = np.asarray(odds_ratio, dtype=float)
    if not np.all(ratio > 0.0):
        raise InputError(f"prior odds ratio must be > 0, got {odds_ratio}")
    p = np.asarray(probs, dtype=float)
    pk = np.clip(p[..., index], 1e-12, 1 - 1e-12)
    odds = pk / (1 - pk) * (ratio if ratio.ndim == 0 else ratio.reshape((-1,) + (1,) * (pk.ndim - 1)))
    new_k = odds / (1 + odds)
    rest = np.delete(p, index, axis=-1)
    rest_sum = rest.sum(axis=-1, keepdims=True)
    rest = np.where(rest_sum > 0, rest / np.where(rest_sum > 0, rest_sum, 1.0), 1.0 / max(rest.shape[-1], 1))
    rest = rest * (1 - new_k)[..., None]
    return np.insert(rest, index, new_k, axis=-1)
