"""3D Slicer markups (``.mrk.json``): one Fiducial node with a control point per candidate.

Slicer's markups JSON (schema v1.0.3) stores points in LPS millimetres when ``coordinateSystem`` is
``"LPS"`` (Slicer converts to its internal RAS on loading), so the file lines up with the source DICOM or
NIfTI in any Slicer version.  Nothing is fetched: the schema URL is only written as the ``@schema`` tag.
"""
from __future__ import annotations

import math
from pathlib import Path

from cmbdetect.pipeline.io.atomic import write_json
from cmbdetect.pipeline.outputs.candidates import Candidate

#: The ``@schema`` string Slicer writes and recognises (never fetched).
MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                  "Resources/Schema/markups-schema-v1.0.3.json#")

#: Identity orientation expressed in LPS (what Slicer writes for LPS files).
_LPS_ORIENTATION = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]


def point_label(c: Candidate) -> str:
    """Text shown beside a point: ``"<id> <label> p=<probability>"``."""
    return f"{c.id} {c.label} p={c.probability:.2f}"


def _description(c: Candidate) -> str:
    chi = "n/a" if math.isnan(c.susceptibility_ppm) else f"{c.susceptibility_ppm:+.3f} ppm"
    if c.chi_measured == 0:
        chi = "not measured (brain rim, magnitude only)"
    return (f"chi {chi}; diameter {c.diameter_mm:.1f} mm; region {c.region}; "
            f"review order {c.review_order}")


def markups_document(candidates: list[Candidate], *, name: str = "cmbdetect candidates") -> dict:
    """The markups JSON document (a dict) for ``candidates``."""
    points = [{
        "id": str(c.id),
        "label": point_label(c),
        "description": _description(c),
        "associatedNodeID": "",
        "position": [float(v) for v in c.lps],
        "orientation": _LPS_ORIENTATION,
        "selected": True,
        "locked": True,
        "visibility": True,
        "positionStatus": "defined",
    } for c in candidates]
    return {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "name": name,
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "locked": True,
            "fixedNumberOfControlPoints": False,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(points),
            "controlPoints": points,
            "measurements": [],
            "display": {
                "visibility": True,
                "opacity": 1.0,
                "color": [1.0, 0.85, 0.0],
                "selectedColor": [1.0, 0.3, 0.1],
                "propertiesLabelVisibility": False,
                "pointLabelsVisibility": True,
                "textScale": 2.5,
                "glyphType": "Sphere3D",
                "glyphScale": 2.0,
                "glyphSize": 4.0,
                "useGlyphScale": True,
            },
        }],
    }


def write_slicer_markups(candidates: list[Candidate], path) -> Path:
    """Write ``candidates`` as a Slicer Fiducial markups file (``*.mrk.json``) atomically; returns the
    path.  Positions are LPS mm; each label reads ``"<id> <label> p=<probability>"``."""
    return write_json(markups_document(candidates), Path(path))
