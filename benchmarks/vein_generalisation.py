"""Vein mimics on a vein generator the model never saw, with and without the vein gate.

Leave-one-generator-out: the shipped model was trained on the simulator's default vein family ("trees": cortical
trees on the convexity, straight radial medullary veins).  This benchmark simulates cohorts with the other family
("tortuous": random-walk veins of every orientation and calibre, :mod:`cmbdetect.pipeline.simulate.veins_tortuous`)
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
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

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
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects

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


def ungated(d):
    """The detection as the release without the vein gate reports it (before duplicate merging): a gated
    candidate gets back the microbleed probability it had (``microbleed_p_before_vein_gate``, taken from vein)."""
    from dataclasses import replace

    from cmbdetect.models.detection import CLASSES

    if d.features.get("vein_gate", 0.0) <= 0:
        return d
    pb = float(d.features["microbleed_p_before_vein_gate"])
    probs = dict(d.probabilities)
    probs["microbleed"], probs["vein"] = pb, probs["vein"] - pb
    return replace(d, probabilities=probs, label=CLASSES[int(np.argmax([probs[c] for c in CLASSES]))])


def both_variants(model, maps):
    """``(release, gated)`` detections of one subject from one ``detect`` pass: duplicates are merged
    (``models.detection.merge_duplicates``) after the gate for the gated list, after undoing it
    (:func:`ungated`) for the release's, exactly as ``detect`` does for each."""
    from cmbdetect.models.detection import merge_duplicates
    from cmbdetect.models.inference import detect
    from cmbdetect.physics.geometry import voxel_sizes

    m = copy.copy(model)
    m.metadata = copy.deepcopy(model.metadata)
    inf = m.metadata.setdefault("inference", {})
    merge = bool(inf.get("merge_duplicates", True))
    inf["merge_duplicates"] = False
    dets = detect(maps, model=m)
    vs = voxel_sizes(maps.affine)

    def finish(ds):
        ds = sorted(ds, key=lambda d: -d.probabilities["microbleed"])
        return merge_duplicates(ds, vs) if merge else ds
    return finish([ungated(d) for d in dets]), finish(dets)


def as_rows(dets):
    return [(np.asarray(d.centre_vox), d.probabilities["microbleed"], d.label) for d in dets]


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
    ap.add_argument("--seed606-subjects", type=int, default=20, help="only the first N subjects of seed 606")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--check-exact", type=int, default=2, metavar="N",
                    help="also run the release without the gate on N subjects of the first cohort and check that "
                         "the release figures reconstructed from the gated pass equal it (default 2)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--save-dir", default=None, help="write each cohort's detections (p >= 0.01) as JSON here")
    a = ap.parse_args(argv)
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    specs = cohort_specs(a)
    names = list(specs) if a.cohorts is None else a.cohorts  # "--cohorts" alone: none (e.g. with --seed606)
    cohorts = {n: load_cohort(root, n, specs[n]) for n in names}
    if a.seed606:
        from cmbdetect.pipeline.simulate.subject import simulate_dataset

        test = root / "seed606"
        if not test.exists():
            simulate_dataset(test, subjects=20, seed=606, shape=(96, 112, 64), voxel_size=(1.0, 1.0, 1.5))
        cohorts["seed606"] = cached_subjects(test, root / "seed606-cache")[:a.seed606_subjects]
    if a.prepare_only:
        return 0
    from cmbdetect.models.registry import load_model

    model = load_model(a.model)
    names_m = ("release (no vein gate)", "vein gate")
    results: dict = {}
    pooled: dict = {"subjects": [], names_m[0]: {}, names_m[1]: {}}
    for cname, subjects in cohorts.items():
        n_mb = sum(k == "microbleed" for s in subjects for k in s.lesion_kinds)
        n_calc = sum(k == "calcification" for s in subjects for k in s.lesion_kinds)
        results[cname] = {"subjects": len(subjects), "microbleeds": n_mb, "calcifications": n_calc}
        kept: dict = {n: {} for n in names_m}
        times = []
        for s in subjects:
            t0 = time.perf_counter()
            peer, gated = both_variants(model, s.maps)
            times.append(time.perf_counter() - t0)
            kept[names_m[0]][s.label], kept[names_m[1]][s.label] = peer, gated
        if a.check_exact and cname == next(iter(cohorts)):  # the reconstruction equals a real run without the gate
            from cmbdetect.models.inference import detect

            for s in subjects[:a.check_exact]:
                real = detect(s.maps, model=without_vein_gate(model))
                rec = kept[names_m[0]][s.label]
                same = len(real) == len(rec) and all(
                    np.allclose(x.centre_vox, y.centre_vox) and abs(x.probabilities["microbleed"]
                                                                    - y.probabilities["microbleed"]) < 1e-9
                    and x.label == y.label for x, y in zip(real, rec))
                print(f"check: release reconstructed from the gated pass equals a real release run on {s.label}: "
                      f"{same}", flush=True)
                results[cname].setdefault("reconstruction_exact", []).append(bool(same))
        results[cname]["detect_s_per_subject"] = float(np.mean(times))
        if cname.startswith("heldout"):
            pooled["subjects"] += subjects
            for mname in names_m:
                pooled[mname].update(kept[mname])
        if a.save_dir:
            out = Path(a.save_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{cname}.json").write_text(json.dumps({
                mname: {lab: [{"centre_vox": list(d.centre_vox), "probabilities": d.probabilities, "label": d.label,
                               "features": {k: v for k, v in d.features.items() if isinstance(v, float)}}
                              for d in ds if d.probabilities["microbleed"] >= 0.01]
                        for lab, ds in kept[mname].items()} for mname in names_m}, default=float) + "\n")
        for mname in names_m:
            r = evaluate_model(subjects, lambda s, k=kept[mname]: as_rows(k[s.label]))
            r["mb_calls_per_lesion_free_subject"] = lesion_free_calls(subjects, kept[mname])
            r["n_vein_gated"] = int(sum(d.features.get("vein_gate", 0.0) > 0 and d.label == "vein"
                                        for ds in kept[mname].values() for d in ds)) if mname == names_m[1] else 0
            results[cname][mname] = r
            print(cname, mname, json.dumps(r), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    if len({s.label.split("_")[0] for s in pooled["subjects"]}) > 1:  # all held-out cohorts of this run together
        subjects = pooled["subjects"]
        res = {"subjects": len(subjects), "microbleeds": sum(k == "microbleed" for s in subjects for k in s.lesion_kinds),
               "calcifications": sum(k == "calcification" for s in subjects for k in s.lesion_kinds),
               "detect_s_per_subject": float(np.mean([results[c]["detect_s_per_subject"] for c in results
                                                      if c.startswith("heldout")]))}
        for mname in names_m:
            r = evaluate_model(subjects, lambda s, k=pooled[mname]: as_rows(k[s.label]))
            r["mb_calls_per_lesion_free_subject"] = lesion_free_calls(subjects, pooled[mname])
            r["n_vein_gated"] = sum(results[c][mname]["n_vein_gated"] for c in results if c.startswith("heldout"))
            res[mname] = r
        results["heldout (pooled)"] = res
    keys = ("sens@0.5FP", "sens@1FP", "sensitivity", "precision", "fp_per_subject",
            "mb_calls_per_lesion_free_subject", "calc_called_mb", "n_vein_gated")
    print("\n| cohort (subjects, microbleeds; detect s/subject) | model | " + " | ".join(keys) + " |\n|---|---|"
          + "---|" * len(keys))
    for cname, res in results.items():
        for mname in names_m:
            r = res[mname]
            cells = ["-" if r[k] is None else (f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])) for k in keys]
            print(f"| {cname} ({res['subjects']}, {res['microbleeds']}; {res['detect_s_per_subject']:.0f}) | {mname} | "
                  + " | ".join(cells) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
