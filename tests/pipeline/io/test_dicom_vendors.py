"""Vendor-style DICOM (written by pipeline.simulate_dicom) -> Acquisition: Siemens, Philips (private
scaling, milliradians, classic and enhanced), GE (milliradians, real/imaginary, B0map), phase-difference
maps, field maps in Hz, --phase-units for DICOM, and the one-line refusals."""
from __future__ import annotations

import argparse

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import oblique_affine
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.cli.common import acquisition_from_args, add_input_arguments
from cmbdetect.pipeline.io.dicom import load_dicom_acquisition, read_dicom_series
from cmbdetect.pipeline.simulate.dicom import (DICOM_STYLES, write_acquisition_dicom, write_dicom_series,
                                               write_enhanced_dicom)

SHAPE = (12, 10, 6)
TE = (0.004, 0.011)


def _wrapdiff(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a, float) - np.asarray(b, float)))))


def _one_line(func, *args, match, **kw):
    with pytest.raises(InputError, match=match) as info:
        func(*args, **kw)
    assert "\n" not in str(info.value) and "np.float" not in str(info.value)
    return str(info.value)


@pytest.fixture
def acq(rng):
    aff = oblique_affine(SHAPE, (0.9, 1.1, 1.6), angles_deg=(12.0, -8.0, 20.0))
    mag = rng.uniform(20.0, 400.0, (2,) + SHAPE)
    phase = rng.uniform(-np.pi, np.pi, (2,) + SHAPE)
    return Acquisition(mag=mag, phase=phase, te=TE, b0=2.89, affine=aff)


@pytest.mark.parametrize("style", DICOM_STYLES)
def test_vendor_style_round_trip(acq, tmp_path, style):
    """Every writer style reads back to the same magnitude, phase, echo times, B0 and oblique affine."""
    write_acquisition_dicom(acq, tmp_path / style, style=style)
    got = load_dicom_acquisition([tmp_path / style])
    np.testing.assert_allclose(got.affine, acq.affine, atol=1e-4)
    np.testing.assert_allclose(got.te, TE)
    assert got.b0 == pytest.approx(2.89)
    step = {"siemens": np.pi / 2048, "siemens-signed": np.pi / 4096, "ge": 1e-3}.get(style, 2 * np.pi / 4095)
    # Philips FP = (PV*RS + RI) / (RS*SS) with RI = -3142 (not -1000*pi): a constant 0.4 mrad offset
    offset = 5e-4 if style.startswith("philips") else 1e-5
    assert _wrapdiff(got.phase, acq.phase).max() < step * 0.51 + offset
    scale = acq.mag.max() / got.mag.max()  # GE real/imaginary: |z| in stored units
    np.testing.assert_allclose(got.mag * scale, acq.mag, atol=acq.mag.max() * 2e-4)
    expected = {"ge-complex": "real-imaginary"}.get(style, "per-echo")
    assert got.source["form"] == expected


def test_philips_headers_and_mrad_without_private_tags(acq, tmp_path):
    """Philips phase: RescaleSlope 1.534 / Intercept -3142 (mrad) and (2005,100E) 651.74 / (2005,100D) 2047.5
    (radians); the private scaling is used, and without it the real-world values are read as milliradians."""
    write_acquisition_dicom(acq, tmp_path, style="philips")
    ds = pydicom.dcmread(next((tmp_path / "phase").iterdir()))
    assert float(ds.RescaleSlope) == pytest.approx(1.53435, abs=1e-4) and float(ds.RescaleIntercept) == -3142
    assert ds[0x2005, 0x100E].value == pytest.approx(651.74, abs=0.01) and ds[0x2005, 0x100D].value == 2047.5
    assert load_dicom_acquisition([tmp_path]).source["phase_units_from"].startswith("Philips private")
    for f in (tmp_path / "phase").iterdir():  # strip the private scaling (e.g. an anonymiser removed it)
        ds = pydicom.dcmread(f)
        del ds[0x2005, 0x100E], ds[0x2005, 0x100D]
        ds.save_as(f, enforce_file_format=True)
    got = load_dicom_acquisition([tmp_path])
    assert got.source["phase_units"] == "mrad"
    assert _wrapdiff(got.phase, acq.phase).max() < 2e-3  # 3142 vs 1000*pi: 0.013 % of the range


def test_philips_enhanced_frames_in_any_order(acq, tmp_path, rng):
    n = 2 * acq.n_echoes * SHAPE[2]
    write_enhanced_dicom(tmp_path / "e.dcm", mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0,
                         affine=acq.affine, frame_order=rng.permutation(n))
    got = load_dicom_acquisition([tmp_path])
    np.testing.assert_allclose(got.affine, acq.affine, atol=1e-4)
    np.testing.assert_allclose(got.te, TE)
    assert _wrapdiff(got.phase, acq.phase).max() < np.pi / 4095 * 1.01 + 5e-4  # + the 0.4 mrad Philips offset
    assert len(got.source["dicom_datasets"]) == 1
    frames = [n for _, n in got.source["dicom"]["reference_frames"]]  # echo-1 magnitude, in slice order
    assert len(set(frames)) == SHAPE[2] and 1 <= min(frames) and max(frames) <= n


def test_phase_units_override_for_dicom(acq, tmp_path):
    write_acquisition_dicom(acq, tmp_path, style="ge")
    got = load_dicom_acquisition([tmp_path], phase_units="scale:3141.5927")
    assert got.source["phase_units_from"] == "--phase-units"
    assert _wrapdiff(got.phase, acq.phase).max() < 1e-3
    args = add_input_arguments(argparse.ArgumentParser()).parse_args(
        ["--dicom", str(tmp_path), "--phase-units", "mrad", "--phase-sign", "-1"])
    flipped = acquisition_from_args(args)
    assert _wrapdiff(flipped.phase, -acq.phase).max() < 1e-3
    _one_line(load_dicom_acquisition, [tmp_path], phase_units="furlongs", match="--phase-units")


def test_phase_difference_read_at_echo_spacing(acq, tmp_path, capsys):
    """Two magnitude echoes + one phase-difference image at TE2 -> one echo with TE = TE2 - TE1."""
    te1, te2 = 0.00519, 0.00765
    study, frame = generate_uid(), generate_uid()
    uid = generate_uid()
    for e, te in enumerate((te1, te2)):
        write_dicom_series(acq.mag[e], acq.affine, tmp_path / "mag", kind="M", echo_time_s=te, b0=3.0,
                           series_number=2, study_uid=study, series_uid=uid, frame_of_reference_uid=frame,
                           echo_number=e + 1)
    write_dicom_series(acq.phase[0], acq.affine, tmp_path / "phasediff", kind="P", echo_time_s=te2, b0=3.0,
                       series_number=3, study_uid=study, frame_of_reference_uid=frame, echo_number=2)
    args = add_input_arguments(argparse.ArgumentParser()).parse_args(
        ["--dicom", str(tmp_path / "mag"), "--dicom", str(tmp_path / "phasediff")])
    got = acquisition_from_args(args)
    np.testing.assert_allclose(got.te, [te2 - te1], rtol=1e-9)
    assert got.source["form"] == "phase-difference"
    assert got.source["phase_difference"] == {"echo_time1_s": te1, "echo_time2_s": te2, "delta_te_s": 0.00246}
    np.testing.assert_allclose(got.mag[0], acq.mag[0], atol=acq.mag.max() / 65535 + 1e-3)  # the TE1 magnitude
    assert _wrapdiff(got.phase[0], acq.phase[0]).max() < np.pi / 2048
    err = capsys.readouterr().err
    assert "phase-difference field map" in err and "2.46 ms" in err and len(err.strip().splitlines()) == 1
    _one_line(load_dicom_acquisition, [tmp_path / "phasediff"], match="no magnitude.*phase-difference")
    _one_line(load_dicom_acquisition, [tmp_path / "mag"], match="magnitude-only")


@pytest.mark.parametrize("style", ["siemens", "philips", "ge"])
def test_field_map_in_hz_refused_in_one_line(acq, tmp_path, style):
    hz = np.clip(acq.phase[0] * 150, -500, 499)
    write_dicom_series(acq.mag[0], acq.affine, tmp_path / "b0map", kind="M", echo_time_s=0.0049, b0=3,
                       series_number=5, style=style, ge_b0map=style == "ge")
    write_dicom_series(hz, acq.affine, tmp_path / "b0map", kind="HZ", echo_time_s=0.0049, b0=3,
                       series_number=5, style=style)
    msg = _one_line(load_dicom_acquisition, [tmp_path / "b0map"], match="B0 field map in Hz")
    assert "qsm --local-field" in msg and f"{SHAPE[2]} field and {SHAPE[2]} magnitude" in msg
    if style == "ge":  # GE B0map: both kinds carry (0043,102F) = 0; (0043,1030) and the sign tell them apart
        assert "(0043,1030)" in msg


def test_other_refusals(acq, tmp_path):
    write_dicom_series(acq.mag[0] - 200, acq.affine, tmp_path / "real", kind="R", echo_time_s=0.01, b0=3,
                       series_number=1, style="ge")
    _one_line(load_dicom_acquisition, [tmp_path / "real"], match="1?.*real and 0 imaginary.*add the imaginary")
    write_dicom_series(acq.mag[0], acq.affine, tmp_path / "a" / "m", kind="M", echo_time_s=0.01, b0=3,
                       series_number=7, series_description="first")
    write_dicom_series(acq.mag[0], acq.affine, tmp_path / "a" / "m2", kind="M", echo_time_s=0.01, b0=3,
                       series_number=8, series_description="second")
    write_dicom_series(acq.phase[0], acq.affine, tmp_path / "a" / "p", kind="P", echo_time_s=0.01, b0=3,
                       series_number=9)
    _one_line(load_dicom_acquisition, [tmp_path / "a"], match="series 7 first, 8 second")
    write_dicom_series(acq.phase[0], acq.affine, tmp_path / "b" / "p", kind="P", echo_time_s=0.02, b0=3,
                       series_number=9)
    write_dicom_series(acq.mag[0], acq.affine, tmp_path / "b" / "m", kind="M", echo_time_s=0.01, b0=3,
                       series_number=7)
    _one_line(load_dicom_acquisition, [tmp_path / "b"], match="10 ms but phase images 20 ms")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("x")
    _one_line(load_dicom_acquisition, [tmp_path / "c"], match="found no magnitude, phase")


def test_siemens_unsigned_without_rescale(acq, tmp_path):
    """Siemens phase 0..4095 without RescaleSlope/Intercept (12-bit unsigned)."""
    write_acquisition_dicom(acq, tmp_path, style="siemens")
    for f in (tmp_path / "phase").iterdir():
        ds = pydicom.dcmread(f)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.Manufacturer = "SIEMENS"
        ds.save_as(f, enforce_file_format=True)
    got = read_dicom_series([tmp_path])
    assert got.source["phase_units"] == "uint12"
    # 0..4095 stored as (phase*4096/pi + 4096)/2 -> uint12 maps 0 -> -pi: the same phase
    assert _wrapdiff(got.phase, acq.phase).max() < np.pi / 2048 * 0.51 + 1e-5


def test_simulate_cli_writes_dicom(tmp_path):
    from cmbdetect.pipeline.cli.main import main
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, load_bids_acquisition

    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--shape", "16,16,16", "--echoes", "2", "--b0", "3", "--seed", "3",
                 "--dicom", "siemens", "--dicom", "philips-enhanced"]) == 0
    ref = load_bids_acquisition(find_bids_subjects(out)[0])
    for style in ("siemens", "philips-enhanced"):
        got = load_dicom_acquisition([out / "sourcedata" / "dicom" / "sub-01" / style])
        np.testing.assert_allclose(got.te, ref.te, atol=1e-7)  # EchoTime in ms with 4 decimals
        assert got.b0 == pytest.approx(ref.b0)
        flip = np.linalg.det(ref.affine[:3, :3]) < 0  # left-handed: slices are read along row x column
        phase = ref.phase[..., ::-1] if flip else ref.phase
        assert _wrapdiff(got.phase, phase).max() < np.pi / 2000
    assert main(["simulate", str(tmp_path / "bad"), "--dicom", "canon"]) == 2
    assert not (tmp_path / "bad").exists()


def test_field_map_beside_gre_is_left_aside(acq, tmp_path):
    write_acquisition_dicom(acq, tmp_path, style="siemens")
    write_dicom_series(acq.phase[0] * 100, acq.affine, tmp_path / "b0map", kind="HZ", echo_time_s=0.0049, b0=3,
                       series_number=9)
    got = load_dicom_acquisition([tmp_path])
    assert got.source["form"] == "per-echo" and got.n_echoes == 2
    assert any("field-map (Hz) images left aside" in n for n in got.source["notes"])


@pytest.mark.parametrize("style", ["philips-enhanced", pytest.param("ge-complex", marks=pytest.mark.slow)])
def test_simulated_dicom_runs_end_to_end(tmp_path, capsys, style):
    """``cmbdetect simulate --dicom STYLE`` then ``cmbdetect run --dicom`` on it: a complete run."""
    from cmbdetect.models.registry import create_random_model
    from cmbdetect.pipeline.cli.main import main

    sim = tmp_path / "sim"
    assert main(["simulate", str(sim), "--shape", "32,32,20", "--echoes", "2", "--b0", "3", "--seed", "5",
                 "--microbleeds", "1", "--dicom", style]) == 0
    model = create_random_model(tmp_path / "model", seed=0)
    out = tmp_path / "out"
    assert main(["run", "--dicom", str(sim / "sourcedata" / "dicom" / "sub-01" / style), "--out", str(out),
                 "--model", str(model)]) == 0, capsys.readouterr().err
    assert (out / "candidates.tsv").is_file() and (out / "dicom" / "sr.dcm").is_file()
