"""Fit the vein model (:mod:`cmbdetect.models.vein_model`) of a trained two-stage model on labelled cohorts.

:func:`train_vein_model` runs the model's two stages on every subject of the given BIDS datasets (physics maps
cached in ``cache_dir`` by :func:`cmbdetect.models.training_data.load_training_subjects`), keeps the candidates
that get vein features (stage-2 microbleed probability >= ``VEIN_FEATURES_FROM_P``), labels them from the ground
truth (:func:`label_candidates`), chooses the L2 strength by leave-one-dataset-out cross-validation
(:func:`choose_l2`) and writes the fitted ``"vein_model"`` section into the model's ``metadata.json``.

The candidate rows of each subject are cached in ``cache_dir`` (``vein-rows/<model sha>/<subject>.json``), so a
refit costs seconds.  Hold a whole vein-generator family out of the datasets given here and validate on it
(``benchmarks/vein_generalisation.py``).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

#: Candidates within this distance (world mm) of a true microbleed are matched to it (as in the benchmarks).
HIT_MM = 5.0

#: L2 strengths tried by the cross-validation (on standardised features).
L2_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)


def candidate_rows(model, subject) -> list[dict]:
    """The candidates of one subject (a ``TrainingSubject``) that get vein features: ``{"centre_vox", "p",
    "features"}`` with ``p`` the committee-mean microbleed probability before any vein step.  The model's own
    vein model is left out, its vein gate left on (so the features are computed); duplicates are not merged."""
    from cmbdetect.models.inference import detect

    m = copy.copy(model)
    m.metadata = copy.deepcopy(model.metadata)
    m.metadata.pop("vein_model", None)
    inf = m.metadata.setdefault("inference", {})
    inf["merge_duplicates"], inf["vein_gate"] = False, True
    rows = []
    for d in detect(subject.maps, model=m):
        f = d.features
        if "microbleed_p_before_vein_gate" not in f:
            continue
        rows.append({"centre_vox": [float(v) for v in d.centre_vox], "p": float(f["microbleed_p_before_vein_gate"]),
                     "features": {k: float(v) for k, v in f.items() if isinstance(v, (int, float))}})
    return rows


def label_candidates(rows: list[dict], subject, *, hit_mm: float = HIT_MM) -> tuple[np.ndarray, np.ndarray]:
    """``(y, weight)`` of a subject's candidate rows: for each true microbleed, the candidate of highest ``p``
    within ``hit_mm`` is positive (y 1); the other candidates within ``hit_mm`` of a microbleed are duplicates,
    left out (weight 0); the rest are negatives."""
    from cmbdetect.physics.geometry import voxel_to_world

    aff = subject.maps.affine
    y, w = np.zeros(len(rows)), np.ones(len(rows))
    truth = np.array([voxel_to_world(aff, v) for v, k in zip(subject.lesion_vox, subject.lesion_kinds)
                      if k == "microbleed"]).reshape(-1, 3)
    if not len(rows) or not len(truth):
        return y, w
    xyz = np.array([voxel_to_world(aff, r["centre_vox"]) for r in rows]).reshape(-1, 3)
    d = np.linalg.norm(xyz[:, None] - truth[None], axis=-1)
    near = d < hit_mm
    w[near.any(axis=1)] = 0.0
    p = np.array([r["p"] for r in rows])
    for t in range(len(truth)):
        cand = np.flatnonzero(near[:, t])
        if len(cand):
            best = cand[np.argmax(p[cand])]
            y[best], w[best] = 1.0, 1.0
    return y, w


def subject_rows(model, subjects, *, cache: Path | None, cached_only: bool = False, log=print) -> list[dict]:
    """Candidate rows of all ``subjects``, labelled (``y``, ``w``, ``subject``, ``group`` = dataset name),
    cached per subject under ``cache`` when given (``cached_only``: the subjects without cached rows are skipped)."""
    out = []
    for s in subjects:
        path = cache / f"{s.label}.json" if cache is not None else None
        if path is not None and path.is_file():
            rows = json.loads(path.read_text())
        elif cached_only:
            continue
        else:
            t0 = time.perf_counter()
            rows = candidate_rows(model, s)
            if path is not None:
                from cmbdetect.pipeline.io.atomic import write_text

                write_text(json.dumps(rows) + "\n", path)
            log(f"{s.label}: {len(rows)} candidates with vein features ({time.perf_counter() - t0:.0f} s)")
        y, w = label_candidates(rows, s)
        for r, yy, ww in zip(rows, y, w):
            out.append(dict(r, y=float(yy), w=float(ww), subject=s.label, group=s.label.rsplit("_", 1)[0]))
    return out


def cross_entropy(p, y, w) -> float:
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    y, w = np.asarray(y, float), np.asarray(w, float)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log1p(-p))).sum() / max(w.sum(), 1e-12))


def choose_l2(rows: list[dict], *, grid=L2_GRID, names=None) -> tuple[float, dict]:
    """The L2 strength of least leave-one-group-out cross-entropy (groups: the datasets; with one group,
    leave-one-subject-out), and the cross-entropy of each."""
    from cmbdetect.models.vein_model import VEIN_MODEL_FEATURES, fit_vein_model, predict_vein_model

    names = VEIN_MODEL_FEATURES if names is None else names
    key = "group" if len({r["group"] for r in rows}) > 1 else "subject"
    groups = sorted({r[key] for r in rows})
    scores = {}
    for l2 in grid:
        ps, ys, ws = [], [], []
        for g in groups:
            tr = [r for r in rows if r[key] != g and r["w"] > 0]
            te = [r for r in rows if r[key] == g]
            if not te or not tr or len({r["y"] for r in tr}) < 2:
                continue
            sec = fit_vein_model([r["features"] for r in tr], [r["p"] for r in tr], [r["y"] for r in tr], l2=l2,
                                 names=names)
            ps.append(predict_vein_model(sec, [r["features"] for r in te], [r["p"] for r in te]))
            ys.append([r["y"] for r in te])
            ws.append([r["w"] for r in te])
        scores[float(l2)] = cross_entropy(np.concatenate(ps), np.concatenate(ys), np.concatenate(ws)) if ps else np.inf
    best = min(scores, key=lambda k: (scores[k], -k))
    return best, scores


def fit_section(rows: list[dict], *, held_out: Sequence[str] = (), training_families: Sequence[str] = (),
                gate: str = "veto", l2: float | None = None) -> dict:
    """The ``"vein_model"`` metadata section fitted on labelled ``rows`` (L2 by :func:`choose_l2` unless given)."""
    from cmbdetect.models.vein_model import fit_vein_model

    cv = None
    if l2 is None:
        l2, cv = choose_l2(rows)
    tr = [r for r in rows if r["w"] > 0]
    sec = fit_vein_model([r["features"] for r in tr], [r["p"] for r in tr], [r["y"] for r in tr], l2=l2)
    sec.update(kind="l2-logistic", gate=gate, training_families=list(training_families),
               held_out_family=list(held_out), training_datasets=sorted({r["group"] for r in rows}),
               training_candidates=len(tr), training_microbleeds=int(sum(r["y"] for r in tr)),
               training_subjects=len({r["subject"] for r in rows}),
               cv_cross_entropy={f"{k:g}": float(v) for k, v in (cv or {}).items()},
               applies_to=f"candidates with stage-2 microbleed probability >= VEIN_FEATURES_FROM_P",
               how_it_gates=GATE_TEXT[gate])
    return sec


#: What the metadata says about how the vein model gates, by ``gate`` setting.
GATE_TEXT = {
    "veto": ("the microbleed probability of each candidate with stage-2 microbleed probability >= 0.05 is refitted "
             "by an L2 logistic regression on the stage-2 logit and vein features in mm (Hessian blob ratios of its "
             "positive chi and magnitude void, how many widths each goes on along its axis, sphere-vs-cylinder "
             "fit of the local field, peak chi, moment, width); the mass taken from microbleed goes to vein. The "
             "hard vein gate (vein_gate) then still vetoes: a tube void without a ball of chi, or a cylinder's "
             "field, cannot be called microbleed"),
    "none": ("the microbleed probability of each candidate with stage-2 microbleed probability >= 0.05 is refitted "
             "by an L2 logistic regression on the stage-2 logit and vein features in mm (Hessian blob ratios of its "
             "positive chi and magnitude void, how many widths each goes on along its axis, sphere-vs-cylinder "
             "fit of the local field, peak chi, moment, width); the mass taken from microbleed goes to vein. It "
             "replaces the hard vein gate"),
}


def write_vein_model(model_dir: Path, section: dict) -> None:
    """Put ``section`` under ``"vein_model"`` in ``model_dir/metadata.json`` (atomic; other keys unchanged)."""
    from cmbdetect.pipeline.io.atomic import write_json

    path = Path(model_dir) / "metadata.json"
    meta = json.loads(path.read_text())
    meta["vein_model"] = section
    write_json(meta, path)


def train_vein_model(*, model_dir: Path, bids_dirs: Sequence[Path], cache_dir: Path, seed: int,
                     threads: int = 2, gate: str = "veto", held_out_family: Sequence[str] = ("tortuous",),
                     cached_only: bool = False, log=print) -> dict:
    """Fit the vein model of the model in ``model_dir`` on the subjects of ``bids_dirs`` and write it into its
    ``metadata.json``; returns the section.  ``seed``: recorded (the fit is deterministic, it draws nothing);
    ``threads``: torch threads for the two stages.  The vein families of the datasets are read from their
    simulation parameters where present.  ``cached_only``: fit on the subjects whose candidate rows are already
    cached (a developer's shortcut; the section records the subjects used)."""
    import torch

    from cmbdetect.models.registry import load_model
    from cmbdetect.models.training_data import load_training_subjects

    torch.set_num_threads(int(threads))
    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    model = load_model(model_dir)
    rows_cache = cache_dir / "vein-rows" / stages_digest(model)
    subjects = load_training_subjects([Path(d) for d in bids_dirs], cache_dir=cache_dir, log=log)
    rows = subject_rows(model, subjects, cache=rows_cache, cached_only=cached_only, log=log)
    families = sorted({f for d in bids_dirs for f in dataset_vein_families(Path(d))})
    if set(families) & set(held_out_family):
        from cmbdetect.physics.errors import InputError

        raise InputError(f"the held-out vein family {sorted(set(families) & set(held_out_family))} is among the "
                         f"training datasets; leave it out")
    sec = fit_section(rows, held_out=held_out_family, training_families=families, gate=gate)
    sec["seed"] = int(seed)
    sec["training_command"] = ("models.vein_model_train.train_vein_model(bids_dirs=[" +
                               ", ".join(str(d) for d in bids_dirs) + "])")
    write_vein_model(model_dir, sec)
    return sec


def stages_digest(m) -> str:
    """Short sha256 of a loaded model's weights and metadata with its ``vein_model`` section left out (what the
    candidate rows depend on)."""
    import hashlib

    meta = {k: v for k, v in m.metadata.items() if k != "vein_model"}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for part in m.parts:
        for t in (part.detector, part.classifier):
            for k, v in t.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def dataset_vein_families(bids: Path) -> set[str]:
    """Vein families recorded in a simulated dataset's ``desc-simulation_parameters.json`` files (empty for real
    data)."""
    fams = set()
    for p in Path(bids).glob("derivatives/groundtruth/sub-*/*desc-simulation_parameters.json"):
        try:
            v = json.loads(p.read_text()).get("veins") or {}
        except (OSError, ValueError):
            continue
        fams.add(str(v.get("family", "trees")) if isinstance(v, dict) else "trees")
    return fams
