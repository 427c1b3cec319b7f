"""Both stages on one subject: ``detect(maps) -> list[Detection]``.

1. Channels (:mod:`channels`), resampled to the model's training spacing when the native grid differs by
   more than 10 % on any axis (coordinates are mapped back to the native grid).
2. Stage 1: tiled centre heatmap, max-pool NMS + mm distance suppression, threshold tuned for recall.
3. Physics features on the native grid; stage-2 committee on patches + features; logit adjustment,
   temperature, the stage-1 score folded in (stacking, when fitted), prevalence (Bayes), the lower prior of
   candidates beyond the budget stage 2 was fitted on (:func:`apply_low_rank_prior`), physics gate;
   uncertainty for review order.
4. Duplicates merged: a second peak inside a microbleed's or calcification's extent is dropped
   (:func:`cmbdetect.models.detection.merge_duplicates`; metadata ``inference.merge_duplicates``, default on).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdetect.models.calibration import adjust_prevalence, scale_prior_odds
from cmbdetect.models.channels import map_back, physics_channels, resample_channels, resample_factors
from cmbdetect.models.classifier import (calibrated_probabilities, committee_logits, committee_uncertainty,
                                         extract_patches, features_vector, physics_gate)
from cmbdetect.models.detection import CLASSES, Detection, LabelPolicy, merge_duplicates
from cmbdetect.models.detector import find_candidates, predict_volume
from cmbdetect.models.features import candidate_features
from cmbdetect.models.registry import LoadedModel, load_model
from cmbdetect.models.stacking import apply_stacking
from cmbdetect.physics.domain import detection_domain
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps


def model_grid(maps: PhysicsMaps, metadata: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Normalised channels, detection domain (:func:`cmbdetect.physics.domain.detection_domain`, metadata ``inference.domain``) and voxel
    size (mm) on the grid the model works on, and whether that grid is a resampling of the native one."""
    inf = metadata.get("inference", {})
    mask = detection_domain(maps, inf.get("domain", "mask"), close_mm=float(inf.get("domain_close_mm", 0.0)))
    x, _ = physics_channels(maps, metadata["channels"], clip=float(metadata["normalisation"]["clip"]), domain=mask)
    vs = voxel_sizes(maps.affine)
    factors = resample_factors(maps.affine, metadata.get("spacing"))
    if factors is None:
        return x, mask, vs, False
    x = resample_channels(x, factors)
    out_shape = np.array(x.shape[1:])
    mask = ndimage.zoom(mask.astype(np.uint8), factors, order=0, grid_mode=False).astype(bool)
    vs = vs * (np.array(maps.shape) - 1) / np.maximum(out_shape - 1, 1)
    return x, mask, vs, True


def _heatmap(part: LoadedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inf = part.metadata.get("inference", {})
    flips = tuple(tuple(int(a) for a in f) for f in inf.get("stage1_tta_flips", [[]]))
    return predict_volume(part.detector, x, tile=int(inf.get("tile", 160)), overlap=int(inf.get("overlap", 16)),
                          flips=flips)


def stage1_candidates(model: LoadedModel, x: np.ndarray, mask: np.ndarray, vs: np.ndarray, *,
                      threshold: float | None = None, max_candidates: int | None = None):
    """Stage-1 candidates on the model grid: ``(centres_vox, scores, diameters_mm)``, best first.  For an
    ensemble, the heatmap (and diameter map) is the mean of the members'; the threshold and the budget are the
    model's unless given."""
    th = model.metadata["thresholds"]
    outs = [_heatmap(p, x) for p in model.parts]
    heat = np.mean([h for h, _ in outs], axis=0)
    size = np.mean([z for _, z in outs], axis=0)
    return find_candidates(heat, size, voxel_size=vs, stride=model.parts[0].detector.stride,
                           threshold=float(th["heatmap"] if threshold is None else threshold),
                           min_distance_mm=float(th["min_distance_mm"]),
                           max_candidates=int(th["max_candidates"] if max_candidates is None else max_candidates),
                           mask=mask)


def stage2_probabilities(part: LoadedModel, patches: np.ndarray, feats: list[dict], *,
                         prevalence: float | None, stage1_scores=None, tta: bool | None = None) -> np.ndarray:
    """One model's calibrated per-head probabilities ``[N, heads, classes]``: the stage-1 evidence folded in
    when the model has ``calibration.stacking`` (:mod:`cmbdetect.models.stacking`; ``stage1_scores`` [N]),
    then the prevalence re-weighting.  ``tta``: the 8 patch flips (None: as the model's
    ``inference.stage2_tta``)."""
    meta = part.metadata
    cal = meta["calibration"]
    fmeta = meta["features"]
    fv = features_vector(feats, fmeta["names"], fmeta["mean"], fmeta["std"])
    if tta is None:
        tta = bool(meta.get("inference", {}).get("stage2_tta", False))
    p = calibrated_probabilities(committee_logits(part.classifier, patches, fv, tta=tta), cal)
    if cal.get("stacking") is not None and stage1_scores is not None:
        p = apply_stacking(p, stage1_scores, cal["stacking"], index=CLASSES.index("microbleed"))
    if prevalence is not None:
        p = adjust_prevalence(p, pi_train=float(cal["training_prevalence"]), pi_deploy=float(prevalence),
                              index=CLASSES.index("microbleed"))
    return p


def committee_probabilities(model: LoadedModel, patches: np.ndarray, feats: list[dict], scores: np.ndarray, *,
                            prevalence: float | None) -> np.ndarray:
    """All members' per-head probabilities ``[N, heads, classes]`` for candidates in stage-1 order.

    With ``inference.stage2_screen = {"full_top": K, "floor": f}`` in the model's metadata (a large stage-1
    budget), every candidate first gets one plain pass of each member (no flips); the flip-averaged pass
    (``inference.stage2_tta``) is then run only for the ``K`` best stage-1 candidates and for any other whose
    plain-pass microbleed or calcification probability reaches ``f`` in some head (at the training prior).
    The rest keep their plain-pass probabilities: they are "vein" or "other" with confidence.  Without the key,
    or when no member uses flips, every candidate gets the full pass."""
    screen = model.metadata.get("inference", {}).get("stage2_screen")
    uses_tta = any(bool(p.metadata.get("inference", {}).get("stage2_tta", False)) for p in model.parts)

    def run(idx, tta, prev):
        return [stage2_probabilities(p, patches[idx], [feats[i] for i in idx], prevalence=prev,
                                     stage1_scores=scores[idx], tta=tta) for p in model.parts]

    n = len(patches)
    if not screen or not uses_tta or n <= int(screen["full_top"]):
        return np.concatenate(run(np.arange(n), None, prevalence), axis=1)
    plain = run(np.arange(n), False, None)
    keep = np.arange(n) < int(screen["full_top"])
    keep |= np.concatenate(plain, axis=1)[..., [CLASSES.index("microbleed"), CLASSES.index("calcification")]] \
        .max(axis=(1, 2)) >= float(screen["floor"])
    full = run(np.flatnonzero(keep), None, prevalence)
    out = []
    for part, p_plain, p_full in zip(model.parts, plain, full):
        if prevalence is not None:
            p_plain = adjust_prevalence(p_plain, pi_train=float(part.metadata["calibration"]["training_prevalence"]),
                                        pi_deploy=float(prevalence), index=CLASSES.index("microbleed"))
        p_plain = np.array(p_plain, copy=True)
        p_plain[keep] = p_full
        out.append(p_plain)
    return np.concatenate(out, axis=1)


def apply_low_rank_prior(head_p: np.ndarray, metadata: dict) -> np.ndarray:
    """Per-head probabilities ``[N, heads, classes]`` of candidates in stage-1 order, with the microbleed prior
    of those ranked at or beyond ``inference.low_rank_prior.from_rank`` scaled by its ``odds_ratio`` (Bayes'
    rule; :func:`cmbdetect.models.calibration.scale_prior_odds`); unchanged without that key.

    Stage 2 is calibrated on the candidates of the budget it was fitted on (200 per subject).  A model whose
    operating point takes more (:func:`cmbdetect.models.ensemble.set_operating_point`, for stage-1 recall) sends
    stage 2 candidates among which microbleeds are far rarer (figures: docs/benchmarks.md, held-out validation).
    The odds ratio is fitted on the held-out validation set (``benchmarks/stage1_recall.py
    --set-operating-point``), so these candidates are reported with the probability that their rank warrants."""
    tier = (metadata.get("inference") or {}).get("low_rank_prior")
    p = np.asarray(head_p, dtype=float)
    if not tier or len(p) <= int(tier["from_rank"]):
        return p
    p = p.copy()
    low = slice(int(tier["from_rank"]), None)
    p[low] = scale_prior_odds(p[low], float(tier["odds_ratio"]), index=CLASSES.index("microbleed"))
    return p


def apply_vein_gate(maps: PhysicsMaps, centres_vox, feats: list[dict], head_p: np.ndarray,
                    metadata: dict) -> np.ndarray:
    """The vein gate (:func:`cmbdetect.models.classifier.vein_gate`) on per-head probabilities ``[N, heads,
    classes]``: the vein features (:func:`cmbdetect.models.features.add_vein_features`) are computed for the
    candidates whose mean microbleed probability is at least ``VEIN_FEATURES_FROM_P``, added to ``feats`` with
    ``vein_gate`` (1 gated, 0 not) and ``microbleed_p_before_vein_gate``.  Metadata ``inference.vein_gate``
    false: unchanged."""
    from cmbdetect.models.classifier import vein_gate
    from cmbdetect.models.features import add_vein_features

    if (metadata.get("inference") or {}).get("vein_gate", True) is False or len(head_p) == 0:
        return head_p
    p_mb = np.asarray(head_p, float)[..., CLASSES.index("microbleed")].mean(axis=1)
    idx = add_vein_features(maps, centres_vox, feats, p_mb)
    if not idx:
        return head_p
    sub, gated = vein_gate(head_p[idx], [feats[n] for n in idx])
    head_p = np.array(head_p, dtype=float, copy=True)
    head_p[idx] = sub
    for k, n in enumerate(idx):
        feats[n]["vein_gate"] = float(gated[k])
        feats[n]["microbleed_p_before_vein_gate"] = float(p_mb[n])
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
    meta = m.metadata
    policy = LabelPolicy.from_metadata(meta, calls_withheld=calls_withheld)
    x, mask, vs, resampled = model_grid(maps, meta)
    centres, scores, diam = stage1_candidates(m, x, mask, vs)
    if len(centres) == 0:
        return []
    patches = extract_patches(x, centres, int(meta["patch_size"]))
    native = map_back(centres, maps.shape, x.shape[1:]) if resampled else centres
    feats = candidate_features(maps, native)
    head_p = committee_probabilities(m, patches, feats, scores, prevalence=prevalence)
    head_p = apply_low_rank_prior(head_p, meta)
    head_p, gated = physics_gate(head_p, feats)
    if "vein_model" in meta:  # the vein model (models/vein_model.py), else the vein gate alone
        from cmbdetect.models.vein_model import apply_vein_model
        head_p = apply_vein_model(maps, native, feats, head_p, meta)
    else:
        head_p = apply_vein_gate(maps, native, feats, head_p, meta)
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
    if bool(meta.get("inference", {}).get("merge_duplicates", True)):
        return merge_duplicates(out, voxel_sizes(maps.affine))
    out.sort(key=lambda d: -d.probabilities["microbleed"])
    return out
