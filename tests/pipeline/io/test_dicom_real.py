"""Real scanner field-map series (``../shared/data/real/dicom-fieldmaps-3vendors``: Siemens, GE, Philips
DICOM and dcm2niix's NIfTI + JSON of them) through ``cmbdetect run``: each ends in a run or in one stderr
line that names the data; our DICOM reader against dcm2niix (its reference NIfTI, and the binary on
written and real series) on the world grid: affine and slice order."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmbdetect.physics.geometry import oblique_affine
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.dicom import load_dicom_acquisition
from cmbdetect.pipeline.io.nifti import load_nifti_acquisition, read_nifti_volume
from cmbdetect.pipeline.simulate.dicom import write_acquisition_dicom

FMAP = Path(__file__).parents[3].parent / "shared" / "data" / "real" / "dicom-fieldmaps-3vendors"
HZ = r"is a B0 field map in Hz"


@pytest.fixture
def fmap() -> Path:
    if not FMAP.is_dir():
        pytest.skip(f"real field-map series not found at {FMAP} (only present beside the team's checkout)")
    return FMAP


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix") or shutil.which("dcm2niix", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the dcm2niix binary is not installed (pip install dcm2niix, in the dev extras)")
    return exe


def _on_grid(vol: np.ndarray, affine: np.ndarray, other_affine: np.ndarray, other_shape) -> np.ndarray:
    """``vol`` (on ``affine``) placed voxel by voxel on another grid of the same voxels: the two affines
    must differ by a signed permutation of the axes and integer shifts (else the geometry disagrees)."""
    t = np.linalg.inv(other_affine) @ affine
    perm = np.round(t[:3, :3])
    assert np.allclose(t[:3, :3], perm, atol=2e-3), f"grids are not the same voxels: {t[:3, :3].round(4).tolist()}"
    assert np.allclose(t[:3, 3], np.round(t[:3, 3]), atol=2e-2), f"grids are shifted: {t[:3, 3].round(4).tolist()}"
    idx = np.indices(vol.shape).reshape(3, -1)
    dest = (perm @ idx + np.round(t[:3, 3])[:, None]).astype(int)
    out = np.full(tuple(other_shape), np.nan)
    out[tuple(dest)] = vol.reshape(-1)
    return out


def _run(argv, tmp_path, capsys):
    from cmbdetect.pipeline.cli.main import main

    out = tmp_path / "out"
    rc = main(["run", *[str(a) for a in argv], "--out", str(out)])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if "error" in line], out


@pytest.mark.parametrize("series, match", [
    (["Siemens/2_gre_field_magph"], "magnitude-only series"),
    (["Siemens/5_gre_field_mag"], "magnitude-only series"),
    (["Siemens/3_gre_field_magph"], "no magnitude.*phase-difference map"),
    (["Siemens/4_gre_field_ph"], "no magnitude.*phase-difference map"),
    (["Siemens"], "series 2 gre_field_magph, 5 gre_field_mag"),
    (["GE/2_3db0maps"], HZ + r" \(80 field and 80 magnitude images, GE B0map.*\(0043,1030\)"),
    (["GE/3_3db0maps"], HZ + r" \(80 field and 80 magnitude"),
    (["GE/6_CV_Neuro"], HZ + r" \(16 field and 16 magnitude"),
    (["Philips/fmap"], HZ + r" \(32 field and 32 magnitude"),
])
def test_real_dicom_refused_in_one_line(fmap, tmp_path, capsys, series, match):
    rc, errors, out = _run([a for s in series for a in ("--dicom", fmap / "In" / s)], tmp_path, capsys)
    assert rc == 2 and len(errors) == 1, errors
    assert __import__("re").search(match, errors[0]), errors[0]
    assert "np.float" not in errors[0] and not out.exists()


@pytest.mark.parametrize("mag, phase", [
    ("GE_2_3db0maps_patient", "GE_2_3db0maps_patient_fieldmaphz"),
    ("GE_3_3db0maps_patient", "GE_3_3db0maps_patient_fieldmaphz"),
    ("GE_6_CV_Neuro_HH_Adv", "GE_6_CV_Neuro_HH_Adv_fieldmaphz"),
    ("Ph_801_WIP_B0_NS_e1", "Ph_801_WIP_B0_NS_e2_fieldmaphz"),
])
def test_real_nifti_hz_maps_refused_in_one_line(fmap, tmp_path, capsys, mag, phase):
    ref = fmap / "Ref"
    rc, errors, out = _run(["--mag", ref / f"{mag}.nii", "--phase", ref / f"{phase}.nii"], tmp_path, capsys)
    assert rc == 2 and len(errors) == 1 and HZ in errors[0] and "Units Hz" in errors[0], errors
    assert not out.exists()


@pytest.mark.parametrize("mag_series, phase_series", [("2_gre_field_magph", "3_gre_field_magph"),
                                                      ("5_gre_field_mag", "4_gre_field_ph")])
def test_real_siemens_phase_difference_matches_dcm2niix(fmap, mag_series, phase_series):
    """Siemens VE11 gre_field_mapping: magnitude TE1/TE2 + phase difference -> one echo at dTE 2.46 ms;
    the volumes equal dcm2niix's NIfTI (Ref/) voxel for voxel on the world grid, and the NIfTI + JSON
    path (EchoTime1/EchoTime2) gives the same echo time and phase."""
    si = fmap / "In" / "Siemens"
    acq = load_dicom_acquisition([si / mag_series, si / phase_series])
    np.testing.assert_allclose(acq.te, [0.00246], atol=1e-9)
    assert acq.b0 == 3.0 and acq.source["form"] == "phase-difference"
    assert acq.source["phase_difference"]["delta_te_s"] == 0.00246
    prefix = {"2_gre_field_magph": "Si_2_gre_field_magph", "5_gre_field_mag": "Si_5_gre_field_mag"}[mag_series]
    phase_ref = {"3_gre_field_magph": "Si_3_gre_field_magph_e2_ph", "4_gre_field_ph": "Si_4_gre_field_ph_e2_ph"}
    ref_mag, ref_aff = read_nifti_volume(fmap / "Ref" / f"{prefix}_e1.nii")
    np.testing.assert_array_equal(_on_grid(acq.mag[0], acq.affine, ref_aff, ref_mag.shape), ref_mag)
    ref_phase, ph_aff = read_nifti_volume(fmap / "Ref" / f"{phase_ref[phase_series]}.nii")
    ours = _on_grid(acq.phase[0], acq.affine, ph_aff, ref_phase.shape)
    wrapped = np.angle(np.exp(1j * (ours - ref_phase * np.pi / 4096)))
    assert np.abs(wrapped).max() < 1e-5
    nii = load_nifti_acquisition([fmap / "Ref" / f"{prefix}_e1.nii", fmap / "Ref" / f"{prefix}_e2.nii"],
                                 [fmap / "Ref" / f"{phase_ref[phase_series]}.nii"])
    np.testing.assert_allclose(nii.te, acq.te, atol=1e-9)
    assert "phase-difference" in nii.source["notes"][0]
    np.testing.assert_allclose(_on_grid(acq.phase[0], acq.affine, nii.affine, nii.shape), nii.phase[0], atol=1e-5)
    np.testing.assert_allclose(_on_grid(acq.mag[0], acq.affine, nii.affine, nii.shape), nii.mag[0])


def _dcm2niix_volumes(exe: str, series: Path, out: Path) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-o", str(out), "-f", "%s_%e_%p", "-z", "n", str(series)], check=True,
                   capture_output=True, timeout=120)
    found = []
    for nii in sorted(out.glob("*.nii")):
        data, affine = read_nifti_volume(nii)
        found.append((json.loads(nii.with_suffix(".json").read_text()), data, affine))
    return found


def _first_magnitude(volumes):
    for meta, data, affine in volumes:
        types = {t.upper() for t in meta.get("ImageType", [])}
        if meta.get("EchoNumber", 1) == 1 and not types & {"P", "PHASE"}:
            return data, affine
    raise AssertionError(f"no first-echo magnitude among {[m.get('ImageType') for m, _, _ in volumes]}")


@pytest.mark.parametrize("style", ["siemens", "philips-enhanced"])
def test_dcm2niix_agrees_on_written_series(tmp_path, rng, style):
    """dcm2niix (an independent reader) places each magnitude voxel where our reader does, for an oblique
    series written classic (Siemens) or enhanced multi-frame (Philips)."""
    exe = _dcm2niix()
    shape = (14, 12, 7)
    aff = oblique_affine(shape, (0.9, 1.2, 1.7), angles_deg=(14.0, -9.0, 22.0))
    src = Acquisition(mag=rng.uniform(50, 900, (2,) + shape), phase=rng.uniform(-3, 3, (2,) + shape),
                      te=(0.005, 0.012), b0=3.0, affine=aff)
    write_acquisition_dicom(src, tmp_path / "dcm", style=style)
    ours = load_dicom_acquisition([tmp_path / "dcm"])
    data, affine = _first_magnitude(_dcm2niix_volumes(exe, tmp_path / "dcm", tmp_path / "nii"))
    placed = _on_grid(ours.mag[0], ours.affine, affine, data.shape[:3])
    np.testing.assert_allclose(placed, data.reshape(data.shape[:3]), rtol=1e-3, atol=1.0)


def test_dcm2niix_agrees_on_real_siemens(fmap, tmp_path):
    exe = _dcm2niix()
    si = fmap / "In" / "Siemens"
    ours = load_dicom_acquisition([si / "2_gre_field_magph", si / "3_gre_field_magph"])
    data, affine = _first_magnitude(_dcm2niix_volumes(exe, si / "2_gre_field_magph", tmp_path / "nii"))
    np.testing.assert_array_equal(_on_grid(ours.mag[0], ours.affine, affine, data.shape[:3]),
                                  data.reshape(data.shape[:3]))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["dicom", "nifti"])
def test_real_siemens_phase_difference_runs(fmap, tmp_path, capsys, form):
    """The whole pipeline on the VE11 phase-difference pair (about 2 min): a run, with dTE on stderr and in
    the provenance."""
    if form == "dicom":
        argv = ["--dicom", fmap / "In" / "Siemens" / "2_gre_field_magph", "--dicom",
                fmap / "In" / "Siemens" / "3_gre_field_magph"]
    else:
        ref = fmap / "Ref"
        argv = ["--mag", ref / "Si_2_gre_field_magph_e1.nii", "--mag", ref / "Si_2_gre_field_magph_e2.nii",
                "--phase", ref / "Si_3_gre_field_magph_e2_ph.nii"]
    from cmbdetect.pipeline.cli.main import main

    out = tmp_path / "out"
    assert main(["run", *[str(a) for a in argv], "--out", str(out)]) == 0
    assert "TE = TE2 - TE1 = 2.46 ms" in capsys.readouterr().err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["inputs"]["source"]["phase_difference"]["delta_te_s"] == 0.00246
