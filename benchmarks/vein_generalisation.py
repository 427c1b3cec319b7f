"""Vein mimics on a vein generator the model never saw, with and without the vein gate.

Leave-one-generator-out: the shipped model was trained on the simulator's default vein family ("trees": cortical
trees on the convexity, straight radial medullary veins).  This benchmark simulates cohorts with the other family
("tortuous": random-walk veins of every orientation and calibre, :mod:`cmbdetect.pipeline.simulate_veins_tortuous`)
and runs ``models.inference.detect`` on each subject twice from the same physics maps: with the vein gate
(:func:`cmbdetect.models.classifier.vein_gate`) and without it (metadata ``inference.vein_gate`` false: the
current release, the peer in the same run).

Cohorts (``--root``; simulated once, physics maps cached beside them), 160x160x64 voxels, B0 1.5 or 3 T, random
single or multi-echo, random oblique slab (half the subjects, up to 20 degrees):

- ``heldout-1x1x2``: ``--subjects-1mm`` subjects at 1 x 1 x 2 mm with ``--microbleeds`` microbleeds each;
- ``heldout-05x05x2``: ``--subjects-05mm`` subjects at 0.5 x 0.5 x 2 mm, same;
- ``heldout-free``: ``--lesion-free`` lesion-free subjects at 1 x 1 x 2 mm;
- ``stress``: ``--stress`` lesion-free subjects with dense tortuous veins (density 3) at 1 x 1 x 2 mm.

Calcifications are drawn as usual (0-4 per subject).  Printed per cohort and model: sensitivity at 0.5 and 1 FP
per subject, operating-point sensitivity, precision, FP per subject, microbleed calls (p >= 0.5) per lesion-free
subject, calcifications called microbleed (``benchmarks/detection.py``'s ``evaluate_model``).  ``--seed606``
also runs the seed-606 cohort of ``benchmarks/detection.py`` (default vein family) with and without the gate.

Usage: ``python benchmarks/vein_generalisation.py --root /tmp/veins-bench [--out results.json]``
(``--prepare-only`` simulates and computes the maps without running the model).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import evaluate_model  # noqa: E402  (same metrics as the detection benchmark)

SHAPE = (160, 160, 64)


def cohort_specs(a) -> dict[str, dict]:
    """Name -> simulate_dataset options of each cohort."""
    common = dict(shape=SHAPE, b0=[1.5, 3.0], echoes="random", vein_family="tortuous")
    return {
        "heldout-1x1x2": dict(common, subjects=a.subjects_1mm, seed=a.seed, voxel_size=(1.0, 1.0, 2.0),
                              n_microbleeds=a.microbleeds),
        "heldout-05x05x2": dict(common, subjects=a.subjects_05mm, seed=a.seed + 1, voxel_size=(0.5, 0.5, 2.0),
                                n_microbleeds=a.microbleeds),
        "heldout-free": dict(common, subjects=a.lesion_free, seed=a.seed + 2, voxel_size=(1.0, 1.0, 2.0),
                             n_microbleeds=0),
        "stress": dict(common, subjects=a.stress, seed=a.seed + 3, voxel_size=(1.0, 1.0, 2.0), n_microbleeds=0,
                       vein_density=3.0),
    }


def load_cohort(root: Path, name: str, spec: dict, log=print):
    """Simulate the cohort (once) and return its subjects with cached physics maps."""
    from cmbdetect.models.training_data import load_training_subjects
    from cmbdetect.pipeline.simulate import simulate_dataset

    bids = root / name
    if not bids.exists():
        t0 = time.perf_counter()
        opts = dict(spec)
        simulate_dataset(bids, subjects=opts.pop("subjects"), seed=opts.pop("seed"), **opts)
        log(f"[{name}] simulated in {time.perf_counter() - t0:.0f} s")
    return cached_subjects(bids, root / f"{name}-cache", log=lambda m: log(f"[{name}] {m}"))


def cached_subjects(bids: Path, cache: Path, log=print):
    """Subjects of ``bids`` with their physics maps: the maps cached by an earlier run are reused as they are
    (both models of this benchmark see the same maps; delete the cache folder to recompute them with the
    current physics code), else computed and cached by ``models.training_data.load_training_subjects``."""
    from cmbdetect.models.training_data import _load_cache, load_training_subjects
    from cmbdetect.pipeline.io_bids import find_bids_subjects

    names = [f"{bids.resolve().name}_{s.label}" for s in find_bids_subjects(bids)]
    if names and all((cache / f"{n}.npz").is_file() for n in names):
        return [_load_cache(cache / f"{n}.npz", n) for n in names]
    return load_training_subjects(bids, cache_dir=cache, log=log)


def without_vein_gate(model):
    """The same loaded model with ``inference.vein_gate`` false (the current release's behaviour)."""
    m = copy.copy(model)
    m.metadata = copy.deepcopy(model.metadata)
    m.metadata.setdefault("inference", {})["vein_gate"] = False
    return m


def runner(model):
    """``run(subject) -> [(centre_vox, p_microbleed, label)]`` and a list collecting each subject's detections."""
    from cmbdetect.models.inference import detect

    kept = {}

    def run(s):
        dets = detect(s.maps, model=model)
        kept[s.label] = dets
        return [(np.asarray(d.centre_vox), d.probabilities["microbleed"], d.label) for d in dets]
    return run, kept


def lesion_free_calls(subjects, kept, *, p: float = 0.5) -> float | None:
    """Mean number of microbleed calls (label microbleed, p >= ``p``) per lesion-free subject."""
    free = [s for s in subjects if not any(k == "microbleed" for k in s.lesion_kinds)]
    if not free:
        return None
    return float(np.mean([sum(d.label == "microbleed" and d.probabilities["microbleed"] >= p for d in kept[s.label])
                          for s in free]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/veins-bench")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--subjects-1mm", type=int, default=12)
    ap.add_argument("--subjects-05mm", type=int, default=8)
    ap.add_argument("--lesion-free", type=int, default=4)
    ap.add_argument("--stress", type=int, default=6)
    ap.add_argument("--microbleeds", type=int, default=4)
    ap.add_argument("--cohorts", nargs="*", default=None, help="only these cohorts (names as printed)")
    ap.add_argument("--seed606", action="store_true", help="also the seed-606 cohort of benchmarks/detection.py")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    specs = cohort_specs(a)
    names = a.cohorts or list(specs)
    cohorts = {n: load_cohort(root, n, specs[n]) for n in names}
    if a.seed606:
        from cmbdetect.pipeline.simulate import simulate_dataset

        test = root / "seed606"
        if not test.exists():
            simulate_dataset(test, subjects=20, seed=606, shape=(96, 112, 64), voxel_size=(1.0, 1.0, 1.5))
        cohorts["seed606"] = cached_subjects(test, root / "seed606-cache")
    if a.prepare_only:
        return 0
    from cmbdetect.models.registry import load_model

    gated = load_model(a.model)
    models = {"release (no vein gate)": without_vein_gate(gated), "vein gate": gated}
    results: dict = {}
    for cname, subjects in cohorts.items():
        n_mb = sum(k == "microbleed" for s in subjects for k in s.lesion_kinds)
        n_calc = sum(k == "calcification" for s in subjects for k in s.lesion_kinds)
        results[cname] = {"subjects": len(subjects), "microbleeds": n_mb, "calcifications": n_calc}
        for mname, model in models.items():
            run, kept = runner(model)
            r = evaluate_model(subjects, run)
            r["mb_calls_per_lesion_free_subject"] = lesion_free_calls(subjects, kept)
            r["n_vein_gated"] = int(sum(d.features.get("vein_gate", 0.0) > 0 for ds in kept.values() for d in ds))
            results[cname][mname] = r
            print(cname, mname, json.dumps(r), flush=True)
    keys = ("sens@0.5FP", "sens@1FP", "sensitivity", "precision", "fp_per_subject",
            "mb_calls_per_lesion_free_subject", "calc_called_mb", "n_vein_gated", "s_per_subject")
    print("\n| cohort (subjects, microbleeds) | model | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
    for cname, res in results.items():
        for mname in models:
            r = res[mname]
            cells = ["-" if r[k] is None else (f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])) for k in keys]
            print(f"| {cname} ({res['subjects']}, {res['microbleeds']}) | {mname} | " + " | ".join(cells) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
