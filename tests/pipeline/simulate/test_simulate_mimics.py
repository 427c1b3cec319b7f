"""Mimics of the simulator (off by default) and the per-subject acquisition randomisation."""
from __future__ import annotations

import hashlib

import numpy as np

from cmbdetect.pipeline.simulate.subject import simulate_subject

#: sha256 of what the default simulator draws (below), computed on main before the radial family and the mimics
#: were added: labels and true chi (rounded to 0.001 ppm), so that a change of the last float bit does not count,
#: a change of what is drawn does (the signal's float agreement is tests/test_simulate_reference.py's).
DEFAULT_DIGEST = "4a4d86d17527b75f5d6b725048f5e508765317e517adce73f95b78ad8220f14b"
DEFAULT_KW = dict(shape=(48, 48, 24), voxel_size=(3.0, 3.0, 4.0), b0=3.0, te=(0.005, 0.02), oblique_deg=10.0,
                  n_microbleeds=3, n_calcifications=1, snr=40.0)


def _digest(sub) -> str:
    h = hashlib.sha256()
    h.update(sub.truth.labels.tobytes())
    h.update(np.round(sub.truth.chi_ppm, 3).astype(np.float32).tobytes())
    return h.hexdigest()


def test_default_output_is_unchanged_vs_main():
    assert _digest(simulate_subject(seed=11, **DEFAULT_KW)) == DEFAULT_DIGEST


import json  # noqa: E402

import pytest  # noqa: E402

from cmbdetect.physics.errors import InputError  # noqa: E402
from cmbdetect.pipeline.simulate.anatomy import T  # noqa: E402
from cmbdetect.pipeline.simulate.mimics import MIMICS, parse_mimics  # noqa: E402

KW = dict(shape=(56, 64, 32), voxel_size=(2.5, 2.5, 3.0), b0=3.0, te=(0.005, 0.02), oblique_deg=12.0,
          n_microbleeds=2, n_calcifications=0, snr=60.0)


@pytest.fixture(scope="module")
def base():
    return simulate_subject(seed=3, **KW)


def _with(name):
    return simulate_subject(seed=3, mimics=[name], **KW)


def test_no_mimics_is_the_default(base):
    none = simulate_subject(seed=3, mimics="none", **KW)
    np.testing.assert_array_equal(base.acq.mag, none.acq.mag)
    np.testing.assert_array_equal(base.acq.phase, none.acq.phase)
    assert none.params["mimics"] == {"names": []} and "mimics" not in base.params


def test_parse_mimics():
    assert parse_mimics(None) == () and parse_mimics("none") == () and parse_mimics("random") == "random"
    assert parse_mimics("air, iron,air") == ("air", "iron")
    assert parse_mimics(["flow-voids"]) == ("flow_voids",)
    with pytest.raises(InputError, match="glitter"):
        parse_mimics("air,glitter")


def test_calcifications_are_diamagnetic_in_the_choroid_plexus_and_pineal(base):
    sub = _with("calcifications")
    calc = [l for l in sub.truth.lesions if l.kind == "calcification"]
    assert len(calc) == sub.params["mimics"]["calcifications"] >= 1
    assert all(l.chi_ppm < 0 for l in calc)
    for l in calc:  # the true chi map is negative at each one
        assert sub.truth.chi_ppm[tuple(int(round(v)) for v in l.centre_vox)] < -0.05
    from cmbdetect.pipeline.simulate.anatomy import build_anatomy
    from cmbdetect.pipeline.simulate.geometry import HeadFrame
    from cmbdetect.pipeline.simulate.subject import child_rng

    # the same anatomy as the subject's: the sites are the ventricular atria and the pineal (head mm)
    lm = build_anatomy(HeadFrame(KW["shape"], sub.acq.affine, _pose(sub)), child_rng(3, 1)).landmarks
    sites = [lm["ventricles"][f"body_{s}"][0][4] for s in ("right", "left")] + [np.array([0, -30, 2.0]) * lm["scale"]]
    inv = np.linalg.inv(_pose(sub))
    for l in calc:
        head = inv[:3, :3] @ np.asarray(l.centre_ras) + inv[:3, 3]
        assert min(np.linalg.norm(head - s) for s in sites) < 8.0


def _pose(sub):
    """The subject's head pose, recovered from the simulator's deterministic draw (protocol generator)."""
    from cmbdetect.pipeline.simulate.subject import child_rng
    from cmbdetect.pipeline.simulate.geometry import random_rotation

    r = child_rng(3, 0)
    rot = random_rotation(r, np.array([8.0, 4.0, 4.0]))
    centre = np.array([r.uniform(-4, 4), r.uniform(-12, 0), r.uniform(-2, 18)])
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = -rot @ centre
    return pose


def test_flow_voids_are_dark_without_paramagnetic_chi(base):
    from cmbdetect.pipeline.simulate.subject import child_rng
    from cmbdetect.pipeline.simulate.anatomy import build_anatomy
    from cmbdetect.pipeline.simulate.geometry import HeadFrame
    from cmbdetect.pipeline.simulate.mimics import flow_void_occupancy

    sub = _with("flow_voids")
    anat = build_anatomy(HeadFrame(KW["shape"], sub.acq.affine, _pose(sub)), child_rng(3, 1))
    occ = flow_void_occupancy(anat, child_rng(3, 12))
    void, core = occ > 0.5, occ > 0.9
    assert void.sum() > 20 and core.sum() > 5
    d = sub.truth.chi_ppm - base.truth.chi_ppm
    assert d[void].max() <= 1e-6  # nothing paramagnetic added (vein blood removed where an artery runs)
    assert sub.truth.chi_ppm[void].max() < 0.25
    assert np.median(sub.acq.mag[0][core] / np.maximum(base.acq.mag[0][core], 1e-6)) < 0.3


def test_air_pockets_give_a_strong_field_and_dropout_at_the_brain_edge(base):
    from cmbdetect.pipeline.simulate.mimics import brain_edge

    sub = _with("air")
    assert len(sub.params["mimics"]["air_pockets_head_mm"]) >= 1
    edge_b = base.truth.labels >= 0  # same grid
    from cmbdetect.pipeline.simulate.subject import child_rng
    from cmbdetect.pipeline.simulate.anatomy import build_anatomy
    from cmbdetect.pipeline.simulate.geometry import HeadFrame

    anat = build_anatomy(HeadFrame(KW["shape"], sub.acq.affine, _pose(sub)), child_rng(3, 1))
    edge = brain_edge(anat) & edge_b
    assert np.percentile(np.abs(sub.total_field_ppm - base.total_field_ppm)[edge], 99) > 0.2  # ppm
    dark = lambda s: np.mean(s.acq.mag[-1][edge] < 0.3 * np.median(base.acq.mag[-1][edge]))  # noqa: E731
    assert dark(sub) > dark(base) + 0.002
    np.testing.assert_array_equal(sub.truth.chi_ppm, base.truth.chi_ppm)  # outside the brain only


def test_noise_dots_lower_the_snr_and_darken_isolated_voxels(base):
    sub = _with("noise_dots")
    assert sub.params["snr_wm"] <= 10.0 and sub.params["mimics"]["noise_dots"] >= 1
    from cmbdetect.pipeline.simulate.subject import child_rng
    from cmbdetect.pipeline.simulate.anatomy import build_anatomy
    from cmbdetect.pipeline.simulate.geometry import HeadFrame
    from cmbdetect.pipeline.simulate.mimics import noise_dots

    anat = build_anatomy(HeadFrame(KW["shape"], sub.acq.affine, _pose(sub)), child_rng(3, 1))
    idx, gain = noise_dots(child_rng(3, 13), anat.region > 0)
    mag = sub.acq.mag[0].ravel()
    brain = mag[np.flatnonzero(anat.region > 0)]
    assert np.median(mag[idx]) < 0.5 * np.median(brain)


def test_iron_nuclei_raise_chi_in_deep_grey_only(base):
    sub = _with("iron")
    d = sub.truth.chi_ppm - base.truth.chi_ppm
    assert d.max() > 0.03 and d.min() > -1e-4
    from cmbdetect.pipeline.simulate.subject import child_rng
    from cmbdetect.pipeline.simulate.anatomy import build_anatomy
    from cmbdetect.pipeline.simulate.geometry import HeadFrame

    anat = build_anatomy(HeadFrame(KW["shape"], sub.acq.affine, _pose(sub)), child_rng(3, 1))
    deep = np.isin(anat.tissue, [T[k] for k in ("caudate", "putamen", "pallidum", "thalamus", "nigra",
                                                 "red_nucleus", "dentate")])
    assert np.all(np.abs(d[~deep]) < 1e-5)


def test_random_mimics_are_drawn_per_subject_and_deterministic():
    a = simulate_subject(seed=5, mimics="random", **KW)
    b = simulate_subject(seed=5, mimics="random", **KW)
    np.testing.assert_array_equal(a.acq.mag, b.acq.mag)
    assert a.params["mimics"] == b.params["mimics"]
    from cmbdetect.pipeline.simulate.subject import child_rng
    from cmbdetect.pipeline.simulate.mimics import choose_mimics

    draws = {choose_mimics("random", child_rng(s, 7)) for s in range(40)}
    assert len(draws) > 10 and all(set(d) <= set(MIMICS) for d in draws)


def _main(argv, capsys):
    from cmbdetect.pipeline.cli.main import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def test_cli_bad_mimics_or_voxel_size_with_random_acquisition_exit_2(tmp_path, capsys):
    for extra in (["--mimics", "glitter"], ["--randomise-acquisition", "--voxel-size", "1,1,2"]):
        rc, err = _main(["simulate", str(tmp_path / "out"), "--shape", "32,32,16", *extra], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "out").exists()


def test_cli_randomised_acquisition_and_mimics_are_recorded(tmp_path, capsys):
    rc, _ = _main(["simulate", str(tmp_path / "ds"), "--subjects", "2", "--shape", "64,64,24", "--echoes", "1",
                   "--microbleeds", "1", "--randomise-acquisition", "--mimics", "calcifications,iron"], capsys)
    assert rc == 0
    vs = []
    for label in ("01", "02"):
        p = json.loads((tmp_path / "ds" / "derivatives" / "groundtruth" / f"sub-{label}"
                        / f"sub-{label}_desc-simulation_parameters.json").read_text())
        assert p["acquisition_randomised"] is True and p["mimics"]["names"] == ["calcifications", "iron"]
        assert 0.5 <= p["voxel_size_mm"][0] == p["voxel_size_mm"][1] <= 1.0 and 2.0 <= p["voxel_size_mm"][2] <= 3.0
        vs.append(p["voxel_size_mm"])
    assert vs[0] != vs[1]
