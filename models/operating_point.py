"""The stage-1 operating point of a model, fitted on a held-out validation cohort.

A model's members each tuned their heatmap threshold on their own validation subjects, which other members
trained on; the operating point of the model as a whole is therefore fitted on a cohort none of them saw:

1. :func:`held_out_ranks`: each microbleed's rank in the model's stage-1 list (its best candidate within
   ``hit_mm``, the list uncapped down to heatmap 0.0005), with its field contrast-to-noise ratio
   (:func:`lesion_field_cnr`).
2. :func:`held_out_report`: recall at an operating point, against the budget (:data:`BUDGETS`), and the
   smallest budget reaching a target recall, over all microbleeds and those with field CNR >= 1.
3. :func:`fit_operating_point`: the budget for the target (rounded up to ``budget_step``), the microbleed prior
   odds of the candidates beyond the budget stage 2 was fitted on relative to those within it
   (:func:`low_rank_odds_ratio`), and the validation record; :func:`write_operating_point` stores them with
   :func:`cmbdetect.models.ensemble.set_operating_point`.

Used by ``benchmarks/stage1_recall.py --held-out ... --set-operating-point`` (which reports) and by the
operating-point step of ``cmbdetect train --config``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: candidate budgets (per subject) at which the held-out recall curve is reported
BUDGETS = (100, 200, 300, 400, 600, 800, 1000, 1500, 2000)


def lesion_field_cnr(lesion, affine: np.ndarray, field_error: np.ndarray, *, radius_mm: float = 12.0) -> float:
    """Field CNR of one simulated lesion (:class:`cmbdetect.pipeline.io.truth.Lesion`): the peak |voxel-averaged
    closed-form field| (ppm, B0 along scanner z as the simulator has it) within ``radius_mm`` over the std of
    ``field_error`` (measured minus true local field, ppm, NaN outside the mask) there; NaN when fewer than 20
    error voxels lie in that box."""
    from cmbdetect.physics.forward import voxel_averaged_sphere_field
    from cmbdetect.physics.geometry import voxel_sizes

    cv = np.asarray(lesion.centre_vox, float)
    r = np.ceil(radius_mm / voxel_sizes(affine)).astype(int)
    lo = np.maximum(np.floor(cv).astype(int) - r, 0)
    hi = np.minimum(np.floor(cv).astype(int) + r + 1, field_error.shape)
    if np.any(hi <= lo):
        return float("nan")
    f = voxel_averaged_sphere_field(lesion.chi_ppm, lesion.diameter_mm / 2, tuple(hi - lo), affine, cv - lo)
    e = field_error[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if np.isfinite(e).sum() < 20:
        return float("nan")
    return float(np.abs(f).max() / max(np.nanstd(e), 1e-12))


def voxel_class(vs, *, coarse_mm: float = 1.8, coarse_mm3: float = 6.0) -> str:
    """"coarse" when the in-plane voxel is >= ``coarse_mm`` or the voxel volume >= ``coarse_mm3``, else "fine"."""
    return "coarse" if min(vs[0], vs[1]) >= coarse_mm or float(np.prod(vs)) >= coarse_mm3 else "fine"


def held_out_ranks(model, subjects, roots, *, hit_mm: float = 5.0, cnr_radius_mm: float = 12.0) -> list[dict]:
    """One row per microbleed of ``subjects`` (training subjects with simulator truth; ``roots``: BIDS folder
    name -> path): rank of its best stage-1 candidate in the whole model's list (0 = top; ``None`` when no
    candidate within ``hit_mm``), that candidate's heatmap score, voxel size and field CNR;
    ``subject_candidates``: how many candidates of its subject reach the model's heatmap threshold."""
    from cmbdetect.models.inference import map_back, model_grid, stage1_candidates
    from cmbdetect.physics.geometry import voxel_sizes
    from cmbdetect.pipeline.io.truth import read_truth

    rows = []
    for s in subjects:
        vs = voxel_sizes(s.maps.affine)
        x, mask, gvs, resampled = model_grid(s.maps, model.spec)
        c, sc, _ = stage1_candidates(model, x, mask, gvs, threshold=5e-4, max_candidates=100_000)
        c = map_back(c, s.maps.shape, x.shape[1:]) if resampled and len(c) else c
        n_above = int((sc >= model.spec.thresholds.heatmap).sum())
        dataset, sub = s.label.split("_sub-", 1)
        truth = read_truth(Path(roots[dataset]) / "derivatives" / "groundtruth", sub)
        err = np.where(s.maps.mask, s.maps.local_field_ppm - truth.local_field_ppm, np.nan)
        for les in truth.of_kind("microbleed"):
            d = np.sqrt((((c - np.asarray(les.centre_vox, float)) * vs) ** 2).sum(-1)) if len(c) else np.zeros(0)
            near = np.flatnonzero(d <= hit_mm)
            best = float(sc[near].max()) if len(near) else None
            rows.append({"subject": s.label, "diameter_mm": float(les.diameter_mm), "voxel_mm": vs.round(2).tolist(),
                         "score": best, "rank": None if best is None else int((sc > best).sum()),
                         "cnr": lesion_field_cnr(les, s.maps.affine, err, radius_mm=cnr_radius_mm),
                         "subject_candidates": n_above})
    return rows


def held_out_report(rows: list[dict], *, threshold: float, budget: int, target: float) -> dict:
    """Recall at the operating point (``threshold``, ``budget`` candidates/subject), against the budget, and
    the smallest budget that reaches ``target``; for all microbleeds and for those with field CNR >= 1."""
    out = {}
    for name, sel in (("all", [True] * len(rows)), ("cnr>=1", [r["cnr"] >= 1.0 for r in rows])):
        rr = [r for r, k in zip(rows, sel) if k]
        rank = np.array([np.inf if r["rank"] is None else r["rank"] for r in rr])
        score = np.array([0.0 if r["score"] is None else r["score"] for r in rr])
        n = len(rr)
        need = int(np.ceil(target * n))
        reach = np.sort(rank)[need - 1] + 1 if n and need else 0
        out[name] = {"n": n, "operating_point": float(np.mean((rank < budget) & (score >= threshold))) if n else None,
                     "by_budget": {b: float(np.mean(rank < b)) for b in BUDGETS} if n else {},
                     f"budget_for_{target:g}": None if not np.isfinite(reach) else int(reach)}
    return out


def low_rank_odds_ratio(rows: list[dict], *, threshold: float, fitted: int, budget: int) -> tuple[float, dict]:
    """Microbleed prior odds of the candidates ranked ``fitted .. budget-1`` relative to the ``fitted`` best, from
    the held-out rows (:func:`held_out_ranks`; subjects without a microbleed are not in them): microbleeds found
    per candidate in each tier, with half a count added to each tier's microbleeds so that an empty tier gives a
    finite ratio.  Returns the ratio (1 when a tier is empty) and the counts."""
    per_subject = {r["subject"]: int(r["subject_candidates"]) for r in rows}
    n_top = sum(min(n, fitted) for n in per_subject.values())
    n_low = sum(min(max(n - fitted, 0), budget - fitted) for n in per_subject.values())
    found = [r for r in rows if r["rank"] is not None and r["score"] >= threshold]
    hits_top = sum(r["rank"] < fitted for r in found)
    hits_low = sum(fitted <= r["rank"] < budget for r in found)
    counts = {"candidates_top": n_top, "candidates_low": n_low, "microbleeds_top": hits_top,
              "microbleeds_low": hits_low}
    if n_low == 0 or n_top == 0:
        return 1.0, counts
    p_top, p_low = (hits_top + 0.5) / (n_top + 1.0), (hits_low + 0.5) / (n_low + 1.0)
    return float((p_low / (1 - p_low)) / (p_top / (1 - p_top))), counts


@dataclass(frozen=True)
class OperatingPoint:
    """A fitted operating point: the budget, the low-rank prior odds ratio (None when the budget is within the
    fitted one), the stage-2 screen floor, the validation record and the report at the new point."""

    max_candidates: int
    low_rank_odds_ratio: float | None
    screen_floor: float
    validation: dict
    report: dict


def fit_operating_point(model, rows: list[dict], *, n_subjects: int, target: float = 0.98, budget_step: int = 100,
                        screen_floor: float = 0.02, coarse_mm: float = 1.8, coarse_mm3: float = 6.0,
                        benchmark: str = "") -> OperatingPoint | None:
    """The budget that reaches ``target`` recall over all microbleeds of the held-out ``rows``, rounded up to
    ``budget_step``, with the low-rank prior beyond the fitted budget (:attr:`ModelSpec.fitted_budget`) and the
    validation figures at that budget (``benchmark``: the command recorded with them); None when no budget
    reaches the target."""
    thr = model.spec.thresholds.heatmap
    rep = held_out_report(rows, threshold=thr, budget=model.spec.thresholds.max_candidates, target=target)
    need = rep["all"][f"budget_for_{target:g}"]
    if need is None:
        return None
    budget = int(np.ceil(need / budget_step) * budget_step)
    new = held_out_report(rows, threshold=thr, budget=budget, target=target)
    coarse = [r for r in rows if voxel_class(np.array(r["voxel_mm"]), coarse_mm=coarse_mm,
                                             coarse_mm3=coarse_mm3) == "coarse"]
    fine = [r for r in rows if r not in coarse]
    by_class = {k: held_out_report(v, threshold=thr, budget=budget, target=target)["all"]["operating_point"]
                for k, v in (("fine", fine), ("coarse", coarse)) if v}
    validation = {"benchmark": benchmark, "subjects": n_subjects, "microbleeds": new["all"]["n"],
                  "microbleeds_field_cnr_ge_1": new["cnr>=1"]["n"],
                  "stage1_recall_microbleeds": round(new["all"]["operating_point"], 4),
                  "stage1_recall_microbleeds_field_cnr_ge_1": round(new["cnr>=1"]["operating_point"], 4),
                  **{f"stage1_recall_{k}_voxels": round(v, 4) for k, v in by_class.items()},
                  f"budget_for_{target:g}": int(need), "max_candidates": budget, "screen_floor": screen_floor}
    fitted = model.spec.fitted_budget
    ratio = None
    if budget > fitted:
        ratio, counts = low_rank_odds_ratio(rows, threshold=thr, fitted=fitted, budget=budget)
        validation.update({"low_rank_prior": {"from_rank": fitted, "odds_ratio": ratio}, **counts})
    return OperatingPoint(budget, ratio, float(screen_floor), validation, new)


def write_operating_point(model_dir, point: OperatingPoint) -> Path:
    """Store a fitted operating point in a model folder (:func:`cmbdetect.models.ensemble.set_operating_point`)."""
    from cmbdetect.models.ensemble import set_operating_point

    return set_operating_point(model_dir, max_candidates=point.max_candidates, screen_floor=point.screen_floor,
                               validation=point.validation, low_rank_odds_ratio=point.low_rank_odds_ratio)
