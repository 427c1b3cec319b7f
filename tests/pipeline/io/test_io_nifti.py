"""NIfTI magnitude + phase -> Acquisition: round trips, sidecars, overrides and every bad input."""
from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.nifti import load_nifti_acquisition, read_nifti_volume, sidecar_path

SHAPE = (12, 10, 8)
TE = (0.005, 0.012, 0.019)


def _save(arr, affine, path, meta=None):
    nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), affine), str(path))
    if meta is not None:
        sidecar_path(path).write_text(json.dumps(meta))
    return path


@pytest.fixture
def volumes(rng):
    mag = rng.uniform(10, 100, (3,) + SHAPE).astype(np.float32)
    phase = rng.uniform(-3.1, 3.1, (3,) + SHAPE).astype(np.float32)
    return mag, phase


def _per_echo(tmp_path, mag, phase, affine, *, meta=True, echoes=range(3)):
    mags, phases = [], []
    for e in echoes:
        m = {"EchoTime": TE[e], "MagneticFieldStrength": 3} if meta else None
        mags.append(_save(mag[e], affine, tmp_path / f"mag_e{e + 1}.nii.gz", m))
        phases.append(_save(phase[e], affine, tmp_path / f"phase_e{e + 1}.nii.gz", m))
    return mags, phases


def test_multi_echo_per_file_with_sidecars(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    mags, phases = _per_echo(tmp_path, mag, phase, aff)
    acq = load_nifti_acquisition(mags, phases)
    assert acq.mag.shape == (3,) + SHAPE and acq.n_echoes == 3
    np.testing.assert_allclose(acq.mag, mag, rtol=1e-6)
    np.testing.assert_allclose(acq.phase, phase, atol=1e-6)
    np.testing.assert_allclose(acq.te, TE)
    assert acq.b0 == 3.0
    np.testing.assert_allclose(acq.affine, aff, atol=1e-5)
    assert acq.source["format"] == "nifti" and acq.source["te_from"] == "sidecar"
    assert acq.source["mag"] == [str(p) for p in mags]


def test_echoes_sorted_by_echo_time(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    mags, phases = _per_echo(tmp_path, mag, phase, oblique_affine(SHAPE))
    acq = load_nifti_acquisition(mags[::-1], phases[::-1])
    np.testing.assert_allclose(acq.te, TE)
    np.testing.assert_allclose(acq.mag, mag, rtol=1e-6)


def test_single_echo_3d_and_explicit_override(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m = _save(mag[0], aff, tmp_path / "m.nii.gz", {"EchoTime": 0.02, "MagneticFieldStrength": 1.5})
    p = _save(phase[0], aff, tmp_path / "p.nii.gz")
    acq = load_nifti_acquisition(m, p, te=0.025, b0=7.0)
    assert acq.mag.shape == (1,) + SHAPE
    assert acq.te.tolist() == [0.025] and acq.b0 == 7.0
    assert acq.source["te_from"] == "argument" and acq.source["b0_from"] == "argument"
    acq2 = load_nifti_acquisition(str(m), str(p))
    assert acq2.te.tolist() == [0.02] and acq2.b0 == 1.5


def test_4d_echoes_last_with_sign_and_units(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m = _save(np.moveaxis(mag, 0, -1), aff, tmp_path / "mag.nii.gz", {"EchoTime": list(TE)})
    scaled = np.moveaxis(phase, 0, -1) * (0.0036744 / np.pi)
    p = _save(scaled, aff, tmp_path / "phase.nii.gz")
    acq = load_nifti_acquisition(m, p, b0=3.0, phase_sign=-1, phase_units="scale:0.0036744")
    np.testing.assert_allclose(acq.te, TE)
    np.testing.assert_allclose(acq.phase, -phase, atol=1e-4)
    np.testing.assert_allclose(acq.mag, mag, rtol=1e-6)


def test_siemens_integer_phase_auto(tmp_path, oblique_affine, rng):
    aff = oblique_affine(SHAPE)
    raw = rng.integers(-4096, 4095, SHAPE).astype(np.float32)
    m = _save(np.ones(SHAPE), aff, tmp_path / "m.nii")
    p = _save(raw, aff, tmp_path / "p.nii")
    acq = load_nifti_acquisition(m, p, te=[0.02], b0=3)
    np.testing.assert_allclose(acq.phase[0], raw * np.pi / 4096, atol=1e-5)


def _one_line_error(func, *args, match, **kw):
    with pytest.raises(InputError, match=match) as info:
        func(*args, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_shape_mismatch(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m = _save(mag[0], aff, tmp_path / "m.nii.gz")
    p = _save(phase[0, :, :, :6], aff, tmp_path / "p.nii.gz")
    _one_line_error(load_nifti_acquisition, m, p, te=[0.02], b0=3, match="shape")


def test_affine_mismatch(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    shifted = aff.copy()
    shifted[0, 3] += 0.5
    m = _save(mag[0], aff, tmp_path / "m.nii.gz")
    p = _save(phase[0], shifted, tmp_path / "p.nii.gz")
    _one_line_error(load_nifti_acquisition, m, p, te=[0.02], b0=3, match="affine")
    tiny = aff.copy()
    tiny[0, 3] += 1e-5  # float32 header noise is tolerated
    p2 = _save(phase[0], tiny, tmp_path / "p2.nii.gz")
    load_nifti_acquisition(m, p2, te=[0.02], b0=3)


def test_missing_echo_time_and_field(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    mags, phases = _per_echo(tmp_path, mag, phase, oblique_affine(SHAPE), meta=False)
    _one_line_error(load_nifti_acquisition, mags, phases, b0=3, match="echo time unknown.*--te")
    _one_line_error(load_nifti_acquisition, mags, phases, te=TE, match="--b0")
    _one_line_error(load_nifti_acquisition, mags, phases, te=TE[:2], b0=3, match="3 echoes")


def test_echo_time_in_milliseconds(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m = _save(mag[0], aff, tmp_path / "m.nii.gz", {"EchoTime": 20, "MagneticFieldStrength": 3})
    p = _save(phase[0], aff, tmp_path / "p.nii.gz")
    _one_line_error(load_nifti_acquisition, m, p, match="milliseconds")
    _one_line_error(load_nifti_acquisition, m, p, te=[20.0], match="milliseconds")


def test_2d_data(tmp_path, oblique_affine):
    aff = oblique_affine(SHAPE)
    m = _save(np.ones((12, 10, 1)), aff, tmp_path / "m.nii.gz")
    p = _save(np.zeros((12, 10, 1)), aff, tmp_path / "p.nii.gz")
    _one_line_error(load_nifti_acquisition, m, p, te=[0.02], b0=3, match="2D")
    m2 = tmp_path / "m2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((12, 10), np.float32), aff), str(m2))
    _one_line_error(load_nifti_acquisition, m2, p, te=[0.02], b0=3, match="2D")


def test_nans(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    bad = phase[0].copy()
    bad[3, 3, 3] = np.nan
    bad[0, :, :] = np.inf
    m = _save(mag[0], aff, tmp_path / "m.nii.gz")
    p = _save(bad, aff, tmp_path / "p.nii.gz")
    acq = load_nifti_acquisition(m, p, te=[0.02], b0=3)  # NaN voxels are masked, not refused
    n_bad = 1 + SHAPE[1] * SHAPE[2]
    assert acq.source["nonfinite_voxels"] == n_bad and any("NaN" in w for w in acq.source["warnings"])
    assert acq.mag[0, 3, 3, 3] == 0 and acq.phase[0, 3, 3, 3] == 0 and np.all(acq.mag[0, 0] == 0)
    good = np.ones(SHAPE, bool)
    good[3, 3, 3] = good[0] = False
    np.testing.assert_allclose(acq.mag[0][good], mag[0][good], rtol=1e-6)
    _save(np.full(SHAPE, np.nan), aff, tmp_path / "all_nan.nii.gz")
    _one_line_error(load_nifti_acquisition, m, tmp_path / "all_nan.nii.gz", te=[0.02], b0=3, match="no finite")


def test_unreadable_files(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m = _save(mag[0], aff, tmp_path / "m.nii.gz")
    p = _save(phase[0], aff, tmp_path / "p.nii.gz")
    _one_line_error(load_nifti_acquisition, tmp_path / "absent.nii.gz", p, te=[0.02], b0=3, match="does not exist")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    _one_line_error(load_nifti_acquisition, m, junk, te=[0.02], b0=3, match="cannot read")
    truncated = tmp_path / "trunc.nii.gz"
    raw = gzip.decompress(p.read_bytes())
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _one_line_error(load_nifti_acquisition, m, truncated, te=[0.02], b0=3, match="cannot read")
    bad_json = tmp_path / "m.json"
    bad_json.write_text("{not json")
    _one_line_error(load_nifti_acquisition, m, p, te=[0.02], b0=3, match="sidecar")


def test_wrong_phase_units(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m = _save(mag[0], aff, tmp_path / "m.nii.gz")
    p = _save(phase[0] * (0.0036744 / np.pi), aff, tmp_path / "p.nii.gz")
    _one_line_error(load_nifti_acquisition, m, p, te=[0.02], b0=3, match="--phase-units")
    _one_line_error(load_nifti_acquisition, m, p, te=[0.02], b0=3, phase_units="furlongs", match="--phase-units")
    _one_line_error(load_nifti_acquisition, m, p, te=[0.02], b0=3, phase_sign=2, match="phase-sign")


def test_echo_count_mismatch(tmp_path, volumes, oblique_affine):
    mag, phase = volumes
    mags, phases = _per_echo(tmp_path, mag, phase, oblique_affine(SHAPE))
    _one_line_error(load_nifti_acquisition, mags, phases[:2], match="3 magnitude echoes but 2 phase")


def test_read_nifti_volume_squeezes_5d(tmp_path):
    data = np.zeros((4, 4, 4, 1, 2), np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "x.nii"))
    arr, aff = read_nifti_volume(tmp_path / "x.nii")
    assert arr.shape == (4, 4, 4, 2)


def test_real_three_echo_crop(shared_data):
    d = shared_data / "real" / "gre-3echo-crop"
    acq = load_nifti_acquisition(d / "Mag.nii.gz", d / "Phase.nii.gz", te=[0.004, 0.008, 0.012], b0=3.0,
                                 phase_units="scale:0.0036744")
    assert acq.shape == (51, 51, 41) and acq.n_echoes == 3
    assert acq.phase.min() >= -np.pi and acq.phase.max() < np.pi
    assert acq.phase.max() - acq.phase.min() > 6.0  # the full wrapped range is used
    np.testing.assert_allclose(acq.voxel_size, [0.46875, 0.46875, 1.0], atol=1e-3)
    with pytest.raises(InputError, match="--phase-units"):
        load_nifti_acquisition(d / "Mag.nii.gz", d / "Phase.nii.gz", te=[0.004, 0.008, 0.012], b0=3.0)


def test_bids_units_rad_sidecar_trusted_for_small_phase(tmp_path, oblique_affine, rng):
    aff = oblique_affine(SHAPE)
    small = rng.uniform(-0.1, 0.1, SHAPE)  # too small a range (< 0.05 pi) for automatic recognition
    m = _save(np.ones(SHAPE), aff, tmp_path / "m.nii.gz", {"EchoTime": 0.005, "MagneticFieldStrength": 3})
    p = _save(small, aff, tmp_path / "p.nii.gz")
    with pytest.raises(InputError, match="--phase-units"):
        load_nifti_acquisition(m, p)
    _save(small, aff, p, {"Units": "rad"})
    acq = load_nifti_acquisition(m, p)
    np.testing.assert_allclose(acq.phase[0], small, atol=1e-6)


def test_header_without_orientation_is_flagged(tmp_path, volumes):
    mag, phase = volumes
    paths = []
    for name, arr in (("m.nii", mag[0]), ("p.nii", phase[0])):
        img = nib.Nifti1Image(arr, None)
        img.header.set_zooms((1.0, 1.0, 2.0))
        img.set_sform(None, code=0)
        img.set_qform(None, code=0)
        nib.save(img, str(tmp_path / name))
        paths.append(tmp_path / name)
    acq = load_nifti_acquisition(paths[0], paths[1], te=[0.02], b0=3)
    assert len(acq.source["warnings"]) == 2 and "no orientation" in acq.source["warnings"][0]
    np.testing.assert_allclose(acq.voxel_size, [1.0, 1.0, 2.0])


def test_phase_difference_sidecar_uses_echo_spacing(tmp_path, volumes, oblique_affine):
    """dcm2niix/BIDS phase difference (EchoTime1/EchoTime2 in the phase sidecar): one echo at TE2 - TE1 with
    the TE1 magnitude, whichever order the magnitudes come in (before: TE2, a field TE2/dTE too small)."""
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m2 = _save(mag[1], aff, tmp_path / "e2.nii", {"EchoTime": 0.00765, "MagneticFieldStrength": 3})
    m1 = _save(mag[0], aff, tmp_path / "e1.nii", {"EchoTime": 0.00519, "MagneticFieldStrength": 3})
    p = _save(phase[0], aff, tmp_path / "ph.nii", {"EchoTime": 0.00765, "EchoTime1": 0.00519,
                                                   "EchoTime2": 0.00765, "MagneticFieldStrength": 3})
    acq = load_nifti_acquisition([m2, m1], p)
    np.testing.assert_allclose(acq.te, [0.00246], atol=1e-12)
    np.testing.assert_allclose(acq.mag[0], mag[0])
    np.testing.assert_allclose(acq.phase[0], phase[0], atol=1e-6)
    assert acq.source["te_from"] == "EchoTime2 - EchoTime1"
    assert acq.source["phase_difference"] == {"echo_time1_s": 0.00519, "echo_time2_s": 0.00765,
                                              "delta_te_s": 0.00246}
    assert "TE = TE2 - TE1 = 2.46 ms" in acq.source["notes"][0]
    bad = _save(phase[0], aff, tmp_path / "bad.nii", {"EchoTime1": 0.008, "EchoTime2": 0.005})
    _one_line_error(load_nifti_acquisition, m1, bad, b0=3, match="EchoTime2 5 ms not after EchoTime1 8 ms")


@pytest.mark.parametrize("meta, match", [
    ({"Units": "Hz", "ImageType": ["ORIGINAL", "PRIMARY", "OTHER", "FIELDMAPHZ"]}, "B0 field map in Hz"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "FIELDMAPHZ"]}, "B0 field map in Hz"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "REAL"]}, "real-part image"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "M", "MAGNITUDE"]}, "is a magnitude image"),
])
def test_sidecar_forms_refused_in_one_line(tmp_path, volumes, oblique_affine, meta, match):
    mag, phase = volumes
    aff = oblique_affine(SHAPE)
    m = _save(mag[0], aff, tmp_path / "m.nii", {"EchoTime": 0.005, "MagneticFieldStrength": 3})
    hz = np.round(phase[0] * 150)  # +-465 Hz, integers: would pass as Siemens phase
    p = _save(hz, aff, tmp_path / "p.nii", {"EchoTime": 0.005, "MagneticFieldStrength": 3, **meta})
    _one_line_error(load_nifti_acquisition, m, p, match=match)


def test_five_dimensional_data_names_the_coil_axis(tmp_path, volumes, oblique_affine):
    mag, _ = volumes
    aff = oblique_affine(SHAPE)
    coils = np.repeat(np.stack([mag[0], mag[1]], axis=-1)[..., None], 8, axis=-1)  # [X, Y, Z, 2 echoes, 8 coils]
    m = _save(coils, aff, tmp_path / "m.nii")
    msg = _one_line_error(load_nifti_acquisition, m, m, te=[0.01, 0.02], b0=3, match="axis 5 \\(8\\)")
    assert "receive coils" in msg and "combine the coils" in msg
