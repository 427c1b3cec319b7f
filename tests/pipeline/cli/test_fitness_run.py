"""Issue 21, end to end: a healthy-volunteer style acquisition outside the validated range (3 mm isotropic,
TE 2.3/4.6 ms at 3 T) through ``cmbdetect run`` gets maps, a candidate table without a single microbleed label, and
the reason on stderr, in the provenance and in the report.  The same subject with the limits opened up does get
microbleed labels from the same model, so the zero is the fitness gate's doing."""
from __future__ import annotations

import json

import pytest

from cmbdetect.pipeline.io.atomic import save_nifti
from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv
from cmbdetect.pipeline.cli.main import main


@pytest.fixture(scope="module")
def model(tiny_random_model) -> str:
    return tiny_random_model


@pytest.fixture(scope="module")
def coarse_short_te(tmp_path_factory):
    """A lesion-free simulated head at 3 mm isotropic, TE 2.3/4.6 ms, 3 T, as per-echo NIfTI files."""
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    sim = simulate_subject(seed=1, shape=(56, 64, 44), voxel_size=(3.0, 3.0, 3.0), te=(0.0023, 0.0046), b0=3.0,
                           n_microbleeds=0, n_calcifications=0)
    folder = tmp_path_factory.mktemp("volunteer")
    args = []
    for e, te in enumerate(sim.acq.te):
        save_nifti(sim.acq.mag[e], sim.acq.affine, folder / f"mag{e}.nii.gz")
        save_nifti(sim.acq.phase[e], sim.acq.affine, folder / f"phase{e}.nii.gz")
        args += ["--mag", str(folder / f"mag{e}.nii.gz"), "--phase", str(folder / f"phase{e}.nii.gz"),
                 "--te", str(float(te))]
    return [*args, "--b0", "3", "--phase-units", "rad"]


def _n_microbleed_labels(out) -> int:
    return sum(c.label in ("microbleed", "possible_microbleed") for c in read_candidates_tsv(out / "candidates.tsv"))


def test_coarse_short_te_volunteer_gets_no_microbleed_label_and_says_why(tmp_path, coarse_short_te, model, capsys,
                                                                          monkeypatch):
    out = tmp_path / "out"
    assert main(["run", *coarse_short_te, "--out", str(out), "--model", model]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "warning: no microbleed calls: " in ln]
    assert len(lines) >= 2 and any("voxels 3 x 3 x 3 mm" in ln for ln in lines)
    assert any("B0 x longest TE is 0.014 T*s" in ln for ln in lines)
    assert (out / "chimap.nii.gz").is_file() and (out / "localfield.nii.gz").is_file()
    assert len(read_candidates_tsv(out / "candidates.tsv")) > 0 and _n_microbleed_labels(out) == 0
    physics = json.loads((out / "provenance.json").read_text())["parameters"]["physics"]
    assert physics["fitness"]["ok"] is False and physics["fitness"]["measures"]["inplane_voxel_mm"] == 3.0
    assert physics["calls_withheld"].startswith("voxels 3 x 3 x 3 mm")
    report = (out / "report.html").read_text()
    assert "No microbleed calls: voxels 3 x 3 x 3 mm" in report

    # the same data with the validated range opened up: the same model labels microbleeds, no banner
    for name, value in (("FITNESS_MAX_INPLANE_MM", 5.0), ("FITNESS_MAX_SLICE_MM", 5.0),
                        ("FITNESS_MIN_B0_TE_T_S", 0.001), ("FITNESS_MIN_FIELD_CNR", 0.0)):
        monkeypatch.setattr(f"cmbdetect.physics.fitness.{name}", value)
    monkeypatch.setattr("cmbdetect.physics.chain.IMPLAUSIBLE_CHI_MEDIAN_PPM", 10.0)
    opened = tmp_path / "opened"
    assert main(["run", *coarse_short_te, "--out", str(opened), "--model", model]) == 0
    assert "no microbleed calls" not in capsys.readouterr().err
    assert json.loads((opened / "provenance.json").read_text())["parameters"]["physics"]["calls_withheld"] is None
    assert _n_microbleed_labels(opened) > 0
    assert "No microbleed calls" not in (opened / "report.html").read_text()


def test_report_banner_only_when_calls_are_withheld():
    import numpy as np

    from cmbdetect.physics.maps import PhysicsMaps
    from cmbdetect.pipeline.outputs.report import calls_withheld_banner

    z = np.zeros((4, 4, 4), np.float32)
    maps = PhysicsMaps(mask=z > 0, magnitude=z, field_ppm=z, local_field_ppm=z, chi_ppm=z, chi_pos=z, chi_neg=z,
                       swi=z, mip=z, affine=np.eye(4), b0=3.0, meta={"calls_withheld": "voxels <3> mm"})
    assert "No microbleed calls: voxels &lt;3&gt; mm" in calls_withheld_banner(maps)
    maps.meta["calls_withheld"] = None
    assert calls_withheld_banner(maps) == ""


def test_failed_chi_map_withholds_microbleed_calls_on_a_fit_acquisition(tmp_path, model, capsys, monkeypatch):
    """A fine-voxel, long-TE acquisition (fit) whose chi map fails the quality check (threshold lowered to 0 so
    that every map fails): no microbleed label, the chi warning on stderr, the reason in the provenance.  Without
    the failure the same model labels microbleeds on the same data."""
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    sim = simulate_subject(seed=11, shape=(48, 56, 32), voxel_size=(1.0, 1.0, 1.5), te=(0.02,), b0=3.0,
                           n_microbleeds=4)
    save_nifti(sim.acq.mag[0], sim.acq.affine, tmp_path / "mag.nii.gz")
    save_nifti(sim.acq.phase[0], sim.acq.affine, tmp_path / "phase.nii.gz")
    args = ["run", "--mag", str(tmp_path / "mag.nii.gz"), "--phase", str(tmp_path / "phase.nii.gz"), "--te", "0.02",
            "--b0", "3", "--phase-units", "rad", "--model", model]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    assert "no microbleed calls" not in capsys.readouterr().err and _n_microbleed_labels(tmp_path / "ok") > 0
    monkeypatch.setattr("cmbdetect.physics.chain.IMPLAUSIBLE_CHI_MEDIAN_PPM", 0.0)
    assert main([*args, "--out", str(tmp_path / "failed")]) == 0
    assert "warning: susceptibility map implausible" in capsys.readouterr().err
    assert _n_microbleed_labels(tmp_path / "failed") == 0
    physics = json.loads((tmp_path / "failed" / "provenance.json").read_text())["parameters"]["physics"]
    assert physics["fitness"]["ok"] is True and physics["calls_withheld"].startswith("susceptibility map implausible")
