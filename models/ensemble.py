"""Ensembles of independently trained models (deep ensembles) in one model folder.

An ensemble folder holds one sub-folder per member (each a complete model: weights + metadata.json) and a
``metadata.json`` with ``ensemble.members`` (the sub-folder names) and the metadata every caller reads
(channels, spacing, normalisation, patch size, classes, thresholds, inference settings).  Members are trained
with consecutive seeds, so each has its own initialisation, patch draws and train/validation split.

At inference (:func:`cmbdetect.models.inference.detect`): stage 1 uses the mean of the members' heatmaps with
the lowest member threshold (recall first); stage 2 pools every member's calibrated committee heads, so the
probability is their mean and disagreement *between* members adds to the query-by-committee uncertainty.

The ensemble's own stage-1 budget is tuned on a validation cohort that no member trained on
(:func:`set_operating_point`, called by ``benchmarks/stage1_recall.py --held-out ... --set-operating-point``);
:func:`write_ensemble` starts from the members' budgets.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from cmbdetect.models.detection import reader_thresholds
from cmbdetect.models.registry import ENSEMBLE_SHARED_KEYS, VEIN_GATE, load_model
from cmbdetect.models.spec import OUTPUT_INFERENCE_KEYS
from cmbdetect.physics.errors import InputError

COMBINATION = ("stage 1: mean of the members' heatmaps, lowest member threshold; stage 2: the members' "
               "calibrated heads pooled into one committee (probability = mean, uncertainty = entropy and "
               "mutual information over all heads)")


def member_name(k: int) -> str:
    """Folder name of member ``k`` inside the ensemble folder."""
    return f"member-{k}"


def ensemble_metadata(members: list, names: list[str], *, name: str, command: str = "") -> dict:
    """The ensemble's ``metadata.json`` from its loaded members (:class:`LoadedModel`) and their folder names."""
    if not members:
        raise InputError("an ensemble needs at least one member")
    base = members[0].metadata
    for key in ENSEMBLE_SHARED_KEYS:
        if any(m.metadata.get(key) != base.get(key) for m in members):
            raise InputError(f"ensemble members differ in {key!r}; they must share inputs and classes")
    meta = {k: base[k] for k in ("format_version", "version", *ENSEMBLE_SHARED_KEYS) if k in base}
    th = [m.metadata["thresholds"] for m in members]
    meta["thresholds"] = {"heatmap": min(float(t["heatmap"]) for t in th),
                          "min_distance_mm": float(th[0]["min_distance_mm"]),
                          "max_candidates": max(int(t["max_candidates"]) for t in th), **reader_thresholds()}
    # the output settings are the ensemble's own; the network settings stay with each member (models/spec.py)
    meta["inference"] = {k: v for k, v in base.get("inference", {}).items() if k in OUTPUT_INFERENCE_KEYS}
    meta["physics_gate"] = base.get("physics_gate", "")
    meta["vein_gate"] = VEIN_GATE  # applied at inference to any model (metadata inference.vein_gate false: off)
    meta["ensemble"] = {"members": list(names), "combination": COMBINATION}
    # each member's own metadata.json holds its full training record (options, data, wall time)
    meta["training"] = {"command": command, "seeds": [m.metadata.get("training", {}).get("seed") for m in members]}
    meta["metrics"] = {"members": [m.metadata.get("metrics", {}) for m in members]}
    meta["name"] = name
    return meta


def _write_metadata(out: Path, meta: dict) -> None:
    tmp = out / f".metadata.json.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "metadata.json")


def stage2_fitted_budget(model) -> int:
    """The stage-1 budget a model's stage 2 was fitted on (:attr:`cmbdetect.models.spec.ModelSpec.fitted_budget`:
    the largest ``training.options.max_candidates`` of its members, else of their ``thresholds.max_candidates``;
    :func:`set_operating_point` changes only the ensemble's own).  ``model``: a ``LoadedModel``."""
    return model.spec.fitted_budget


def set_operating_point(model_dir: str | Path, *, max_candidates: int, screen_floor: float,
                        validation: dict, low_rank_odds_ratio: float | None = None) -> Path:
    """Set a model folder's stage-1 budget (``thresholds.max_candidates``) and the stage-2 screen that keeps a
    large budget affordable (``inference.stage2_screen.floor``: a plain pass for every candidate, the
    flip-averaged pass only where a head gives microbleed or calcification ``>= screen_floor``;
    :func:`cmbdetect.models.inference.committee_probabilities`), and record the validation figures that chose
    them (``metrics.held_out_validation``).  ``low_rank_odds_ratio``: the microbleed prior odds of the
    candidates ranked at or beyond the fitted budget (:func:`stage2_fitted_budget`, computed at load, not
    stored) relative to those of the ones within it (``inference.low_rank_prior.odds_ratio``); None removes it.
    The metadata is rewritten atomically (and checked by loading the model); returns the folder."""
    out = Path(model_dir)
    path = out / "metadata.json"
    if not path.is_file():
        raise InputError(f"no metadata.json in {out}")
    if int(max_candidates) < 1 or not (0.0 <= float(screen_floor) <= 1.0):
        raise InputError(f"need max_candidates >= 1 and 0 <= screen_floor <= 1, got {max_candidates}, "
                         f"{screen_floor}")
    if low_rank_odds_ratio is not None and not float(low_rank_odds_ratio) > 0.0:
        raise InputError(f"need a low-rank prior odds ratio > 0, got {low_rank_odds_ratio}")
    meta = json.loads(path.read_text())
    if "ensemble" not in meta:  # a single model: keep the budget its stage 2 was fitted on in its training record
        training = meta.setdefault("training", {})
        options = training.setdefault("options", {})
        options.setdefault("max_candidates", int(meta["thresholds"]["max_candidates"]))
    inference = meta.setdefault("inference", {})
    meta["thresholds"]["max_candidates"] = int(max_candidates)
    inference["stage2_screen"] = {"floor": float(screen_floor)}
    inference.pop("low_rank_prior", None)
    if low_rank_odds_ratio is not None:
        inference["low_rank_prior"] = {"odds_ratio": float(low_rank_odds_ratio)}
    meta.setdefault("metrics", {})["held_out_validation"] = validation
    _write_metadata(out, meta)
    load_model(out)  # the spec check: a wrong value fails here, not at the next detection
    return out


def write_ensemble(out_dir: str | Path, *, command: str = "") -> Path:
    """Write ``out_dir/metadata.json`` for the member folders ``member-0, member-1, ...`` already in
    ``out_dir`` (atomically, last); returns ``out_dir``."""
    out = Path(out_dir)
    names = []
    while (out / member_name(len(names)) / "metadata.json").is_file():
        names.append(member_name(len(names)))
    if not names:
        raise InputError(f"no member folders ({member_name(0)}, ...) in {out}")
    members = [load_model(out / n) for n in names]
    _write_metadata(out, ensemble_metadata(members, names, name=out.name, command=command))
    return out
