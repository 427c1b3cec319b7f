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
