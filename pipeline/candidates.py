"""The candidate table: one row per detected lesion candidate, in the order a reader should see them.

Columns (also written, with units, into the header of ``candidates.json``):

``id`` 1..N in order of decreasing ``probability``; ``label`` the stage-2 class (one of
:data:`models.detection.CLASSES`); ``probability`` the calibrated probability of that label;
``x y z`` centre in scanner RAS mm; ``x_lps y_lps z_lps`` the same in LPS (DICOM, 3D Slicer);
``i j k`` continuous 0-based voxel indices on the input grid; ``susceptibility_ppm`` mean χ of the
candidate (ppm, > 0 paramagnetic); ``diameter_mm``; ``volume_mm3``; ``region`` MARS group
(:mod:`pipeline.regions`); ``review_priority`` 1 = review first (most uncertain); ``score`` stage-1
heatmap peak; ``uncertainty`` 0..1 (higher = more informative to review); ``p_<class>`` per-class
probabilities; ``chi_measured`` 1 where chi was measured at the centre, 0 in the rim outside the chi mask
(magnitude only: the chi sign is unknown); ``moment_ppm_mm3`` magnetic moment (ppm*mm^3, ball integral grown
until it converges, :func:`cmbdetect.physics.moment.converged_moment`) and ``moment_sd_ppm_mm3`` its 1-sd
uncertainty.  Missing numbers are ``n/a`` in the TSV and ``null`` in the JSON.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from cmbdetect.models.detection import CLASSES, Detection
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import ras_to_lps, voxel_to_world
from cmbdetect.pipeline.atomic import write_json, write_text
from cmbdetect.pipeline.regions import brain_geometry, region_of


@dataclass
class Candidate:
    """One row of the candidate table (units in the module docstring)."""

    id: int
    label: str
    probability: float
    x: float
    y: float
    z: float
    x_lps: float
    y_lps: float
    z_lps: float
    i: float
    j: float
    k: float
    susceptibility_ppm: float
    diameter_mm: float
    volume_mm3: float
    region: str
    review_priority: int
    score: float
    uncertainty: float
    p_microbleed: float
    p_calcification: float
    p_vein: float
    p_other: float
    chi_measured: float = math.nan
    moment_ppm_mm3: float = math.nan
    moment_sd_ppm_mm3: float = math.nan

    @property
    def ras(self) -> np.ndarray:
        """Centre in scanner RAS mm, shape (3,)."""
        return np.array([self.x, self.y, self.z])

    @property
    def lps(self) -> np.ndarray:
        """Centre in LPS mm (DICOM patient coordinates), shape (3,)."""
        return np.array([self.x_lps, self.y_lps, self.z_lps])

    @property
    def ijk(self) -> np.ndarray:
        """Continuous voxel index, shape (3,)."""
        return np.array([self.i, self.j, self.k])


#: Column order of ``candidates.tsv``.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Candidate))

#: Units and meaning of each column (the JSON header).
COLUMN_INFO: dict[str, dict[str, str]] = {
    "id": {"units": "", "description": "1..N in order of decreasing probability"},
    "label": {"units": "", "description": f"stage-2 class, one of {', '.join(CLASSES)}"},
    "probability": {"units": "1", "description": "calibrated probability of the label"},
    **{c: {"units": "mm", "description": f"centre, scanner RAS {c}"} for c in ("x", "y", "z")},
    **{f"{c}_lps": {"units": "mm", "description": f"centre, LPS {c} (DICOM / 3D Slicer)"}
       for c in ("x", "y", "z")},
    **{c: {"units": "voxel", "description": f"centre, continuous 0-based voxel index {c}"}
       for c in ("i", "j", "k")},
    "susceptibility_ppm": {"units": "ppm", "description": "mean susceptibility (> 0 paramagnetic)"},
    "diameter_mm": {"units": "mm", "description": "equivalent diameter"},
    "volume_mm3": {"units": "mm^3", "description": "volume"},
    "region": {"units": "", "description": "MARS group: lobar, deep, infratentorial or unknown "
                                           "(geometric heuristic, no atlas)"},
    "review_priority": {"units": "", "description": "1 = review first (most uncertain)"},
    "score": {"units": "1", "description": "stage-1 detector heatmap peak"},
    "uncertainty": {"units": "1", "description": "0..1, higher = more informative to review"},
    **{f"p_{c}": {"units": "1", "description": f"probability of class {c}"} for c in CLASSES},
    "chi_measured": {"units": "", "description": "1 = the centre lies where chi was measured; 0 = in the brain's "
                                                 "rim outside the chi mask (seen on the magnitude only: chi sign, "
                                                 "so bleed versus calcification, unknown)"},
    "moment_ppm_mm3": {"units": "ppm*mm^3", "description": "magnetic moment (integrated chi over a ball grown until "
                                                          "it converges; > 0 paramagnetic)"},
    "moment_sd_ppm_mm3": {"units": "ppm*mm^3", "description": "uncertainty (1 sd) of moment_ppm_mm3"},
}

#: How the coordinate columns are defined (the JSON header).
COORDINATE_SYSTEM = {
    "world": "scanner RAS (x right, y anterior, z superior), mm, from the input image affine",
    "lps": "LPS = RAS with x and y negated (DICOM patient coordinates, 3D Slicer)",
    "voxel": "continuous 0-based indices [i, j, k] of the input image grid (NIfTI voxel order)",
}

_INT_COLUMNS = {"id", "review_priority"}
_STR_COLUMNS = {"label", "region"}
_REQUIRED = ("label", "probability", "x", "y", "z")


def _susceptibility(features: dict) -> float:
    """Mean χ (ppm) from the physics features: ``mean_chi_ppm`` or integrated χ / volume."""
    if "mean_chi_ppm" in features:
        return float(features["mean_chi_ppm"])
    integrated, volume = features.get("integrated_chi_ppm_mm3"), features.get("volume_mm3")
    if integrated is not None and volume:
        return float(integrated) / float(volume)
    return math.nan


def candidates_from_detections(detections: list[Detection], *, affine: np.ndarray,
                               mask: np.ndarray | None) -> list[Candidate]:
    """Candidate rows from the models' detections: microbleeds first, then calcifications, veins and
    "other" (rejected by stage 2), each group sorted by decreasing probability of its label, so the
    top of the table is what a reader looks for.

    ``affine`` maps voxel indices to scanner RAS mm; ``mask`` (bool, may be None) is the brain mask used
    for the MARS region.  ids are 1..N in the returned order; ``review_priority`` ranks by decreasing
    ``uncertainty`` (ties: higher probability first).
    """
    geometry = brain_geometry(mask, affine)
    rows = []
    for det in detections:
        if det.label not in CLASSES:
            raise ValueError(f"detection label {det.label!r} is not one of {CLASSES}")
        ijk = np.asarray(det.centre_vox, dtype=float)
        ras = voxel_to_world(affine, ijk)
        lps = ras_to_lps(ras)
        probs = {c: float(det.probabilities.get(c, math.nan)) for c in CLASSES}
        diameter = float(det.diameter_mm)
        volume = float(det.features.get("volume_mm3", math.pi / 6.0 * diameter ** 3))
        rows.append(Candidate(
            id=0, label=det.label, probability=probs[det.label],
            x=float(ras[0]), y=float(ras[1]), z=float(ras[2]),
            x_lps=float(lps[0]), y_lps=float(lps[1]), z_lps=float(lps[2]),
            i=float(ijk[0]), j=float(ijk[1]), k=float(ijk[2]),
            susceptibility_ppm=_susceptibility(det.features), diameter_mm=diameter, volume_mm3=volume,
            region=region_of(geometry, ijk), review_priority=0, score=float(det.score),
            uncertainty=float(det.uncertainty), **{f"p_{c}": probs[c] for c in CLASSES},
            chi_measured=float(det.features.get("chi_available", math.nan)),
            moment_ppm_mm3=float(det.features.get("moment_ppm_mm3", math.nan)),
            moment_sd_ppm_mm3=float(det.features.get("moment_sd_ppm_mm3", math.nan))))
    rows.sort(key=lambda c: (CLASSES.index(c.label), -_key(c.probability), -_key(c.score), c.x, c.y, c.z))
    for n, cand in enumerate(rows, start=1):
        cand.id = n
    by_priority = sorted(rows, key=lambda c: (-_key(c.uncertainty), -_key(c.probability), c.id))
    for n, cand in enumerate(by_priority, start=1):
        cand.review_priority = n
    return rows


#: An "other" candidate is still shown to the reader when its microbleed probability reaches this.
UNCERTAIN_OTHER_P_MICROBLEED = 0.05


def reportable(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates a reader is shown as points (overview markers, gallery, Slicer, DICOM SR): every
    candidate not rejected by stage 2 (label microbleed, calcification or vein), plus rejected ("other")
    ones whose microbleed probability is still >= :data:`UNCERTAIN_OTHER_P_MICROBLEED`.  The full list
    stays in candidates.tsv/json for audit."""
    return [c for c in candidates if c.label != "other"
            or (math.isfinite(c.p_microbleed) and c.p_microbleed >= UNCERTAIN_OTHER_P_MICROBLEED)]


def _key(value: float) -> float:
    """Sort key that puts NaN last in a descending sort."""
    return -math.inf if math.isnan(value) else value


def _format(name: str, value) -> str:
    if name in _STR_COLUMNS:
        return str(value)
    if name in _INT_COLUMNS:
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if name in ("x", "y", "z", "x_lps", "y_lps", "z_lps", "i", "j", "k", "diameter_mm", "volume_mm3"):
        return f"{value:.3f}"
    return f"{value:.6g}"


def _json_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_candidates(candidates: list[Candidate], out_dir) -> tuple[Path, Path]:
    """Write ``candidates.tsv`` and ``candidates.json`` into ``out_dir`` (created if needed), each
    atomically.  Returns the two paths (tsv, json)."""
    out = Path(out_dir)
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_format(name, getattr(c, name)) for name in COLUMNS) for c in candidates]
    tsv = write_text("\n".join(lines) + "\n", out / "candidates.tsv")
    doc = {
        "columns": COLUMN_INFO,
        "coordinate_system": COORDINATE_SYSTEM,
        "classes": list(CLASSES),
        "count": len(candidates),
        "candidates": [{k: _json_value(v) for k, v in asdict(c).items()} for c in candidates],
    }
    js = write_json(doc, out / "candidates.json")
    return tsv, js


def _parse(name: str, text: str, path: Path, line: int):
    text = text.strip()
    if name in _STR_COLUMNS:
        return text or "unknown"
    if text in ("", "n/a", "nan", "NaN"):
        if name in _INT_COLUMNS:
            return 0
        return math.nan
    try:
        return int(float(text)) if name in _INT_COLUMNS else float(text)
    except ValueError:
        raise InputError(f"{path}, line {line}: column {name} has a non-numeric value {text!r}") from None


def read_tsv(path, *, required: tuple[str, ...], what: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (dicts) of a tab-separated table (UTF-8, BOM tolerated); :class:`InputError`
    naming ``what`` when it cannot be read or lacks a ``required`` column."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(f"{what} {path} lacks the columns {' '.join(missing)}")
            return header, list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def read_candidates_tsv(path) -> list[Candidate]:
    """Read a candidate table written by :func:`write_candidates` (or any TSV with at least
    ``label probability x y z``; other columns default to n/a, ``region`` to unknown, LPS from RAS,
    ids to row order).  Bad files raise :class:`InputError`."""
    path = Path(path)
    header, rows = read_tsv(path, required=_REQUIRED, what="candidate table")
    out = []
    for n, row in enumerate(rows, start=1):
        values = {name: _parse(name, row.get(name) or "", path, n + 1) for name in COLUMNS}
        if "id" not in header:
            values["id"] = n
        if "x_lps" not in header:
            values["x_lps"], values["y_lps"], values["z_lps"] = ras_to_lps(
                [values["x"], values["y"], values["z"]]).tolist()
        out.append(Candidate(**values))
    return out
