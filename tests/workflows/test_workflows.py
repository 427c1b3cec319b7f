"""Workflow layer: file bundles, interfaces' checks and error capture, sink, factories, plugins, SLURM."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.atomic import save_nifti
from cmbdetect.workflows.cmb import bids_output_names, configure_execution, init_cmb_wf, plain_output_names
from cmbdetect.pipeline.io.maps import load_maps_bundle, save_maps_bundle
from cmbdetect.workflows.interfaces import load_acquisition, load_mask, save_acquisition
from cmbdetect.workflows.interfaces_report import DerivativesSink
from cmbdetect.workflows.plugins import (collect_failures, parse_plugin_args, plugin_settings,
                                         raise_for_failures, run_workflow)
from cmbdetect.workflows.qsm import init_qsm_wf

SHAPE = (16, 16, 12)


@pytest.fixture
def acquisition(oblique_affine) -> Acquisition:
    rng = np.random.default_rng(7)
    return Acquisition(mag=rng.random((2, *SHAPE)) + 0.5, phase=rng.uniform(-3, 3, (2, *SHAPE)),
                       te=[0.01, 0.02], b0=3.0, affine=oblique_affine(SHAPE, (1.0, 1.0, 1.5)),
                       source={"format": "test", "not_json": object()})


def test_acquisition_files_round_trip(tmp_path, acquisition):
    paths = save_acquisition(acquisition, tmp_path / "in")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths.values())
    back = load_acquisition(*(str(paths[k]) for k in ("mag_file", "phase_file", "acq_json")))
    np.testing.assert_array_equal(back.mag, acquisition.mag)
    np.testing.assert_array_equal(back.phase, acquisition.phase)
    np.testing.assert_allclose(back.affine, acquisition.affine, atol=1e-5)
    assert back.te.tolist() == [0.01, 0.02] and back.b0 == 3.0
    assert back.source == {"format": "test"}  # non-JSON entries dropped
    # deterministic bytes: rewriting gives identical files (so content-hash caching can resume)
    first = {k: Path(p).read_bytes() for k, p in paths.items()}
    save_acquisition(acquisition, tmp_path / "in")
    assert first == {k: Path(p).read_bytes() for k, p in paths.items()}


def test_load_acquisition_rejects_mismatched_grids(tmp_path, acquisition):
    paths = save_acquisition(acquisition, tmp_path)
    shifted = acquisition.affine.copy()
    shifted[0, 3] += 5.0
    save_nifti(np.zeros((*SHAPE, 2)), shifted, tmp_path / "p3.nii")
    with pytest.raises(InputError, match="different affine"):
        load_acquisition(str(paths["mag_file"]), str(tmp_path / "p3.nii"), str(paths["acq_json"]))


def test_load_mask_checks_grid(tmp_path, acquisition):
    aff = acquisition.affine
    save_nifti(np.ones(SHAPE, bool), aff, tmp_path / "ok.nii.gz")
    assert load_mask(str(tmp_path / "ok.nii.gz"), shape=SHAPE, affine=aff).all()
    save_nifti(np.ones((16, 16, 11), bool), aff, tmp_path / "shape.nii.gz")
    with pytest.raises(InputError, match="shape"):
        load_mask(str(tmp_path / "shape.nii.gz"), shape=SHAPE, affine=aff)
    save_nifti(np.ones(SHAPE, bool), np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "aff.nii.gz")
    with pytest.raises(InputError, match="affine"):
        load_mask(str(tmp_path / "aff.nii.gz"), shape=SHAPE, affine=aff)
    save_nifti(np.zeros(SHAPE, bool), aff, tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="empty"):
        load_mask(str(tmp_path / "empty.nii.gz"), shape=SHAPE, affine=aff)


def test_maps_bundle_round_trip(tmp_path, oblique_affine):
    rng = np.random.default_rng(3)
    vol = lambda: rng.standard_normal(SHAPE).astype(np.float32)  # noqa: E731
    maps = PhysicsMaps(mask=vol() > 0, magnitude=vol(), field_ppm=vol(), local_field_ppm=vol(),
                       chi_ppm=vol(), chi_pos=vol(), chi_neg=vol(), swi=vol(), mip=vol(),
                       affine=oblique_affine(SHAPE), b0=7.0, meta={"warnings": ["w"], "method": "tkd"},
                       brain_plain=vol() > -1, brain_guarded=vol() > 0.5)
    back = load_maps_bundle(str(save_maps_bundle(maps, tmp_path / "maps.npz")))
    for name in ("mask", "magnitude", "chi_ppm", "mip", "brain_plain", "brain_guarded"):
        np.testing.assert_array_equal(getattr(back, name), getattr(maps, name))
    assert back.r2star is None and back.b0 == 7.0 and back.meta == maps.meta
    np.testing.assert_array_equal(back.affine, maps.affine)


def test_sink_copies_file_and_sidecar_and_skips_undefined(tmp_path):
    src = tmp_path / "a.tsv"
    src.write_text("x\n")
    res = DerivativesSink(in_file=str(src), out_dir=str(tmp_path / "out"), out_name="sub-1/anat/b.tsv",
                          sidecar={"Sources": ["bids:raw:x"]}).run(cwd=str(tmp_path))
    assert Path(res.outputs.out_file).read_text() == "x\n"
    assert json.loads((tmp_path / "out/sub-1/anat/b.json").read_text())["Sources"] == ["bids:raw:x"]
    assert not [p for p in (tmp_path / "out/sub-1/anat").iterdir() if p.name.startswith(".")]
    DerivativesSink(out_dir=str(tmp_path / "out2"), out_name="c.nii.gz").run(cwd=str(tmp_path))
    assert not (tmp_path / "out2" / "c.nii.gz").exists()


def test_plugin_settings():
    assert plugin_settings() == ("Linear", {})
    name, args = plugin_settings(nprocs=4, mem_gb=8)
    assert name == "MultiProc" and args["n_procs"] == 4 and args["memory_gb"] == 8.0
    assert args["mp_context"] == "forkserver"
    assert plugin_settings(plugin="slurm", plugin_args={"sbatch_args": "-p short"}) == \
        ("SLURM", {"sbatch_args": "-p short"})
    assert plugin_settings(plugin="SGE")[0] == "SGE" and plugin_settings(plugin="pbs")[0] == "PBS"
    for bad in ({"plugin": "condorx"}, {"nprocs": 0}, {"mem_gb": -1},
                {"plugin": "slurm", "plugin_args": {"sbatch_args": ["-p"]}}):
        with pytest.raises(InputError):
            plugin_settings(**bad)
    assert parse_plugin_args('{"sbatch_args": "--mem=8G"}') == {"sbatch_args": "--mem=8G"}
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(InputError, match="--plugin-args"):
            parse_plugin_args(bad)


def test_cmb_wf_structure(tmp_path):
    wf = init_cmb_wf(output_dir=tmp_path, model="m", prevalence=0.01, name="x_wf")
    names = set(wf.list_node_names())
    assert {"qsm_wf.compute_maps", "detect_wf.detect", "report_wf.report", "report_wf.markups",
            "ds_candidates_tsv", "ds_report"} <= names
    assert "report_wf.dicom" not in names and "ds_dicom_dir" not in names
    detect = wf.get_node("detect_wf").get_node("detect")
    assert detect.inputs.model == "m" and detect.inputs.prevalence == 0.01
    wf_dicom = init_cmb_wf(output_dir=tmp_path, dicom=True)
    assert {"report_wf.dicom", "ds_dicom_dir"} <= set(wf_dicom.list_node_names())
    assert plain_output_names()["candidates_tsv"] == "candidates.tsv"
    names = bids_output_names({"sub": "01", "ses": "A", "run": "2", "echo": "1"})
    assert names["chimap"] == "sub-01/ses-A/anat/sub-01_ses-A_run-2_Chimap.nii.gz"
    assert names["candidates_tsv"].endswith("sub-01_ses-A_run-2_desc-cmb_candidates.tsv")
    assert not wf.get_node("detect_wf").get_node("detect").inputs.model_sha256
    pinned = init_cmb_wf(output_dir=tmp_path, model_sha256="ab" * 32)
    assert pinned.get_node("detect_wf").get_node("detect").inputs.model_sha256 == "ab" * 32
    with pytest.raises(ValueError):
        init_cmb_wf(output_dir=tmp_path, output_names={"nonsense": "x"})


def _qsm_wf_with_bad_mask(tmp_path, acquisition):
    """A QSM workflow whose mask is one slice short: the node must fail with an InputError."""
    inputs = save_acquisition(acquisition, tmp_path / "in")
    save_nifti(np.ones((16, 16, 11), bool), acquisition.affine, tmp_path / "in" / "mask.nii")
    wf = init_qsm_wf(name="qsm_wf")
    wf.base_dir = str(tmp_path / "work")
    for key, value in inputs.items():
        setattr(wf.inputs.inputnode, key, str(value))
    wf.inputs.inputnode.mask_file = str(tmp_path / "in" / "mask.nii")
    configure_execution(wf, crash_dir=tmp_path / "crash", stop_on_first_crash=True)
    return wf


def test_node_input_error_becomes_one_line(tmp_path, acquisition):
    wf = _qsm_wf_with_bad_mask(tmp_path, acquisition)
    outcome = run_workflow(wf, plugin_name="Linear", plugin_args={}, crash_dir=tmp_path / "crash")
    failures = outcome.failures
    assert len(failures) == 1 and failures[0].kind == "InputError"
    assert failures[0].node == "qsm_wf.compute_maps" and failures[0].crashfile.endswith(".txt")
    assert collect_failures(tmp_path / "crash")[0].message == failures[0].message
    with pytest.raises(InputError, match=r"^mask .*\(16, 16, 11\) does not match"):
        raise_for_failures(failures)
    raise_for_failures([])


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch``/``squeue`` stand-ins on PATH: sbatch logs its arguments, runs the job script
    synchronously and prints a job id; squeue lists no jobs (so every job counts as finished)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\nscript=\"${@: -1}\"\necho \"$*\" >> " + str(log) + "\n"
        "bash \"$script\" > \"$script.out\" 2>&1\necho \"Submitted batch job $((RANDOM + 1))\"\n")
    (bin_dir / "squeue").write_text("#!/bin/bash\necho 'JOBID PARTITION NAME USER ST TIME NODES'\n")
    for exe in bin_dir.iterdir():
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("LOGNAME", raising=False)  # the plugin needs it; run_workflow supplies it
    return log


def test_slurm_plugin_job_scripts(tmp_path, acquisition, fake_slurm):
    wf = _qsm_wf_with_bad_mask(tmp_path, acquisition)
    name, args = plugin_settings(plugin="slurm", plugin_args={"sbatch_args": "--mem=4G -p short"})
    failures = run_workflow(wf, plugin_name=name, plugin_args=args, crash_dir=tmp_path / "crash").failures
    submitted = fake_slurm.read_text().splitlines()
    assert len(submitted) == 1 and submitted[0].startswith("--mem=4G -p short ")
    assert "-J compute_maps.qsm_wf." in submitted[0]
    script = Path(submitted[0].split()[-1])
    assert script.parent == tmp_path / "work" / "qsm_wf" / "batch" and script.is_file()
    body = script.read_text()
    assert body.startswith("#!/bin/bash") and "pyscript_" in body
    pyscript = Path(body.split()[-1])
    assert pyscript.is_file() and "qsm_wf" in pyscript.read_text()
    # the job really ran the node: its InputError travels back as one line
    assert failures and failures[0].kind == "InputError" and "mask shape" in failures[0].message
