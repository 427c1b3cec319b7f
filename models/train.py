"""Train both stages on a BIDS dataset and write a model folder (weights + metadata.json).

Order: maps (cached) -> train/validation split by subject -> stage 1 (balanced focal-loss heatmap, resumable
checkpoints) -> recall-tuned heatmap threshold on validation -> stage-2 examples (true lesions, veins,
random points, hard negatives = stage-1 false positives) -> committee classifier -> calibration on the
validation candidates (logit adjustment + temperature, training prevalence) -> validation metrics.
Deterministic for a seed (per-step seeding, deterministic torch algorithms, fixed thread count).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cmbdetect.models.augment import IntensityAugmentation, ResolutionAugmentation
from cmbdetect.models.channels import ALL_CHANNELS
from cmbdetect.models.classifier import calibrated_probabilities, committee_logits, features_vector, physics_gate
from cmbdetect.models.detection import CLASSES, reader_thresholds
from cmbdetect.models.inference import model_grid, stage2_head_probabilities
from cmbdetect.models.spec import calibration_spec
from cmbdetect.models.registry import FORMAT_VERSION, FEATURE_NAMES, base_metadata, build_networks, load_model, save_model
from cmbdetect.models.train_stage1 import (FOCAL_KINDS, Stage1Volume, lesion_best_scores, pad_volume,
                                           recall_threshold, train_detector, volume_candidates)
from cmbdetect.models.stacking import fit_stacking
from cmbdetect.models.train_stage2 import (calibrate, concat_sets, feature_statistics, microbleed_auc,
                                           subject_examples, train_classifier)
from cmbdetect.models.training_data import load_training_subjects
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_sizes


@dataclass(frozen=True)
class TrainOptions:
    """Training settings (all recorded in metadata.json)."""

    seed: int = 0
    channels: tuple[str, ...] = ALL_CHANNELS
    stage1_steps: int = 300
    batch: int = 4
    patch: int = 40
    base: int = 8
    depth: int = 2
    heatmap_loss: str = "focal"
    balanced: bool = True
    sigma_mm: float = 2.0
    #: heatmap sigma of a lesion = max(sigma_mm, sigma_size_fraction * diameter) (0: fixed sigma)
    sigma_size_fraction: float = 0.0
    lr: float = 2e-3
    #: "constant" or "cosine".  Measured on the seed-101 development cohort with the shipped recipe (seed 0,
    #: 1200 steps, 20 epochs): sensitivity at 0.5 FP/subject 0.873 constant vs 0.831 cosine (0.859 for a
    #: 2000-step/24-epoch cosine run on 72 subjects), so cosine is opt-in.
    lr_schedule: str = "constant"
    hard_negatives: bool = True
    #: intensity augmentation (per-group gains, noise) in both stages and the in-plane axis swap in stage 1,
    #: with ``truth_copies`` = 3 jittered (+-1.5 voxels) copies of each true lesion in stage 2.  Opt-in
    #: (``benchmarks/train_dev.py --augment``): on the seed-101 development cohort (72 subjects, 2000 steps, 20
    #: epochs, stage-2 TTA) it measured 0.817 sensitivity at 0.5 FP/subject, against 0.944 for the shipped
    #: recipe (56 subjects, 1200 steps, no augmentation) with the same TTA.
    augment: bool = False
    #: probability of the coarser-acquisition blur of stage-2 patches (:class:`ResolutionAugmentation`, up to
    #: 3 mm voxels; needs a fixed model grid, ``spacing``).  0 = off, the shipped recipe.
    stage2_resolution_augment: float = 0.0
    #: the same blur of stage-1 patches (the heatmap targets stay on the lesion centres).  0 = off
    stage1_resolution_augment: float = 0.0
    #: jittered copies of each true lesion among the stage-2 examples, and the jitter (model voxels per axis)
    truth_copies: int = 1
    truth_jitter: float = 1.0
    #: stage-2 test-time augmentation (mean logits over 8 flips) at inference, and for the calibration
    stage2_tta: bool = True
    #: stage-1 test-time flips (spatial axis sets, :func:`cmbdetect.models.detector.predict_volume`), used at
    #: inference and for the recall threshold and hard negatives.  Default: one plain pass; on the seed-101
    #: development cohort the four in-plane flips gave 0.944 (no change) and all eight 0.930 at 0.5 FP/subject,
    #: for 4-8x the stage-1 time.
    stage1_tta_flips: tuple = ((),)
    #: where the models look (:func:`cmbdetect.physics.domain.detection_domain`): "brain" = the magnitude brain
    #: mask, so juxtacortical lesions in the rim that V-SHARP erodes (or in a surface zone the field-reliability
    #: mask drops) stay visible on the magnitude channel; "mask" = only where chi is valid (older models).
    #: On the 88 training subjects 73 of 871 microbleed centres lie outside the chi mask, 33 outside the brain mask.
    domain: str = "brain"
    #: closing (mm) of the "brain" domain's surface notches (metadata ``inference.domain_close_mm``; 0 = none):
    #: the voids of cortical bleeds that reach the surface (:func:`cmbdetect.physics.domain.detection_domain`).
    #: Opt-in: member 0 of the shipped recipe retrained with 10 mm had validation stage-1 recall 0.932 against
    #: 0.948 without, and sensitivity at p >= 0.5 0.840 against 0.859 (same split, seed 0).
    domain_close_mm: float = 0.0
    #: voxel size (mm) of the model grid; None = the median voxel size of the training subjects.  The shipped
    #: recipe fixes 1 x 1 x 1.5 mm: with thick-slice cohorts in the data the median drifted to 1 x 1 x 2.24 mm,
    #: and resampling 1.5 mm test slices to it cost sensitivity on the development cohorts (seed 101: 0.887,
    #: seed 202: 0.831 for one model, against 0.873 / 0.904 before).
    spacing_mm: tuple | None = None
    #: re-fit the microbleed probability with the stage-1 heatmap score on the validation candidates
    #: (:mod:`cmbdetect.models.stacking`); off = stage 2 alone decides
    stacking: bool = True
    class_weighting: bool = True
    stage2_epochs: int = 20
    classifier_patch: int = 24
    #: stage-2 centre pooling (:class:`cmbdetect.models.networks.PatchClassifier` ``centre``): the width of the
    #: central cube of the last feature map pooled next to the global pooling (0: global pooling only, the
    #: architecture of earlier models).  Applies to new classifiers (a fine-tuned one keeps its architecture).
    classifier_centre: int = 2
    val_fraction: float = 0.2
    target_recall: float = 0.98
    #: lowest stage-1 threshold the recall tuning may choose.  0.02 suits the focal loss, whose heatmap peaks
    #: near 1 at lesion centres; a BCE-trained heatmap peaks near 0.005 (seed-0 validation subjects), all below
    #: 0.02, so the BCE ablations use 1e-4 and the candidate cap decides (``benchmarks/train_dev.py --ablation``).
    heatmap_floor: float = 0.02
    min_distance_mm: float = 3.0
    max_candidates: int = 200
    max_hard_negatives: int = 48
    #: with hard negatives: also draw ``max_hard_negatives`` candidates at random from the stage-1 ranks
    #: ``max_hard_negatives`` .. ``hard_negative_budget`` of each training subject (0 = only the top ones), so
    #: that stage 2 sees the weaker candidates a large budget (``max_candidates``) sends it, such as the
    #: satellite peaks a few mm from a strong lesion.
    hard_negative_budget: int = 0
    threads: int = 2
    init_classifier: bool = True


def _volume(subj, meta, patch, multiple) -> tuple[Stage1Volume, np.ndarray]:
    x, mask, vs, resampled = model_grid(subj.maps, meta)
    ratio = ((np.array(subj.maps.shape) - 1) / np.maximum(np.array(mask.shape) - 1, 1)) if resampled else np.ones(3)
    x, mask = pad_volume(x, mask, patch=patch, multiple=multiple)
    focal = np.array([k in FOCAL_KINDS for k in subj.lesion_kinds], dtype=bool)
    return Stage1Volume(x, mask, vs, subj.lesion_vox[focal] / ratio if focal.any() else np.zeros((0, 3)),
                        subj.lesion_diameters_mm[focal], [k for k, f in zip(subj.lesion_kinds, focal) if f]), ratio


def mined_candidates(det, vol: Stage1Volume, *, threshold: float, opts: TrainOptions, flips,
                     subject_index: int) -> np.ndarray:
    """Stage-1 candidates of a training volume for stage 2 (model grid): the ``max_hard_negatives`` best (true
    hits and the hardest false positives) and, with ``hard_negative_budget`` larger, as many again drawn
    uniformly (seeded per subject) from the ranks below them down to that budget."""
    n_top, budget = int(opts.max_hard_negatives), int(opts.hard_negative_budget)
    c = volume_candidates(det, vol, threshold=threshold, min_distance_mm=opts.min_distance_mm,
                          max_candidates=max(n_top, budget), flips=flips)[0]
    if len(c) <= n_top:
        return c
    rng = np.random.default_rng([opts.seed, subject_index, 31])
    low = rng.choice(np.arange(n_top, len(c)), size=min(n_top, len(c) - n_top), replace=False)
    return np.concatenate([c[:n_top], c[np.sort(low)]])


def validation_examples(subjects, vols, ratios, val_idx, val_cands, threshold: float, opts: TrainOptions, *,
                        logits):
    """Stage-2 examples of the validation subjects' stage-1 candidates at ``threshold`` (no added truths), their
    stage-1 scores and their ``logits`` (a function of one subject's examples), in the same order.  The logits
    are computed one subject at a time and the patches dropped (``[N, 0]``), so that a large candidate budget
    (``max_candidates`` in the thousands) does not hold every validation patch at once."""
    ex_val, s1, lg = [], [], []
    for i in val_idx:
        c, s, _ = val_cands[i]
        keep = s >= threshold
        ex = subject_examples(subjects[i], vols[i].x, vols[i].mask, ratios[i], cand_centres=c[keep],
                              patch=opts.classifier_patch, subject_index=i, include_truth=False, seed=opts.seed)
        lg.append(logits(ex))
        ex_val.append(replace(ex, patches=np.zeros((len(ex), 0), dtype=np.float32)))
        s1.append(np.asarray(s[keep], dtype=float))
    return ex_val, (np.concatenate(s1) if s1 else np.zeros(0)), lg


def stage1_stacking(va_logits, labels, s1, calibration: dict) -> dict | None:
    """:func:`cmbdetect.models.stacking.fit_stacking` on every committee head's calibrated microbleed probability
    of the validation candidates (one shared set of weights)."""
    p = calibrated_probabilities(va_logits, calibration)[..., CLASSES.index("microbleed")]
    heads = p.shape[1]
    is_mb = np.repeat(np.asarray(labels) == CLASSES.index("microbleed"), heads)
    return fit_stacking(p.reshape(-1), np.repeat(np.asarray(s1, dtype=float), heads), is_mb)


def validation_metrics(p_mb: np.ndarray, labels: np.ndarray, *, stage1_recall: float, n_subjects: int,
                       n_microbleeds: int) -> dict:
    """Validation figures of a model from its stage-1 candidates on the validation subjects: ``p_mb`` their
    microbleed probabilities and ``labels`` their classes (:data:`CLASSES` indices; empty when stage 1 found
    nothing).  Sensitivity is over all ``n_microbleeds`` true microbleeds of the subjects (a lesion that stage 1
    missed counts as missed); FP per subject over ``n_subjects``."""
    p_mb, labels = np.asarray(p_mb, dtype=float), np.asarray(labels, dtype=int)
    is_mb = labels == CLASSES.index("microbleed")
    called = p_mb >= 0.5
    return {
        "split": "validation", "n_validation_subjects": int(n_subjects),
        "stage1_recall_focal_lesions": float(stage1_recall),
        "stage1_candidates_per_subject": float(len(labels) / max(n_subjects, 1)),
        "stage2_auc_microbleed_vs_rest": microbleed_auc(p_mb, is_mb),
        "sensitivity_microbleed_at_p0.5": float((called & is_mb).sum() / max(n_microbleeds, 1)),
        "fp_per_subject_at_p0.5": float((called & ~is_mb).sum() / max(n_subjects, 1)),
        "calcifications_called_microbleed": int((called & (labels == CLASSES.index("calcification"))).sum()),
    }


def _new_metadata(subjects, opts: TrainOptions) -> dict:
    spacing = np.round(np.median([voxel_sizes(s.maps.affine) for s in subjects], axis=0), 2) \
        if opts.spacing_mm is None else np.asarray(opts.spacing_mm, dtype=float)
    det = {"in_channels": len(opts.channels), "base": opts.base, "depth": opts.depth}
    cls = {"in_channels": len(opts.channels), "n_features": len(FEATURE_NAMES), "n_classes": len(CLASSES),
           "base": 8, "n_heads": 3, "centre": int(opts.classifier_centre)}
    return base_metadata(channels=opts.channels, spacing=spacing, detector_arch=det, classifier_arch=cls,
                         patch_size=opts.classifier_patch)


def train(bids_dir, out_dir: str | Path, *, labels: str | Path | None = None,
          options: TrainOptions = TrainOptions(), resume: bool = False, init: str | None = None, init_member: int = 0,
          cache_dir: str | Path | None = None, command: str = "", log=print) -> Path:
    """Train a model on ``bids_dir`` (one BIDS folder or a list) and write it to ``out_dir``; returns it.

    ``labels``: None (simulator ground truth) or a folder of per-subject TSV / label maps
    (:mod:`training_data`).  ``init``: a model name or folder to fine-tune from (of an ensemble, its member
    ``init_member`` modulo the number of members; its architecture,
    channels and spacing are kept).  ``resume``: continue from ``out_dir/checkpoint.pt``.
    """
    t0 = time.time()
    opts = options
    train_stage2 = opts.stage2_epochs > 0
    if not train_stage2 and (init is None or not opts.init_classifier):
        raise InputError("0 stage-2 epochs re-fits the calibration of a trained classifier: it needs --init "
                         "(without --new-classifier)")
    torch.set_num_threads(opts.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(opts.seed)
    out = Path(out_dir)
    ck_path = out / "checkpoint.pt"
    subjects = load_training_subjects(bids_dir, cache_dir=cache_dir or out / "cache", labels=labels, log=log)
    out.mkdir(parents=True, exist_ok=True)
    if len(subjects) < 2:
        raise InputError("training needs at least 2 subjects (one is held out for validation)")
    order = np.random.default_rng(opts.seed).permutation(len(subjects))
    n_val = max(1, int(round(opts.val_fraction * len(subjects))))
    val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    if init is not None:
        base = load_model(init)
        if base.members:
            base = base.members[init_member % len(base.members)]
            log(f"[init] fine-tuning from ensemble member {base.path.name} of {init}")
        meta = {k: v for k, v in base.metadata.items()}
        det, cls = base.detector, base.classifier
        if not opts.init_classifier:  # stage 2 from scratch (ablations that change only stage 2)
            arch = meta["architecture"]
            meta["architecture"] = {**arch, "classifier": {**arch["classifier"],
                                                           "centre": int(opts.classifier_centre)}}
            torch.manual_seed(opts.seed)
            cls = build_networks(meta)[1]
    else:
        meta = _new_metadata([subjects[i] for i in train_idx], opts)
        meta["inference"] = {**meta.get("inference", {}), "domain": opts.domain,
                             "domain_close_mm": float(opts.domain_close_mm)}
        det, cls = build_networks(meta)
    vols, ratios = zip(*[_volume(s, meta, opts.patch, det.multiple) for s in subjects])
    augment = IntensityAugmentation(clip=float(meta["normalisation"]["clip"])) if opts.augment else None
    channels = tuple(meta["channels"])
    opt = torch.optim.Adam(det.parameters(), lr=opts.lr)
    start = 0
    if resume and ck_path.is_file():
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        det.load_state_dict(ck["detector"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["step"])
        log(f"[resume] stage 1 from step {start}")

    def checkpoint(step: int) -> None:
        tmp = ck_path.with_name(".checkpoint.pt.tmp")
        torch.save({"step": torch.tensor(step), "detector": det.state_dict(), "optimizer": opt.state_dict()}, tmp)
        tmp.replace(ck_path)

    stage1_resolution = ResolutionAugmentation(probability=float(opts.stage1_resolution_augment)) \
        if opts.stage1_resolution_augment > 0 else None
    if opts.stage1_steps > start:
        train_detector(det, [vols[i] for i in train_idx], steps=opts.stage1_steps, start_step=start, optimizer=opt,
                       patch=opts.patch, batch=opts.batch, loss=opts.heatmap_loss, balanced=opts.balanced,
                       sigma_mm=opts.sigma_mm, sigma_size_fraction=opts.sigma_size_fraction, seed=opts.seed,
                       lr_schedule=opts.lr_schedule, augment=augment, channels=channels,
                       resolution=stage1_resolution, checkpoint=checkpoint, log=log)
    det.eval()
    # recall-tuned threshold on validation subjects
    floor = opts.heatmap_floor
    flips = tuple(tuple(f) for f in opts.stage1_tta_flips)
    val_cands = {i: volume_candidates(det, vols[i], threshold=floor, min_distance_mm=opts.min_distance_mm,
                                      max_candidates=opts.max_candidates, flips=flips) for i in val_idx}
    best = np.concatenate([lesion_best_scores(c, s, vols[i]) for i, (c, s, _) in val_cands.items()])
    threshold = recall_threshold(best, target_recall=opts.target_recall, floor=floor)
    stage1_recall = float(np.mean(best >= threshold)) if best.size else float("nan")
    log(f"[stage 1] threshold {threshold:.3f}: validation recall {stage1_recall:.3f} ({best.size} lesions)")
    # stage-2 examples
    ex_train = []
    for i in train_idx:
        c = mined_candidates(det, vols[i], threshold=threshold, opts=opts, flips=flips, subject_index=i) \
            if opts.hard_negatives and train_stage2 else np.zeros((0, 3))
        ex_train.append(subject_examples(subjects[i], vols[i].x, vols[i].mask, ratios[i], cand_centres=c,
                                         patch=opts.classifier_patch, subject_index=i, truth_copies=opts.truth_copies,
                                         jitter=opts.truth_jitter, seed=opts.seed))
    tr = concat_sets(ex_train)
    log(f"[stage 2] {len(tr)} training examples: " +
        ", ".join(f"{c} {int((tr.labels == k).sum())}" for k, c in enumerate(CLASSES)))
    names = list(meta["features"]["names"])  # a fine-tuned model keeps the features its classifier was built for
    fmean, fstd = (meta["features"]["mean"], meta["features"]["std"]) if init is not None and opts.init_classifier \
        else feature_statistics(tr.features, names)
    meta["features"] = {"names": names, "mean": fmean, "std": fstd}
    fv = features_vector(tr.features, names, fmean, fstd)
    resolution = None
    if opts.stage2_resolution_augment > 0:
        if meta.get("spacing") is None:
            raise InputError("stage-2 resolution augmentation needs a fixed model grid (--spacing)")
        resolution = ResolutionAugmentation(probability=float(opts.stage2_resolution_augment))
    if train_stage2:
        cw = train_classifier(cls, tr, fv, epochs=opts.stage2_epochs, class_weighting=opts.class_weighting,
                              lr_schedule=opts.lr_schedule, seed=opts.seed, augment=augment, channels=channels,
                              resolution=resolution, voxel_size=meta.get("spacing"), log=log)
    else:  # recalibration only: the init classifier and the class weights it was trained with
        cw = np.asarray(meta["calibration"]["class_weights"], dtype=float)
        log("[stage 2] classifier kept (0 epochs): calibration and stacking re-fitted")

    def logits_of(ex):
        return committee_logits(cls, ex.patches, features_vector(ex.features, names, fmean, fstd),
                                tta=opts.stage2_tta)

    ex_val, s1_val, lg_val = validation_examples(subjects, vols, ratios, val_idx, val_cands, threshold, opts,
                                                 logits=logits_of)
    n_val_ex = sum(len(e) for e in ex_val)
    use_val = n_val_ex >= 4  # else calibration falls back to the training examples
    va, va_logits = (concat_sets(ex_val), np.concatenate(lg_val)) if use_val else (tr, logits_of(tr))
    meta["inference"] = {**meta.get("inference", {}), "stage2_tta": bool(opts.stage2_tta),
                         "stage1_tta_flips": [list(f) for f in opts.stage1_tta_flips]}
    meta["calibration"] = calibrate(va_logits, va.labels, cw)
    if opts.stacking and use_val:
        meta["calibration"]["stacking"] = stage1_stacking(va_logits, va.labels, s1_val, meta["calibration"])
    meta["thresholds"] = {"heatmap": threshold, "min_distance_mm": opts.min_distance_mm,
                          "max_candidates": opts.max_candidates, **reader_thresholds()}
    p_mb, val_labels = np.zeros(0), np.zeros(0, int)  # stage 1 left no validation candidate
    if n_val_ex:  # the validation candidates, however few; never the training set
        val_set, logits = concat_sets(ex_val), np.concatenate(lg_val)
        head_p = stage2_head_probabilities(  # the stage-2 function of inference
            logits, s1_val if use_val else None, calibration_spec(meta["calibration"], n_classes=len(CLASSES)))
        head_p, _ = physics_gate(head_p, val_set.features)
        p_mb, val_labels = head_p.mean(axis=1)[:, CLASSES.index("microbleed")], val_set.labels
    meta["metrics"] = validation_metrics(
        p_mb, val_labels, stage1_recall=stage1_recall, n_subjects=len(val_idx),
        n_microbleeds=sum(sum(k == "microbleed" for k in subjects[i].lesion_kinds) for i in val_idx))
    meta["training"] = {
        "command": command, "seed": opts.seed, "options": {k: (list(v) if isinstance(v, tuple) else v)
                                                           for k, v in asdict(opts).items()},
        "init": init, "wall_time_s": round(time.time() - t0, 1), "threads": opts.threads,
        "torch": torch.__version__,
        "data": {"bids_dirs": [Path(d).name for d in ([bids_dir] if isinstance(bids_dir, (str, Path)) else bids_dir)],
                 "labels": "groundtruth" if labels is None else str(labels),
                 "n_subjects": len(subjects), "train": [subjects[i].label for i in train_idx],
                 "validation": [subjects[i].label for i in val_idx],
                 "n_lesions": {k: int(sum(s.lesion_kinds.count(k) for s in subjects)) for k in FOCAL_KINDS},
                 "voxel_sizes_mm": sorted({tuple(np.round(voxel_sizes(s.maps.affine), 2).tolist())
                                           for s in subjects})},
    }
    meta["metrics"] = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                       for k, v in meta["metrics"].items()}
    meta["name"] = out.name
    meta["format_version"] = FORMAT_VERSION
    save_model(out, detector=det, classifier=cls, metadata=meta)
    ck_path.unlink(missing_ok=True)
    log(f"[done] model written to {out} in {time.time() - t0:.0f} s; metrics: {meta['metrics']}")
    return out
