"""Detection on real anatomy: microbleeds and calcifications inserted into an in-vivo 3-echo GRE.

The real data is ``../shared/data/real/gre-3echo-crop`` (51x51x41 at 0.47x0.47x1 mm, 3 T, TE 4/8/12 ms; phase
stored scaled to +-0.0036744): real noise, veins, cortex and background field, no annotated lesion.  Each
"subject" is that crop with ``--microbleeds`` microbleeds and ``--calcifications`` calcifications inserted at
random sites of the physics mask (:func:`cmbdetect.pipeline.simulate.insert.insert_spheres`: closed-form
sphere fields, sub-voxel signal integration; diameters ``--diameter-mm``, |chi| ``--chi-ppm``), one seed per
subject.  The physics chain and ``models.inference.detect`` then run as on any scan, and the metrics of
``benchmarks/detection.py`` are computed over the subjects (5 mm hits, FROC over the microbleed probability).
The crop without insertions is reported too: every detection there at p >= 0.5 is a false positive on real
tissue.  ``--acquired-voxel-mm X Y Z``: after the insertion each copy (and the clean crop) is re-acquired on a
coarser grid of the same field of view by keeping the central part of k-space
(:func:`cmbdetect.pipeline.simulate.insert.acquire_coarser`).  Peer in the same run: the chi-peak physics
baseline.

Usage: ``python benchmarks/real_insertion.py [--model default] [--subjects 20] [--out results.json]``.
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
from detection import _baseline_runner, _model_runner, evaluate_model  # noqa: E402  (same metrics and peer)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "gre-3echo-crop"
TE = (0.004, 0.008, 0.012)
B0 = 3.0


def load_real_crop(folder: Path = REAL):
    """Magnitude and phase (radians) ``[E, X, Y, Z]`` and the affine of the real 3-echo crop (project reader)."""
    from cmbdetect.pipeline.io.nifti import load_nifti_acquisition

    acq = load_nifti_acquisition(folder / "Mag.nii.gz", folder / "Phase.nii.gz", te=list(TE), b0=B0,
                                 phase_units="scale:0.0036744")
    return acq.mag, acq.phase, acq.affine


def inserted_subjects(*, n: int, n_mb: int, n_calc: int, diameter_mm, chi_ppm, seed0: int = 0,
                      acquired_voxel_mm=None):
    """``n`` subjects (:class:`cmbdetect.models.training_data.TrainingSubject`) made from the real crop, the
    clean crop first; re-acquired at ``acquired_voxel_mm`` (3 sizes, mm) when given."""
    from cmbdetect.models.training_data import TrainingSubject
    from cmbdetect.physics.chain import compute_physics_maps
    from cmbdetect.physics.geometry import voxel_sizes
    from cmbdetect.pipeline.simulate.insert import acquire_coarser, draw_insertion_sites, insert_spheres

    mag, phase, aff = load_real_crop()
    old = np.array(mag.shape[1:])
    new = old if acquired_voxel_mm is None else np.clip(
        np.rint(old * voxel_sizes(aff) / np.asarray(acquired_voxel_mm, float)).astype(int), 8, old)

    def physics(m, p):
        a = aff
        if acquired_voxel_mm is not None:
            m, p, a = acquire_coarser(m, p, aff, new)
        return compute_physics_maps(mag=m, phase=p, te=list(TE), b0=B0, affine=a)

    clean_native = compute_physics_maps(mag=mag, phase=phase, te=list(TE), b0=B0, affine=aff)  # sites come from it
    clean = clean_native if acquired_voxel_mm is None else physics(mag, phase)
    subjects = [TrainingSubject("real-crop", clean, np.zeros((0, 3)), [], np.zeros(0), None)]
    for s in range(seed0, seed0 + n):
        les = draw_insertion_sites(clean_native.mask, aff, np.random.default_rng(s),
                                   kinds=["microbleed"] * n_mb + ["calcification"] * n_calc,
                                   diameter_mm=diameter_mm, chi_ppm=chi_ppm)
        m2, p2 = insert_spheres(mag, phase, te=TE, b0=B0, affine=aff, lesions=les)
        centres = np.array([l.centre_vox for l in les]).reshape(-1, 3) * (new / old)
        subjects.append(TrainingSubject(f"seed-{s}", physics(m2, p2), centres,
                                        [l.kind for l in les], np.array([l.diameter_mm for l in les]), None))
    return subjects


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the first subject (one seed per subject)")
    ap.add_argument("--microbleeds", type=int, default=2)
    ap.add_argument("--calcifications", type=int, default=1)
    ap.add_argument("--diameter-mm", type=float, nargs=2, default=(2.0, 5.0))
    ap.add_argument("--chi-ppm", type=float, nargs=2, default=(0.5, 1.5))
    ap.add_argument("--chi-threshold", type=float, default=0.1)
    ap.add_argument("--acquired-voxel-mm", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                    help="re-acquire every copy on this coarser grid (k-space crop) after the insertion")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not REAL.is_dir():
        print(f"real data not found at {REAL} (only present beside the team's checkout)", file=sys.stderr)
        return 1
    subjects = inserted_subjects(n=a.subjects, n_mb=a.microbleeds, n_calc=a.calcifications,
                                 diameter_mm=tuple(a.diameter_mm), chi_ppm=tuple(a.chi_ppm), seed0=a.seed,
                                 acquired_voxel_mm=a.acquired_voxel_mm)
    from cmbdetect.physics.geometry import voxel_sizes

    clean, inserted = subjects[0], subjects[1:]
    results = {}
    for name, runner in (("physics baseline (chi peaks)", _baseline_runner(a.chi_threshold)),
                         (f"cmbdetect ({a.model})", _model_runner(a.model))):
        r = evaluate_model(inserted, runner)
        dets = runner(clean)
        r["clean_crop_detections_p>=0.5"] = int(sum(p >= 0.5 and lab == "microbleed" for _, p, lab in dets))
        r["clean_crop_max_p"] = float(max((p for _, p, _ in dets), default=0.0))
        results[name] = r
        print(name, json.dumps(r), flush=True)
    n_mb = sum(k == "microbleed" for s in inserted for k in s.lesion_kinds)
    n_calc = sum(k == "calcification" for s in inserted for k in s.lesion_kinds)
    print(f"\n{len(inserted)} inserted copies of the real crop, {n_mb} microbleeds, {n_calc} calcifications "
          f"(diameter {a.diameter_mm[0]:g}-{a.diameter_mm[1]:g} mm, |chi| {a.chi_ppm[0]:g}-{a.chi_ppm[1]:g} ppm); "
          f"voxels {' x '.join(f'{v:.2f}' for v in voxel_sizes(clean.maps.affine))} mm")
    keys = ("sens@0.5FP", "sens@1FP", "sensitivity", "fp_per_subject", "stage1_recall", "stage2_auc",
            "calc_called_mb", "clean_crop_detections_p>=0.5", "clean_crop_max_p")
    print("| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, r in results.items():
        cells = ["-" if r[k] is None else (f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
