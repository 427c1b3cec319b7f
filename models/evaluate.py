"""Detection metrics in the VALDO (MICCAI 2021, task 2) style: per-lesion hits, never voxel accuracy.

VALDO scores microbleed *detection* by F1 and the absolute count difference per case (its Dice and
volume difference need segmentations, which point outputs do not have; its lesions are connected
components of a mask, here they are centres matched within ``hit_mm``).  Both pooled F1 and the mean
per-subject F1 are reported; FP per subject, FROC and a stage-2 AUC are added for tuning.

Matching: a prediction *hits* a true lesion when their centres are less than ``hit_mm`` apart (world
mm).  Matching is one-to-one: each lesion can be hit by at most one prediction and each prediction hits at
most one lesion, so two predictions on one lesion count 1 TP + 1 FP.  Within each subject the matching is
a maximum-cardinality assignment (Hungarian, :func:`scipy.optimize.linear_sum_assignment`, pairs at
or beyond ``hit_mm`` forbidden; among maximum matchings the smallest total distance), so the result does
not depend on the order of the predictions.

Operating point (sensitivity, precision, F1, FP per subject, count error): the predictions whose label is
``"microbleed"`` (or ``None``), i.e. the tool's own decision.  Count error: mean over subjects of
``|n_predicted_microbleeds - n_true|``.

FROC: every prediction (any label) ranked by ``score`` (the predicted microbleed probability); for each
distinct score threshold t the predictions with score >= t are matched anew (Hungarian), giving
sensitivity (TP / all true lesions) against mean FP per subject.  Sensitivity at 0.5/1/2/4 FP per subject
is the best sensitivity reached at a mean FP rate no greater than the target (a step function, no
interpolation); ``None`` where the curve starts above the target.

Stage-2 AUC: ROC AUC (Mann-Whitney, average ranks for ties) of ``score`` for true candidates (centre
within ``hit_mm`` of any true lesion, not one-to-one: the classifier cannot be blamed for a duplicate)
against false ones; ``None`` when either group is empty.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from cmbdetect.pipeline.io.atomic import write_json, write_text

#: Mean FP-per-subject rates at which sensitivity is reported.
FP_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

#: One-line definitions written into ``metrics.json`` beside the numbers.
DEFINITIONS: dict[str, str] = {
    "hit": "prediction and true microbleed centres closer than hit_mm (world mm), one-to-one "
           "(maximum matching, Hungarian)",
    "operating_point": "tp/fp/fn, sensitivity, precision, f1, fp_per_subject use predictions labelled "
                       "microbleed; counts pooled over subjects",
    "count_error": "mean over subjects of |predicted microbleeds - true microbleeds|",
    "mean_subject_f1": "mean of per-subject F1 over subjects where it is defined",
    "froc": "all predictions ranked by score (microbleed probability); sensitivity vs mean FP per subject",
    "sensitivity_at_fp": "best FROC sensitivity at a mean FP per subject no greater than the key",
    "stage2_auc": "ROC AUC of score: candidates within hit_mm of a true microbleed vs the others",
}


@dataclass
class EvaluationResult:
    """Metrics of one evaluation (counts pooled over subjects; see the module docstring)."""

    hit_mm: float
    n_subjects: int
    n_true: int
    n_predicted: int
    tp: int
    fp: int
    fn: int
    sensitivity: float
    precision: float
    f1: float
    fp_per_subject: float
    count_error: float
    mean_subject_f1: float
    sensitivity_at_fp: dict[str, float | None]
    stage2_auc: float | None
    froc_threshold: list[float] = field(default_factory=list)
    froc_sensitivity: list[float] = field(default_factory=list)
    froc_fp_per_subject: list[float] = field(default_factory=list)
    per_subject: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (NaN -> None)."""
        return _clean(asdict(self))


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _as_points(points) -> np.ndarray:
    arr = np.asarray(points, dtype=float).reshape(-1, 3)
    return arr


def match_count(pred_xyz, true_xyz, *, hit_mm: float = 5.0) -> int:
    """Number of one-to-one hits (maximum matching with centre distance < ``hit_mm``)."""
    p, t = _as_points(pred_xyz), _as_points(true_xyz)
    if len(p) == 0 or len(t) == 0:
        return 0
    dist = np.linalg.norm(p[:, None, :] - t[None, :, :], axis=-1)
    allowed = dist < hit_mm
    if not allowed.any():
        return 0
    big = hit_mm * (len(p) + len(t) + 1.0)  # more than any sum of allowed distances
    rows, cols = linear_sum_assignment(np.where(allowed, dist, big))
    return int(allowed[rows, cols].sum())


def roc_auc(scores, is_true) -> float | None:
    """ROC AUC by ranks (Mann-Whitney U / n_pos n_neg, ties averaged); None if a class is empty."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(is_true, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2.0 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def evaluate_detections(pred_by_subject: dict[str, list], truth_by_subject: dict[str, list], *,
                        hit_mm: float = 5.0) -> EvaluationResult:
    """VALDO-style metrics.

    ``pred_by_subject[s]`` is a list of ``(xyz_mm, score, label)`` (label may be None = microbleed);
    ``truth_by_subject[s]`` a list of true microbleed centres ``xyz_mm`` (world mm, the same space as
    the predictions).  The subjects evaluated are those of ``truth_by_subject`` (a subject with no
    predictions has all its lesions missed); a prediction for a subject without ground truth raises
    ``ValueError``.
    """
    if not (hit_mm > 0 and math.isfinite(hit_mm)):
        raise ValueError(f"hit_mm must be a positive distance in mm, got {hit_mm}")
    extra = sorted(set(pred_by_subject) - set(truth_by_subject))
    if extra:
        raise ValueError(f"predictions for subjects without ground truth: {', '.join(extra)}")
    if not truth_by_subject:
        raise ValueError("no subjects to evaluate")
    subjects = sorted(truth_by_subject)
    per_subject, all_scores, all_true = [], [], []
    froc_parts = []
    for s in subjects:
        truth = _as_points(truth_by_subject[s])
        preds = list(pred_by_subject.get(s, []))
        xyz = _as_points([p[0] for p in preds])
        scores = np.array([float(p[1]) for p in preds], dtype=float)
        is_mb = np.array([p[2] in (None, "microbleed") for p in preds], dtype=bool)
        tp = match_count(xyz[is_mb], truth, hit_mm=hit_mm)
        n_pred = int(is_mb.sum())
        fp, fn = n_pred - tp, len(truth) - tp
        per_subject.append({"subject": s, "n_true": len(truth), "n_predicted": n_pred, "tp": tp,
                            "fp": fp, "fn": fn, "f1": _f1(tp, fp, fn)})
        if len(preds):
            near = (np.linalg.norm(xyz[:, None] - truth[None], axis=-1) < hit_mm).any(axis=1) \
                if len(truth) else np.zeros(len(preds), bool)
            all_scores.append(scores)
            all_true.append(near)
        # hits as a function of the threshold: one matching per distinct score of this subject
        levels = np.unique(scores)[::-1]
        hits = np.array([match_count(xyz[scores >= t], truth, hit_mm=hit_mm) for t in levels], int)
        counts = np.array([(scores >= t).sum() for t in levels], int)
        froc_parts.append((levels, hits, counts))

    tp = sum(r["tp"] for r in per_subject)
    fp = sum(r["fp"] for r in per_subject)
    fn = sum(r["fn"] for r in per_subject)
    n_true = sum(r["n_true"] for r in per_subject)
    n_sub = len(subjects)
    thresholds, sens, fps = _froc(froc_parts, n_true=n_true, n_subjects=n_sub)
    at_fp = {}
    for rate in FP_RATES:
        ok = [se for se, f in zip(sens, fps) if f <= rate + 1e-12]
        at_fp[f"{rate:g}"] = max(ok) if ok else None
    subject_f1 = [r["f1"] for r in per_subject if not math.isnan(r["f1"])]
    scores_cat = np.concatenate(all_scores) if all_scores else np.zeros(0)
    true_cat = np.concatenate(all_true) if all_true else np.zeros(0, bool)
    return EvaluationResult(
        hit_mm=float(hit_mm), n_subjects=n_sub, n_true=n_true,
        n_predicted=sum(r["n_predicted"] for r in per_subject), tp=tp, fp=fp, fn=fn,
        sensitivity=_ratio(tp, n_true), precision=_ratio(tp, tp + fp), f1=_f1(tp, fp, fn),
        fp_per_subject=fp / n_sub,
        count_error=float(np.mean([abs(r["n_predicted"] - r["n_true"]) for r in per_subject])),
        mean_subject_f1=float(np.mean(subject_f1)) if subject_f1 else math.nan,
        sensitivity_at_fp=at_fp, stage2_auc=roc_auc(scores_cat, true_cat),
        froc_threshold=thresholds, froc_sensitivity=sens, froc_fp_per_subject=fps,
        per_subject=per_subject)


def _froc(parts, *, n_true: int, n_subjects: int) -> tuple[list[float], list[float], list[float]]:
    """Pool per-subject (levels desc, hits, counts) into the FROC over all distinct thresholds.

    The first point (threshold +inf) is (0 FP, sensitivity 0)."""
    all_levels = np.unique(np.concatenate([p[0] for p in parts]))[::-1] if parts else np.zeros(0)
    total_hits = np.zeros(len(all_levels), int)
    total_counts = np.zeros(len(all_levels), int)
    for levels, hits, counts in parts:
        if len(levels) == 0:
            continue
        # for global threshold t, this subject contributes its entry at the smallest own level >= t
        asc = levels[::-1]
        pos = np.searchsorted(asc, all_levels, side="left")  # first own level >= t
        idx = len(levels) - 1 - pos  # index into the descending arrays
        valid = pos < len(levels)
        total_hits[valid] += hits[idx[valid]]
        total_counts[valid] += counts[idx[valid]]
    fp = (total_counts - total_hits) / n_subjects
    sens = total_hits / n_true if n_true else np.full(len(all_levels), math.nan)
    return ([math.inf] + all_levels.tolist(), [0.0] + np.asarray(sens, float).tolist(),
            [0.0] + fp.tolist())


def _write_bytes_atomic(data: bytes, path: Path) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def froc_png(result: EvaluationResult) -> bytes:
    """PNG of the FROC curve (sensitivity vs mean FP per subject, log x axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fps = np.asarray(result.froc_fp_per_subject, float)
    sens = np.asarray(result.froc_sensitivity, float)
    floor = 0.05
    ax.step(np.maximum(fps, floor), sens, where="post", color="tab:red")
    for rate in FP_RATES:
        ax.axvline(rate, color="0.8", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(floor, max(8.0, float(np.nanmax(fps)) if fps.size else 8.0))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean false positives per subject")
    ax.set_ylabel("sensitivity (microbleeds)")
    ax.set_title(f"FROC, {result.n_subjects} subjects, {result.n_true} lesions, hit < {result.hit_mm:g} mm",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_evaluation(result: EvaluationResult, out_dir) -> dict[str, Path]:
    """Write ``metrics.json``, ``froc.tsv`` (threshold, sensitivity, fp_per_subject) and ``froc.png``
    into ``out_dir``, each atomically.  Returns the paths by name."""
    out = Path(out_dir)
    rows = ["threshold\tsensitivity\tfp_per_subject"]
    for t, s, f in zip(result.froc_threshold, result.froc_sensitivity, result.froc_fp_per_subject):
        rows.append("\t".join("n/a" if not math.isfinite(v) else f"{v:.6g}" for v in (t, s, f)))
    return {
        "metrics": write_json({**result.to_dict(), "definitions": DEFINITIONS}, out / "metrics.json"),
        "froc_tsv": write_text("\n".join(rows) + "\n", out / "froc.tsv"),
        "froc_png": _write_bytes_atomic(froc_png(result), out / "froc.png"),
    }
