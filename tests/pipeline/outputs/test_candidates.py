"""Candidate table: detections -> rows (geometry, order, priority) and the TSV/JSON round trip."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cmbdetect.models.detection import Detection
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_to_world
from cmbdetect.pipeline.outputs.candidates import (COLUMNS, MIMIC_LIST_FLOOR_P_MICROBLEED, REVIEW_ORDER_RULE,
                                           candidates_from_detections, read_candidates_tsv, reader_candidates,
                                           write_candidates)


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
    assert [c.review_order for c in rows] == [1, 2, 3]  # the vein's p_microbleed 0.1 >= the floor: listed
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
    paths = write_candidates(rows, tmp_path / "out")
    tsv, js = paths["tsv"], paths["json"]
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
    paths = write_candidates([], tmp_path)
    assert read_candidates_tsv(paths["tsv"]) == [] and read_candidates_tsv(paths["all_tsv"]) == []
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


def test_reader_list_review_order_and_audit_table(oblique_affine, tmp_path):
    """The reader's list holds microbleeds, possible microbleeds and calcifications, and mimics only at or above
    the stated floor, in review order; candidates_all.tsv keeps every candidate with the same ids."""
    floor = MIMIC_LIST_FLOOR_P_MICROBLEED
    dets = [_det((1, 1, 1), "other", (0.01, 0.0, 0.0, 0.99)),
            _det((2, 2, 2), "other", (floor, 0.0, 0.0, 1 - floor)),
            _det((3, 3, 3), "possible_microbleed", (0.3, 0.0, 0.0, 0.7)),
            _det((4, 4, 4), "microbleed", (0.9, 0.0, 0.1, 0.0)),
            _det((5, 5, 5), "vein", (floor / 2, 0.0, 1 - floor / 2, 0.0)),
            _det((6, 6, 6), "calcification", (0.01, 0.8, 0.1, 0.09)),
            _det((7, 7, 7), "microbleed", (0.6, 0.0, 0.4, 0.0)),
            _det((8, 8, 8), "calcification", (0.0, 0.95, 0.05, 0.0)),
            _det((9, 9, 9), "possible_microbleed", (0.45, 0.0, 0.55, 0.0))]
    rows = candidates_from_detections(dets, affine=oblique_affine(), mask=None)
    assert [c.id for c in rows] == list(range(1, 10))
    listed = [(c.label, round(c.p_microbleed if c.label != "calcification" else c.p_calcification, 3))
              for c in rows if c.review_order]
    assert listed == [("microbleed", 0.9), ("microbleed", 0.6), ("possible_microbleed", 0.45),
                      ("possible_microbleed", 0.3), ("calcification", 0.95), ("calcification", 0.8),
                      ("other", floor)]
    assert [c.review_order for c in rows] == [1, 2, 3, 4, 5, 6, 7, 0, 0]
    assert [c.label for c in rows[7:]] == ["vein", "other"]  # below the floor, by decreasing p_microbleed
    assert rows[2].probability == pytest.approx(0.45)  # a possible microbleed's probability is p_microbleed
    shown = reader_candidates(rows)
    assert [c.id for c in shown] == [1, 2, 3, 4, 5, 6, 7]
    assert reader_candidates(shown) == shown  # idempotent
    assert [c.id for c in reader_candidates(list(reversed(rows)))] == [1, 2, 3, 4, 5, 6, 7]
    assert [c.id for c in reader_candidates(rows, vein_floor=floor / 4)] == [1, 2, 3, 4, 5, 6, 7, 8]
    paths = write_candidates(rows, tmp_path)
    assert [c.id for c in read_candidates_tsv(paths["tsv"])] == [1, 2, 3, 4, 5, 6, 7]
    assert [c.id for c in read_candidates_tsv(paths["all_tsv"])] == list(range(1, 10))
    side = json.loads(paths["json"].read_text())
    assert side["selection"]["mimic_floor_p_microbleed"] == floor and side["count_all"] == 9
    assert side["selection"]["review_order"] == REVIEW_ORDER_RULE and "read first" in REVIEW_ORDER_RULE
    assert "possible_microbleed" in side["labels"] and "p_microbleed" in side["columns"]
    audit = json.loads(paths["all_json"].read_text())
    assert audit["count"] == 9 and audit["count_listed"] == 7 and "review_order" in audit["columns"]


def test_side_and_lobe_of_a_brain(oblique_affine):
    """Side from the mask centroid, lobe for lobar candidates (geometric estimate) on a brain-sized ellipsoid."""
    from cmbdetect.physics.geometry import world_to_voxel

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (80, 96, 76)
    ijk = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2.0
    mask = ((((ijk - centre[:, None, None, None]) / (np.array(shape) * 0.45)[:, None, None, None]) ** 2).sum(0)
            <= 1.0)
    c_ras = affine[:3, :3] @ centre
    points = {"frontal-right": (40.0, 60.0, 20.0), "occipital-left": (-20.0, -80.0, 5.0),
              "temporal-left": (-65.0, 0.0, -20.0), "parietal-right": (30.0, -35.0, 50.0)}
    dets = [_det(tuple(world_to_voxel(affine, c_ras + np.array(v))), "microbleed", (0.9, 0, 0, 0.1))
            for v in points.values()]
    rows = candidates_from_detections(dets, affine=affine, mask=mask)
    got = {f"{c.lobe}-{c.side}" for c in rows if c.region == "lobar"}
    assert got == set(points)


def test_bids_sidecar_describes_every_column():
    from cmbdetect.pipeline.outputs.candidates import bids_tsv_sidecar

    doc = bids_tsv_sidecar(audit=False)
    assert set(COLUMNS) <= set(doc) and doc["susceptibility_ppm"]["Units"] == "ppm"
    assert doc["Selection"]["mimic_floor_p_microbleed"] == MIMIC_LIST_FLOOR_P_MICROBLEED
    assert "audit" in bids_tsv_sidecar(audit=True)["Description"]

