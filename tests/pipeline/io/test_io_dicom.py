"""DICOM magnitude + phase -> Acquisition: real Siemens MEGRE data, synthetic oblique round trips,
enhanced multi-frame, vendor phase scaling and bad inputs."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import oblique_affine
from cmbdetect.pipeline.io.dicom import load_dicom_acquisition, read_dicom_series
from cmbdetect.pipeline.simulate.dicom import write_dicom_series

SHAPE = (14, 12, 6)
TE = (0.005, 0.0125)


def _wrapdiff(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a, float) - np.asarray(b, float)))))


@pytest.fixture
def synthetic(tmp_path, rng):
    """Two-echo magnitude + phase written as two classic series from a 15/10-degree oblique grid."""
    aff = oblique_affine(SHAPE, (0.9, 1.1, 1.6), angles_deg=(15.0, 0.0, 10.0))
    mag = rng.uniform(0.0, 500.0, (2,) + SHAPE)
    phase = rng.uniform(-np.pi, np.pi, (2,) + SHAPE)
    study, frame = generate_uid(), generate_uid()
    uids = {"M": generate_uid(), "P": generate_uid()}
    for e, te in enumerate(TE):
        for kind, vol in (("M", mag[e]), ("P", phase[e])):
            write_dicom_series(vol, aff, tmp_path / kind, kind=kind, echo_time_s=te, b0=2.89,
                               series_number=10 if kind == "M" else 11, study_uid=study,
                               series_uid=uids[kind], frame_of_reference_uid=frame, echo_number=e + 1)
    return {"dirs": [tmp_path / "M", tmp_path / "P"], "affine": aff, "mag": mag, "phase": phase,
            "study": study, "frame": frame, "uids": uids}


def test_real_siemens_megre_sorted_then_refused(shared_data):
    d = shared_data / "real" / "dicom-megre-siemens"
    s = read_dicom_series([d / "mag", d / "phase"])
    assert s.mag.shape == (3, 54, 64, 1)  # [echo, column, row, slice]
    np.testing.assert_allclose(s.te, [0.004, 0.010, 0.016])
    assert s.b0 == 3.0
    assert s.source["phase_units"] == "siemens"
    assert s.phase.min() >= -np.pi and s.phase.max() < np.pi
    assert s.phase.max() - s.phase.min() > 6.0
    for e, name in enumerate(("00001.dcm", "00017.dcm", "00033.dcm")):  # TE 4, 10, 16 ms
        m = pydicom.dcmread(d / "mag" / name)
        p = pydicom.dcmread(d / "phase" / name)
        assert float(m.EchoTime) == pytest.approx(s.te[e] * 1000)
        np.testing.assert_allclose(s.mag[e, :, :, 0], m.pixel_array.T)
        expected = (p.pixel_array.astype(float) * 2 - 4096) * np.pi / 4096
        assert _wrapdiff(s.phase[e, :, :, 0], expected.T).max() < 1e-5
    # orientation: row direction +x LPS (= -x RAS), column direction +y LPS (= -y RAS)
    np.testing.assert_allclose(s.affine[:3, :3], np.diag([-3.5, -3.5, 3.5]), atol=1e-6)
    dic = s.source["dicom"]
    assert dic["study_instance_uid"].startswith("1.3.12.2.1107")
    assert len(dic["sop_instance_uids"]["M"]) == 3 and dic["patient"]["PatientName"] == "Phantom_QSM_bids"
    assert len(s.source["dicom_datasets"]) == 1 and "PixelData" not in s.source["dicom_datasets"][0]
    with pytest.raises(InputError, match="3D volume") as info:
        load_dicom_acquisition([d])  # the parent folder: both series found recursively
    assert "\n" not in str(info.value)


def test_synthetic_oblique_round_trip(synthetic):
    acq = load_dicom_acquisition(synthetic["dirs"])
    np.testing.assert_allclose(acq.affine, synthetic["affine"], atol=1e-4)
    np.testing.assert_allclose(acq.te, TE)
    assert acq.b0 == pytest.approx(2.89)
    np.testing.assert_allclose(acq.mag, synthetic["mag"], atol=500.0 / 65535)
    assert _wrapdiff(acq.phase, synthetic["phase"]).max() < np.pi / 2048 * 0.51
    dic = acq.source["dicom"]
    assert dic["study_instance_uid"] == synthetic["study"]
    assert dic["frame_of_reference_uid"] == synthetic["frame"]
    assert dic["series_instance_uids"]["M"] == [synthetic["uids"]["M"]]
    assert len(dic["sop_instance_uids"]["P"]) == 2 * SHAPE[2]
    assert len(dic["reference_frames"]) == SHAPE[2] and len(acq.source["dicom_datasets"]) == SHAPE[2]


def test_explicit_overrides_and_phase_sign(synthetic):
    acq = load_dicom_acquisition(synthetic["dirs"], te=[0.006, 0.013], b0=1.5, phase_sign=-1)
    np.testing.assert_allclose(acq.te, [0.006, 0.013])
    assert acq.b0 == 1.5
    assert _wrapdiff(acq.phase, -synthetic["phase"]).max() < 1e-3
    with pytest.raises(InputError, match="milliseconds"):
        load_dicom_acquisition(synthetic["dirs"], te=[5, 12.5])
    with pytest.raises(InputError, match="2 DICOM echoes"):
        load_dicom_acquisition(synthetic["dirs"], te=[0.005])


def test_file_names_do_not_matter(synthetic, tmp_path, rng):
    """Mixed, shuffled files in one folder (plus a non-DICOM file) sort by geometry and ImageType."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    files = [f for d in synthetic["dirs"] for f in sorted(d.iterdir())]
    for n, f in zip(rng.permutation(len(files)), files):
        f.rename(mixed / f"IM{n:05d}")
    (mixed / "README.txt").write_text("not dicom")
    acq = load_dicom_acquisition([mixed])
    np.testing.assert_allclose(acq.affine, synthetic["affine"], atol=1e-4)
    np.testing.assert_allclose(acq.mag, synthetic["mag"], atol=500.0 / 65535)
    assert str(mixed / "README.txt") in acq.source["ignored_files"]


def test_left_handed_grid_keeps_world_geometry(tmp_path, rng):
    aff = oblique_affine(SHAPE, (1.0, 1.0, 2.0), angles_deg=(0.0, 20.0, 0.0))
    aff[:, 2] *= -1  # slices stacked against the row x column normal
    mag = rng.uniform(1, 100, SHAPE)
    write_dicom_series(mag, aff, tmp_path / "M", kind="M", echo_time_s=0.01, b0=3, series_number=1)
    write_dicom_series(np.zeros(SHAPE), aff, tmp_path / "P", kind="P", echo_time_s=0.01, b0=3, series_number=2)
    acq = load_dicom_acquisition([tmp_path / "M", tmp_path / "P"])
    flipped = aff.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] = aff[:3, :3] @ [0, 0, SHAPE[2] - 1] + aff[:3, 3]
    np.testing.assert_allclose(acq.affine, flipped, atol=1e-4)
    np.testing.assert_allclose(acq.mag[0], mag[:, :, ::-1], atol=100 / 65535)


def _enhanced_from_classic(files, path):
    """Combine classic single-frame files into one enhanced-MR-style multi-frame file."""
    dss = [pydicom.dcmread(f) for f in files]
    first = dss[0]
    enh = Dataset()
    enh.file_meta = first.file_meta
    enh.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality", "PatientName",
                "PatientID", "MagneticFieldStrength", "Manufacturer", "Rows", "Columns", "SamplesPerPixel",
                "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(enh, key, getattr(first, key))
    enh.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    enh.SOPInstanceUID = generate_uid()
    enh.file_meta.MediaStorageSOPInstanceUID = enh.SOPInstanceUID
    enh.ImageType = ["ORIGINAL", "PRIMARY", "M_FFE", "NONE"]
    enh.NumberOfFrames = len(dss)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = first.PixelSpacing
    shared.PixelMeasuresSequence[0].SliceThickness = first.SliceThickness
    enh.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for ds in dss:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = ds.ImagePositionPatient
        item.MREchoSequence = Sequence([Dataset()])
        item.MREchoSequence[0].EffectiveEchoTime = ds.EchoTime
        item.MRImageFrameTypeSequence = Sequence([Dataset()])
        item.MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "M_FFE", "NONE"]
        item.MRImageFrameTypeSequence[0].ComplexImageComponent = "PHASE" if "P" in ds.ImageType else "MAGNITUDE"
        item.PixelValueTransformationSequence = Sequence([Dataset()])
        item.PixelValueTransformationSequence[0].RescaleSlope = ds.RescaleSlope
        item.PixelValueTransformationSequence[0].RescaleIntercept = ds.RescaleIntercept
        item.PixelValueTransformationSequence[0].RescaleType = "US"
        per.append(item)
    enh.PerFrameFunctionalGroupsSequence = Sequence(per)
    enh.PixelData = b"".join(ds.pixel_array.tobytes() for ds in dss)
    enh.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe(synthetic, tmp_path, rng):
    mag_files = sorted(synthetic["dirs"][0].iterdir())
    phase_files = sorted(synthetic["dirs"][1].iterdir())
    out = tmp_path / "enhanced"
    out.mkdir()
    order = rng.permutation(len(mag_files))  # frames in any order
    _enhanced_from_classic([mag_files[i] for i in order], out / "mag.dcm")
    _enhanced_from_classic(phase_files, out / "phase.dcm")
    acq = load_dicom_acquisition([out])
    np.testing.assert_allclose(acq.affine, synthetic["affine"], atol=1e-4)
    np.testing.assert_allclose(acq.te, TE)
    np.testing.assert_allclose(acq.mag, synthetic["mag"], atol=500.0 / 65535)
    assert _wrapdiff(acq.phase, synthetic["phase"]).max() < 2e-3
    assert len(acq.source["dicom_datasets"]) == 1
    frames = [n for _, n in acq.source["dicom"]["reference_frames"]]  # echo-1 frames, in slice order
    assert len(set(frames)) == SHAPE[2] and min(frames) >= 1 and max(frames) <= 2 * SHAPE[2]


def test_ge_milliradian_phase(synthetic):
    for f in synthetic["dirs"][1].iterdir():
        ds = pydicom.dcmread(f)
        rad = (ds.pixel_array.astype(float) * 2 - 4096) * np.pi / 4096
        ds.PixelData = np.round(rad * 1000 + 3142).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit = 16, 15
        ds.RescaleSlope, ds.RescaleIntercept = 1, -3142
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.save_as(f, enforce_file_format=True)
    acq = load_dicom_acquisition(synthetic["dirs"])
    assert acq.source["phase_units"] == "mrad"
    assert _wrapdiff(acq.phase, synthetic["phase"]).max() < 2e-3


def test_bad_dicom_inputs(synthetic, tmp_path, rng):
    with pytest.raises(InputError, match="no phase"):
        load_dicom_acquisition([synthetic["dirs"][0]])
    with pytest.raises(InputError, match="does not exist"):
        load_dicom_acquisition([tmp_path / "nowhere"])
    # a second acquisition in the same folder: duplicate slice positions
    write_dicom_series(synthetic["mag"][0], synthetic["affine"], synthetic["dirs"][0] / "again", kind="M",
                       echo_time_s=TE[0], b0=3, series_number=99)
    with pytest.raises(InputError, match="same slice position"):
        load_dicom_acquisition(synthetic["dirs"])


def test_mixed_orientation_refused(tmp_path, rng):
    a1 = oblique_affine(SHAPE, (1, 1, 1), angles_deg=(0, 0, 0))
    a2 = oblique_affine(SHAPE, (1, 1, 1), angles_deg=(30, 0, 0))
    write_dicom_series(rng.uniform(1, 2, SHAPE), a1, tmp_path / "M", kind="M", echo_time_s=0.01, b0=3, series_number=1)
    write_dicom_series(rng.uniform(-1, 1, SHAPE), a2, tmp_path / "P", kind="P", echo_time_s=0.01, b0=3, series_number=2)
    with pytest.raises(InputError, match="orientation"):
        load_dicom_acquisition([tmp_path])


def test_image_size_mismatch_refused(tmp_path, rng):
    aff = oblique_affine(SHAPE, (1, 1, 1), angles_deg=(10, 0, 0))
    write_dicom_series(rng.uniform(1, 2, SHAPE), aff, tmp_path / "M", kind="M", echo_time_s=0.01, b0=3,
                       series_number=1)
    write_dicom_series(rng.uniform(-1, 1, SHAPE)[:-2], aff, tmp_path / "P", kind="P", echo_time_s=0.01, b0=3,
                       series_number=2)
    with pytest.raises(InputError, match="pixels"):
        load_dicom_acquisition([tmp_path / "M", tmp_path / "P"])


@pytest.mark.parametrize("flip_lr", [False, True])
def test_simulated_subject_dicom_round_trip(tmp_path, flip_lr):
    """A simulated oblique subject written as DICOM mag + phase series reads back on the same world grid."""
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    sub = simulate_subject(seed=11, shape=(24, 24, 16), te=(0.006, 0.016), b0=3.0, oblique_deg=20.0,
                           flip_lr=flip_lr, n_microbleeds=2)
    src = sub.acq
    study = generate_uid()
    for kind, data, number in (("M", src.mag, 5), ("P", src.phase, 6)):
        series = generate_uid()
        for e, te in enumerate(src.te):
            write_dicom_series(data[e], src.affine, tmp_path / kind, kind=kind, echo_time_s=float(te), b0=src.b0,
                               series_number=number, study_uid=study, series_uid=series, echo_number=e + 1)
    acq = load_dicom_acquisition([tmp_path / "M", tmp_path / "P"])
    np.testing.assert_allclose(acq.te, src.te, rtol=1e-9)
    assert acq.b0 == pytest.approx(src.b0)
    mag, phase, affine = src.mag, src.phase, src.affine.copy()
    if np.linalg.det(affine[:3, :3]) < 0:  # slices are stacked along the row x column normal on reading
        mag, phase = mag[..., ::-1], phase[..., ::-1]
        affine[:3, 3] = affine[:3, :3] @ [0, 0, src.shape[2] - 1] + affine[:3, 3]
        affine[:3, 2] *= -1
    np.testing.assert_allclose(acq.affine, affine, atol=1e-4)
    np.testing.assert_allclose(acq.mag, mag, atol=float(src.mag.max()) / 65535 + 1e-3)
    assert _wrapdiff(acq.phase, phase).max() < np.pi / 2048


def test_vendor_private_image_type(synthetic):
    """GE (0043,102F) 0/1 and Philips (2005,1011) M/P tell magnitude from phase when ImageType does not."""
    for kind_dir, ge_value, philips in ((synthetic["dirs"][0], b"\x00\x00", "M"), (synthetic["dirs"][1], b"\x01\x00", "P")):
        for n, f in enumerate(sorted(kind_dir.iterdir())):
            ds = pydicom.dcmread(f)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            if n % 2:
                ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
                ds.add_new((0x0043, 0x102F), "UN", ge_value)
            else:
                ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
                ds.add_new((0x2005, 0x1011), "CS", philips)
            ds.save_as(f, enforce_file_format=True)
    acq = load_dicom_acquisition(synthetic["dirs"])
    np.testing.assert_allclose(acq.mag, synthetic["mag"], atol=500.0 / 65535)
    assert _wrapdiff(acq.phase, synthetic["phase"]).max() < 1e-3
