"""BIDS-App form end to end: participant (parallel, one corrupt subject skipped and reported) and group."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmbdetect.models.detection import READER_LABELS
from cmbdetect.pipeline.cli.main import main

SHAPE = (40, 48, 28)


@pytest.fixture(scope="module")
def bids_dir(tmp_path_factory) -> Path:
    """Four subjects from the simulator's BIDS writer; then sub-03's phase is truncated (unreadable)
    and sub-04's magnitude zeroed (readable, but the workflow fails: no brain to mask)."""
    import nibabel as nib
    import numpy as np

    from cmbdetect.pipeline.io.atomic import save_nifti
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    root = tmp_path_factory.mktemp("data") / "bids"
    labels = simulate_dataset(root, subjects=4, seed=5, echoes="random", shape=SHAPE, n_microbleeds=3)
    assert labels == ["01", "02", "03", "04"]
    for corrupt in (root / "sub-03" / "anat").glob("*part-phase*.nii*"):
        corrupt.write_bytes(corrupt.read_bytes()[:300])
    for mag in (root / "sub-04" / "anat").glob("*part-mag*.nii*"):
        img = nib.load(mag)
        save_nifti(np.zeros(img.shape, np.float32), img.affine, mag)
    return root


def test_participant_and_group(tmp_path, bids_dir, tiny_random_model, capsys):
    out = tmp_path / "derivatives" / "cmbdetect"
    code = main([str(bids_dir), str(out), "participant", "--nprocs", "2", "--model", tiny_random_model])
    err = capsys.readouterr().err
    assert code == 1  # one acquisition failed
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if "error" in ln and "sub-03" in ln]
    assert [ln for ln in err.splitlines() if "error" in ln and "sub-04" in ln and "InputError" in ln]
    assert "[1/4] sub-01" in err and "sub-02: done" in err and "2 of 4 acquisitions done" in err
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "cmbdetect"
    with open(out / "logs" / "failures.tsv") as fh:
        failures = list(csv.DictReader(fh, delimiter="\t"))
    assert [(f["label"], f["stage"]) for f in failures] == [("sub-03", "input"), ("sub-04", "workflow")]
    assert not (out / "sub-03").exists() and not (out / "sub-04").exists()
    for label in ("01", "02"):
        anat = out / f"sub-{label}" / "anat"
        tsv = anat / f"sub-{label}_desc-cmb_candidates.tsv"
        assert tsv.is_file() and (anat / f"sub-{label}_Chimap.nii.gz").is_file()
        assert (anat / f"sub-{label}_desc-cmb_report.html").is_file()
        assert (anat / f"sub-{label}_desc-cmb_provenance.json").is_file()
        physics = json.loads((anat / f"sub-{label}_desc-cmb_provenance.json").read_text())["parameters"]["physics"]
        assert "ok" in physics["fitness"] and physics["mask"]  # the chain's record, as `run` writes it
        sidecar = json.loads((anat / f"sub-{label}_desc-cmb_candidates.json").read_text())
        assert sidecar["Model"]["sha256"] and sidecar["Sources"]
        assert all(s.startswith(f"bids:raw:sub-{label}/anat/") for s in sidecar["Sources"])
        assert json.loads((anat / f"sub-{label}_Chimap.json").read_text())["Units"] == "ppm"
        multi_echo = len(list((bids_dir / f"sub-{label}" / "anat").glob("*echo-*part-mag*.nii*"))) > 1
        assert (anat / f"sub-{label}_R2starmap.nii.gz").is_file() == multi_echo
    assert not [p for p in out.iterdir() if p.name.startswith(".cmbdetect-staging")]

    assert main([str(bids_dir), str(out), "group"]) == 0
    with open(out / "group" / "cmb_study_table.tsv") as fh:
        rows = {r["label"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert set(rows) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    assert rows["sub-03"]["status"] == rows["sub-04"]["status"] == "failed"
    assert rows["sub-01"]["status"] == "done"
    n01 = len((out / "sub-01/anat/sub-01_desc-cmb_candidates.tsv").read_text().strip().splitlines()) - 1
    assert int(rows["sub-01"]["n_candidates"]) == n01
    assert sum(int(rows["sub-01"][f"n_{k}"]) for k in READER_LABELS) == n01
    page = (out / "group" / "index.html").read_text()
    for label in ("01", "02"):
        link = f'../sub-{label}/anat/sub-{label}_desc-cmb_report.html'
        assert link in page and (out / "group" / link).resolve().is_file()
    check_derivative_sidecars(out / "sub-01" / "anat")
    errors = bids_validator_errors(out)
    if errors is not None:
        assert errors == []


def check_derivative_sidecars(anat: Path) -> None:
    """The candidate sidecar describes every column as ``cmbdetect run`` does (one source), and
    SkullStripped says the truth about each map."""
    import nibabel as nib
    import numpy as np

    from cmbdetect.pipeline.outputs.candidates import COLUMN_INFO

    sidecar = json.loads((anat / "sub-01_desc-cmb_candidates.json").read_text())
    header = (anat / "sub-01_desc-cmb_candidates.tsv").read_text().splitlines()[0].split("\t")
    assert set(header) <= set(sidecar)
    for column, info in COLUMN_INFO.items():
        assert sidecar[column]["Description"] == info["description"]
        assert sidecar[column].get("Units", "") == info["units"]
    mask = nib.load(anat / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    for name in ("Chimap", "desc-localfield_T2starw", "desc-swi_T2starw", "desc-mip_T2starw"):
        data = nib.load(anat / f"sub-01_{name}.nii.gz").get_fdata()
        stripped = json.loads((anat / f"sub-01_{name}.json").read_text())["SkullStripped"]
        assert stripped == (not np.any(data[~mask])), name


def bids_validator() -> str | None:
    """The deno bids-validator (PyPI ``bids-validator-deno``), or None."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return shutil.which("bids-validator-deno") or (str(beside) if beside.is_file() else None)


def bids_validator_errors(dataset: Path) -> list[str] | None:
    """The validator's errors on ``dataset`` (``CODE location`` strings); None (and a skip notice in the
    test report) when the validator is not installed."""
    exe = bids_validator()
    if exe is None:
        import warnings

        warnings.warn("bids-validator-deno not installed (pip install bids-validator-deno): "
                      "derivatives not validated")
        return None
    run = subprocess.run([exe, str(dataset), "--format", "json"], capture_output=True, text=True, timeout=300)
    issues = json.loads(run.stdout)["issues"]["issues"]
    return [f"{i['code']} {i.get('location')} {i.get('subCode') or ''}".strip()
            for i in issues if i["severity"] == "error"]


@pytest.mark.skipif(bids_validator() is None,
                    reason="bids-validator-deno not installed (pip install bids-validator-deno)")
def test_validator_honours_bidsignore(tmp_path):
    """The .bidsignore patterns are the ones the deno validator honours: a file named like no BIDS file
    is an error until it matches a pattern (folders without a trailing slash)."""
    from cmbdetect.pipeline.outputs.bids_derivatives import write_derivative_metadata

    write_derivative_metadata(tmp_path, bids_dir=tmp_path / "raw", version="0.1.0")
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "index.html").write_text("<html></html>")
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    (tmp_path / "sub-01" / "anat" / "sub-01_desc-cmb_report.html").write_text("<html></html>")
    assert bids_validator_errors(tmp_path) == []
    (tmp_path / "sub-01" / "anat" / "sub-01_desc-cmb_notes.txt").write_text("x")
    assert [e for e in bids_validator_errors(tmp_path) if "notes" in e]


def test_participant_label_selects_and_unknown_label_is_an_error(tmp_path, bids_dir, tiny_random_model, capsys):
    out = tmp_path / "out"
    assert main([str(bids_dir), str(out), "participant", "--participant-label", "sub-01",
                 "--model", tiny_random_model, "--nprocs", "1"]) == 0
    assert (out / "sub-01").is_dir() and not (out / "sub-02").exists()
    capsys.readouterr()
    assert main([str(bids_dir), str(out), "participant", "--participant-label", "99",
                 "--model", tiny_random_model]) == 2
    assert capsys.readouterr().err.strip().startswith("cmbdetect: error:")


def test_failed_report_keeps_the_acquisition(tmp_path, bids_dir, tiny_random_model, capsys, monkeypatch):
    """A report that crashes (injected fault) does not discard the acquisition: maps, tables and
    provenance (with export_errors) are in place, no failures.tsv row; exit 1 only with --strict-exports."""
    import cmbdetect.pipeline.outputs.report as report

    def broken_report(*args, **kwargs):
        raise ValueError("cannot draw the gallery")

    monkeypatch.setattr(report, "write_report", broken_report)  # one process: nodes run in-process
    out = tmp_path / "out"
    assert main([str(bids_dir), str(out), "participant", "--participant-label", "01", "--model", tiny_random_model,
                 "--nprocs", "1", "--plugin", "linear", "--strict-exports"]) == 1
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if "exports incomplete" in ln and "report: ValueError" in ln]
    anat = out / "sub-01" / "anat"
    assert not (anat / "sub-01_desc-cmb_report.html").exists()
    for name in ("desc-cmb_candidates.tsv", "Chimap.nii.gz", "desc-localfield_T2starw.nii.gz",
                 "desc-cmb_markups.mrk.json"):
        assert (anat / f"sub-01_{name}").is_file(), name
    prov = json.loads((anat / "sub-01_desc-cmb_provenance.json").read_text())
    assert prov["export_errors"] == ["report: ValueError: cannot draw the gallery"]
    with open(out / "logs" / "failures.tsv") as fh:
        assert list(csv.DictReader(fh, delimiter="\t")) == []
