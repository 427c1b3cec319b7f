"""Slicer markups: schema tag, LPS positions, labels, empty list."""
from __future__ import annotations

import json

import numpy as np

from cmbdetect.models.detection import Detection
from cmbdetect.physics.geometry import voxel_to_world
from cmbdetect.pipeline.outputs.candidates import candidates_from_detections
from cmbdetect.pipeline.outputs.slicer import write_slicer_markups


def test_markups_points_are_lps_with_labels(oblique_affine, tmp_path):
    affine = oblique_affine()
    ijk = [(4.0, 5.0, 6.0), (20.5, 10.0, 3.0)]
    dets = [Detection(centre_vox=c, score=0.5, probabilities={"microbleed": p, "calcification": 0.0,
                                                            "vein": 1 - p, "other": 0.0},
                      label="microbleed", diameter_mm=2.0, features={"mean_chi_ppm": 0.3})
            for c, p in zip(ijk, (0.9, 0.7))]
    cands = candidates_from_detections(dets, affine=affine, mask=None)
    path = write_slicer_markups(cands, tmp_path / "c.mrk.json")
    doc = json.loads(path.read_text())
    assert doc["@schema"].startswith("https://raw.githubusercontent.com/slicer/slicer/")
    assert "markups-schema-v1.0.3.json" in doc["@schema"]
    (node,) = doc["markups"]
    assert node["type"] == "Fiducial" and node["coordinateSystem"] == "LPS"
    pts = node["controlPoints"]
    assert [p["label"] for p in pts] == ["1 microbleed p=0.90", "2 microbleed p=0.70"]
    for p, vox in zip(pts, ijk):
        ras = voxel_to_world(affine, vox)
        assert np.allclose(p["position"], [-ras[0], -ras[1], ras[2]], atol=1e-9)


def test_empty_markups(tmp_path):
    doc = json.loads(write_slicer_markups([], tmp_path / "e.mrk.json").read_text())
    assert doc["markups"][0]["controlPoints"] == []
