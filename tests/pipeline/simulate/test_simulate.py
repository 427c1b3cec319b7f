"""Simulator: determinism, ground truth consistent with the images, physics conventions, BIDS output."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.forward import forward_field, sphere_field
from cmbdetect.physics.geometry import b0_direction, voxel_sizes, voxel_to_world
from cmbdetect.pipeline.simulate.subject import simulate_dataset, simulate_subject
from cmbdetect.physics.phase import rad_per_ppm
from cmbdetect.pipeline.simulate.signal import fields_from_chi
from cmbdetect.pipeline.io.truth import LABELS, read_truth

SHAPE = (48, 56, 32)
KW = dict(shape=SHAPE, voxel_size=(2.5, 2.5, 3.0), b0=3.0, te=(0.012, 0.024), oblique_deg=15.0,
          n_microbleeds=4, n_calcifications=2, snr=60.0)


@pytest.fixture(scope="module")
def subject():
    return simulate_subject(seed=4, **KW)


def test_deterministic_for_a_seed_and_different_between_seeds(subject):
    again = simulate_subject(seed=4, **KW)
    np.testing.assert_array_equal(again.acq.mag, subject.acq.mag)
    np.testing.assert_array_equal(again.acq.phase, subject.acq.phase)
    np.testing.assert_array_equal(again.truth.labels, subject.truth.labels)
    other = simulate_subject(seed=5, **KW)
    # a different head: tissue susceptibility and images differ broadly, not just in the noise
    assert np.mean(np.abs(other.truth.chi_ppm - subject.truth.chi_ppm) > 0.01) > 0.05
    assert np.mean(np.abs(other.acq.mag[0] - subject.acq.mag[0])) > 0.2 * np.mean(subject.acq.mag[0])


def test_acquisition_contract(subject):
    acq = subject.acq
    assert acq.mag.shape == (2, *SHAPE) and acq.mag.dtype == np.float32
    assert acq.phase.min() >= -np.pi and acq.phase.max() < np.pi
    assert np.allclose(voxel_sizes(acq.affine), (2.5, 2.5, 3.0))
    assert b0_direction(acq.affine)[2] < 0.99  # oblique slab: B0 is not along the third axis
    assert acq.b0 == 3.0 and np.allclose(acq.te, (0.012, 0.024))
    assert subject.truth.labels.shape == SHAPE and subject.truth.chi_ppm.dtype == np.float32


def test_lesion_table_matches_request_and_labels(subject):
    t = subject.truth
    assert len(t.of_kind("microbleed")) == 4 and len(t.of_kind("calcification")) == 2
    for les in t.lesions:
        assert les.region in ("lobar", "deep", "infratentorial")
        ijk = tuple(int(round(v)) for v in les.centre_vox)
        assert t.labels[ijk] == LABELS[les.kind]
        np.testing.assert_allclose(voxel_to_world(t.affine, les.centre_vox), les.centre_ras, atol=1e-6)
        assert (les.chi_ppm > 0) == (les.kind == "microbleed")
        assert 1.5 <= les.diameter_mm <= 12.0


@pytest.fixture(scope="module")
def blurred_subject():
    """A subject acquired below the grid resolution (truncated k-space: blur and ringing)."""
    sub = simulate_subject(seed=6, **KW)
    assert sub.params["kspace_fraction"] is not None
    return sub


@pytest.mark.parametrize("which", ["subject", "blurred_subject"])
def test_lesion_centres_are_magnitude_minima(which, request):
    """Each lesion has a local minimum of the magnitude (over its 26 neighbours) within ~1 voxel of its
    centre, and that minimum is darker than the tissue around the lesion."""
    from scipy import ndimage

    subject = request.getfixturevalue(which)
    mag = subject.acq.mag[0]
    is_min = mag == ndimage.minimum_filter(mag, size=3, mode="nearest")
    vs = voxel_sizes(subject.acq.affine)
    for les in subject.truth.lesions:
        c = np.asarray(les.centre_vox)
        lo = np.maximum(np.floor(c - 1.5).astype(int), 0)
        box = tuple(slice(a, a + 4) for a in lo)
        idx = np.argwhere(is_min[box]) + lo
        d = np.linalg.norm((idx - c) * vs, axis=1) / vs.mean()
        assert d.size and d.min() <= 1.2, (les, d)
        ring = tuple(slice(max(int(round(v)) - 4, 0), int(round(v)) + 5) for v in c)
        assert mag[tuple(idx[np.argmin(d)])] < 0.75 * np.median(mag[ring]), les


def _dipole_correlation(truth, les):
    """Correlation of the true local field in a shell around the lesion with (3cos^2 - 1)/r^3 (B0 = z)."""
    idx = np.indices(truth.local_field_ppm.shape).reshape(3, -1).T
    w = voxel_to_world(truth.affine, idx) - np.asarray(les.centre_ras)
    r = np.linalg.norm(w, axis=1)
    a = les.diameter_mm / 2
    sel = (r > a + 1.0) & (r < a + 8.0)
    pattern = (3 * (w[sel, 2] / r[sel]) ** 2 - 1) / r[sel] ** 3
    return np.corrcoef(pattern, truth.local_field_ppm.reshape(-1)[sel])[0, 1]


def test_true_local_field_has_the_dipole_sign(subject):
    """Around lesions whose dipole moment (chi r^3) is not negligible beside the tissue around them the
    true local field has the paramagnetic pattern for microbleeds and the opposite for calcifications."""
    corr, checked = [], 0
    for les in subject.truth.lesions:
        if abs(les.chi_ppm) * (les.diameter_mm / 2) ** 3 < 1.0:
            continue
        checked += 1
        c = _dipole_correlation(subject.truth, les)
        corr.append(abs(c))
        if les.kind == "microbleed":
            assert c > 0.1, (les, c)  # positive along B0, negative equatorially
        else:
            assert c < -0.1, (les, c)  # diamagnetic: the opposite
    assert checked >= 3 and np.mean(corr) > 0.4, corr


def test_true_local_field_is_the_field_of_the_true_chi(subject):
    """Away from the lesions (sub-voxel integrated there) the true local field is the dipole field of
    the true chi map, B0 along scanner z."""
    t = subject.truth
    p = 16  # the simulator continues the head beyond the field of view (edge padding)
    ref = forward_field(np.pad(t.chi_ppm, p, mode="edge"), voxel_sizes(t.affine), b0_direction(t.affine),
                        pad=0)[p:-p, p:-p, p:-p]
    far = (t.chi_ppm != 0) & (t.labels != LABELS["microbleed"]) & (t.labels != LABELS["calcification"])
    idx = np.indices(t.chi_ppm.shape).reshape(3, -1).T
    for les in t.lesions:
        d = np.linalg.norm((idx - np.asarray(les.centre_vox)) * voxel_sizes(t.affine), axis=1)
        far &= (d > les.diameter_mm / 2 + 6.0).reshape(far.shape)
    err = t.local_field_ppm[far] - ref[far]
    assert np.corrcoef(t.local_field_ppm[far], ref[far])[0, 1] > 0.99
    assert np.sqrt(np.mean(err ** 2)) < 0.15 * t.local_field_ppm[far].std()


def test_veins_are_paramagnetic_on_true_chi(subject):
    veins = subject.truth.labels == LABELS["vein"]
    assert veins.sum() > 50
    assert np.mean(subject.truth.chi_ppm[veins] > 0.05) > 0.95


def test_phase_follows_the_project_sign_convention(subject):
    """Echo-to-echo phase change = 2 pi gamma_bar B0 dTE field (paramagnetic -> positive)."""
    acq = subject.acq
    dk = rad_per_ppm(acq.te[1], acq.b0) - rad_per_ppm(acq.te[0], acq.b0)
    measured = np.angle(np.exp(1j * (acq.phase[1] - acq.phase[0])))
    expected = np.angle(np.exp(1j * dk * subject.total_field_ppm))
    good = (acq.mag[1] > np.percentile(acq.mag[1], 60)) & (subject.truth.labels == 0)
    err = np.angle(np.exp(1j * (measured - expected)))[good]
    assert np.median(np.abs(err)) < 0.1
    assert np.mean(acq.mag[1][good]) < np.mean(acq.mag[0][good])  # T2* decay


def test_fields_from_chi_matches_forward_model(oblique_affine, rng):
    shape = (32, 32, 24)
    aff = oblique_affine(shape, (1.0, 1.2, 1.5))
    chi = np.zeros(shape, np.float32)
    chi[8:24, 8:24, 6:18] = rng.normal(size=(16, 16, 12))
    b = b0_direction(aff)
    total, local = fields_from_chi(chi, 0.5 * chi, (1.0, 1.2, 1.5), b)
    ref = forward_field(chi, (1.0, 1.2, 1.5), b, pad=(8, 8, 6))
    np.testing.assert_allclose(total, ref, atol=1e-5)
    np.testing.assert_allclose(local, 0.5 * ref, atol=1e-5)


def test_bad_parameters_are_input_errors():
    with pytest.raises(InputError):
        simulate_subject(seed=0, shape=(8, 8, 8))
    with pytest.raises(InputError):
        simulate_subject(seed=0, shape=SHAPE, te=(20.0,))
    with pytest.raises(InputError):
        simulate_subject(seed=-1, shape=SHAPE)


SMALL = dict(shape=SHAPE, b0=[3.0], echoes=2)


def test_dataset_is_bids_readable_and_subjects_do_not_depend_on_n(tmp_path):
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, load_bids_acquisition

    labels = simulate_dataset(tmp_path / "ds", subjects=2, seed=11, **SMALL)
    assert labels == ["01", "02"]
    root = tmp_path / "ds"
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["Name"]
    anat = root / "sub-02" / "anat"
    assert (anat / "sub-02_echo-2_part-phase_T2starw.nii.gz").is_file()
    side = json.loads((anat / "sub-02_echo-2_part-mag_T2starw.json").read_text())
    assert side["MagneticFieldStrength"] == 3.0 and 0 < side["EchoTime"] < 0.1
    subs = find_bids_subjects(root)
    acq = load_bids_acquisition(next(s for s in subs if s.subject == "02"))
    assert acq.mag.shape == (2, *SHAPE) and acq.b0 == 3.0
    assert acq.phase.min() >= -np.pi and acq.phase.max() < np.pi
    truth = read_truth(root / "derivatives" / "groundtruth", "02")
    assert truth.labels.shape == SHAPE
    np.testing.assert_allclose(truth.affine, acq.affine, atol=1e-4)
    # subject 01 is the same whether one or two subjects are simulated
    simulate_dataset(tmp_path / "one", subjects=1, seed=11, **SMALL)
    a = load_bids_acquisition(find_bids_subjects(tmp_path / "one")[0])
    b = load_bids_acquisition(next(s for s in subs if s.subject == "01"))
    np.testing.assert_array_equal(a.mag, b.mag)
    assert not list(tmp_path.glob(".*"))  # no temporary directories left behind


def test_cli_writes_single_echo_dataset_with_preview(tmp_path):
    from cmbdetect.pipeline.cli import simulate as cli_simulate

    parser = argparse.ArgumentParser()
    cli_simulate.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", str(tmp_path / "out"), "--subjects", "1", "--seed", "2",
                              "--shape", "40x40x32", "--echoes", "25ms", "--b0", "7", "--preview"])
    assert cli_simulate.run(args) == 0
    anat = tmp_path / "out" / "sub-01" / "anat"
    assert sorted(p.name for p in anat.glob("*.nii.gz")) == ["sub-01_part-mag_T2starw.nii.gz",
                                                             "sub-01_part-phase_T2starw.nii.gz"]
    side = json.loads((anat / "sub-01_part-phase_T2starw.json").read_text())
    assert side["EchoTime"] == pytest.approx(0.025) and side["MagneticFieldStrength"] == 7.0
    png = tmp_path / "out" / "derivatives" / "preview" / "sub-01_preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--shape", "40,40"], ["--echoes", "30,20"], ["--b0", "300"], ["--subjects", "0"]])
def test_cli_bad_options_are_input_errors(tmp_path, argv):
    from cmbdetect.pipeline.cli import simulate as cli_simulate

    parser = argparse.ArgumentParser()
    cli_simulate.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", str(tmp_path / "out"), *argv])
    with pytest.raises(InputError):
        cli_simulate.run(args)
    assert not (tmp_path / "out").exists()
