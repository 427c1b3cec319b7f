"""A reader's decisions on the candidates, and the training labels made from them (``cmbdetect review``).

**Decisions TSV** (what the HTML report's *Save decisions* button writes, and what the 3D Slicer read-back
:func:`decisions_from_markups` produces), one row per decision, tab-separated, UTF-8, columns
:data:`DECISION_COLUMNS`:

``id``
    the candidate id of the run (``candidates.tsv`` / ``candidates_all.tsv``); ``n/a`` for an added point.
``decision``
    ``accept`` (the label shown is right), ``reject`` (not a lesion: trained as "other"), ``relabel``
    (``label`` gives the right class) or ``add`` (a lesion the tool did not list, at ``x y z``).
``label``
    the reader's label after the decision: for accept the label accepted, for relabel / add one of
    :data:`models.detection.CLASSES`, for reject the label rejected.
``x y z``
    centre in scanner RAS mm (the candidate's, or where the reader put it).
``reader``, ``time``
    who decided, and when (ISO 8601).

A later row on the same id replaces an earlier one.  :func:`labels_from_decisions` turns decisions into a
per-subject **labels TSV** (:data:`LABEL_COLUMNS`: ``x y z`` RAS mm, ``kind``, ``diameter_mm`` and where they came
from), the format ``cmbdetect train --labels DIR`` reads (``models.training_data.read_labels``): accepted and
added microbleeds (an accepted possible_microbleed is the reader's microbleed) become ``microbleed``, relabelled
ones their new class, rejected ones ``other`` (an explicit hard negative).  Only reviewed candidates carry
labels: a subject whose reader's list was reviewed only in part can hide unreviewed microbleeds, which
training would count as background (the sidecar records ``complete``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cmbdetect.models.detection import CLASSES, READER_LABELS, stage2_class
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import ras_to_lps
from cmbdetect.pipeline.io.atomic import write_json, write_text
from cmbdetect.pipeline.outputs.candidates import Candidate, read_tsv

#: Columns of a decisions TSV, in order.
DECISION_COLUMNS: tuple[str, ...] = ("id", "decision", "label", "x", "y", "z", "reader", "time")
#: What a reader can decide about a candidate.
DECISIONS: tuple[str, ...] = ("accept", "reject", "relabel", "add")
#: Columns of a labels TSV written by :func:`write_labels`.
LABEL_COLUMNS: tuple[str, ...] = ("x", "y", "z", "kind", "diameter_mm", "id", "decision", "reader", "time")
#: A decision's centre may lie this far (mm) from the run's candidate of the same id (a point moved in
#: Slicer); further, the decisions belong to another run (or patient) and are refused.
MATCH_TOLERANCE_MM: float = 5.0
#: Diameter (mm) given to an added lesion (``models.training_data`` defaults to 5 mm as well).
ADDED_DIAMETER_MM: float = 5.0


@dataclass
class Decision:
    """One row of a decisions TSV (see the module docstring); ``id`` None for an added lesion."""

    id: int | None
    decision: str
    label: str
    x: float
    y: float
    z: float
    reader: str = ""
    time: str = ""

    def __post_init__(self):
        if self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} is not one of {', '.join(DECISIONS)}")
        allowed = CLASSES if self.decision in ("relabel", "add") else READER_LABELS
        if self.label not in allowed:
            raise ValueError(f"{self.decision} label {self.label!r} is not one of {', '.join(allowed)}")
        if self.decision == "add" and self.id is not None:
            raise ValueError("an added lesion has no candidate id")
        if self.decision != "add" and self.id is None:
            raise ValueError(f"a {self.decision} decision needs a candidate id")

    @property
    def ras(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z], dtype=float)

    @property
    def kind(self) -> str:
        """The training class this decision stands for (one of :data:`models.detection.CLASSES`)."""
        return "other" if self.decision == "reject" else stage2_class(self.label)


def _num(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def decisions_text(decisions: list[Decision]) -> str:
    """TSV text of ``decisions`` (header :data:`DECISION_COLUMNS`)."""
    lines = ["\t".join(DECISION_COLUMNS)]
    for d in decisions:
        lines.append("\t".join(["n/a" if d.id is None else str(d.id), d.decision, d.label, _num(d.x), _num(d.y),
                                _num(d.z), d.reader.replace("\t", " "), d.time]))
    return "\n".join(lines) + "\n"


def write_decisions(decisions: list[Decision], path) -> Path:
    """Write a decisions TSV atomically; returns the path."""
    return write_text(decisions_text(decisions), Path(path))


def read_decisions(path) -> list[Decision]:
    """Rows of a decisions TSV; :class:`InputError` (one line, naming the file and row) on a bad file."""
    path = Path(path)
    _, rows = read_tsv(path, required=("id", "decision", "label", "x", "y", "z"), what="decisions table")
    out = []
    for n, row in enumerate(rows, start=2):
        try:
            raw_id = (row.get("id") or "").strip()
            ident = None if raw_id in ("", "n/a") else int(raw_id)
            xyz = [float(row.get(c) or "nan") for c in ("x", "y", "z")]
            out.append(Decision(ident, (row.get("decision") or "").strip().lower(),
                                (row.get("label") or "").strip(), *xyz, reader=(row.get("reader") or "").strip(),
                                time=(row.get("time") or "").strip()))
        except ValueError as exc:
            raise InputError(f"{path}, line {n}: {exc}") from None
    return out


# --- 3D Slicer read-back -------------------------------------------------------------------------------------

_ACCEPT_WORDS = ("accept", "accepted", "yes", "ok", "confirmed")
_REJECT_WORDS = ("reject", "rejected", "no", "not", "false", "fp")
_LABEL_WORDS = {"microbleed": "microbleed", "cmb": "microbleed", "bleed": "microbleed",
                "calcification": "calcification", "calc": "calcification", "vein": "vein", "vessel": "vein",
                "other": "other"}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z_]+", text.lower())


def _edited_decision(c: Candidate, text: str) -> tuple[str, str] | None:
    """``(decision, label)`` from a point's edited label/description text, or None if it names nothing."""
    words = [w for w in _words(text) if w != "p"]
    named = [_LABEL_WORDS[w] for w in words if w in _LABEL_WORDS]
    if any(w in _REJECT_WORDS for w in words):
        return "reject", c.label
    if named and named[-1] != stage2_class(c.label):
        return "relabel", named[-1]
    if any(w in _ACCEPT_WORDS for w in words):
        return "accept", c.label
    return None


def _markups_points(path: Path) -> list[tuple[dict, np.ndarray]]:
    """(control point, centre in RAS mm) of every markups node of a ``.mrk.json`` file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        nodes = doc["markups"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read the 3D Slicer markups {path}: {exc}") from None
    out = []
    for node in nodes:
        system = str(node.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise InputError(f"markups {path} use coordinate system {system!r}; expected LPS or RAS")
        for p in node.get("controlPoints", []):
            if p.get("positionStatus", "defined") not in ("defined", "preview"):
                continue
            try:
                pos = np.asarray([float(v) for v in p["position"]], dtype=float).reshape(3)
            except (KeyError, TypeError, ValueError):
                raise InputError(f"markups {path}: control point {p.get('label', '?')!r} has no position") from None
            out.append((p, ras_to_lps(pos) if system == "LPS" else pos))  # LPS <-> RAS is its own inverse
    return out


def decisions_from_markups(path, candidates: list[Candidate], *, reader: str = "",
                           time: str = "") -> list[Decision]:
    """Decisions from a ``candidates.mrk.json`` the reader edited in 3D Slicer.

    ``candidates`` are the points that were exported (the run's reader's list, ``candidates.tsv``).  A point
    is candidate N when its control-point ``id`` is N or its label starts with ``"N "``; then
    * deleted from the file: **reject**;
    * its label or description edited to contain ``reject`` / ``no`` / ``not``: **reject**; a class name
      (microbleed, calcification, vein, other) other than its own: **relabel**; ``accept`` / ``yes`` / ``ok``:
      **accept**; left as exported: no decision;
    * a moved point keeps the reader's position.
    Any other point is a lesion the reader **added** (its label's class name, microbleed by default).
    Positions are read in the file's coordinate system (LPS or RAS) and returned in RAS mm.
    """
    path = Path(path)
    by_id = {c.id: c for c in candidates}
    seen: set[int] = set()
    out = []
    for point, ras in _markups_points(path):
        label, description = str(point.get("label", "")), str(point.get("description", ""))
        match = re.match(r"\s*(\d+)\b", label)
        ident = str(point.get("id", ""))
        cid = int(ident) if ident.isdigit() and int(ident) in by_id else None
        if cid is None and match and int(match.group(1)) in by_id:
            cid = int(match.group(1))
        if cid is None or cid in seen:
            named = [_LABEL_WORDS[w] for w in _words(label + " " + description) if w in _LABEL_WORDS]
            out.append(Decision(None, "add", named[-1] if named else "microbleed", *ras, reader=reader, time=time))
            continue
        seen.add(cid)
        c = by_id[cid]
        text = label[match.end():] if match else label
        edited = None
        from cmbdetect.pipeline.outputs.slicer import point_label

        if label.strip() != point_label(c):
            edited = _edited_decision(c, text)
            if edited is None and text.strip():
                raise InputError(f"markups {path}: point {cid} label {label!r} names no decision (write accept, "
                                 f"reject or one of {', '.join(CLASSES)})")
        if edited is None and description.strip():
            edited = _edited_decision(c, description)
        if edited is not None:
            out.append(Decision(cid, edited[0], edited[1], *ras, reader=reader, time=time))
    for c in candidates:
        if c.id not in seen:
            out.append(Decision(c.id, "reject", c.label, c.x, c.y, c.z, reader=reader, time=time))
    return out


# --- decisions -> training labels ----------------------------------------------------------------------------

def latest_decisions(decisions: list[Decision]) -> list[Decision]:
    """One decision per candidate id (the last given), added lesions kept in order."""
    last: dict[int, Decision] = {}
    added = []
    for d in decisions:
        if d.id is None:
            added.append(d)
        else:
            last.pop(d.id, None)
            last[d.id] = d
    return list(last.values()) + added


def labels_from_decisions(decisions: list[Decision], candidates: list[Candidate], *,
                          tolerance_mm: float = MATCH_TOLERANCE_MM) -> list[dict]:
    """Label rows (:data:`LABEL_COLUMNS`) from the reader's decisions on a run's ``candidates``
    (``candidates_all.tsv``: every id a decision may name).  A decision's ``x y z`` (if given) must lie within
    ``tolerance_mm`` of the candidate it names, otherwise the decisions belong to another run and
    :class:`InputError` is raised; the reader's position is kept."""
    by_id = {c.id: c for c in candidates}
    rows = []
    for d in latest_decisions(decisions):
        diameter = ADDED_DIAMETER_MM
        xyz = d.ras
        if d.id is not None:
            c = by_id.get(d.id)
            if c is None:
                raise InputError(f"decision on candidate {d.id}, which this run does not have "
                                 f"(it has {len(candidates)} candidates): decisions of another run?")
            if np.all(np.isfinite(xyz)):
                gap = float(np.linalg.norm(xyz - c.ras))
                if gap > tolerance_mm:
                    raise InputError(f"decision on candidate {d.id} is {gap:.1f} mm from this run's candidate "
                                     f"{d.id} (more than {tolerance_mm:g} mm): decisions of another run or patient?")
            else:
                xyz = c.ras
            if d.decision == "accept" and stage2_class(d.label) != stage2_class(c.label):
                raise InputError(f"decision accepts candidate {d.id} as {d.label}, but this run labels it {c.label}")
            if math.isfinite(c.diameter_mm):
                diameter = c.diameter_mm
        elif not np.all(np.isfinite(xyz)):
            raise InputError("an added lesion needs x y z (RAS mm)")
        rows.append({"x": float(xyz[0]), "y": float(xyz[1]), "z": float(xyz[2]), "kind": d.kind,
                     "diameter_mm": float(diameter), "id": "n/a" if d.id is None else str(d.id),
                     "decision": d.decision, "reader": d.reader, "time": d.time})
    return rows


def merge_labels(old: list[dict], new: list[dict], *, same_mm: float = 1.0) -> list[dict]:
    """``old`` label rows without those ``new`` replaces (same candidate id, or a centre within ``same_mm``),
    then ``new``."""
    def replaced(o):
        return any((o.get("id") not in (None, "", "n/a") and o.get("id") == n["id"]) or
                   math.dist([float(o["x"]), float(o["y"]), float(o["z"])], [n["x"], n["y"], n["z"]]) < same_mm
                   for n in new)
    return [o for o in old if not replaced(o)] + list(new)


def read_labels_tsv(path) -> list[dict]:
    """Rows of a labels TSV (at least ``x y z``; ``kind`` defaults to microbleed)."""
    _, rows = read_tsv(path, required=("x", "y", "z"), what="labels table")
    try:
        return [{**{k: (r.get(k) or "").strip() for k in LABEL_COLUMNS},
                 "x": float(r["x"]), "y": float(r["y"]), "z": float(r["z"]),
                 "kind": (r.get("kind") or "microbleed").strip(),
                 "diameter_mm": float(r.get("diameter_mm") or ADDED_DIAMETER_MM)} for r in rows]
    except ValueError:
        raise InputError(f"labels table {path} has non-numeric coordinates or diameters") from None


def write_labels(rows: list[dict], path, *, sidecar: dict | None = None) -> Path:
    """Write a labels TSV (:data:`LABEL_COLUMNS`) atomically, with ``sidecar`` as ``<stem>.json``."""
    path = Path(path)
    lines = ["\t".join(LABEL_COLUMNS)]
    for r in rows:
        lines.append("\t".join(f"{float(r[k]):.3f}" if k in ("x", "y", "z", "diameter_mm") else str(r.get(k, ""))
                               for k in LABEL_COLUMNS))
    out = write_text("\n".join(lines) + "\n", path)
    if sidecar is not None:
        write_json(sidecar, path.with_name(path.name[: -len(".tsv")] + ".json"))
    return out


def reviewed_subjects(labels_dir) -> set[str]:
    """Subject labels (without ``sub-``) that have a labels TSV written by review import in ``labels_dir``."""
    folder = Path(labels_dir)
    if not folder.is_dir():
        raise InputError(f"reviewed-labels folder {folder} does not exist")
    return {m.group(1) for p in folder.glob("sub-*_desc-reviewed_labels.tsv")
            if (m := re.match(r"sub-([A-Za-z0-9]+)", p.name))}


def with_reader(decisions: list[Decision], reader: str) -> list[Decision]:
    """``decisions`` with an empty ``reader`` filled in."""
    return [d if d.reader else replace(d, reader=reader) for d in decisions]
