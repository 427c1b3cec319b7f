"""Writing simulated subjects as a BIDS dataset, and the per-subject random protocol.

Layout (names from :mod:`cmbdetect.pipeline.io.bids`)::

    dataset_description.json, participants.tsv, README
    sub-XX/anat/sub-XX[_echo-N]_part-{mag,phase}_T2starw.nii.gz (+ .json: EchoTime s,
        MagneticFieldStrength T, RepetitionTime s, FlipAngle deg)
    derivatives/groundtruth/dataset_description.json
    derivatives/groundtruth/sub-XX/  lesion table, label map, true chi and local field (see truth.py),
        sub-XX_desc-simulation_parameters.json

The echo entity appears only with more than one echo.  Phase is float32 radians in [-pi, pi) in the
project's sign convention.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmbdetect.pipeline.io.atomic import save_nifti
from cmbdetect.pipeline.io.bids import bids_name, bids_path
from cmbdetect.pipeline.io.truth import LABELS, subject_folder, write_truth

SIMULATOR_NAME = "cmbdetect-simulate"


def _json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def draw_protocol(rng: np.random.Generator, *, b0_choices=None, echoes="random", oblique: bool = True) -> dict:
    """Random acquisition protocol of one subject: ``b0`` (T), ``te`` (s), ``oblique_deg`` (3 angles)
    and ``flip_lr``.  ``b0_choices`` a list of field strengths (None: 1.5/3/7 T);  ``echoes`` "random",
    a number of echoes, or a list of echo times in seconds."""
    if b0_choices:
        b0 = float(b0_choices[int(rng.integers(len(b0_choices)))])
    else:
        b0 = float(rng.choice([1.5, 3.0, 7.0], p=[0.25, 0.5, 0.25]))
    if isinstance(echoes, str):
        n = 1 if rng.random() < 0.5 else int(rng.integers(3, 7))
    elif np.ndim(echoes) == 0:
        n = int(echoes)
    else:
        n = 0
    if n == 0:
        te = [float(t) for t in echoes]
    elif n == 1:
        hi = 0.040 if b0 < 5 else 0.025
        te = [float(rng.uniform(0.015, hi))]
    else:
        first, step = rng.uniform(0.003, 0.008), rng.uniform(0.004, 0.009)
        step = min(step, (0.045 - first) / (n - 1))
        te = [float(first + e * step) for e in range(n)]
    angles = (0.0, 0.0, 0.0)
    if oblique and rng.random() < 0.5:
        angles = (float(rng.uniform(-20, 20)), float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)))
    return {"b0": b0, "te": te, "oblique_deg": angles, "flip_lr": bool(rng.random() < 0.3)}


def draw_acquisition(rng: np.random.Generator) -> dict:
    """Random acquisition geometry of one subject (``--randomise-acquisition``): ``voxel_size_mm`` square
    in-plane 0.5-1.0 mm and slices 2-3 mm (typical SWI up to 1 x 1 x 3 mm) and ``oblique_deg`` (slab tilt about
    left-right up to +-25 deg, about the other axes up to +-8 deg, one subject in five straight)."""
    inplane, thick = float(rng.uniform(0.5, 1.0)), float(rng.uniform(2.0, 3.0))
    angles = (0.0, 0.0, 0.0) if rng.random() < 0.2 else \
        (float(rng.uniform(-25, 25)), float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8)))
    return {"voxel_size_mm": (inplane, inplane, thick), "oblique_deg": angles}


def write_dataset_files(root: Path, labels: list[str], seed: int) -> None:
    """dataset_description.json, README, participants.tsv and the groundtruth derivative description."""
    _json({"Name": "cmbdetect simulated GRE/SWI with microbleeds", "BIDSVersion": "1.9.0",
           "DatasetType": "raw", "License": "CC0", "GeneratedBy": [{"Name": SIMULATOR_NAME}],
           "SimulationSeed": int(seed)}, root / "dataset_description.json")
    (root / "README").write_text("Simulated GRE/SWI magnitude and phase (radians, paramagnetic = positive "
                                 "phase) written by `cmbdetect simulate`; ground truth in derivatives/groundtruth.\n")
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in labels))
    gt = root / "derivatives" / "groundtruth"
    gt.mkdir(parents=True, exist_ok=True)
    _json({"Name": "cmbdetect simulation ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
           "GeneratedBy": [{"Name": SIMULATOR_NAME}], "Labels": LABELS,
           "Units": {"Chimap": "ppm", "localfield": "ppm of B0"}}, gt / "dataset_description.json")


def write_subject(root: Path, label: str, subject) -> list[Path]:
    """Write one :class:`SimulatedSubject` under ``root`` (a dataset being built in a temporary
    directory); returns the image paths written."""
    acq = subject.acq
    n = acq.n_echoes
    paths = []
    for e in range(n):
        for part, vol in (("mag", acq.mag[e]), ("phase", acq.phase[e])):
            p = bids_path(root, sub=label, echo=(e + 1) if n > 1 else None, part=part, suffix="T2starw",
                          extension=".nii.gz")
            p.parent.mkdir(parents=True, exist_ok=True)
            save_nifti(vol, acq.affine, p)
            side = {"EchoTime": float(acq.te[e]), "MagneticFieldStrength": float(acq.b0),
                    "RepetitionTime": float(subject.params.get("tr_s", 0.0)),
                    "FlipAngle": float(subject.params.get("flip_deg", 0.0)),
                    "Manufacturer": SIMULATOR_NAME, "MRAcquisitionType": "3D"}
            if n > 1:
                side["EchoNumber"] = e + 1
            if part == "phase":
                side["Units"] = "rad"
            _json(side, p.with_name(p.name.replace(".nii.gz", ".json")))
            paths.append(p)
    gt = root / "derivatives" / "groundtruth"
    write_truth(subject.truth, gt, label)
    _json(subject.params, subject_folder(gt, label) / bids_name(sub=label, desc="simulation", suffix="parameters",
                                                                 extension=".json"))
    return paths
