"""Stage-1 evidence in the stage-2 microbleed probability (stacking).

Stage 2 sees a patch and physics features around a candidate; it never sees how strongly the stage-1 centre
heatmap fired there (its positives are the true lesions themselves, not stage-1 peaks).  Both are evidence, so
the microbleed probability is re-fitted on the validation candidates of stage 1 by a logistic regression

    logit p'_mb = a * logit p_mb + b * logit s1 + c

(``p_mb``: the calibrated stage-2 probability of one committee head before any prevalence re-weighting;
``s1``: the candidate's stage-1 heatmap peak).  The other classes keep their ratios and share ``1 - p'_mb``.
The three numbers are stored in ``metadata.json`` under ``calibration.stacking``; a model without them is
used as it is.
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-6


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def fit_stacking(p_mb, s1, is_mb, *, l2: float = 1e-2, iterations: int = 50) -> dict | None:
    """``{"a", "b", "c", "n", "n_microbleed"}`` of the logistic regression above (Newton's method with a small
    L2 penalty on ``a`` and ``b``, deterministic), or ``None`` when the candidates hold fewer than 5
    microbleeds or 5 others (too few to fit)."""
    y = np.asarray(is_mb, dtype=float).reshape(-1)
    if y.sum() < 5 or (1 - y).sum() < 5:
        return None
    x = np.stack([_logit(p_mb).reshape(-1), _logit(s1).reshape(-1), np.ones_like(y)], axis=1)
    w = np.array([1.0, 0.0, 0.0])
    pen = np.diag([l2, l2, 0.0]) * len(y)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + pen @ (w - np.array([1.0, 0.0, 0.0]))
        hess = (x * (p * (1 - p))[:, None]).T @ x + pen
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"a": float(w[0]), "b": float(w[1]), "c": float(w[2]), "n": int(len(y)), "n_microbleed": int(y.sum())}


def apply_stacking(head_probs, s1, stacking: dict | None, *, index: int = 0) -> np.ndarray:
    """Per-head probabilities ``[N, H, C]`` (or ``[N, C]``) with the microbleed column (``index``) re-fitted from
    the stage-1 scores ``s1`` ``[N]``; unchanged when ``stacking`` is ``None``."""
    p = np.array(head_probs, dtype=float, copy=True)
    if stacking is None or p.size == 0:
        return p
    z = _logit(np.asarray(s1, dtype=float)).reshape((-1,) + (1,) * (p.ndim - 2))
    new = 1.0 / (1.0 + np.exp(-(stacking["a"] * _logit(p[..., index]) + stacking["b"] * z + stacking["c"])))
    rest = 1.0 - p[..., index]
    scale = np.where(rest > _EPS, (1.0 - new) / np.maximum(rest, _EPS), 0.0)
    others = [k for k in range(p.shape[-1]) if k != index]
    p[..., others] *= scale[..., None]
    # a head that put everything on microbleed has no ratios to keep: the remainder goes to the last class
    p[..., -1] += np.where(rest > _EPS, 0.0, 1.0 - new)
    p[..., index] = new
    return p
