"""``cmbdetect qsm``, the shared CLI input options and the physics-maps folder I/O."""
from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.io.atomic import atomic_directory, save_nifti
from cmbdetect.pipeline.cli.common import (acquisition_from_args, add_input_arguments, load_user_mask,
                                           parse_echo_times)
from cmbdetect.pipeline.io.maps import MAP_FILES, read_physics_maps, write_physics_maps

SHAPE = (24, 24, 20)
REQUIRED = ["chimap", "localfield", "brainmask", "swi", "mip", "chipos", "chineg"]


def _main(argv):
    from cmbdetect.pipeline.cli.main import main

    return main([str(a) for a in argv])


def _phantom(rng, affine, te=(0.01, 0.02), b0=3.0):
    """A sphere 'brain' with one paramagnetic and one diamagnetic sphere; wrapped phase, 2 echoes."""
    from cmbdetect.physics.forward import forward_field
    from cmbdetect.physics.phase import field_ppm_to_phase, wrap_phase

    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    centre = (np.asarray(SHAPE) - 1) / 2
    vs = voxel_sizes(affine)
    r = np.linalg.norm((ijk - centre) * vs, axis=-1)
    brain = r < 9.0
    chi = np.zeros(SHAPE)
    chi[np.linalg.norm((ijk - centre - [3, 0, 0]) * vs, axis=-1) < 2.0] = 0.8
    chi[np.linalg.norm((ijk - centre + [3, 1, 0]) * vs, axis=-1) < 2.0] = -0.5
    field = forward_field(chi, vs, b0_direction(affine)) * brain
    mag = np.stack([np.where(brain, 100.0, 3.0) * np.exp(-t * 20) + rng.normal(0, 1, SHAPE) for t in te])
    phase = wrap_phase(field_ppm_to_phase(field, np.asarray(te), b0) + rng.normal(0, 0.02, (len(te),) + SHAPE))
    return np.abs(mag).astype(np.float32), phase, brain, field


def _write_inputs(tmp_path, rng, affine, *, te=(0.01, 0.02)):
    mag, phase, brain, field = _phantom(rng, affine, te)
    m = save_nifti(np.moveaxis(mag, 0, -1), affine, tmp_path / "mag.nii.gz")
    p = save_nifti(np.moveaxis(phase, 0, -1), affine, tmp_path / "phase.nii.gz")
    return m, p, brain, field


# ---- physics-maps folder -------------------------------------------------------------------------

def _maps(rng, affine, *, r2star=True):
    arr = lambda: rng.normal(size=SHAPE).astype(np.float32)  # noqa: E731
    chi = arr()
    return PhysicsMaps(mask=arr() > 0, magnitude=arr(), field_ppm=arr(), local_field_ppm=arr(), chi_ppm=chi,
                       chi_pos=np.maximum(chi, 0), chi_neg=np.maximum(-chi, 0), swi=arr(), mip=arr(),
                       affine=affine, b0=3.0, r2star=arr() if r2star else None, meta={"method": "x", "n": 2})


@pytest.mark.parametrize("multi_echo", [True, False])
def test_physics_maps_round_trip(tmp_path, rng, oblique_affine, multi_echo):
    aff = oblique_affine(SHAPE)
    maps = _maps(rng, aff, r2star=multi_echo)
    written = write_physics_maps(maps, tmp_path / "m")
    assert ("r2star" in written) == multi_echo
    assert (tmp_path / "m" / "r2star.nii.gz").exists() == multi_echo
    for name in REQUIRED:
        img = nib.load(str(tmp_path / "m" / f"{name}.nii.gz"))
        np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    back = read_physics_maps(tmp_path / "m")
    for attr in MAP_FILES:
        if getattr(maps, attr) is None:
            assert getattr(back, attr) is None
        else:
            np.testing.assert_array_equal(getattr(back, attr), getattr(maps, attr))
    assert back.mask.dtype == bool and back.b0 == 3.0 and back.meta == maps.meta
    (tmp_path / "m" / "chimap.nii.gz").unlink()
    with pytest.raises(InputError, match="chimap"):
        read_physics_maps(tmp_path / "m")


def test_failed_write_leaves_no_folder(tmp_path, rng, oblique_affine):
    maps = _maps(rng, oblique_affine(SHAPE))
    maps.swi = maps.swi[:-1]  # an inconsistent map fails half way through
    with pytest.raises(ValueError):
        with atomic_directory(tmp_path / "out") as tmp:
            write_physics_maps(maps, tmp)
    assert list(tmp_path.iterdir()) == []


# ---- shared input options ------------------------------------------------------------------------

def _args(argv):
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_parse_echo_times():
    assert parse_echo_times(["0.004,0.008", "0.012"]) == [0.004, 0.008, 0.012]
    assert parse_echo_times(None) is None
    with pytest.raises(InputError, match="--te"):
        parse_echo_times(["4ms"])


def test_acquisition_from_args(tmp_path, rng, oblique_affine):
    aff = oblique_affine(SHAPE)
    m, p, brain, _ = _write_inputs(tmp_path, rng, aff)
    acq = acquisition_from_args(_args(["--mag", m, "--phase", p, "--te", "0.01,0.02", "--b0", "3",
                                       "--phase-sign", "-1"]))
    assert acq.n_echoes == 2 and acq.source["phase_sign"] == -1
    np.testing.assert_allclose(acq.te, [0.01, 0.02])
    for argv, match in ((["--mag", m], "phase missing"), (["--phase", p], "magnitude missing"), ([], "no input"),
                        (["--mag", m, "--phase", p, "--dicom", tmp_path], "either --dicom"),
                        (["--dicom", tmp_path, "--phase-units", "furlongs"], "--phase-units")):
        with pytest.raises(InputError, match=match):
            acquisition_from_args(_args(argv))
    save_nifti(brain, aff, tmp_path / "mask.nii.gz")
    assert load_user_mask(tmp_path / "mask.nii.gz", acq).sum() == brain.sum()
    save_nifti(brain[:-1], aff, tmp_path / "small.nii.gz")
    with pytest.raises(InputError, match="shape"):
        load_user_mask(tmp_path / "small.nii.gz", acq)
    save_nifti(np.zeros(SHAPE, bool), aff, tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="empty"):
        load_user_mask(tmp_path / "empty.nii.gz", acq)
    save_nifti(brain, oblique_affine(SHAPE, angles_deg=(0, 0, 0)), tmp_path / "other.nii.gz")
    with pytest.raises(InputError, match="affine"):
        load_user_mask(tmp_path / "other.nii.gz", acq)


# ---- the qsm subcommand --------------------------------------------------------------------------

def test_qsm_bad_input_one_line_no_output(tmp_path, rng, oblique_affine, capsys):
    aff = oblique_affine(SHAPE)
    m, p, _, _ = _write_inputs(tmp_path, rng, aff)
    save_nifti(np.zeros((24, 24, 19)), aff, tmp_path / "short.nii.gz")
    out = tmp_path / "out"
    rc = _main(["qsm", "--mag", m, "--phase", tmp_path / "short.nii.gz", "--te", "0.01", "--b0", "3", "--out", out])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("cmbdetect: error:") and "shape" in err and "\n" not in err
    assert not out.exists() and sorted(x.name for x in tmp_path.iterdir()) == ["mag.nii.gz", "phase.nii.gz",
                                                                               "short.nii.gz"]
    rc = _main(["qsm", "--mag", m, "--phase", p, "--te", "10,20", "--b0", "3", "--out", out])
    assert rc == 2 and "milliseconds" in capsys.readouterr().err and not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    rc = _main(["qsm", "--mag", m, "--phase", p, "--te", "0.01,0.02", "--b0", "3", "--out", foreign])
    assert rc == 2 and "did not write" in capsys.readouterr().err
    assert [x.name for x in foreign.iterdir()] == ["keep.txt"]


def test_qsm_end_to_end_writes_all_maps(tmp_path, rng, oblique_affine, capsys):
    aff = oblique_affine(SHAPE)
    m, p, brain, field = _write_inputs(tmp_path, rng, aff)
    out = tmp_path / "out"
    rc = _main(["qsm", "--mag", m, "--phase", p, "--te", "0.01", "--te", "0.02", "--b0", "3", "--out", out])
    assert rc == 0, capsys.readouterr().err
    for name in REQUIRED + ["r2star"]:
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    settings = json.loads((out / "qsm_settings.json").read_text())
    assert settings["inputs"]["te_s"] == [0.01, 0.02]
    maps = read_physics_maps(out)
    # the paramagnetic sphere is positive, the diamagnetic one negative
    centre = (np.asarray(SHAPE) - 1) / 2
    pos, neg = tuple(np.round(centre + [3, 0, 0]).astype(int)), tuple(np.round(centre - [3, 1, 0]).astype(int))
    assert maps.chi_ppm[pos] > 0.1 and maps.chi_ppm[neg] < -0.05
    # a rerun into the same folder replaces the earlier output, with --overwrite only
    assert _main(["qsm", "--mag", m, "--phase", p, "--te", "0.01,0.02", "--b0", "3", "--out", out]) == 2
    assert _main(["qsm", "--mag", m, "--phase", p, "--te", "0.01,0.02", "--b0", "3", "--out", out,
                  "--overwrite"]) == 0
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []


def test_qsm_from_local_field(tmp_path, rng, oblique_affine, capsys):
    aff = oblique_affine(SHAPE)
    _, _, brain, field = _phantom(rng, aff)
    f = save_nifti(field, aff, tmp_path / "field.nii.gz")
    mk = save_nifti(brain, aff, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    assert _main(["qsm", "--local-field", f, "--mask", mk, "--out", out]) == 2
    assert "--b0" in capsys.readouterr().err and not out.exists()
    rc = _main(["qsm", "--local-field", f, "--mask", mk, "--b0", "3", "--out", out])
    assert rc == 0, capsys.readouterr().err
    assert (out / "chimap.nii.gz").exists() and (out / "localfield.nii.gz").exists()


def test_qsm_from_dicom_series(tmp_path, rng, oblique_affine, capsys):
    from cmbdetect.pipeline.simulate.dicom import write_dicom_series

    aff = oblique_affine(SHAPE)
    mag, phase, _, _ = _phantom(rng, aff)
    for e, te in enumerate((0.01, 0.02)):
        write_dicom_series(mag[e], aff, tmp_path / "dicom" / "mag", kind="M", echo_time_s=te, b0=3.0,
                           series_number=1, series_uid="1.2.3.4.1", echo_number=e + 1)
        write_dicom_series(phase[e], aff, tmp_path / "dicom" / "phase", kind="P", echo_time_s=te, b0=3.0,
                           series_number=2, series_uid="1.2.3.4.2", echo_number=e + 1)
    out = tmp_path / "out"
    rc = _main(["qsm", "--dicom", tmp_path / "dicom", "--out", out])
    assert rc == 0, capsys.readouterr().err
    settings = json.loads((out / "qsm_settings.json").read_text())
    assert settings["inputs"]["source"]["format"] == "dicom"
    assert settings["inputs"]["source"]["dicom"]["series_instance_uids"]["M"] == ["1.2.3.4.1"]
    np.testing.assert_allclose(nib.load(str(out / "chimap.nii.gz")).affine, aff, atol=1e-4)


def test_qsm_real_three_echo_crop(shared_data, tmp_path, capsys):
    d = shared_data / "real" / "gre-3echo-crop"
    out = tmp_path / "out"
    rc = _main(["qsm", "--mag", d / "Mag.nii.gz", "--phase", d / "Phase.nii.gz", "--te", "0.004,0.008,0.012",
                "--b0", "3", "--phase-units", "scale:0.0036744", "--out", out])
    assert rc == 0, capsys.readouterr().err
    maps = read_physics_maps(out)
    assert maps.r2star is not None and maps.mask.sum() > 1000
    chi = maps.chi_ppm[maps.mask]
    assert np.isfinite(chi).all() and 0.005 < chi.std() < 1.0  # in-vivo susceptibility contrast, ppm


def test_qsm_unknown_method_is_input_error(tmp_path, rng, oblique_affine, capsys):
    m, p, _, _ = _write_inputs(tmp_path, rng, oblique_affine(SHAPE))
    out = tmp_path / "out"
    rc = _main(["qsm", "--mag", m, "--phase", p, "--te", "0.01,0.02", "--b0", "3", "--background", "magic",
                "--out", out])
    err = capsys.readouterr().err
    assert rc == 2 and "magic" in err and not out.exists()
