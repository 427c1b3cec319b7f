"""Both stages on one subject: ``detect(maps) -> list[Detection]``.

1. Channels (:mod:`channels`), resampled to the model's training spacing when the native grid differs by
   more than 10 % on any axis (coordinates are mapped back to the native grid).
2. Stage 1: tiled centre heatmap, max-pool NMS + mm distance suppression, threshold tuned for recall.
3. Physics features on the native grid; stage-2 committee on patches + features; logit adjustment,
   temperature, the stage-1 score folded in (stacking, when fitted), then one prior-odds step (deployment
   prevalence and the lower prior of candidates beyond the budget stage 2 was fitted on:
   :func:`prior_odds_ratios`), physics gate, vein gate;
   uncertainty for review order.
4. Duplicates merged: a second peak inside a microbleed's or calcification's extent is dropped
   (:func:`cmbdetect.models.detection.merge_duplicates`; metadata ``inference.merge_duplicates``, default on).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from typing import Mapping

from cmbdetect.models.calibration import scale_prior_odds
from cmbdetect.models.channels import map_back, physics_channels, resample_channels, resample_factors
from cmbdetect.models.classifier import (calibrated_probabilities, committee_logits, committee_uncertainty,
                                         extract_patches, features_vector, physics_gate)
from cmbdetect.models.detection import CLASSES, Detection, merge_duplicates
from cmbdetect.models.detector import find_candidates, predict_volume
from cmbdetect.models.features import candidate_features
from cmbdetect.models.registry import LoadedModel, load_model
from cmbdetect.models.spec import Calibration, ModelSpec, grid_settings
from cmbdetect.models.stacking import apply_stacking
from cmbdetect.physics.domain import detection_domain
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps


def model_grid(maps: PhysicsMaps, spec: ModelSpec | Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Normalised channels, detection domain (:func:`detection_domain`, ``inference.domain``) and voxel size (mm)
    on the grid the model works on, and whether that grid is a resampling of the native one.  ``spec``: a
    :class:`ModelSpec` (or metadata, checked into one)."""
    channels, clip, spacing, inf = (spec.channels, spec.clip, spec.spacing, spec.inference) \
        if isinstance(spec, ModelSpec) else grid_settings(spec)
    mask = detection_domain(maps, inf.domain, close_mm=inf.domain_close_mm)
    x, _ = physics_channels(maps, list(channels), clip=clip, domain=mask)
    vs = voxel_sizes(maps.affine)
    factors = resample_factors(maps.affine, None if spacing is None else list(spacing))
    if factors is None:
        return x, mask, vs, False
    x = resample_channels(x, factors)
    out_shape = np.array(x.shape[1:])
    mask = ndimage.zoom(mask.astype(np.uint8), factors, order=0, grid_mode=False).astype(bool)
    vs = vs * (np.array(maps.shape) - 1) / np.maximum(out_shape - 1, 1)
    return x, mask, vs, True


def _heatmap(part: LoadedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inf = part.spec.inference  # a member's own network settings (models/spec.py precedence)
    return predict_volume(part.detector, x, tile=inf.tile, overlap=inf.overlap, flips=inf.stage1_tta_flips)


def stage1_candidates(model: LoadedModel, x: np.ndarray, mask: np.ndarray, vs: np.ndarray, *,
                      threshold: float | None = None, max_candidates: int | None = None):
    """Stage-1 candidates on the model grid: ``(centres_vox, scores, diameters_mm)``, best first.  For an
    ensemble, the heatmap (and diameter map) is the mean of the members'; the threshold and the budget are the
    model's unless given."""
    th = model.spec.thresholds
    outs = [_heatmap(p, x) for p in model.parts]
    heat = np.mean([h for h, _ in outs], axis=0)
    size = np.mean([z for _, z in outs], axis=0)
    return find_candidates(heat, size, voxel_size=vs, stride=model.parts[0].detector.stride,
                           threshold=float(th.heatmap if threshold is None else threshold),
                           min_distance_mm=th.min_distance_mm,
                           max_candidates=int(th.max_candidates if max_candidates is None else max_candidates),
                           mask=mask)


def stage2_head_probabilities(logits: np.ndarray, stage1_scores, calibration: Calibration) -> np.ndarray:
    """One model's per-head probabilities ``[N, heads, classes]`` from its committee logits, at the prior its
    calibration was fitted at: logit adjustment, temperature and bias, then the stage-1 evidence folded in
    when the model has stacking (:mod:`cmbdetect.models.stacking`; ``stage1_scores`` [N], None: left out).
    The one stage-2 function of inference and training (the validation metrics)."""
    p = calibrated_probabilities(logits, calibration.as_dict())
    if calibration.stacking is not None and stage1_scores is not None:
        p = apply_stacking(p, stage1_scores, calibration.stacking.as_dict(), index=CLASSES.index("microbleed"))
    return p


def stage2_probabilities(part: LoadedModel, patches: np.ndarray, feats: list[dict], *, stage1_scores=None,
                         tta: bool | None = None) -> np.ndarray:
    """:func:`stage2_head_probabilities` of one model on candidate patches and physics features.  ``tta``: the
    8 patch flips (None: as the model's ``inference.stage2_tta``)."""
    sp = part.spec
    fv = features_vector(feats, list(sp.feature_names), list(sp.feature_mean), list(sp.feature_std))
    tta = sp.inference.stage2_tta if tta is None else tta
    return stage2_head_probabilities(committee_logits(part.classifier, patches, fv, tta=tta), stage1_scores,
                                     sp.calibration)


def prior_odds_ratios(model: LoadedModel, n: int, *, prevalence: float | None) -> list[np.ndarray]:
    """The one prior-odds step of stage 2: for each part (member) of ``model``, the factor ``[n]`` by which the
    microbleed odds of the ``n`` candidates (stage-1 order) are multiplied (Bayes' rule,
    :func:`cmbdetect.models.calibration.scale_prior_odds`).

    Stage 2 is calibrated on the validation candidates of the budget it was fitted on
    (:attr:`ModelSpec.fitted_budget`, 200 per subject), at their microbleed fraction
    (``calibration.training_prevalence``).  ``prevalence`` (the deployment prior) *replaces* that fraction: it is
    the prior probability that one of the ``fitted_budget`` best candidates of a subject is a microbleed, and
    the factor is ``odds(prevalence) / odds(training_prevalence)``; None keeps the training prior (factor 1).
    The candidates ranked at or beyond the fitted budget, which a larger operating point sends to stage 2, are
    far less often microbleeds: their factor is also multiplied by ``inference.low_rank_prior.odds_ratio``
    (measured on a held-out cohort by :mod:`cmbdetect.models.operating_point`), so that they are reported with
    the probability their rank warrants."""
    spec = model.spec
    rank_factor = np.ones(n)
    if spec.low_rank_from is not None:
        rank_factor[spec.low_rank_from:] = spec.inference.low_rank_odds_ratio
    out = []
    for part in model.parts:
        f = rank_factor.copy()
        if prevalence is not None:
            pi = part.spec.calibration.training_prevalence
            f *= (prevalence / (1 - prevalence)) / (pi / (1 - pi))
        out.append(f)
    return out


def _scale_rows(p: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``p`` [N, heads, classes] with the microbleed odds of row n multiplied by ``factor[n]`` (rows with a
    factor of exactly 1 untouched)."""
    rows = np.flatnonzero(factor != 1.0)
    if not len(rows):
        return p
    p = np.array(p, dtype=float, copy=True)
    p[rows] = scale_prior_odds(p[rows], factor[rows], index=CLASSES.index("microbleed"))
    return p


def committee_probabilities(model: LoadedModel, patches: np.ndarray, feats: list[dict], scores: np.ndarray, *,
                            prevalence: float | None) -> np.ndarray:
    """All members' per-head probabilities ``[N, heads, classes]`` for candidates in stage-1 order, after the one
    prior-odds step (:func:`prior_odds_ratios`: deployment prevalence and low-rank prior together).

    With ``inference.stage2_screen.floor = f`` (a large stage-1 budget), every candidate first gets one plain
    pass of each member (no flips); the flip-averaged pass (``inference.stage2_tta``) is then run only for
    those whose plain-pass microbleed or calcification probability reaches ``f`` in some head (at the training
    prior).  The rest keep their plain-pass probabilities: they are "vein" or "other" with confidence.  Without
    the screen, or when no member uses flips, every candidate gets the full pass."""
    if prevalence is not None and not (0.0 < float(prevalence) < 1.0):
        raise InputError(f"prevalence must be strictly between 0 and 1, got {prevalence}")
    floor = model.spec.inference.screen_floor
    uses_tta = any(p.spec.inference.stage2_tta for p in model.parts)

    def run(idx, tta):
        return [stage2_probabilities(p, patches[idx], [feats[i] for i in idx], stage1_scores=scores[idx], tta=tta)
                for p in model.parts]

    n = len(patches)
    if floor is None or not uses_tta:
        parts = run(np.arange(n), None)
    else:
        parts = run(np.arange(n), False)
        keep = np.concatenate(parts, axis=1)[..., [CLASSES.index("microbleed"), CLASSES.index("calcification")]] \
            .max(axis=(1, 2)) >= floor
        full = run(np.flatnonzero(keep), None)
        parts = [np.array(p_plain, copy=True) for p_plain in parts]
        for p_plain, p_full in zip(parts, full):
            p_plain[keep] = p_full
    factors = prior_odds_ratios(model, n, prevalence=None if prevalence is None else float(prevalence))
    return np.concatenate([_scale_rows(p, f) for p, f in zip(parts, factors)], axis=1)


def apply_vein_gate(maps: PhysicsMaps, centres_vox, feats: list[dict], head_p: np.ndarray,
                    spec: ModelSpec | Mapping) -> np.ndarray:
    """The vein gate (:func:`cmbdetect.models.classifier.vein_gate`) on per-head probabilities ``[N, heads,
    classes]``: the vein features (:func:`cmbdetect.models.features.add_vein_features`) are computed for the
    candidates whose mean microbleed probability is at least ``VEIN_FEATURES_FROM_P``, added to ``feats`` with
    ``vein_gate`` (1 gated, 0 not) and ``microbleed_p_before_vein_gate``.  Metadata ``inference.vein_gate``
    false: unchanged."""
    from cmbdetect.models.features import add_vein_features

    on = spec.inference.vein_gate if isinstance(spec, ModelSpec) else \
        (spec.get("inference") or {}).get("vein_gate", True) is not False  # metadata mapping
    if not on or len(head_p) == 0:
        return head_p
    p_mb = np.asarray(head_p, float)[..., CLASSES.index("microbleed")].mean(axis=1)
    idx = add_vein_features(maps, centres_vox, feats, p_mb)
    if not idx:
        return head_p
    for n in idx:
        feats[n]["microbleed_p_before_vein_gate"] = float(p_mb[n])
    return gate_vein_rows(head_p, feats, idx)


def gate_vein_rows(head_p: np.ndarray, feats: list[dict], idx: list[int]) -> np.ndarray:
    """Per-head probabilities ``[N, heads, classes]`` with the vein gate
    (:func:`cmbdetect.models.classifier.vein_gate`) applied to rows ``idx``, whose ``feats`` hold the vein
    features; each of them gets ``vein_gate`` (1 gated, 0 not)."""
    from cmbdetect.models.classifier import vein_gate

    sub, gated = vein_gate(head_p[idx], [feats[n] for n in idx])
    head_p = np.array(head_p, dtype=float, copy=True)
    head_p[idx] = sub
    for k, n in enumerate(idx):
        feats[n]["vein_gate"] = float(gated[k])
    return head_p


def detect(maps: PhysicsMaps, *, model: str | LoadedModel = "default",
           prevalence: float | None = None, calls_withheld: str | None = None) -> list[Detection]:
    """Candidate lesions of one subject, sorted by decreasing microbleed probability.

    ``model``: registered name, model folder, or a :class:`LoadedModel`.  ``prevalence``: the deployment
    prior probability that a stage-1 candidate is a microbleed (0 < p < 1); probabilities are re-weighted
    from the training prior stored in the model metadata by Bayes' rule.  ``None`` keeps the training prior.
    An ensemble averages the members' stage-1 heatmaps, and its stage-2 committee is all members' heads
    (probability = their mean; disagreement between members counts towards the uncertainty); a large
    stage-1 budget is screened by a plain stage-2 pass (:func:`committee_probabilities`).
    Labels follow the model's reader thresholds (:class:`LabelPolicy`); ``calls_withheld`` (a reason: the
    acquisition or the chi map cannot carry a call) keeps every candidate from a microbleed label, while its
    probabilities stay as computed.
    """
    if prevalence is not None and not (0.0 < float(prevalence) < 1.0):
        raise InputError(f"prevalence must be strictly between 0 and 1, got {prevalence}")
    m = model if isinstance(model, LoadedModel) else load_model(model)
    spec = m.spec
    policy = spec.thresholds.label_policy(calls_withheld=calls_withheld)
    x, mask, vs, resampled = model_grid(maps, spec)
    centres, scores, diam = stage1_candidates(m, x, mask, vs)
    if len(centres) == 0:
        return []
    patches = extract_patches(x, centres, spec.patch_size)
    native = map_back(centres, maps.shape, x.shape[1:]) if resampled else centres
    feats = candidate_features(maps, native)
    head_p = committee_probabilities(m, patches, feats, scores, prevalence=prevalence)
    head_p, gated = physics_gate(head_p, feats)
    if spec.vein_model is not None:  # the vein model (models/vein_model.py), else the vein gate alone
        from cmbdetect.models.vein_model import apply_vein_model
        head_p = apply_vein_model(maps, native, feats, head_p, spec)
    else:
        head_p = apply_vein_gate(maps, native, feats, head_p, spec)
    probs, unc, disagreement = committee_uncertainty(head_p)
    out = []
    for n in range(len(centres)):
        f = dict(feats[n])
        f.update(stage1_score=float(scores[n]), committee_disagreement=float(disagreement[n]),
                 physics_gate=float(gated[n]), stage1_diameter_mm=float(diam[n]))
        p = {c: float(probs[n, k]) for k, c in enumerate(CLASSES)}
        d_mm = float(f.get("diameter_mm", diam[n]))
        out.append(Detection(centre_vox=tuple(float(v) for v in native[n]), score=float(scores[n]),
                             probabilities=p, label=policy.label(p),
                             diameter_mm=d_mm if np.isfinite(d_mm) and d_mm > 0 else float(diam[n]),
                             features=f, uncertainty=float(unc[n])))
    if spec.inference.merge_duplicates:
        return merge_duplicates(out, voxel_sizes(maps.affine))
    out.sort(key=lambda d: -d.probabilities["microbleed"])
    return out
