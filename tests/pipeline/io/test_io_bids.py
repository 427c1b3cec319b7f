"""BIDS discovery (T2starw, MEGRE, swi; echo optional; participant filter) and reading with inheritance."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.bids import bids_path
from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, inherited_metadata, load_bids_acquisition

SHAPE = (8, 9, 7)


def _write(root, affine, rng, *, meta=True, echoes=(1, 2), suffix="MEGRE", **entities):
    paths = {}
    for echo in echoes:
        for part in ("mag", "phase"):
            p = bids_path(root, suffix=suffix, extension=".nii.gz", echo=echo, part=part, **entities)
            p.parent.mkdir(parents=True, exist_ok=True)
            data = rng.uniform(1, 2, SHAPE) if part == "mag" else rng.uniform(-3, 3, SHAPE)
            nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(p))
            if meta:
                te = 0.01 * (echo or 1)
                p.with_name(p.name.replace(".nii.gz", ".json")).write_text(
                    json.dumps({"EchoTime": te, "MagneticFieldStrength": 3.0}))
            paths[(echo, part)] = p
    return paths


@pytest.fixture
def dataset(tmp_path, rng, oblique_affine):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    aff = oblique_affine(SHAPE)
    _write(root, aff, rng, sub="01", suffix="MEGRE", echoes=(2, 1))          # written in reverse order
    _write(root, aff, rng, sub="02", ses="a", suffix="T2starw", echoes=(None,))
    _write(root, aff, rng, sub="02", ses="b", suffix="swi", echoes=(1, 2, 3))
    _write(root, aff, rng, sub="03", suffix="T2starw", echoes=(1,), run=1)
    # not GRE magnitude/phase, or incomplete: ignored
    t1 = bids_path(root, suffix="T1w", extension=".nii.gz", sub="03")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), aff), str(t1))
    only_mag = bids_path(root, suffix="T2starw", extension=".nii.gz", sub="03", acq="nophase", part="mag")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), aff), str(only_mag))
    (root / "derivatives" / "sub-09" / "anat").mkdir(parents=True)
    return root


def test_discovery_suffixes_sessions_and_echo_order(dataset):
    subs = find_bids_subjects(dataset)
    labels = [s.label for s in subs]
    assert labels == ["sub-01", "sub-02_ses-a", "sub-02_ses-b", "sub-03_run-1"]
    assert [s.suffix for s in subs] == ["MEGRE", "T2starw", "swi", "T2starw"]
    first = subs[0]
    assert [p.name for p in first.mag] == ["sub-01_echo-1_part-mag_MEGRE.nii.gz",
                                          "sub-01_echo-2_part-mag_MEGRE.nii.gz"]
    assert [p.name for p in first.phase] == ["sub-01_echo-1_part-phase_MEGRE.nii.gz",
                                            "sub-01_echo-2_part-phase_MEGRE.nii.gz"]
    assert subs[1].session == "a" and len(subs[1].mag) == 1 and len(subs[2].mag) == 3


def test_participant_filter(dataset):
    assert [s.subject for s in find_bids_subjects(dataset, participant_label="sub-02")] == ["02", "02"]
    assert [s.subject for s in find_bids_subjects(dataset, participant_label=["01", "03"])] == ["01", "03"]
    with pytest.raises(InputError, match="07 not found"):
        find_bids_subjects(dataset, participant_label=["01", "07"])


def test_load_sorts_by_echo_time_and_uses_io_nifti(dataset):
    sub = find_bids_subjects(dataset, participant_label="02")[1]
    acq = load_bids_acquisition(sub)
    assert acq.n_echoes == 3 and acq.shape == SHAPE
    np.testing.assert_allclose(acq.te, [0.01, 0.02, 0.03])
    assert acq.b0 == 3.0
    assert acq.source["format"] == "bids" and acq.source["bids_label"] == "sub-02_ses-b"
    assert acq.source["mag"] == [str(p) for p in sub.mag]
    acq_te = load_bids_acquisition(sub, te=[0.004, 0.008, 0.012], b0=7.0)
    np.testing.assert_allclose(acq_te.te, [0.004, 0.008, 0.012])
    assert acq_te.b0 == 7.0


def test_inheritance_principle(tmp_path, rng, oblique_affine):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text("{}")
    paths = _write(root, oblique_affine(SHAPE), rng, meta=False, sub="01", suffix="T2starw", echoes=(1, 2))
    (root / "T2starw.json").write_text(json.dumps({"MagneticFieldStrength": 1.5, "EchoTime": 0.5}))
    (root / "sub-01" / "sub-01_echo-1_T2starw.json").write_text(json.dumps({"EchoTime": 0.006}))
    (root / "echo-2_T2starw.json").write_text(json.dumps({"EchoTime": 0.012}))
    meta = inherited_metadata(paths[(1, "mag")], root)
    assert meta == {"MagneticFieldStrength": 1.5, "EchoTime": 0.006}
    acq = load_bids_acquisition(find_bids_subjects(root)[0])
    np.testing.assert_allclose(acq.te, [0.006, 0.012])
    assert acq.b0 == 1.5


def test_not_a_dataset_and_empty(tmp_path, rng, oblique_affine):
    with pytest.raises(InputError, match="dataset_description.json"):
        find_bids_subjects(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        find_bids_subjects(tmp_path / "nowhere")
    (tmp_path / "dataset_description.json").write_text("{}")
    with pytest.raises(InputError, match="no magnitude\\+phase"):
        find_bids_subjects(tmp_path)


def test_mismatched_echoes(tmp_path, rng, oblique_affine):
    (tmp_path / "dataset_description.json").write_text("{}")
    paths = _write(tmp_path, oblique_affine(SHAPE), rng, sub="01", suffix="MEGRE", echoes=(1, 2))
    paths[(2, "phase")].unlink()
    with pytest.raises(InputError, match="different echoes"):
        find_bids_subjects(tmp_path)


def test_simulator_dataset_reads_back(tmp_path):
    """The simulator's BIDS output goes through the same reader (one way to an Acquisition)."""
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    root = tmp_path / "sim"
    simulate_dataset(root, subjects=1, seed=5, shape=(24, 24, 20), echoes=2, b0=3.0)
    (subject,) = find_bids_subjects(root)
    acq = load_bids_acquisition(subject)
    assert acq.shape == (24, 24, 20) and acq.n_echoes == 2 and acq.b0 == 3.0
    for e, (m, p) in enumerate(zip(subject.mag, subject.phase)):
        meta = json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())
        assert acq.te[e] == pytest.approx(meta["EchoTime"])
        np.testing.assert_allclose(acq.mag[e], nib.load(str(m)).get_fdata(), rtol=1e-6)
        raw = nib.load(str(p)).get_fdata()
        assert np.abs(np.angle(np.exp(1j * (acq.phase[e] - raw)))).max() < 1e-5
        np.testing.assert_allclose(acq.affine, nib.load(str(m)).affine, atol=1e-5)
