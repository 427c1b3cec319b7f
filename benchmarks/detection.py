"""Benchmark of the two-stage detector: VALDO-style metrics on a fresh simulated cohort, the ablation
table, and inference time / memory on a 256x256x128 subject.

1. Test cohort: ``--test-dir`` (simulated if absent: ``--subjects`` subjects, ``--seed`` 101 by default,
   disjoint from the training seeds 1-7; shape 96x112x64 at 1x1x1.5 mm, random B0/echoes/microbleed
   counts).  Physics maps come from ``physics.chain.compute_physics_maps`` (cached in ``--cache-dir``).
2. Every model (``--model`` and each ``--ablation NAME=FOLDER``) runs ``models.inference.detect`` on each
   subject; ``models.evaluate.evaluate_detections`` gives sensitivity at 0.5 FP/subject (FROC over the
   microbleed probability), operating-point sensitivity / FP per subject, stage-1 recall (microbleeds matched
   one-to-one within 5 mm by any candidate, whatever its label: the end of the FROC), stage-2 AUC; plus the number of
   true calcifications called microbleed.  Peer in the same run: a non-learned physics baseline (local
   maxima of chi above ``--chi-threshold`` ppm, scored by chi).
3. Timing (``--timing``): ``detect`` on a synthetic 256x256x128 PhysicsMaps in a fresh process with 2
   threads - wall time and peak RSS - and the physics baseline on the same maps.

Usage: ``python benchmarks/detection.py --test-dir /tmp/cmb-test --model default
[--ablation no-balancing=/tmp/abl-nobal ...] [--timing] [--out results.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NIPYPE_NO_ET", "1")
HIT_MM = 5.0


def physics_baseline(maps, *, chi_threshold: float = 0.1, min_distance_mm: float = 3.0):
    """Peer detector: local maxima of chi (ppm) above ``chi_threshold`` inside the mask, all labelled
    microbleed, scored by chi.  Returns a list of ``(centre_vox, score)``."""
    from cmbdetect.models.heatmap import nms_peaks
    from cmbdetect.physics.geometry import voxel_sizes

    chi = np.where(maps.mask, maps.chi_ppm, 0).astype(np.float32)
    c, s = nms_peaks(chi, voxel_sizes(maps.affine), threshold=chi_threshold, min_distance_mm=min_distance_mm,
                     max_peaks=500)
    return list(zip(c, s))


def evaluate_model(subjects, run_subject):
    """Metrics of one detector: ``run_subject(subj) -> list[(centre_vox, p_microbleed, label)]``."""
    from cmbdetect.models.evaluate import evaluate_detections
    from cmbdetect.physics.geometry import voxel_to_world

    preds, truth, calc_called, times = {}, {}, 0, []
    for s in subjects:
        aff = s.maps.affine
        t0 = time.perf_counter()
        dets = run_subject(s)
        times.append(time.perf_counter() - t0)
        preds[s.label] = [(voxel_to_world(aff, c), float(p), lab) for c, p, lab in dets]
        mb = [k == "microbleed" for k in s.lesion_kinds]
        truth[s.label] = [voxel_to_world(aff, v) for v, m in zip(s.lesion_vox, mb) if m]
        calcs = np.array([voxel_to_world(aff, v) for v, k in zip(s.lesion_vox, s.lesion_kinds)
                          if k == "calcification"]).reshape(-1, 3)
        for c, _, lab in preds[s.label]:
            if lab == "microbleed" and len(calcs) and np.min(np.linalg.norm(calcs - c, axis=1)) < HIT_MM:
                calc_called += 1
    r = evaluate_detections(preds, truth, hit_mm=HIT_MM)
    return {"sens@0.5FP": r.sensitivity_at_fp.get("0.5"), "sens@1FP": r.sensitivity_at_fp.get("1"),
            "sensitivity": r.sensitivity, "fp_per_subject": r.fp_per_subject, "precision": r.precision,
            "f1": r.f1, "stage2_auc": r.stage2_auc, "stage1_recall": r.froc_sensitivity[-1],
            "calc_called_mb": calc_called, "n_true": r.n_true,
            "s_per_subject": float(np.mean(times))}


def _model_runner(model):
    from cmbdetect.models.inference import detect

    def run(s):
        return [(np.asarray(d.centre_vox), d.probabilities["microbleed"], d.label) for d in detect(s.maps, model=model)]
    return run


def _baseline_runner(chi_threshold):
    def run(s):
        return [(c, sc, "microbleed") for c, sc in physics_baseline(s.maps, chi_threshold=chi_threshold)]
    return run


def synthetic_maps(shape, *, seed: int = 0):
    """A large PhysicsMaps for timing: ellipsoidal brain, noise, 20 paramagnetic and 5 diamagnetic spheres."""
    from cmbdetect.physics.forward import forward_field
    from cmbdetect.physics.geometry import b0_direction, oblique_affine
    from cmbdetect.physics.maps import PhysicsMaps

    rng = np.random.default_rng(seed)
    aff = oblique_affine(shape, (0.9, 0.9, 1.2), angles_deg=(10, 0, 0))
    idx = np.ogrid[tuple(slice(0, s) for s in shape)]
    c = (np.array(shape) - 1) / 2
    mask = sum(((idx[a] - c[a]) / (0.45 * shape[a])) ** 2 for a in range(3)) <= 1
    chi = rng.normal(0, 0.01, shape).astype(np.float32)
    for n in range(25):
        p = (c + rng.uniform(-0.25, 0.25, 3) * np.array(shape)).astype(int)
        chi[p[0] - 1:p[0] + 2, p[1] - 1:p[1] + 2, p[2] - 1:p[2] + 2] += 0.8 if n < 20 else -0.6
    chi *= mask
    field = forward_field(chi, (0.9, 0.9, 1.2), b0_direction(aff), pad=8) * mask
    mag = ((100 + rng.normal(0, 3, shape)) * mask).astype(np.float32)
    return PhysicsMaps(mask=mask, magnitude=mag, field_ppm=field, local_field_ppm=field, chi_ppm=chi,
                       chi_pos=np.clip(chi, 0, None), chi_neg=np.clip(-chi, 0, None), swi=mag, mip=mag,
                       affine=aff, b0=3.0)


def timing_child(model: str, shape) -> None:
    """Run in a fresh process: prints one JSON line with wall times and peak RSS."""
    import torch

    torch.set_num_threads(2)
    from cmbdetect.models.inference import detect
    from cmbdetect.models.registry import load_model
    from cmbdetect.physics.geometry import voxel_sizes
    from cmbdetect.physics.mask import brain_masks

    maps = synthetic_maps(tuple(shape))
    t0 = time.perf_counter()  # the physics chain computes these on its way to the chi mask and hands them on
    maps.brain_plain, maps.brain_guarded = brain_masks(maps.magnitude, voxel_sizes(maps.affine))
    t_masks = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = load_model(model)
    t0 = time.perf_counter()
    dets = detect(maps, model=m)
    t_det = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    base = physics_baseline(maps)
    t_base = time.perf_counter() - t0
    print(json.dumps({"shape": list(shape), "detect_s": round(t_det, 2), "n_detections": len(dets),
                      "peak_rss_mb": round(rss), "rss_before_detect_mb": round(rss0),
                      "physics_baseline_s": round(t_base, 2), "n_baseline": len(base),
                      "chain_brain_masks_s": round(t_masks, 2)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--test-dir", default="/tmp/cmb-test")
    ap.add_argument("--cache-dir", default=None, help="physics-map cache (default TEST_DIR-cache)")
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--model", default="default")
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=FOLDER")
    ap.add_argument("--chi-threshold", type=float, default=0.1)
    ap.add_argument("--timing", action="store_true", help="also time detect() on 256x256x128")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 128])
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        timing_child(a.model, a.shape)
        return 0
    results = {}
    if not a.timing_only:
        from cmbdetect.models.training_data import load_training_subjects
        from cmbdetect.pipeline.simulate.subject import simulate_dataset

        test = Path(a.test_dir)
        if not test.exists():
            print(f"simulating {a.subjects} test subjects (seed {a.seed}) into {test}", flush=True)
            simulate_dataset(test, subjects=a.subjects, seed=a.seed, shape=(96, 112, 64), voxel_size=(1.0, 1.0, 1.5))
        subjects = load_training_subjects(test, cache_dir=a.cache_dir or f"{test}-cache", log=lambda m: None)
        rows = {"physics baseline (chi peaks)": _baseline_runner(a.chi_threshold)}
        rows[f"cmbdetect ({a.model})"] = _model_runner(a.model)
        for spec in a.ablation:
            name, _, folder = spec.partition("=")
            rows[f"ablation: {name}"] = _model_runner(folder)
        for name, runner in rows.items():
            results[name] = evaluate_model(subjects, runner)
            print(name, json.dumps(results[name]), flush=True)
        n_mb = sum(k == "microbleed" for s in subjects for k in s.lesion_kinds)
        n_calc = sum(k == "calcification" for s in subjects for k in s.lesion_kinds)
        print(f"\ntest cohort: {len(subjects)} subjects in {test}, {n_mb} microbleeds, {n_calc} calcifications")
        keys = ("sens@0.5FP", "sens@1FP", "sensitivity", "fp_per_subject", "stage1_recall", "stage2_auc",
                "calc_called_mb", "s_per_subject")
        print("| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
        for name, r in results.items():
            cells = ["-" if r[k] is None else (f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])) for k in keys]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if a.timing or a.timing_only:
        cmd = [sys.executable, __file__, "--_child", "--model", a.model, "--shape", *map(str, a.shape)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        results["timing"] = json.loads(out.stdout.strip().splitlines()[-1])
        results["timing"]["process_wall_s"] = round(time.perf_counter() - t0, 2)
        print("timing:", json.dumps(results["timing"]))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
