"""Vein mimics on a vein generator the model never saw: the release, the vein gate and the vein model.

Leave-one-generator-out: the shipped networks were trained on the simulator's default vein family ("trees":
cortical trees on the convexity, straight radial medullary veins), its vein model (:mod:`cmbdetect.models.vein_model`)
on "trees" and "radial".  This benchmark simulates cohorts with the other family ("tortuous": random-walk veins of
every orientation and calibre, :mod:`cmbdetect.pipeline.simulate.veins_tortuous`) and runs
``models.inference.detect`` once per subject with the vein gate on and no vein model (so the vein features are
computed for every candidate that can be called); the variants of :data:`VARIANTS` are read off that pass
(:func:`rescored`, exact): the release without vein features (the peer in the same run), the vein gate alone, the
vein model, the vein model with the gate as a veto.  ``--check-exact N`` compares the reconstruction with real runs
on N subjects; ``--save-dir`` keeps the unmerged pass so ``--offline`` can rescore another vein model in seconds.

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
    """The same loaded model with ``inference.vein_gate`` false and no vein model (the release before the gate)."""
    meta = copy.deepcopy(model.metadata)
    meta.setdefault("inference", {})["vein_gate"] = False
    meta.pop("vein_model", None)
    return model.with_metadata(meta)  # the spec is built anew from the changed metadata


#: The variants compared, from one detect pass: (vein model used, hard vein gate on).
VARIANTS = {"release (no vein features)": (False, False), "vein gate": (False, True),
            "vein model": (True, False), "vein model + gate": (True, True)}


#: Key of the unmerged detect pass in the files of ``--save-dir``.
PASS = "pass (unmerged, vein gate)"


def p_before_vein_step(features: dict) -> float | None:
    """The committee-mean microbleed probability a candidate had before the vein gate / vein model (None: it got
    no vein features)."""
    for k in ("microbleed_p_before_vein_model", "microbleed_p_before_vein_gate"):
        if k in features:
            return float(features[k])
    return None


def rescored(d, section, gate: bool, policy):
    """Detection ``d`` of a pass with the vein gate on as the variant (vein model ``section`` or None, ``gate``)
    reports it: the probabilities before the vein step are restored and the variant applied to the committee mean
    (exact: both the rescaling of :func:`cmbdetect.models.vein_model.set_microbleed_mean` and the gate are linear
    in the heads)."""
    from dataclasses import replace

    from cmbdetect.models.detection import CLASSES
    from cmbdetect.models.vein_model import rescore, set_microbleed_mean

    pb = p_before_vein_step(d.features)
    if pb is None:
        return d
    probs = np.array([[[d.probabilities[c] for c in CLASSES]]], dtype=float)
    mb, vein = CLASSES.index("microbleed"), CLASSES.index("vein")
    probs[0, 0, vein] -= pb - probs[0, 0, mb]  # undo the vein step: what it took from microbleed went to vein
    probs[0, 0, mb] = pb
    probs = set_microbleed_mean(probs, rescore(section, [d.features], [pb], gate=gate))
    p = {c: float(probs[0, 0, k]) for k, c in enumerate(CLASSES)}
    return replace(d, probabilities=p, label=policy.label(p))


def variants_of(dets, section, policy, vs, *, merge: bool) -> dict:
    """``{variant: detections}`` (:data:`VARIANTS`; the vein-model ones only with ``section``) from the unmerged
    detections of a pass with the vein gate on, each variant rescored (:func:`rescored`) then merged."""
    from cmbdetect.models.detection import merge_duplicates

    out = {}
    for name, (use_vm, gate) in VARIANTS.items():
        if use_vm and not section:
            continue
        ds = sorted((rescored(d, section if use_vm else None, gate, policy) for d in dets),
                    key=lambda d: -d.probabilities["microbleed"])
        out[name] = merge_duplicates(ds, vs) if merge else ds
    return out


def all_variants(model, maps, section=None):
    """``({variant: detections}, the pass's unmerged detections)`` of one subject (:data:`VARIANTS`) from one ``detect`` pass with the vein gate on
    and no vein model (the vein features are computed for every candidate that can be called); duplicates merged
    (``models.detection.merge_duplicates``) after each variant's rescoring, exactly as ``detect`` does.
    ``section``: the vein model (default the model's own ``vein_model``)."""
    from cmbdetect.models.detection import LabelPolicy
    from cmbdetect.models.inference import detect
    from cmbdetect.physics.geometry import voxel_sizes

    section = model.metadata.get("vein_model") if section is None else section
    meta = copy.deepcopy(model.metadata)
    meta.pop("vein_model", None)
    inf = meta.setdefault("inference", {})
    merge = bool(inf.get("merge_duplicates", True))
    inf["merge_duplicates"], inf["vein_gate"] = False, True
    m = model.with_metadata(meta)
    dets = detect(maps, model=m)
    policy = m.spec.thresholds.label_policy()
    vs = voxel_sizes(maps.affine)
    return variants_of(dets, section, policy, vs, merge=merge), dets


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
    ap.add_argument("--vein-model", default=None,
                    help="a metadata.json or model folder whose vein_model section to compare (default the model's)")
    ap.add_argument("--offline", default=None, metavar="DIR",
                    help="rescore the detections saved in DIR by an earlier --save-dir run instead of running detect")
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
    section = None
    if a.vein_model:
        vpath = Path(a.vein_model)
        section = json.loads((vpath / "metadata.json" if vpath.is_dir() else vpath).read_text())["vein_model"]
    section = section or model.metadata.get("vein_model")
    names_m = [n for n, (use_vm, _) in VARIANTS.items() if section or not use_vm]
    results: dict = {}
    pooled: dict = {"subjects": [], **{n: {} for n in names_m}}
    for cname, subjects in cohorts.items():
        n_mb = sum(k == "microbleed" for s in subjects for k in s.lesion_kinds)
        n_calc = sum(k == "calcification" for s in subjects for k in s.lesion_kinds)
        results[cname] = {"subjects": len(subjects), "microbleeds": n_mb, "calcifications": n_calc}
        kept: dict = {n: {} for n in names_m}
        times, passes = [], {}
        saved = json.loads((Path(a.offline) / f"{cname}.json").read_text()) if a.offline else None
        for s in subjects:
            t0 = time.perf_counter()
            if saved:
                var = offline_variants(saved, s, model, section)
            else:
                var, passes[s.label] = all_variants(model, s.maps, section)
            times.append(time.perf_counter() - t0)
            for n in names_m:
                kept[n][s.label] = var[n]
        if a.check_exact and not a.offline and cname == next(iter(cohorts)):  # reconstructions equal real runs
            from cmbdetect.models.inference import detect

            real_models = {names_m[0]: without_vein_gate(model)}
            if section:
                vm_model = copy.copy(model)
                vm_model.metadata = dict(copy.deepcopy(model.metadata), vein_model=section)
                real_models[[n for n in names_m if VARIANTS[n] == (True, section.get("gate") == "veto")][0]] = vm_model
            for s in subjects[:a.check_exact]:
                for vname, rm in real_models.items():
                    real, rec = detect(s.maps, model=rm), kept[vname][s.label]
                    same = len(real) == len(rec) and all(
                        np.allclose(x.centre_vox, y.centre_vox) and abs(x.probabilities["microbleed"]
                                                                        - y.probabilities["microbleed"]) < 1e-9
                        and x.label == y.label for x, y in zip(real, rec))
                    print(f"check: {vname} reconstructed from the gated pass equals a real run on {s.label}: "
                          f"{same}", flush=True)
                    results[cname].setdefault("reconstruction_exact", []).append([vname, bool(same)])
        results[cname]["detect_s_per_subject"] = float(np.mean(times))
        if cname.startswith("heldout"):
            pooled["subjects"] += subjects
            for mname in names_m:
                pooled[mname].update(kept[mname])
        if a.save_dir:
            out = Path(a.save_dir)
            out.mkdir(parents=True, exist_ok=True)
            lists = {PASS: passes, **{n: kept[n] for n in names_m}} if passes else kept
            (out / f"{cname}.json").write_text(json.dumps({
                mname: {lab: [{"centre_vox": list(d.centre_vox), "probabilities": d.probabilities, "label": d.label,
                               "diameter_mm": d.diameter_mm, "score": d.score,
                               "features": {k: v for k, v in d.features.items() if isinstance(v, float)}}
                              for d in ds if d.probabilities["microbleed"] >= 0.01
                              or p_before_vein_step(d.features) is not None]
                        for lab, ds in by_subject.items()} for mname, by_subject in lists.items()},
                default=float) + "\n")
        for mname in names_m:
            r = evaluate_model(subjects, lambda s, k=kept[mname]: as_rows(k[s.label]))
            r["mb_calls_per_lesion_free_subject"] = lesion_free_calls(subjects, kept[mname])
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
            res[mname] = r
        results["heldout (pooled)"] = res
    keys = ("sens@0.5FP", "sens@1FP", "sensitivity", "precision", "fp_per_subject",
            "mb_calls_per_lesion_free_subject", "calc_called_mb")
    print("\n| cohort (subjects, microbleeds; s/subject) | model | " + " | ".join(keys) + " |\n|---|---|"
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


def offline_variants(saved: dict, subject, model, section):
    """:func:`all_variants` from detections saved by an earlier run (``--save-dir``) instead of a detect pass:
    the saved unmerged pass (:data:`PASS`) of the subject, rescored and merged: the same as a detect pass up to
    the candidates below p 0.01 left out of the file.  Files of older runs hold only merged lists; the first
    one is used (approximate: merged twice)."""
    from cmbdetect.models.detection import Detection, LabelPolicy
    from cmbdetect.physics.geometry import voxel_sizes

    rows = (saved[PASS] if PASS in saved else next(iter(saved.values()))).get(subject.label, [])
    dets = [Detection(centre_vox=tuple(r["centre_vox"]), score=float(r.get("score", r["features"].get("stage1_score", 0))),
                      probabilities=dict(r["probabilities"]), label=r["label"],
                      diameter_mm=float(r.get("diameter_mm", r["features"].get("diameter_mm", 2.0))),
                      features=dict(r["features"])) for r in rows]
    policy = LabelPolicy.from_metadata(model.metadata)
    vs = voxel_sizes(subject.maps.affine)
    return variants_of(dets, section, policy, vs, merge=True)


if __name__ == "__main__":
    sys.exit(main())
