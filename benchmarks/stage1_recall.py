"""Stage-1 recall of each member of a model on its own validation subjects, split by voxel size.

The recall-tuned operating point (``thresholds.heatmap`` and ``thresholds.max_candidates`` of each member) is
applied exactly as at inference (:func:`cmbdetect.models.inference.stage1_candidates` on the model grid); a
lesion is found when a candidate lies within ``--hit-mm`` (VALDO: 5 mm) of its centre on the native grid.
The validation subjects are those named in the member's ``metadata.json`` (``training.data.validation``),
looked up in the training BIDS folders (``--bids-dir``; physics maps cached in ``--cache-dir``).

Voxel classes: "fine" = in-plane voxel < ``--coarse-mm`` and voxel volume < ``--coarse-mm3``; else "coarse".
For each member and class: microbleeds found / total, and calcifications found / total.  Peer in the same
run: the chi-peak physics baseline of ``benchmarks/detection.py`` limited to the same number of candidates.

Detectability (simulated cohorts): each microbleed's field contrast-to-noise ratio, the peak of its closed-form
field as the voxel grid measures it (:func:`cmbdetect.physics.forward.voxel_averaged_sphere_field`, B0 along
scanner z as the simulator has it) over the standard deviation of the local-field error (measured minus true
local field, inside the chi mask) within ``--cnr-radius-mm`` of the lesion.  Below 1 the lesion's own field is
smaller than the error of the local field around it, so neither the phase nor chi shows it; recall is printed
by CNR band and for CNR >= 1.

Held-out validation of the shipped model as a whole (``--held-out DIR [DIR ...]``): the members' own validation
subjects were each in another member's training set, so the ensemble's operating point is checked on a cohort
none of them saw (simulated with the training recipe, other seeds).  Each microbleed's rank in the model's
stage-1 list (its best candidate within ``--hit-mm``, the list uncapped down to heatmap 0.0005) gives recall
at the operating point, recall against the candidate budget, and the budget that reaches ``--target``
recall, over all microbleeds and over those with field CNR >= 1.  ``--set-operating-point`` then writes that
budget (rounded up to ``--budget-step``) into the model folder with the stage-2 screen that keeps it affordable,
the microbleed prior odds ratio of the candidates beyond the budget stage 2 was fitted on, measured on the same
cohort, and the figures at the new operating point: the fitting is :mod:`cmbdetect.models.operating_point`
(:func:`~cmbdetect.models.operating_point.fit_operating_point`); this script reports.

Usage: ``python benchmarks/stage1_recall.py --model default --bids-dir /tmp/cmb-train-{a..g}
--cache-dir /tmp/cmb-cache``; ``python benchmarks/stage1_recall.py --model default --held-out /tmp/val-{a..g}
--cache-dir /tmp/val-cache``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import physics_baseline  # noqa: E402  (the same peer as the detection benchmark)

from cmbdetect.models.operating_point import (BUDGETS, fit_operating_point, held_out_ranks,  # noqa: E402
                                              held_out_report, lesion_field_cnr, voxel_class, write_operating_point)


def found(cands_native: np.ndarray, lesion_vox: np.ndarray, vs: np.ndarray, *, hit_mm: float) -> np.ndarray:
    """For each lesion (native voxel centre), whether a candidate lies within ``hit_mm``."""
    if len(cands_native) == 0 or len(lesion_vox) == 0:
        return np.zeros(len(lesion_vox), bool)
    d = np.sqrt((((cands_native[None] - lesion_vox[:, None]) * vs) ** 2).sum(-1))
    return (d <= hit_mm).any(axis=1)


CNR_BANDS = ((0.0, 1.0), (1.0, 3.0), (3.0, np.inf))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--bids-dir", nargs="+", default=[f"/tmp/cmb-train-{x}" for x in "abcdefg"])
    ap.add_argument("--cache-dir", default="/tmp/cmb-cache")
    ap.add_argument("--hit-mm", type=float, default=5.0)
    ap.add_argument("--coarse-mm", type=float, default=1.8)
    ap.add_argument("--coarse-mm3", type=float, default=6.0)
    ap.add_argument("--cnr-radius-mm", type=float, default=12.0)
    ap.add_argument("--held-out", nargs="+", default=None, metavar="DIR",
                    help="held-out validation cohort(s) for the whole model (see above)")
    ap.add_argument("--target", type=float, default=0.98, help="recall target (held-out mode)")
    ap.add_argument("--set-operating-point", action="store_true",
                    help="held-out mode: write the budget for --target over all microbleeds into the model folder")
    ap.add_argument("--budget-step", type=int, default=100)
    ap.add_argument("--screen-floor", type=float, default=0.02,
                    help="stage-2 screen: flip-averaged pass where a plain-pass head gives >= this")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    if a.held_out:
        return held_out_main(a)

    from cmbdetect.models.inference import map_back, model_grid, stage1_candidates
    from cmbdetect.models.registry import load_model
    from cmbdetect.models.training_data import load_training_subjects
    from cmbdetect.physics.geometry import voxel_sizes
    from cmbdetect.pipeline.io.truth import read_truth

    model = load_model(a.model)
    roots = {Path(d).resolve().name: Path(d) for d in a.bids_dir}
    subjects = {s.label: s for s in load_training_subjects(a.bids_dir, cache_dir=a.cache_dir, log=lambda m: None)}
    results = {}
    for k, part in enumerate(model.parts):
        meta = part.metadata
        val = list(meta["training"]["data"]["validation"])
        missing = [v for v in val if v not in subjects]
        if missing:
            print(f"member {k}: validation subjects not in --bids-dir: {', '.join(missing[:3])}", file=sys.stderr)
            return 1
        n_cap = int(meta["thresholds"]["max_candidates"])
        tally, cnr_rows = {}, []
        for label in val:
            s = subjects[label]
            vs = voxel_sizes(s.maps.affine)
            x, mask, gvs, resampled = model_grid(s.maps, part.spec)
            c, _, _ = stage1_candidates(part, x, mask, gvs)
            c = map_back(c, s.maps.shape, x.shape[1:]) if resampled and len(c) else c
            peer = np.array([p for p, _ in physics_baseline(s.maps)[:n_cap]]).reshape(-1, 3)
            cls = voxel_class(vs, coarse_mm=a.coarse_mm, coarse_mm3=a.coarse_mm3)
            vox = np.asarray(s.lesion_vox, float).reshape(-1, 3)
            dataset, sub = label.split("_sub-", 1)
            truth = read_truth(roots[dataset] / "derivatives" / "groundtruth", sub)
            err = np.where(s.maps.mask, s.maps.local_field_ppm - truth.local_field_ppm, np.nan)
            for les in truth.of_kind("microbleed"):
                hit = bool(found(c, np.asarray(les.centre_vox, float)[None], vs, hit_mm=a.hit_mm)[0])
                cnr_rows.append((lesion_field_cnr(les, s.maps.affine, err, radius_mm=a.cnr_radius_mm), hit))
            for kind in ("microbleed", "calcification"):
                sel = np.array([kk == kind for kk in s.lesion_kinds], bool)
                t = tally.setdefault(f"{kind} {cls}", [0, 0, 0])
                t[0] += int(found(c, vox[sel], vs, hit_mm=a.hit_mm).sum())
                t[1] += int(found(peer, vox[sel], vs, hit_mm=a.hit_mm).sum())
                t[2] += int(sel.sum())
        cnr = np.array([r[0] for r in cnr_rows]).reshape(-1)
        hit = np.array([r[1] for r in cnr_rows], bool).reshape(-1)
        bands = {f"{lo:g}-{hi:g}": [int(hit[(cnr >= lo) & (cnr < hi)].sum()), int(((cnr >= lo) & (cnr < hi)).sum())]
                 for lo, hi in CNR_BANDS}
        tally["microbleed field CNR"] = bands
        results[f"member-{k}"] = tally
        print(f"member {k} ({len(val)} validation subjects, threshold {meta['thresholds']['heatmap']}, "
              f"<= {n_cap} candidates/subject)")
        print("| lesions | voxels | stage 1 found | recall | chi-peak baseline (same cap) |\n|---|---|---|---|---|")
        for key in sorted(k2 for k2 in tally if k2 != "microbleed field CNR"):
            f, p, n = tally[key]
            kind, cls = key.split()
            cells = f"{f / n:.3f} | {p / n:.3f}" if n else "- | -"
            print(f"| {kind} | {cls} | {f}/{n} | {cells} |")
        mb = [tally.get(f"microbleed {c}", [0, 0, 0]) for c in ("fine", "coarse")]
        allf = [tally[k2] for k2 in tally if k2 != "microbleed field CNR"]
        print(f"microbleeds, all voxels: {sum(t[0] for t in mb)}/{sum(t[2] for t in mb)}; focal lesions (with "
              f"calcifications): {sum(t[0] for t in allf)}/{sum(t[2] for t in allf)}")
        print("microbleeds by field CNR: " + "; ".join(f"{b}: {f}/{n}" for b, (f, n) in bands.items()))
        vis = cnr >= 1.0
        print(f"microbleeds with field CNR >= 1: {int(hit[vis].sum())}/{int(vis.sum())} = "
              f"{hit[vis].mean() if vis.any() else float('nan'):.3f}\n", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def held_out_main(a) -> int:
    from cmbdetect.models.registry import load_model
    from cmbdetect.models.training_data import load_training_subjects

    model = load_model(a.model)
    th = model.metadata["thresholds"]
    roots = {Path(d).resolve().name: Path(d) for d in a.held_out}
    subjects = load_training_subjects(a.held_out, cache_dir=a.cache_dir, log=lambda m: None)
    rows = held_out_ranks(model, subjects, roots, hit_mm=a.hit_mm, cnr_radius_mm=a.cnr_radius_mm)
    rep = held_out_report(rows, threshold=float(th["heatmap"]), budget=int(th["max_candidates"]), target=a.target)
    print(f"{a.model}: {len(subjects)} held-out subjects; operating point heatmap >= {th['heatmap']}, "
          f"<= {th['max_candidates']} candidates/subject")
    print("| microbleeds | n | recall at the operating point | " + " | ".join(f"{b}/subj" for b in BUDGETS)
          + f" | budget for {a.target:g} |\n|---|---|---|" + "---|" * (len(BUDGETS) + 1))
    for name, r in rep.items():
        print(f"| {name} | {r['n']} | {r['operating_point']:.3f} | "
              + " | ".join(f"{r['by_budget'][b]:.3f}" for b in BUDGETS) + f" | {r[f'budget_for_{a.target:g}']} |")
    for r in rows:
        if r["rank"] is None or r["rank"] >= int(th["max_candidates"]):
            print(f"  missed at the operating point: {r['subject']} d {r['diameter_mm']:.1f} mm, voxel "
                  f"{r['voxel_mm']}, CNR {r['cnr']:.1f}, rank {r['rank']}, score {r['score']}")
    if a.set_operating_point:
        rep = set_held_out_operating_point(a, model, rows, rep, len(subjects))
    if a.out:
        Path(a.out).write_text(json.dumps({"report": rep, "lesions": rows}, indent=2) + "\n")
    return 0


def set_held_out_operating_point(a, model, rows: list[dict], rep: dict, n_subjects: int) -> dict:
    """Fit the operating point for ``a.target`` (:func:`cmbdetect.models.operating_point.fit_operating_point`)
    and write it into the model folder; returns the report at the new operating point."""
    point = fit_operating_point(model, rows, n_subjects=n_subjects, target=a.target, budget_step=a.budget_step,
                                screen_floor=a.screen_floor, coarse_mm=a.coarse_mm, coarse_mm3=a.coarse_mm3,
                                benchmark="benchmarks/stage1_recall.py --held-out "
                                + " ".join(Path(d).name for d in a.held_out)
                                + f" --set-operating-point --target {a.target:g}")
    if point is None:
        print(f"no budget reaches {a.target:g} over all microbleeds; operating point not changed", file=sys.stderr)
        return rep
    write_operating_point(model.path, point)
    print(f"operating point written to {model.path}: <= {point.max_candidates} candidates/subject, stage-2 screen "
          f"floor {a.screen_floor:g}; " + json.dumps(point.validation))
    return point.report


if __name__ == "__main__":
    sys.exit(main())
