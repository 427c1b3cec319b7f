"""The second vein family ("tortuous") and the extra mimics of the simulator."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from cmbdetect.physics.constants import DCHI_DEOXY_BLOOD_PPM
from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.simulate.subject import simulate_subject
from cmbdetect.pipeline.simulate.veins_tortuous import blood_chi_ppm, random_walk
from cmbdetect.pipeline.io.truth import LABELS

KW = dict(shape=(56, 64, 32), voxel_size=(2.5, 2.5, 3.0), b0=3.0, te=(0.02,), oblique_deg=15.0,
          n_microbleeds=2, n_calcifications=0, snr=60.0)


@pytest.fixture(scope="module")
def tortuous():
    return simulate_subject(seed=3, vein_family="tortuous", iron_spots=3, **KW)


def test_tortuous_family_draws_paramagnetic_veins_and_records_them(tortuous):
    p = tortuous.params["veins"]
    assert p["family"] == "tortuous"
    assert p["parenchymal"] > 20 and p["medullary"] > 5 and p["branches"] > 0
    veins = tortuous.truth.labels == LABELS["vein"]
    assert veins.sum() > 50
    assert np.mean(tortuous.truth.chi_ppm[veins] > 0.05) > 0.9
    default = simulate_subject(seed=3, **KW)
    assert default.params["veins"] == {"family": "trees"}
    assert not np.array_equal(default.truth.labels == LABELS["vein"], veins)


def test_default_family_is_unchanged_by_the_new_options():
    a = simulate_subject(seed=5, **KW)
    b = simulate_subject(seed=5, vein_family="trees", vein_density=None, iron_spots=0, **KW)
    np.testing.assert_array_equal(a.acq.mag, b.acq.mag)


def test_iron_spots_raise_chi_in_deep_grey_matter_only(tortuous):
    plain = simulate_subject(seed=3, vein_family="tortuous", iron_spots=0, **KW)
    assert tortuous.params["iron_spots"] >= 1
    d = tortuous.truth.chi_ppm - plain.truth.chi_ppm
    assert d.max() > 0.01 and d.min() > -1e-4
    assert d.max() < 0.13


def test_walks_start_in_every_orientation_and_wander():
    rng = np.random.default_rng(0)
    ends, ratios = [], []
    for _ in range(400):
        w = random_walk(rng, np.zeros(3), rng.normal(size=3), length_mm=20.0, step_mm=1.0, tortuosity=0.3,
                        inside=lambda p: True)
        ends.append((w[1] - w[0]) / np.linalg.norm(w[1] - w[0]))
        ratios.append(np.linalg.norm(w[-1] - w[0]) / (len(w) - 1))
    through_plane = np.mean(np.abs(np.array(ends)[:, 2]) > 0.7)  # uniform on the sphere: 0.3
    assert 0.22 < through_plane < 0.38
    assert 0.5 < np.median(ratios) < 0.95  # tortuous: end-to-end distance shorter than the path


def test_walk_stops_at_the_boundary():
    w = random_walk(np.random.default_rng(1), np.zeros(3), (1, 0, 0), length_mm=50, step_mm=1.0, tortuosity=0.0,
                    inside=lambda p: p[0] < 10.5)
    assert len(w) == 11


def test_blood_chi_from_oxygenation():
    assert blood_chi_ppm(0.6, 0.42) == pytest.approx(0.42 * 0.4 * DCHI_DEOXY_BLOOD_PPM)
    assert 0.3 < blood_chi_ppm(0.6, 0.42) < 0.7
    assert blood_chi_ppm(1.0, 0.4) == 0.0


def test_unknown_family_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        simulate_subject(seed=0, vein_family="spaghetti", **KW)
    from cmbdetect.pipeline.cli import simulate as cli_simulate

    parser = argparse.ArgumentParser()
    cli_simulate.add_parser(parser.add_subparsers(dest="command"))
    for argv in (["--vein-family", "spaghetti"], ["--vein-density", "0"], ["--iron-spots", "many"]):
        args = parser.parse_args(["simulate", str(tmp_path / "out"), *argv])
        with pytest.raises(InputError):
            cli_simulate.run(args)
        assert not (tmp_path / "out").exists()


def test_cli_dataset_records_the_vein_family(tmp_path):
    import json

    from cmbdetect.pipeline.cli import simulate as cli_simulate

    parser = argparse.ArgumentParser()
    cli_simulate.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", str(tmp_path / "ds"), "--shape", "40,48,24", "--voxel-size", "3,3,4",
                              "--b0", "3", "--echoes", "1", "--microbleeds", "1", "--vein-family", "tortuous",
                              "--vein-density", "2", "--iron-spots", "1"])
    assert cli_simulate.run(args) == 0
    params = json.loads((tmp_path / "ds" / "derivatives" / "groundtruth" / "sub-01"
                         / "sub-01_desc-simulation_parameters.json").read_text())
    assert params["veins"]["family"] == "tortuous" and params["veins"]["density"] == 2.0
    assert params["iron_spots"] <= 1


# --- third family ("radial", for training): straight / gently curved segments, fans, Y-branches -------------


def _anatomy(seed: int, *, shape=(64, 64, 32), voxel_size=(2.5, 2.5, 4.0), oblique_deg=0.0):
    from cmbdetect.physics.geometry import oblique_affine
    from cmbdetect.pipeline.simulate.anatomy import build_anatomy
    from cmbdetect.pipeline.simulate.geometry import HeadFrame

    affine = oblique_affine(shape, voxel_size, angles_deg=(oblique_deg, 0.0, 0.0))
    pose = np.eye(4)
    pose[:3, 3] = [0.0, 6.0, -8.0]
    return build_anatomy(HeadFrame(shape, affine, pose), np.random.default_rng(seed))


@pytest.fixture(scope="module")
def radial_draw():
    from cmbdetect.pipeline.simulate.veins_radial import draw_radial_veins

    anat = _anatomy(1, oblique_deg=12.0)
    bleeds = [(np.array([20.0, -10.0, 20.0]), 1.5), (np.array([-25.0, 5.0, 15.0]), 1.0),
              (np.array([10.0, 30.0, 25.0]), 2.0), (np.array([-15.0, -40.0, 18.0]), 1.2)]
    vessels, params = draw_radial_veins(anat, np.random.default_rng(4), density=1.0, near_mm=bleeds)
    return anat, vessels, params, bleeds


def test_radial_family_has_every_kind_and_records_it(radial_draw):
    anat, vessels, params, _ = radial_draw
    assert params["family"] == "radial"
    for kind in ("medullary", "transcerebral", "subependymal", "sulcal", "segment", "branch", "near_bleed"):
        assert params[kind] > 0, kind
        assert any(v.kind == kind for v in vessels)
    assert params["length_mm"] > 1000
    assert 0.5 < params["oxygenation"] < 0.75 and 0.36 < params["haematocrit"] < 0.48
    chis = np.array([v.chi_ppm for v in vessels])
    expected = blood_chi_ppm(0.625, 0.42)
    assert chis.min() > 0.1 and 0.5 * expected < np.median(chis) < 2 * expected


def test_radial_veins_run_through_plane_and_in_plane(radial_draw):
    from cmbdetect.pipeline.simulate.veins_radial import vessel_stats

    anat, vessels, params, _ = radial_draw
    assert params["through_plane_fraction"] > 0.1 and params["in_plane_fraction"] > 0.1
    # the free segments alone: uniform on the sphere (|cos| > 0.8: 0.2 of the length, |cos| < 0.3: 0.3)
    seg = vessel_stats(anat, [v for v in vessels if v.kind == "segment"])
    assert 0.1 < seg["through_plane_fraction"] < 0.35 and 0.18 < seg["in_plane_fraction"] < 0.45
    # the orientation is measured against the slab normal (12 degree oblique slab), not the head axis
    n_slab = anat.frame.vox_to_head[:3, 2] / np.linalg.norm(anat.frame.vox_to_head[:3, 2])
    assert abs(n_slab[2]) < 0.99


def test_radial_calibre_spans_0p3_to_3_mm(radial_draw):
    _, vessels, params, _ = radial_draw
    cal = np.concatenate([2 * v.radii for v in vessels])
    assert cal.min() >= 0.3 - 1e-9 and cal.max() <= 3.0 + 1e-9
    assert cal.min() < 0.5 and cal.max() > 2.0
    assert 0.3 <= params["calibre_mm"][0] <= params["calibre_mm"][1] <= params["calibre_mm"][2] <= 3.0


def test_radial_veins_are_straight_or_gently_curved(radial_draw):
    _, vessels, _, _ = radial_draw
    ratios = [np.linalg.norm(v.points[-1] - v.points[0]) / np.sum(np.linalg.norm(np.diff(v.points, axis=0), axis=1))
              for v in vessels if v.kind in ("segment", "medullary", "transcerebral")]
    assert np.median(ratios) > 0.97  # tortuous random walks: 0.5-0.95


def test_radial_anatomical_placement(radial_draw):
    from cmbdetect.pipeline.simulate.anatomy import T

    anat, vessels, _, bleeds = radial_draw
    fr = anat.frame

    def tissue_at(p):
        v = np.clip(np.rint(fr.head_to_vox(p)).astype(int), 0, np.asarray(fr.shape) - 1)
        return anat.tissue[tuple(v.T)]

    sulcal = np.concatenate([v.points for v in vessels if v.kind == "sulcal"])
    assert np.mean(np.isin(tissue_at(sulcal), [T["csf"], T["gm"]])) > 0.8
    medullary = np.concatenate([v.points[1:] for v in vessels if v.kind == "medullary"])
    assert np.mean(tissue_at(medullary) == T["wm"]) > 0.5
    vents = np.concatenate([vp for key, (vp, _r) in anat.landmarks["ventricles"].items() if key.startswith("body")])
    starts = np.array([v.points[0] for v in vessels if v.kind == "medullary"])
    assert np.median(np.min(np.linalg.norm(starts[:, None] - vents[None], axis=2), axis=1)) < 12.0
    for v in (v for v in vessels if v.kind == "near_bleed"):
        gap = min(np.min(np.linalg.norm(v.points - c, axis=1)) - r - v.radii.max() for c, r in bleeds)
        assert 0.0 < gap < 3.6


def test_radial_family_paints_veins_deterministically():
    a = simulate_subject(seed=8, vein_family="radial", **KW)
    b = simulate_subject(seed=8, vein_family="radial", **KW)
    c = simulate_subject(seed=9, vein_family="radial", **KW)
    np.testing.assert_array_equal(a.acq.mag, b.acq.mag)
    assert a.params["veins"] == b.params["veins"]
    veins = a.truth.labels == LABELS["vein"]
    assert veins.sum() > 50 and np.mean(a.truth.chi_ppm[veins] > 0.05) > 0.9
    assert not np.array_equal(veins, c.truth.labels == LABELS["vein"])
    trees = simulate_subject(seed=8, **KW)
    assert not np.array_equal(veins, trees.truth.labels == LABELS["vein"])
    assert a.params["veins"]["near_bleed"] <= KW["n_microbleeds"]


def test_radial_density_scales_the_length():
    from cmbdetect.pipeline.simulate.veins_radial import draw_radial_veins

    anat = _anatomy(2)
    sparse = draw_radial_veins(anat, np.random.default_rng(0), density=0.5)[1]["length_mm"]
    dense = draw_radial_veins(anat, np.random.default_rng(0), density=2.0)[1]["length_mm"]
    assert dense > 2.5 * sparse


def test_cli_accepts_the_radial_family(tmp_path):
    import json

    from cmbdetect.pipeline.cli import simulate as cli_simulate

    parser = argparse.ArgumentParser()
    cli_simulate.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", str(tmp_path / "ds"), "--shape", "40,48,24", "--voxel-size", "3,3,4",
                              "--b0", "3", "--echoes", "1", "--microbleeds", "1", "--vein-family", "radial"])
    assert cli_simulate.run(args) == 0
    params = json.loads((tmp_path / "ds" / "derivatives" / "groundtruth" / "sub-01"
                         / "sub-01_desc-simulation_parameters.json").read_text())
    assert params["veins"]["family"] == "radial" and params["veins"]["length_mm"] > 0
