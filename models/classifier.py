"""Stage 2: classify each candidate as microbleed / calcification / vein / other.

Inputs per candidate: a cubic multi-channel patch of the normalised channels centred on it, and the
physics features of ``physics.sources.lesion_features`` measured on a small region grown around it
(:func:`cmbdetect.physics.domain.candidate_region`).  Outputs go through logit adjustment, temperature scaling, optional prevalence
re-weighting (:mod:`cmbdetect.models.calibration`) and the **physics gate** (:func:`physics_gate`):
calcification versus microbleed is decided by the sign of the susceptibility, never by appearance.
"""
from __future__ import annotations

import numpy as np
import torch

from cmbdetect.models.calibration import softmax, undo_class_weights
from cmbdetect.models.detection import CLASSES
from cmbdetect.models.networks import PatchClassifier
from cmbdetect.physics.constants import MICROBLEED_MAX_MOMENT_PPM_MM3

_MB = CLASSES.index("microbleed")
_CALC = CLASSES.index("calcification")
_OTHER = CLASSES.index("other")
_VEIN = CLASSES.index("vein")


def extract_patches(channels: np.ndarray, centres_vox, size: int) -> np.ndarray:
    """``[N, C, size, size, size]`` patches of ``channels`` ``[C, X, Y, Z]`` centred on the nearest voxel of
    each centre (zero outside the volume)."""
    c = np.asarray(centres_vox, dtype=float).reshape(-1, 3)
    half = size // 2
    padded = np.pad(channels, [(0, 0)] + [(half, half)] * 3)
    out = np.empty((len(c), channels.shape[0], size, size, size), dtype=np.float32)
    shape = np.array(channels.shape[1:])
    for n, ijk in enumerate(np.clip(np.rint(c).astype(int), 0, shape - 1)):
        out[n] = padded[:, ijk[0]:ijk[0] + size, ijk[1]:ijk[1] + size, ijk[2]:ijk[2] + size]
    return out


def features_vector(features: list[dict], names, mean, std) -> np.ndarray:
    """Signed-log transform ``sign(x) log1p|x|`` then standardisation ``(x - mean) / std``; missing or
    non-finite values become the mean (0 after standardisation)."""
    raw = np.array([[float(f.get(k, np.nan)) for k in names] for f in features], dtype=float).reshape(-1, len(names))
    x = np.sign(raw) * np.log1p(np.abs(raw))
    x = (x - np.asarray(mean)) / np.maximum(np.asarray(std), 1e-6)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


#: Test-time augmentation of stage 2: the 8 combinations of flips of the three patch axes.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def committee_logits(net: PatchClassifier, patches: np.ndarray, feats: np.ndarray, *,
                     batch: int = 64, tta: bool = False) -> np.ndarray:
    """Raw committee logits ``[N, heads, classes]`` (eval mode, batched).  ``tta``: the mean logits over the
    8 axis flips of each patch (:data:`TTA_FLIPS`; the training augmentation's flips), which averages out
    the orientation noise of a single pass."""
    net.eval()
    out = []
    flips = TTA_FLIPS if tta else ((),)
    with torch.inference_mode():
        for s in range(0, len(patches), batch):
            x, f = torch.from_numpy(patches[s:s + batch]), torch.from_numpy(feats[s:s + batch])
            out.append(np.mean([net(torch.flip(x, dims=d) if d else x, f).numpy() for d in flips], axis=0))
    if not out:
        return np.zeros((0, len(net.heads), net.heads[0].out_features), dtype=np.float32)
    return np.concatenate(out)


def calibrated_probabilities(logits: np.ndarray, calibration: dict) -> np.ndarray:
    """Per-head probabilities ``[N, H, C]``: ``softmax((logits - log w) / T + b)`` (class weights ``w``,
    temperature ``T``, bias ``b`` from ``calibration``).  The stage-1 stacking and the prevalence re-weighting
    follow in :func:`cmbdetect.models.inference.stage2_probabilities`."""
    z = undo_class_weights(logits, calibration.get("class_weights", [1.0] * logits.shape[-1]))
    z = z / float(calibration.get("temperature", 1.0)) + np.asarray(calibration.get("bias", 0.0), dtype=float)
    return softmax(z)


def physics_gate(probs: np.ndarray, features: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Forbid "microbleed" where the physics rules it out.

    - Diamagnetic: ``integrated_chi_ppm_mm3 < 0`` **and** ``dipole_sign < 0`` (both say so).  Blood products are
      paramagnetic, so the microbleed probability is moved to calcification.
    - Too strong: ``integrated_chi_ppm_mm3`` (ppm * mm^3) above the largest moment a microbleed can carry
      (:data:`cmbdetect.physics.constants.MICROBLEED_MAX_MOMENT_PPM_MM3`, a 10 mm lesion at 10 ppm).  Such a
      source is a failed chi map, a large haemorrhage or air; the microbleed probability is moved to "other".

    Returns ``(probs, gated)`` with ``gated`` a bool array (either rule).  Works on ``[N, C]`` or ``[N, H, C]``.
    """
    p = np.array(probs, dtype=float, copy=True)
    moment = np.array([float(f.get("integrated_chi_ppm_mm3", 0.0)) for f in features], dtype=float)
    diamagnetic = (moment < 0) & np.array([float(f.get("dipole_sign", 0.0)) < 0 for f in features], dtype=bool)
    too_strong = moment > MICROBLEED_MAX_MOMENT_PPM_MM3
    for rows, to in ((diamagnetic, _CALC), (too_strong, _OTHER)):
        if rows.any():
            p[rows, ..., to] += p[rows, ..., _MB]
            p[rows, ..., _MB] = 0.0
    return p, diamagnetic | too_strong


def vein_evidence(features: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tube_void, ball_chi, cylinder_field)`` bool arrays from the vein features of
    :func:`cmbdetect.models.features.vein_features` (missing or NaN features count as no evidence):

    - tube void: the magnitude void goes on along its axis, both ways at least ``VEIN_CONTINUATION_FACTOR`` times
      its width across it and at least ``VEIN_MIN_CONTINUATION_MM``, or one way at least ``VEIN_ONE_SIDED_FACTOR``
      times its width and at least ``VEIN_MIN_ONE_SIDED_MM``;
    - ball chi: there is a positive chi spot and it does not go on (longer side below
      ``VEIN_CONTINUATION_FACTOR`` times its width): the mark of a bleed, also of one beside a vein;
    - cylinder field: the local field fits an infinite cylinder better than a magnetised sphere by
      ``VEIN_FIT_R2_MARGIN`` in R^2, with a cylinder R^2 of at least ``VEIN_FIT_MIN_R2``
      (constants in :mod:`cmbdetect.physics.constants`)."""
    from cmbdetect.physics.constants import (VEIN_CONTINUATION_FACTOR, VEIN_FIT_MIN_R2, VEIN_FIT_R2_MARGIN,
                                            VEIN_MIN_CONTINUATION_MM, VEIN_MIN_ONE_SIDED_MM, VEIN_ONE_SIDED_FACTOR)

    def col(key):
        return np.array([float(f.get(key, np.nan)) for f in features], dtype=float)

    with np.errstate(invalid="ignore"):
        w = col("void_width_mm")
        tube = (col("void_continuation_mm") >= np.maximum(VEIN_CONTINUATION_FACTOR * w, VEIN_MIN_CONTINUATION_MM)) | \
            (col("void_continuation_long_mm") >= np.maximum(VEIN_ONE_SIDED_FACTOR * w, VEIN_MIN_ONE_SIDED_MM))
        ball = np.isfinite(col("chi_peak")) & \
            ~(col("chi_continuation_long_mm") >= VEIN_CONTINUATION_FACTOR * col("chi_width_mm"))
        sph, cyl = col("fit_sphere_r2"), col("fit_cylinder_r2")
        cylinder = (cyl - sph >= VEIN_FIT_R2_MARGIN) & (cyl >= VEIN_FIT_MIN_R2)
    return tube, ball, cylinder


def vein_gate(probs: np.ndarray, features: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Forbid "microbleed" for candidates that are veins by geometry or field (:func:`vein_evidence`): a
    microbleed is an isolated ball, a vein a tube that goes on beyond the candidate.  Gated: the void is a tube
    and the chi is no ball, or the field is a cylinder's.  Their microbleed probability moves to vein.
    Returns ``(probs, gated)``; works on ``[N, C]`` or ``[N, H, C]``."""
    p = np.array(probs, dtype=float, copy=True)
    tube, ball, cylinder = vein_evidence(features)
    gated = (tube & ~ball) | cylinder
    if gated.any():
        p[gated, ..., _VEIN] += p[gated, ..., _MB]
        p[gated, ..., _MB] = 0.0
    return p, gated


def committee_uncertainty(head_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean_probs [N, C], uncertainty [N], disagreement [N])``.

    uncertainty = entropy of the committee mean / log C (0..1; includes disagreement, since heads that
    disagree flatten the mean); disagreement = mutual information (entropy of mean - mean entropy of
    heads) / log C, the query-by-committee term.
    """
    p = np.asarray(head_probs, dtype=float)
    mean = p.mean(axis=1)
    c = p.shape[-1]
    h_mean = -(mean * np.log(np.clip(mean, 1e-12, 1.0))).sum(-1) / np.log(c)
    h_heads = (-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(-1)).mean(axis=1) / np.log(c)
    return mean, np.clip(h_mean, 0.0, 1.0), np.clip(h_mean - h_heads, 0.0, 1.0)
