"""The vein model: the microbleed probability re-fitted from stage 2's verdict and the vein features in mm.

Stage 2 (the patch network) learned the veins of one simulator.  This model asks the question a reader asks by
scrolling, from measurements that do not depend on the simulator's look: is the dark, paramagnetic structure at
the candidate a ball or a tube that goes on, and is its field a sphere's or a cylinder's
(:func:`cmbdetect.models.features.vein_features`)?  It is an L2-regularised logistic regression

    logit p' = b + sum_k w_k (clip(x_k) - mean_k) / std_k

on a few features (:data:`VEIN_MODEL_FEATURES`; :func:`design_matrix`), the first of which is the logit of the
stage-2 microbleed probability (after the physics gate and the low-rank prior, before any vein gate).  A missing
feature (no positive chi spot, no void, no field fit) takes its training median and raises its indicator.  It is
fitted on the candidates of simulated cohorts whose stage-2 microbleed probability reaches
``VEIN_FEATURES_FROM_P`` (the others cannot be called and get no vein features), labelled microbleed when
within ``hit_mm`` of a true one (:mod:`cmbdetect.models.vein_model_train`); the coefficient of the stage-2 logit
is kept >= 0 (a better stage-2 verdict never lowers p').

At inference (:func:`apply_vein_model`, metadata key ``"vein_model"``), each such candidate's committee-mean
microbleed probability becomes p'; each head is rescaled so that the mean is p' (mass taken from microbleed goes
to vein; mass added to microbleed comes from the other classes in proportion).  With ``"gate": "veto"`` the hard
vein gate (:func:`cmbdetect.models.classifier.vein_gate`) still vetoes on top.  A model without ``"vein_model"``
keeps the vein gate alone (:func:`cmbdetect.models.inference.apply_vein_gate`, unchanged).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cmbdetect.models.detection import CLASSES

_MB = CLASSES.index("microbleed")
_VEIN = CLASSES.index("vein")

#: Stage-2 logits are clipped to this range before use (p of 0.9997 or 0.0003: beyond that the network's
#: confidence on unseen data is not information).
LOGIT_CLIP = 8.0


def _col(feats: list[dict], key: str) -> np.ndarray:
    return np.array([float(f.get(key, np.nan)) for f in feats], dtype=float)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log1p(np.maximum(a, 0.0) / np.maximum(b, 0.25))


def stage2_logit(p_microbleed) -> np.ndarray:
    """``logit(p)`` clipped to +-:data:`LOGIT_CLIP`."""
    p = np.clip(np.asarray(p_microbleed, float), 1e-12, 1 - 1e-12)
    return np.clip(np.log(p) - np.log1p(-p), -LOGIT_CLIP, LOGIT_CLIP)


#: Raw design features: name -> (function of (feature dicts, stage-2 p) -> column, clip range).  The ratios are
#: ``log(1 + length / width)`` (dimensionless: how many widths the structure goes on), so they carry over between
#: voxel sizes; peaks and sizes are in ppm and mm.
_DESIGN = {
    "stage2_logit": (lambda f, p: stage2_logit(p), (-LOGIT_CLIP, LOGIT_CLIP)),
    "chi_blob_ratio": (lambda f, p: _col(f, "chi_blob_ratio"), (0.0, 1.0)),
    "void_blob_ratio": (lambda f, p: _col(f, "void_blob_ratio"), (0.0, 1.0)),
    "chi_continuation_ratio": (lambda f, p: _ratio(_col(f, "chi_continuation_mm"), _col(f, "chi_width_mm")),
                               (0.0, 3.0)),
    "chi_continuation_long_ratio": (lambda f, p: _ratio(_col(f, "chi_continuation_long_mm"),
                                                        _col(f, "chi_width_mm")), (0.0, 3.0)),
    "void_continuation_ratio": (lambda f, p: _ratio(_col(f, "void_continuation_mm"), _col(f, "void_width_mm")),
                                (0.0, 3.0)),
    "void_continuation_long_ratio": (lambda f, p: _ratio(_col(f, "void_continuation_long_mm"),
                                                         _col(f, "void_width_mm")), (0.0, 3.0)),
    "fit_cylinder_minus_sphere_r2": (lambda f, p: _col(f, "fit_cylinder_r2") - _col(f, "fit_sphere_r2"),
                                     (-1.0, 1.0)),
    "fit_sphere_r2": (lambda f, p: _col(f, "fit_sphere_r2"), (-0.5, 1.0)),
    "log_chi_peak_ppm": (lambda f, p: np.log(np.maximum(_col(f, "chi_peak"), 1e-3)), (np.log(0.01), np.log(5.0))),
    "log_moment_ppm_mm3": (lambda f, p: np.log(np.maximum(_col(f, "integrated_chi_ppm_mm3"), 0.01)),
                           (np.log(0.01), np.log(500.0))),
    "chi_width_mm": (lambda f, p: _col(f, "chi_width_mm"), (0.0, 8.0)),
    "chi_missing": (lambda f, p: (~np.isfinite(_col(f, "chi_peak"))).astype(float), (0.0, 1.0)),
    "fit_missing": (lambda f, p: (~np.isfinite(_col(f, "fit_sphere_r2"))).astype(float), (0.0, 1.0)),
}

#: The features of the shipped kind of vein model (a subset of :data:`_DESIGN`, in this order).
VEIN_MODEL_FEATURES: tuple[str, ...] = tuple(_DESIGN)


def design_matrix(feats: list[dict], p_microbleed, names=VEIN_MODEL_FEATURES) -> np.ndarray:
    """Raw, clipped design ``[N, len(names)]`` (NaN where a feature is missing) from candidate feature dicts and
    their stage-2 microbleed probabilities."""
    p = np.asarray(p_microbleed, float).reshape(-1)
    cols = []
    for n in names:
        fn, (lo, hi) = _DESIGN[n]
        cols.append(np.clip(np.asarray(fn(feats, p), float).reshape(-1), lo, hi))
    return np.stack(cols, axis=1) if cols else np.zeros((len(p), 0))


def _standardise(x: np.ndarray, fill, mean, std) -> np.ndarray:
    x = np.where(np.isfinite(x), x, np.asarray(fill, float))
    return (x - np.asarray(mean, float)) / np.maximum(np.asarray(std, float), 1e-6)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, float)))


def fit_logistic(z: np.ndarray, y: np.ndarray, *, l2: float, weights=None, nonneg=(), iters: int = 100):
    """Deterministic L2 logistic regression by Newton's method on standardised ``z`` ``[N, K]``, labels ``y``
    (0/1): minimises ``sum w_i CE_i + l2/2 |coef|^2`` (intercept not penalised).  ``nonneg``: indices of
    coefficients held >= 0 (active-set: a coefficient that goes negative is fixed at 0 and the rest refitted).
    Returns ``(coef [K], intercept)``."""
    z = np.asarray(z, float)
    y = np.asarray(y, float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
    k = z.shape[1]
    free = np.ones(k, bool)
    for _ in range(k + 1):
        idx = np.flatnonzero(free)
        a = np.concatenate([z[:, idx], np.ones((len(y), 1))], axis=1)
        beta = np.zeros(a.shape[1])
        pen = np.full(a.shape[1], float(l2))
        pen[-1] = 0.0
        for _ in range(iters):
            p = _sigmoid(a @ beta)
            g = a.T @ (w * (p - y)) + pen * beta
            h = (a * (w * p * (1 - p))[:, None]).T @ a + np.diag(pen + 1e-9)
            step = np.linalg.solve(h, g)
            beta -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        coef = np.zeros(k)
        coef[idx] = beta[:-1]
        neg = [j for j in nonneg if free[j] and coef[j] < 0]
        if not neg:
            return coef, float(beta[-1])
        free[neg] = False
    return coef, float(beta[-1])


def fit_vein_model(feats: list[dict], p_microbleed, y, *, l2: float = 1.0, names=VEIN_MODEL_FEATURES,
                   weights=None) -> dict:
    """Fit the vein model on candidate rows; returns the ``"vein_model"`` parameters (features, fill, mean, std,
    coef, intercept, l2).  Deterministic."""
    x = design_matrix(feats, p_microbleed, names)
    fill = [float(np.nanmedian(c)) if np.isfinite(c).any() else 0.0 for c in x.T]
    xf = np.where(np.isfinite(x), x, np.asarray(fill))
    mean, std = xf.mean(axis=0), xf.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    z = _standardise(x, fill, mean, std)
    nonneg = [list(names).index("stage2_logit")] if "stage2_logit" in names else []
    coef, b = fit_logistic(z, y, l2=l2, weights=weights, nonneg=nonneg)
    return {"features": list(names), "fill": [float(v) for v in fill], "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "coef": [float(v) for v in coef], "intercept": float(b), "l2": float(l2)}


def predict_vein_model(section: dict, feats: list[dict], p_microbleed) -> np.ndarray:
    """p' of each candidate under the fitted ``section`` (:func:`fit_vein_model`)."""
    x = design_matrix(feats, p_microbleed, section["features"])
    z = _standardise(x, section["fill"], section["mean"], section["std"])
    return _sigmoid(z @ np.asarray(section["coef"], float) + float(section["intercept"]))


def set_microbleed_mean(head_p: np.ndarray, p_new) -> np.ndarray:
    """Per-head probabilities ``[N, H, C]`` rescaled so that each row's mean microbleed probability is
    ``p_new`` [N]: lowering moves the mass to vein in proportion per head, raising takes it from the other classes
    in proportion."""
    p = np.array(head_p, dtype=float, copy=True)
    old = p[..., _MB].mean(axis=1)
    new = np.asarray(p_new, float)
    for n in range(len(p)):
        if new[n] < old[n]:
            f = new[n] / old[n] if old[n] > 0 else 0.0
            moved = p[n, :, _MB] * (1 - f)
            p[n, :, _MB] -= moved
            p[n, :, _VEIN] += moved
        elif new[n] > old[n]:
            rest = 1.0 - p[n, :, _MB]
            f = (1 - new[n]) / (1 - old[n]) if old[n] < 1 else 1.0
            keep = np.where(rest > 0, rest * f / np.maximum(rest, 1e-300), 0.0)
            others = [c for c in range(p.shape[-1]) if c != _MB]
            p[n][:, others] *= keep[:, None]
            p[n, :, _MB] = 1.0 - rest * f
    return p


def apply_vein_model(maps, centres_vox, feats: list[dict], head_p: np.ndarray, metadata) -> np.ndarray:
    """The vein model of ``metadata["vein_model"]`` (``metadata``: a :class:`cmbdetect.models.spec.ModelSpec` or
    a metadata mapping) on per-head probabilities ``[N, heads, classes]``, in place of
    :func:`cmbdetect.models.inference.apply_vein_gate` (which it calls when ``"gate"`` is ``"veto"``, and alone
    when the metadata has no ``"vein_model"``).  The candidates with mean microbleed probability >=
    ``VEIN_FEATURES_FROM_P`` get the vein features, ``microbleed_p_before_vein_model`` and ``vein_model_p`` in
    their ``feats``."""
    from cmbdetect.models.features import add_vein_features
    from cmbdetect.models.inference import apply_vein_gate

    section = metadata.get("vein_model") if isinstance(metadata, Mapping) else metadata.vein_model
    if not section or len(head_p) == 0:
        return apply_vein_gate(maps, centres_vox, feats, head_p, metadata)
    p_mb = np.asarray(head_p, float)[..., _MB].mean(axis=1)
    idx = add_vein_features(maps, centres_vox, feats, p_mb)
    if not idx:
        return head_p
    sub = [feats[n] for n in idx]
    p_new = predict_vein_model(section, sub, p_mb[idx])
    head_p = np.array(head_p, dtype=float, copy=True)
    head_p[idx] = set_microbleed_mean(head_p[idx], p_new)
    for k, n in enumerate(idx):
        feats[n]["microbleed_p_before_vein_model"] = float(p_mb[n])
        feats[n]["vein_model_p"] = float(p_new[k])
    if section.get("gate") == "veto":
        from cmbdetect.models.inference import gate_vein_rows

        head_p = gate_vein_rows(head_p, feats, idx)
    return head_p


def rescore(section: dict | None, feats: list[dict], p_before, *, gate: bool) -> np.ndarray:
    """Offline: the committee-mean microbleed probability that inference would give candidates with vein
    features ``feats`` and stage-2 probability ``p_before`` (before any vein step), under the vein model
    ``section`` (None: none) and with the hard vein gate on or off."""
    from cmbdetect.models.classifier import vein_gate

    p = np.asarray(p_before, float).copy()
    if section:
        p = predict_vein_model(section, feats, p)
    if gate and len(p):
        probs = np.zeros((len(p), len(CLASSES)))
        probs[:, _MB], probs[:, _VEIN] = p, 1 - p
        p = vein_gate(probs, feats)[0][:, _MB]
    return p
