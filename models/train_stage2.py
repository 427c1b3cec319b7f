"""Stage-2 training: candidate examples, the committee classifier, and its calibration.

Examples per subject: the true focal lesions (``truth_copies`` copies of each, centres jittered uniformly by up
to ``jitter`` model voxels per axis, as stage-1 centres are off by about that much), a few vein points
(label map code 3), random brain points ("other"), and - with hard-negative mining - every stage-1
candidate, labelled by :func:`cmbdetect.models.sampling.label_candidates` (unmatched ones are the hard
negatives).  Each committee head gets its own bootstrap (Poisson(1)) sample weights, so the heads disagree
where the data are thin.  Imbalance: class-weighted cross-entropy (inverse frequency) or plain CE.  Optional
intensity augmentation of the patches (:class:`cmbdetect.models.augment.IntensityAugmentation`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cmbdetect.models.augment import IntensityAugmentation, ResolutionAugmentation
from cmbdetect.models.calibration import fit_bias_temperature, undo_class_weights
from cmbdetect.models.classifier import extract_patches, features_vector
from cmbdetect.models.detection import CLASSES
from cmbdetect.models.features import candidate_features
from cmbdetect.models.losses import focal_cross_entropy, inverse_frequency_weights, weighted_cross_entropy
from cmbdetect.models.networks import PatchClassifier
from cmbdetect.models.sampling import label_candidates, vein_points
from cmbdetect.models.train_stage1 import cosine_lr
from cmbdetect.physics.geometry import voxel_sizes


@dataclass
class Stage2Set:
    """Patches ``[N, C, p, p, p]``, raw feature dicts, labels (indices into CLASSES), subject index."""

    patches: np.ndarray
    features: list[dict]
    labels: np.ndarray
    subject: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def concat_sets(sets: list[Stage2Set]) -> Stage2Set:
    sets = [s for s in sets if len(s)]
    if not sets:
        raise ValueError("no stage-2 examples")
    return Stage2Set(np.concatenate([s.patches for s in sets]), [f for s in sets for f in s.features],
                     np.concatenate([s.labels for s in sets]), np.concatenate([s.subject for s in sets]))


def subject_examples(subj, x: np.ndarray, mask: np.ndarray, ratio: np.ndarray, *, cand_centres,
                     patch: int, subject_index: int, include_truth: bool = True, extra_negatives: int = 4,
                     truth_copies: int = 1, jitter: float = 1.0, seed: int = 0) -> Stage2Set:
    """Stage-2 examples of one subject.  ``x``/``mask``: the model grid; ``ratio``: native voxel coordinates
    per model-grid voxel coordinate (per axis; ones when the model works on the native grid); ``cand_centres``:
    stage-1 candidates on the model grid (may be empty: no hard negatives); ``include_truth``: add jittered true
    lesions (``truth_copies`` copies, up to ``jitter`` voxels off), vein points and random points."""
    rng = np.random.default_rng([seed, subject_index])
    native_les = subj.lesion_vox
    native_vs = voxel_sizes(subj.maps.affine)
    model_les = native_les / ratio
    pts = [np.asarray(cand_centres, dtype=float).reshape(-1, 3)]
    if include_truth:
        for _ in range(max(int(truth_copies), 1)):
            pts.append(model_les + rng.uniform(-jitter, jitter, model_les.shape))
        if subj.label_map is not None:
            veins = vein_points(subj.label_map, n=extra_negatives, seed=seed + subject_index, voxel_size=native_vs)
            pts.append(veins / ratio)
        inside = np.argwhere(mask)
        pts.append(inside[rng.choice(len(inside), size=min(extra_negatives, len(inside)), replace=False)].astype(float))
    model_pts = np.concatenate(pts)
    native_pts = model_pts * ratio
    labels = label_candidates(native_pts, native_vs, native_les, subj.lesion_kinds, hit_mm=3.0,
                              label_map=subj.label_map, lesion_diameters_mm=subj.lesion_diameters_mm)
    feats = candidate_features(subj.maps, native_pts)
    return Stage2Set(extract_patches(x, model_pts, patch), feats, labels,
                     np.full(len(labels), subject_index, dtype=np.int64))


def feature_statistics(features: list[dict], names) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of the signed-log features (for standardisation)."""
    raw = features_vector(features, names, np.zeros(len(names)), np.ones(len(names))).astype(float)
    return raw.mean(axis=0).tolist(), np.maximum(raw.std(axis=0), 1e-3).tolist()


def train_classifier(net: PatchClassifier, data: Stage2Set, fv: np.ndarray, *, epochs: int, class_weighting: bool,
                     loss: str = "ce", batch: int = 32, lr: float = 2e-3, lr_schedule: str = "constant", seed: int = 0,
                     augment: IntensityAugmentation | None = None, channels=(),
                     resolution: ResolutionAugmentation | None = None, voxel_size=None, log=print) -> np.ndarray:
    """Train the committee; returns the class weights used (ones without class weighting).
    ``lr_schedule``: "constant" or "cosine" (per epoch, :func:`cosine_lr`); ``augment``/``channels``: intensity
    augmentation of each patch (random flips always); ``resolution``/``voxel_size`` (mm, the model grid's): the
    coarser-acquisition blur of :class:`ResolutionAugmentation`, before the intensity augmentation."""
    n_cls = len(CLASSES)
    cw = inverse_frequency_weights(data.labels, n_cls) if class_weighting else torch.ones(n_cls)
    rng = np.random.default_rng(seed)
    boot = torch.from_numpy(rng.poisson(1.0, size=(len(data), len(net.heads))).astype(np.float32))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    patches = torch.from_numpy(data.patches)
    feats = torch.from_numpy(fv)
    labels = torch.from_numpy(data.labels)
    net.train()
    for epoch in range(epochs):
        if lr_schedule == "cosine":
            for g in opt.param_groups:
                g["lr"] = cosine_lr(lr, epoch, epochs)
        torch.manual_seed(seed * 7919 + epoch)
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(data)))
        total = 0.0
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            x = patches[idx]
            flips = [a + 2 for a in range(3) if np.random.default_rng([seed, epoch, s, a]).random() < 0.5]
            if flips:
                x = torch.flip(x, dims=flips)
            if resolution is not None:
                rrng = np.random.default_rng([seed, epoch, s, 89])
                x = torch.from_numpy(np.stack([resolution.apply(p, voxel_size, rrng) for p in x.numpy()]))
            if augment is not None:
                arng = np.random.default_rng([seed, epoch, s, 97])
                x = torch.from_numpy(np.stack([augment.apply(p, channels, arng) for p in x.numpy()]))
            logits = net(x, feats[idx])
            per_head = torch.stack([
                (weighted_cross_entropy(logits[:, h], labels[idx], cw) if loss == "ce"
                 else focal_cross_entropy(logits[:, h], labels[idx], class_weights=cw)) * boot[idx, h]
                for h in range(logits.shape[1])], dim=1)
            lsum = per_head.mean()
            opt.zero_grad()
            lsum.backward()
            opt.step()
            total += lsum.item() * len(idx)
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            log(f"[stage 2] epoch {epoch + 1}/{epochs} loss {total / len(data):.4f}")
    net.eval()
    return cw.numpy()


def mean_logits(logits: np.ndarray, class_weights) -> np.ndarray:
    """Committee-mean logits after undoing the class weights."""
    return undo_class_weights(logits, class_weights).mean(axis=1)


def calibrate(logits: np.ndarray, labels: np.ndarray, class_weights) -> dict:
    """Bias-corrected temperature scaling on the validation candidates (their natural class mix), and the
    prevalence of microbleeds among them (the prior the calibrated probabilities then reflect)."""
    z = mean_logits(logits, class_weights)
    t, bias = fit_bias_temperature(z, labels)
    prev = float(np.clip(np.mean(labels == CLASSES.index("microbleed")), 0.01, 0.99)) if len(labels) else 0.5
    return {"method": "logit adjustment (class weights) + bias-corrected temperature scaling",
            "temperature": t, "bias": [float(v) for v in bias],
            "class_weights": [float(w) for w in class_weights], "training_prevalence": prev}


def microbleed_auc(probs_mb: np.ndarray, is_mb: np.ndarray) -> float:
    """ROC AUC of microbleed vs rest (:func:`cmbdetect.models.evaluate.roc_auc`), NaN if one class is missing."""
    from cmbdetect.models.evaluate import roc_auc

    auc = roc_auc(probs_mb, is_mb)
    return float("nan") if auc is None else auc
