"""Candidate table: detections -> rows (geometry, order, priority) and the TSV/JSON round trip."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cmbdetect.models.detection import Detection
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_to_world
from cmbdetect.pipeline.candidates import (COLUMNS, candidates_from_detections, read_candidates_tsv,
                                           reportable, write_candidates)


def _reject(name):
    raise AssertionError(f"non-standard JSON constant {name}")


def _det(ijk, label, probs, *, score=0.9, uncertainty=0.1, features=None):
    p = dict(zip(("microbleed", "calcification", "vein", "other"), probs))
    return Detection(centre_vox=ijk, score=score, probabilities=p, label=label, diameter_mm=3.0,
                     features=features or {}, uncertainty=uncertainty)


@pytest.fixture
def detections():
    return [
        _det((10.0, 12.5, 8.0), "microbleed", (0.6, 0.1, 0.2, 0.1), uncertainty=0.8,
             features={"mean_chi_ppm": 0.42, "volume_mm3": 12.0, "chi_available": 1.0}),
        _det((20.2, 5.0, 11.0), "calcification", (0.02, 0.95, 0.02, 0.01), uncertainty=0.05,
             features={"integrated_chi_ppm_mm3": -3.0, "volume_mm3": 10.0}),
        _det((3.0, 4.0, 5.0), "vein", (0.1, 0.0, 0.7, 0.2), uncertainty=0.3, features={"chi_available": 0.0}),
    ]


def test_rows_geometry_order_priority(detections, oblique_affine):
    affine = oblique_affine()
    rows = candidates_from_detections(detections, affine=affine, mask=None)
    assert [c.label for c in rows] == ["microbleed", "calcification", "vein"]  # label groups, reader order
    assert [c.id for c in rows] == [1, 2, 3]
    assert [c.review_priority for c in rows] == [1, 3, 2]  # most uncertain first
    mb = rows[0]
    ras = voxel_to_world(affine, [10.0, 12.5, 8.0])
    assert np.allclose(mb.ras, ras) and np.allclose(mb.lps, ras * [-1, -1, 1])
    assert mb.susceptibility_ppm == pytest.approx(0.42) and mb.volume_mm3 == 12.0
    assert rows[1].susceptibility_ppm == pytest.approx(-0.3)  # integrated / volume
    assert math.isnan(rows[2].susceptibility_ppm)
    assert rows[2].volume_mm3 == pytest.approx(math.pi / 6 * 27)  # sphere of the diameter
    assert {c.region for c in rows} == {"unknown"}  # no mask
    assert rows[0].chi_measured == 1 and rows[2].chi_measured == 0 and math.isnan(rows[1].chi_measured)


def test_unknown_label_is_rejected(oblique_affine):
    with pytest.raises(ValueError):
        candidates_from_detections([_det((1, 1, 1), "tumour", (1, 0, 0, 0))], affine=oblique_affine(),
                                   mask=None)


def test_tsv_json_round_trip(detections, oblique_affine, tmp_path):
    rows = candidates_from_detections(detections, affine=oblique_affine(), mask=None)
    tsv, js = write_candidates(rows, tmp_path / "out")
    header = tsv.read_text().splitlines()[0].split("\t")
    assert tuple(header) == COLUMNS
    back = read_candidates_tsv(tsv)
    assert len(back) == 3
    for a, b in zip(rows, back):
        assert a.label == b.label and a.id == b.id and a.region == b.region
        assert a.chi_measured == b.chi_measured or (math.isnan(a.chi_measured) and math.isnan(b.chi_measured))
        assert np.allclose(a.ras, b.ras, atol=1e-3) and np.allclose(a.ijk, b.ijk, atol=1e-3)
        assert (math.isnan(a.susceptibility_ppm) and math.isnan(b.susceptibility_ppm)) or \
            a.susceptibility_ppm == pytest.approx(b.susceptibility_ppm, rel=1e-5)
    doc = json.loads(js.read_text(), parse_constant=_reject)  # strict JSON: NaN must have become null
    assert doc["count"] == 3 and doc["columns"]["susceptibility_ppm"]["units"] == "ppm"
    assert doc["candidates"][2]["susceptibility_ppm"] is None
    assert "RAS" in doc["coordinate_system"]["world"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files


def test_empty_table_and_bad_tables(tmp_path):
    tsv, _ = write_candidates([], tmp_path)
    assert read_candidates_tsv(tsv) == []
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tprobability\tx\ty\nmicrobleed\t0.5\t1\t2\n")
    with pytest.raises(InputError, match="lacks the columns z"):
        read_candidates_tsv(bad)
    bad.write_text("label\tprobability\tx\ty\tz\nmicrobleed\thigh\t1\t2\t3\n")
    with pytest.raises(InputError, match="probability"):
        read_candidates_tsv(bad)
    with pytest.raises(InputError):
        read_candidates_tsv(tmp_path / "absent.tsv")
    minimal = tmp_path / "min.tsv"
    minimal.write_text("\ufefflabel\tprobability\tx\ty\tz\nmicrobleed\t0.5\t1\t2\t3\n")  # with a BOM
    (row,) = read_candidates_tsv(minimal)
    assert row.id == 1 and row.region == "unknown" and np.allclose(row.lps, [-1, -2, 3])


def test_within_label_group_sorted_by_probability_and_reportable(oblique_affine):
    dets = [_det((1, 1, 1), "other", (0.01, 0.0, 0.0, 0.99)),
            _det((2, 2, 2), "other", (0.2, 0.0, 0.0, 0.8)),
            _det((3, 3, 3), "microbleed", (0.55, 0.0, 0.0, 0.45)),
            _det((4, 4, 4), "microbleed", (0.9, 0.0, 0.1, 0.0)),
            _det((5, 5, 5), "vein", (0.1, 0.0, 0.9, 0.0))]
    rows = candidates_from_detections(dets, affine=oblique_affine(), mask=None)
    assert [(c.label, c.probability) for c in rows] == [("microbleed", 0.9), ("microbleed", 0.55), ("vein", 0.9),
                                                        ("other", 0.99), ("other", 0.8)]
    shown = reportable(rows)
    # stage-2 rejects are hidden unless their microbleed probability is still notable (0.2 >= 0.05)
    assert [c.id for c in shown] == [1, 2, 3, 5]
