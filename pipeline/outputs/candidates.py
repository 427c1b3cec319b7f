"""The candidate tables: every stage-1 candidate for audit, and the reader's list in review order.

Two tables are written (each with a JSON sidecar, ``<name>.json``, holding the column units and meanings,
the selection rule and the rows):

* ``candidates.tsv``: the **reader's list** (:func:`reader_candidates`): every microbleed,
  possible_microbleed (borderline) and calcification, and veins / "other" only when their microbleed
  probability reaches :data:`MIMIC_LIST_FLOOR_P_MICROBLEED`; sorted by ``review_order`` (1 = read first,
  :data:`REVIEW_ORDER_RULE`).
* ``candidates_all.tsv``: every stage-1 candidate (the listed ones first, in review order, then the rest by
  decreasing microbleed probability), for audit.

Columns: ``id`` 1..N, the same candidate in both tables (ids 1..n are the reader's list, so ``id`` equals
``review_order`` there); ``label`` the reader label (one of :data:`models.detection.READER_LABELS`:
microbleed only at or above the model's call threshold on the calibrated microbleed probability,
possible_microbleed at or above its borderline threshold, otherwise the most probable other class);
``probability`` the calibrated probability of the label's stage-2 class; ``p_microbleed`` (and the other
``p_<class>``) per-class probabilities; ``x y z`` centre in scanner RAS mm; ``x_lps y_lps z_lps`` the same in
LPS (DICOM, 3D Slicer); ``i j k`` continuous 0-based voxel indices on the input grid;
``susceptibility_ppm`` mean chi of the candidate (ppm, > 0 paramagnetic); ``diameter_mm``; ``volume_mm3``;
``region`` MARS group (:mod:`pipeline.regions`), ``side`` and ``lobe`` (:mod:`pipeline.lobes`);
``review_order`` 1 = read first (0 = not on the reader's list); ``score`` stage-1 heatmap peak;
``uncertainty`` 0..1 (normalised entropy of the committee's mean class probabilities: higher = the model is
less sure, a reader's label teaches it more); ``chi_measured`` 1 where chi was measured at the centre, 0 in
the rim outside the chi mask (magnitude only: the chi sign is unknown); ``moment_ppm_mm3`` magnetic moment
(ppm*mm^3, ball integral grown until it converges, :func:`cmbdetect.physics.moment.converged_moment`) and
``moment_sd_ppm_mm3`` its 1-sd uncertainty.  Missing numbers are ``n/a`` in the TSV and ``null`` in the JSON.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from cmbdetect.models.detection import CLASSES, READER_LABELS, Detection, stage2_class
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import ras_to_lps, voxel_to_world
from cmbdetect.pipeline.io.atomic import write_json, write_text
from cmbdetect.pipeline.outputs.lobes import side_and_lobe
from cmbdetect.pipeline.outputs.regions import brain_geometry, region_of


@dataclass
class Candidate:
    """One row of the candidate table (units in the module docstring)."""

    id: int
    label: str
    probability: float
    p_microbleed: float
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
    side: str
    lobe: str
    review_order: int
    score: float
    uncertainty: float
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
    "id": {"units": "", "description": "1..N, the same candidate in candidates.tsv and candidates_all.tsv; "
                                       "1..n are the reader's list in review order"},
    "label": {"units": "", "description": f"reader label, one of {', '.join(READER_LABELS)}: microbleed when "
                                          "p_microbleed reaches the model's call threshold, possible_microbleed "
                                          "when it reaches the borderline threshold, otherwise the most probable "
                                          "of the other classes"},
    "probability": {"units": "1", "description": "calibrated probability of the label's stage-2 class "
                                                 "(p_microbleed for possible_microbleed)"},
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
    "side": {"units": "", "description": "left, right or midline of the brain mask centroid (unknown when the "
                                         "region is)"},
    "lobe": {"units": "", "description": "lobar candidates: frontal, parietal, temporal or occipital "
                                         "(geometric estimate, no atlas); empty otherwise"},
    "review_order": {"units": "", "description": "1 = read first; 0 = not on the reader's list"},
    "score": {"units": "1", "description": "stage-1 detector heatmap peak"},
    "uncertainty": {"units": "1", "description": "0..1 normalised entropy of the committee's mean class "
                                                 "probabilities: higher = the model is less sure (a reader's "
                                                 "label teaches it more); not a probability of being a bleed"},
    **{f"p_{c}": {"units": "1", "description": f"probability of class {c}"} for c in CLASSES},
    "chi_measured": {"units": "", "description": "1 = the centre lies where chi was measured; 0 = in the brain's "
                                                 "rim outside the chi mask (seen on the magnitude only: chi sign, "
                                                 "so bleed versus calcification, unknown)"},
    "moment_ppm_mm3": {"units": "ppm*mm^3", "description": "magnetic moment (integrated chi over a ball grown until "
                                                          "it converges; > 0 paramagnetic)"},
    "moment_sd_ppm_mm3": {"units": "ppm*mm^3", "description": "uncertainty (1 sd) of moment_ppm_mm3"},
}

COLUMN_INFO = {c: COLUMN_INFO[c] for c in COLUMNS}  # in column order; every column described

#: How the coordinate columns are defined (the JSON header).
COORDINATE_SYSTEM = {
    "world": "scanner RAS (x right, y anterior, z superior), mm, from the input image affine",
    "lps": "LPS = RAS with x and y negated (DICOM patient coordinates, 3D Slicer)",
    "voxel": "continuous 0-based indices [i, j, k] of the input image grid (NIfTI voxel order)",
}

_INT_COLUMNS = {"id", "review_order"}
_STR_COLUMNS = {"label", "region", "side", "lobe"}
_REQUIRED = ("label", "probability", "x", "y", "z")


def _susceptibility(features: dict) -> float:
    """Mean χ (ppm) from the physics features: ``mean_chi_ppm`` or integrated χ / volume."""
    if "mean_chi_ppm" in features:
        return float(features["mean_chi_ppm"])
    integrated, volume = features.get("integrated_chi_ppm_mm3"), features.get("volume_mm3")
    if integrated is not None and volume:
        return float(integrated) / float(volume)
    return math.nan


#: Veins and "other" candidates are on the reader's list only when their calibrated microbleed probability reaches
#: this (the mimics most likely to hide a microbleed); below it they are in candidates_all.tsv only.
MIMIC_LIST_FLOOR_P_MICROBLEED: float = 0.05

#: Labels always on the reader's list, in the order they are read.
LISTED_LABELS: tuple[str, ...] = ("microbleed", "possible_microbleed", "calcification")

#: How ``review_order`` is assigned (the TSV sidecar and the report legend quote it).
REVIEW_ORDER_RULE = ("1 = read first: microbleeds by decreasing microbleed probability, then possible "
                     "(borderline) microbleeds by decreasing microbleed probability, then calcifications by "
                     "decreasing calcification probability, then the listed mimics (veins and 'other' whose "
                     "microbleed probability is at least the floor) by decreasing microbleed probability")


def is_listed(c: Candidate, *, vein_floor: float = MIMIC_LIST_FLOOR_P_MICROBLEED) -> bool:
    """Whether ``c`` belongs on the reader's list (see :func:`reader_candidates`)."""
    if c.label in LISTED_LABELS:
        return True
    return math.isfinite(c.p_microbleed) and c.p_microbleed >= vein_floor


def _review_key(c: Candidate) -> tuple:
    group = LISTED_LABELS.index(c.label) if c.label in LISTED_LABELS else len(LISTED_LABELS)
    p = c.p_calcification if c.label == "calcification" else c.p_microbleed
    return (group, -_key(p), -_key(c.score), c.x, c.y, c.z)


def reader_candidates(rows: list[Candidate], *,
                      vein_floor: float = MIMIC_LIST_FLOOR_P_MICROBLEED) -> list[Candidate]:
    """The reader's list: every microbleed, possible_microbleed and calcification, plus veins and "other"
    whose microbleed probability is >= ``vein_floor`` (:data:`MIMIC_LIST_FLOOR_P_MICROBLEED`), sorted in
    review order (:data:`REVIEW_ORDER_RULE`).  Idempotent: the reader's list of a reader's list is itself,
    so it may be applied to ``candidates.tsv`` or ``candidates_all.tsv`` alike.  Rows are not copied."""
    return sorted((c for c in rows if is_listed(c, vein_floor=vein_floor)), key=_review_key)


def candidates_from_detections(detections: list[Detection], *, affine: np.ndarray,
                               mask: np.ndarray | None,
                               vein_floor: float = MIMIC_LIST_FLOOR_P_MICROBLEED) -> list[Candidate]:
    """Every candidate row from the models' detections (the audit table): the reader's list first in
    review order (:func:`reader_candidates`, ``review_order`` 1..n), then the other candidates by
    decreasing microbleed probability (``review_order`` 0); ids are 1..N in that order.

    ``affine`` maps voxel indices to scanner RAS mm; ``mask`` (bool, may be None) is the brain mask used
    for the MARS region, side and lobe.
    """
    geometry = brain_geometry(mask, affine)
    rows = []
    for det in detections:
        if det.label not in READER_LABELS:
            raise ValueError(f"detection label {det.label!r} is not one of {READER_LABELS}")
        ijk = np.asarray(det.centre_vox, dtype=float)
        ras = voxel_to_world(affine, ijk)
        lps = ras_to_lps(ras)
        probs = {c: float(det.probabilities.get(c, math.nan)) for c in CLASSES}
        diameter = float(det.diameter_mm)
        volume = float(det.features.get("volume_mm3", math.pi / 6.0 * diameter ** 3))
        region = region_of(geometry, ijk)
        side, lobe = side_and_lobe(geometry, ijk, region)
        rows.append(Candidate(
            id=0, label=det.label, probability=probs[stage2_class(det.label)],
            x=float(ras[0]), y=float(ras[1]), z=float(ras[2]),
            x_lps=float(lps[0]), y_lps=float(lps[1]), z_lps=float(lps[2]),
            i=float(ijk[0]), j=float(ijk[1]), k=float(ijk[2]),
            susceptibility_ppm=_susceptibility(det.features), diameter_mm=diameter, volume_mm3=volume,
            region=region, side=side, lobe=lobe, review_order=0, score=float(det.score),
            uncertainty=float(det.uncertainty), **{f"p_{c}": probs[c] for c in CLASSES},
            chi_measured=float(det.features.get("chi_available", math.nan)),
            moment_ppm_mm3=float(det.features.get("moment_ppm_mm3", math.nan)),
            moment_sd_ppm_mm3=float(det.features.get("moment_sd_ppm_mm3", math.nan))))
    listed = reader_candidates(rows, vein_floor=vein_floor)
    chosen = {id(c) for c in listed}
    rest = sorted((c for c in rows if id(c) not in chosen),
                  key=lambda c: (-_key(c.p_microbleed), -_key(c.score), c.x, c.y, c.z))
    for n, cand in enumerate(listed + rest, start=1):
        cand.id = n
        cand.review_order = n if n <= len(listed) else 0
    return listed + rest


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


def _table(rows: list[Candidate], out: Path, name: str, sidecar: dict) -> tuple[Path, Path]:
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_format(col, getattr(c, col)) for col in COLUMNS) for c in rows]
    tsv = write_text("\n".join(lines) + "\n", out / f"{name}.tsv")
    doc = {**sidecar, "columns": COLUMN_INFO, "coordinate_system": COORDINATE_SYSTEM,
           "labels": list(READER_LABELS), "classes": list(CLASSES), "count": len(rows),
           "candidates": [{k: _json_value(v) for k, v in asdict(c).items()} for c in rows]}
    return tsv, write_json(doc, out / f"{name}.json")


def selection_record(vein_floor: float = MIMIC_LIST_FLOOR_P_MICROBLEED) -> dict:
    """How the reader's list is selected and ordered (the sidecars' ``selection``)."""
    return {"listed_labels": list(LISTED_LABELS), "mimic_floor_p_microbleed": float(vein_floor),
            "rule": f"reader's list: every {', '.join(LISTED_LABELS)}; veins and 'other' only when "
                    f"p_microbleed >= {vein_floor:g}; the rest are in candidates_all.tsv only",
            "review_order": REVIEW_ORDER_RULE}


def bids_tsv_sidecar(*, audit: bool, vein_floor: float = MIMIC_LIST_FLOOR_P_MICROBLEED) -> dict:
    """BIDS-style JSON sidecar of a candidate TSV: one ``{"Description", "Units"}`` entry per column (BIDS
    tabular-file convention) plus the selection rule; ``audit`` for the table of every candidate."""
    doc = {c: {"Description": info["description"], **({"Units": info["units"]} if info["units"] else {})}
           for c, info in COLUMN_INFO.items()}
    doc["Description"] = ("every stage-1 cerebral microbleed candidate, for audit (cmbdetect)" if audit else
                          "reader's list of cerebral microbleed candidates, in review order (cmbdetect)")
    doc["Selection"] = selection_record(vein_floor)
    return doc


def write_candidates(candidates: list[Candidate], out_dir, *,
                     vein_floor: float = MIMIC_LIST_FLOOR_P_MICROBLEED) -> dict[str, Path]:
    """Write the reader's list ``candidates.tsv`` (:func:`reader_candidates` of ``candidates``) and the audit
    table ``candidates_all.tsv`` (all of ``candidates``, in the given order), each with its JSON sidecar
    (``candidates.json``, ``candidates_all.json``: columns, selection rule, review order, rows), atomically,
    into ``out_dir`` (created if needed).  Returns the paths by name: ``tsv``, ``json``, ``all_tsv``,
    ``all_json``."""
    out = Path(out_dir)
    listed = reader_candidates(candidates, vein_floor=vein_floor)
    selection = selection_record(vein_floor)
    tsv, js = _table(listed, out, "candidates", {
        "description": "reader's list of cerebral microbleed candidates, in review order (cmbdetect)",
        "selection": selection, "count_all": len(candidates)})
    all_tsv, all_js = _table(candidates, out, "candidates_all", {
        "description": "every stage-1 candidate, for audit: the reader's list first (review_order 1..n), "
                       "then the others by decreasing p_microbleed (review_order 0)",
        "selection": selection, "count_listed": len(listed)})
    return {"tsv": tsv, "json": js, "all_tsv": all_tsv, "all_json": all_js}


def _parse(name: str, text: str, path: Path, line: int):
    text = text.strip()
    if name in _STR_COLUMNS:
        return text or ("" if name == "lobe" else "unknown")
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
    ``label probability x y z``; other columns default to n/a, ``region`` and ``side`` to unknown, LPS from
    RAS, ids to row order, ``p_microbleed`` of a (possible) microbleed to its ``probability``).  Bad files raise :class:`InputError`."""
    path = Path(path)
    header, rows = read_tsv(path, required=_REQUIRED, what="candidate table")
    out = []
    for n, row in enumerate(rows, start=1):
        values = {name: _parse(name, row.get(name) or "", path, n + 1) for name in COLUMNS}
        if "id" not in header:
            values["id"] = n
        if "p_microbleed" not in header and values["label"] in ("microbleed", "possible_microbleed"):
            values["p_microbleed"] = values["probability"]
        if "x_lps" not in header:
            values["x_lps"], values["y_lps"], values["z_lps"] = ras_to_lps(
                [values["x"], values["y"], values["z"]]).tolist()
        out.append(Candidate(**values))
    return out
