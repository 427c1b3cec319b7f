"""DICOM SR (TID 1500, POINTs in the source frame of reference), secondary-capture key images and the
SEG of the accepted lesions: codes, reader-list findings only, Type-2 attributes missing from anonymised
sources, failures isolated, warnings captured, and dciodvfy (dicom3tools) finding no error."""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cmbdetect.models.detection import Detection
from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.outputs.candidates import candidates_from_detections
from cmbdetect.pipeline.outputs.dicom import write_dicom_outputs, write_dicom_sr, write_key_images

sys.path.insert(0, str(Path(__file__).parent))
from test_report import synthetic_maps  # noqa: E402


def mr_series(n_slices=4, rows=8, cols=8, *, frame_of_reference=None):
    """A tiny axial MR series made with pydicom (one study, one frame of reference)."""
    study, series = generate_uid(), generate_uid()
    frame_of_reference = frame_of_reference or generate_uid()
    out = []
    for k in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P001", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-4.0, -4.0, 2.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) + k).tobytes()
        out.append(ds)
    return out


def _candidates(affine, centres):
    dets = [Detection(centre_vox=c, score=0.9, label=label, diameter_mm=2.5,
                      probabilities={"microbleed": p if label == "microbleed" else 0.1,
                                     "calcification": p if label == "calcification" else 0.1,
                                     "vein": 0.05, "other": 0.05},
                      features={"mean_chi_ppm": 0.4 if label == "microbleed" else -0.3})
            for c, (label, p) in zip(centres, [("microbleed", 0.9), ("calcification", 0.8), ("microbleed", 0.7)])]
    return candidates_from_detections(dets, affine=affine, mask=None)


def _points(sr):
    """(tracking identifier, finding type code, LPS point) of each measurement group, read back with pydicom."""
    out = []

    def walk(items, group):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if name == "Tracking Identifier":
                group["tid"] = it.TextValue
            if name == "Finding":
                group["finding"] = it.ConceptCodeSequence[0].CodeValue
            if it.ValueType == "SCOORD3D":
                assert it.GraphicType == "POINT"
                group["for"] = it.ReferencedFrameOfReferenceUID
                group["xyz"] = np.asarray(it.GraphicData, float)
            if name == "Probability":
                group["p"] = float(it.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in it:
                walk(it.ContentSequence, group)

    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements":
            for grp in item.ContentSequence:
                g = {}
                walk(grp.ContentSequence, g)
                out.append(g)
    return out


def test_sr_points_read_back(oblique_affine, tmp_path):
    source = mr_series()
    cands = _candidates(oblique_affine(), [(3.0, 4.0, 5.0), (10.0, 2.0, 1.0), (6.5, 7.5, 8.0)])
    path = write_dicom_sr(cands, source_datasets=source, path=tmp_path / "sr.dcm")
    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == source[0].StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert len(evidence.ReferencedSOPSequence) == len(source)
    groups = _points(sr)
    assert len(groups) == len(cands)
    for g, c in zip(groups, cands):
        assert g["tid"] == f"candidate {c.id}"
        assert g["for"] == source[0].FrameOfReferenceUID
        assert np.allclose(g["xyz"], c.lps, atol=1e-3)
        assert np.allclose(g["xyz"][:2], -c.ras[:2], atol=1e-3)
        assert g["p"] == pytest.approx(c.probability)
    # SNOMED CT "Silent micro-hemorrhage of brain" for microbleeds, "Pathologic calcification"
    assert [g["finding"] for g in groups] == ["723857007", "723857007", "18115005"]  # microbleeds first
    schemes = {it.CodingSchemeDesignator: it for it in sr.CodingSchemeIdentificationSequence}
    assert schemes["99CMBD"].CodingSchemeName  # the private scheme is declared


def test_sr_parses_with_highdicom(oblique_affine, tmp_path):
    import highdicom as hd

    cands = _candidates(oblique_affine(), [(3.0, 4.0, 5.0), (10.0, 2.0, 1.0)])
    cands[0].region = "deep"
    sr = hd.sr.srread(write_dicom_sr(cands, source_datasets=mr_series(), path=tmp_path / "sr.dcm"))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    chi = {m.name.value: float(m.value) for m in groups[0].get_measurements()}
    assert chi["126396"] == pytest.approx(cands[0].susceptibility_ppm)
    site = groups[0].finding_sites[0]
    assert site.value.value == "12738006" and site.topographical_modifier.value == "795002"
    assert groups[1].finding_sites == []  # region unknown: no site claimed


def test_sr_without_candidates_and_bad_sources(tmp_path):
    sr = pydicom.dcmread(write_dicom_sr([], source_datasets=mr_series(), path=tmp_path / "empty.dcm"))
    groups = _points(sr)
    assert len(groups) == 1 and "xyz" not in groups[0] and groups[0]["tid"] == "no candidates"
    mixed = mr_series(2) + mr_series(2)  # two frames of reference
    with pytest.raises(InputError, match="FrameOfReferenceUID"):
        write_dicom_sr([], source_datasets=mixed, path=tmp_path / "x.dcm")
    with pytest.raises(InputError, match="source DICOM"):
        write_dicom_sr([], source_datasets=[], path=tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_key_images_reference_source_study(tmp_path):
    from cmbdetect.physics.geometry import oblique_affine

    affine = oblique_affine((64, 64, 48), (1.0, 1.0, 1.2))
    maps = synthetic_maps(affine)
    source = mr_series()
    cands = _candidates(affine, [(20.0, 30.0, 24.0), (42.0, 26.0, 20.0)])
    paths = write_key_images(cands, maps=maps, source_datasets=source, out_dir=tmp_path / "key")
    assert len(paths) == 2
    for p, c in zip(paths, cands):
        sc = pydicom.dcmread(p)
        assert sc.StudyInstanceUID == source[0].StudyInstanceUID and sc.PatientID == "P001"
        assert sc.SeriesInstanceUID != source[0].SeriesInstanceUID
        assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[2] == 3
        assert sc.ReferencedImageSequence[0].ReferencedSOPInstanceUID in {s.SOPInstanceUID for s in source}
        assert f"candidate {c.id}" in sc.ImageComments


def test_sr_point_is_the_dicom_patient_position_of_the_voxel(tmp_path):
    """Through the project's DICOM reader: a candidate at voxel (i, j, k) of the loaded volume lands in
    the SR at the patient position DICOM itself gives that pixel (IPP + i*dc*row_cos + j*dr*col_cos)."""
    from cmbdetect.physics.geometry import oblique_affine
    from cmbdetect.pipeline.io.dicom import load_dicom_acquisition
    from cmbdetect.pipeline.simulate.dicom import write_dicom_series

    shape = (12, 10, 5)
    affine = oblique_affine(shape, (0.9, 1.1, 2.0), angles_deg=(12.0, -7.0, 20.0))
    vol = np.random.default_rng(0).uniform(1, 2, shape)
    uids = dict(study_uid=generate_uid(), frame_of_reference_uid=generate_uid())
    write_dicom_series(vol, affine, tmp_path / "mag", kind="M", echo_time_s=0.02, b0=3.0, series_number=1,
                       **uids)
    write_dicom_series(np.zeros(shape), affine, tmp_path / "pha", kind="P", echo_time_s=0.02, b0=3.0,
                       series_number=2, **uids)
    acq = load_dicom_acquisition([tmp_path / "mag", tmp_path / "pha"])
    source = acq.source["dicom_datasets"]
    ijk = (3.0, 7.0, 2.0)
    (cand,) = _candidates(acq.affine, [ijk])
    sr = pydicom.dcmread(write_dicom_sr([cand], source_datasets=source, path=tmp_path / "sr.dcm"))
    (group,) = _points(sr)
    files = sorted((tmp_path / "mag").iterdir())
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    normal = np.cross(*np.reshape(np.asarray(slices[0].ImageOrientationPatient, float), (2, 3)))
    slices.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    ds = slices[int(ijk[2])]
    row_cos, col_cos = np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3))
    d_row, d_col = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    expected = np.asarray(ds.ImagePositionPatient, float) + ijk[0] * d_col * row_cos + ijk[1] * d_row * col_cos
    assert np.allclose(group["xyz"], expected, atol=1e-3)
    assert group["for"] == ds.FrameOfReferenceUID


ANONYMISED_AWAY = ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate", "PatientSex",
                   "PositionReferenceIndicator")


def anonymised_series(tmp_path, shape=(24, 20, 10)):
    """A two-echo MR magnitude series written by the project's DICOM writer, read back by its reader,
    with the Type-2 attributes an anonymiser removes deleted; returns (acquisition, source datasets)."""
    from cmbdetect.physics.geometry import oblique_affine
    from cmbdetect.pipeline.io.dicom import load_dicom_acquisition
    from cmbdetect.pipeline.simulate.dicom import write_dicom_series

    affine = oblique_affine(shape, (0.9, 1.1, 2.0), angles_deg=(12.0, -7.0, 20.0))
    vol = np.random.default_rng(0).uniform(1, 2, shape)
    uids = dict(study_uid=generate_uid(), frame_of_reference_uid=generate_uid())
    mag, pha = dict(uids, series_uid=generate_uid()), dict(uids, series_uid=generate_uid())
    for echo in (1, 2):
        write_dicom_series(vol, affine, tmp_path / "mag", kind="M", echo_time_s=0.01 * echo, b0=3.0,
                           series_number=1, echo_number=echo, **mag)
        write_dicom_series(np.zeros(shape), affine, tmp_path / "pha", kind="P", echo_time_s=0.01 * echo,
                           b0=3.0, series_number=2, echo_number=echo, **pha)
    acq = load_dicom_acquisition([tmp_path / "mag", tmp_path / "pha"])
    source = acq.source["dicom_datasets"]
    for ds in source:
        for keyword in ANONYMISED_AWAY:
            if keyword in ds:
                delattr(ds, keyword)
    return acq, source


def _listed_candidates(affine):
    """microbleed, possible microbleed, calcification, vein and other, inside a 24x20x10 grid."""
    from dataclasses import replace

    base = _candidates(affine, [(5.0, 6.0, 4.0), (12.0, 10.0, 6.0), (18.0, 8.0, 3.0)])
    extra = _candidates(affine, [(8.0, 14.0, 5.0), (15.0, 4.0, 7.0), (3.0, 3.0, 2.0)])
    out = [base[0], replace(base[1], label="possible_microbleed"), base[2],
           replace(extra[0], label="vein"), replace(extra[1], label="other")]
    for n, c in enumerate(out, start=1):
        c.id = n
    return out


def test_outputs_from_anonymised_source_list_findings_only(tmp_path):
    """Issue 21: a series without AccessionNumber / StudyID / ... gives every object, with those
    attributes present and empty; veins and "other" are not DICOM findings."""
    import highdicom as hd

    from cmbdetect.physics.geometry import oblique_affine

    acq, source = anonymised_series(tmp_path)
    cands = _listed_candidates(acq.affine)
    maps = synthetic_maps(oblique_affine((64, 64, 48), (1.0, 1.0, 1.2)))
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        record = write_dicom_outputs(cands, source_datasets=source, out_dir=tmp_path / "dicom", maps=maps)
    assert not escaped  # highdicom's warnings are captured into the record, not shown
    assert record["errors"] == [] and record["n_findings"] == 3
    assert record["written"] == ["keyimages/key-0001.dcm", "keyimages/key-0002.dcm", "keyimages/key-0003.dcm",
                                 "seg.dcm", "sr.dcm"]
    sr = pydicom.dcmread(tmp_path / "dicom" / "sr.dcm")
    for keyword in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate", "PatientSex"):
        assert keyword in sr and not sr.data_element(keyword).value
    groups = _points(sr)
    assert [g["tid"] for g in groups] == ["candidate 1", "candidate 2", "candidate 3"]
    assert [g["finding"] for g in groups] == ["723857007", "723857007", "18115005"]
    parsed = hd.sr.srread(tmp_path / "dicom" / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    certainty = [[(e.name.value, e.value.value) for e in g.get_qualitative_evaluations()] for g in parsed]
    assert certainty == [[], [("CMBCERTAINTY", "64957009")], []]  # possible microbleed: "Uncertain"
    key = pydicom.dcmread(tmp_path / "dicom" / "keyimages" / "key-0001.dcm")
    assert key.BodyPartExamined == "BRAIN" and "Laterality" not in key and key.AccessionNumber == ""
    for ds in source:
        assert "AccessionNumber" not in ds  # the caller's datasets are left as they were


def test_seg_marks_each_accepted_lesion_at_its_centre(tmp_path):
    import highdicom as hd

    acq, source = anonymised_series(tmp_path)
    cands = _listed_candidates(acq.affine)
    write_dicom_outputs(cands, source_datasets=source, out_dir=tmp_path / "dicom")
    seg = hd.seg.segread(tmp_path / "dicom" / "seg.dcm")
    microbleeds = [c for c in cands if c.label == "microbleed"]
    assert seg.number_of_segments == len(microbleeds) == 1
    desc = seg.get_segment_description(1)
    assert desc.tracking_id == f"candidate {microbleeds[0].id}"
    assert desc.segmented_property_type.value == "723857007"
    frames = {ds.SOPInstanceUID: ds for ds in source}
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg.PerFrameFunctionalGroupsSequence]
    assert all(r in frames for r in refs)
    # the frame nearest the centre marks the pixel at the centre (within half a pixel)
    c = microbleeds[0]
    pixels = seg.pixel_array.reshape(len(refs), seg.Rows, seg.Columns)
    best = min(range(len(refs)), key=lambda f: abs(float(np.dot(
        c.lps - np.asarray(frames[refs[f]].ImagePositionPatient, float),
        np.cross(*np.reshape(np.asarray(frames[refs[f]].ImageOrientationPatient, float), (2, 3)))))))
    ds = frames[refs[best]]
    row_cos, col_cos = np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3))
    d = c.lps - np.asarray(ds.ImagePositionPatient, float)
    row, col = round(float(d @ col_cos) / float(ds.PixelSpacing[0])), round(float(d @ row_cos) / float(ds.PixelSpacing[1]))
    assert pixels[best, row, col] == 1
    assert 1 < pixels.sum() < 60  # a 2.5 mm sphere on 0.9 x 1.1 x 2 mm voxels, not the whole slice


def test_one_failed_object_keeps_the_others(tmp_path):
    acq, source = anonymised_series(tmp_path)
    cands = _listed_candidates(acq.affine)
    record = write_dicom_outputs(cands, source_datasets=source, out_dir=tmp_path / "dicom",
                                 maps=object())  # not physics maps: the key images cannot be drawn
    assert [e["object"] for e in record["errors"]] == ["keyimages"]
    assert "AttributeError" in record["errors"][0]["message"] and "\n" not in record["errors"][0]["message"]
    assert record["written"] == ["seg.dcm", "sr.dcm"]


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy (dicom3tools) prints for ``path`` (its exit status is 0 either way)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian/Ubuntu: apt-get install dicom3tools)")
def test_dciodvfy_finds_no_error(tmp_path):
    from cmbdetect.physics.geometry import oblique_affine

    acq, source = anonymised_series(tmp_path)
    maps = synthetic_maps(oblique_affine((64, 64, 48), (1.0, 1.0, 1.2)))
    out = tmp_path / "dicom"
    record = write_dicom_outputs(_listed_candidates(acq.affine), source_datasets=source, out_dir=out, maps=maps)
    write_dicom_sr([], source_datasets=source, path=out / "empty-sr.dcm")
    files = [out / f for f in record["written"]] + [out / "empty-sr.dcm"]
    assert {"sr.dcm", "seg.dcm", "empty-sr.dcm"} <= {f.name for f in files}
    assert {str(f.name): dciodvfy_errors(f) for f in files} == {str(f.name): [] for f in files}


REAL_SIEMENS = Path(__file__).parents[3].parent / "shared" / "data" / "real" / "dicom-megre-siemens" / "mag"


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian/Ubuntu: apt-get install dicom3tools)")
@pytest.mark.skipif(not REAL_SIEMENS.is_dir(), reason=f"real Siemens DICOM not found at {REAL_SIEMENS}")
def test_dciodvfy_on_exports_of_a_real_siemens_series(tmp_path):
    """A real anonymised Siemens series (empty AccessionNumber) as the source; one echo (one position)."""
    from cmbdetect.physics.geometry import oblique_affine
    from cmbdetect.pipeline.outputs.candidates import Candidate

    source = [pydicom.dcmread(f) for f in sorted(REAL_SIEMENS.glob("*.dcm"))]
    ds = source[0]
    row_cos, col_cos = np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3))
    centre = (np.asarray(ds.ImagePositionPatient, float) + 30 * float(ds.PixelSpacing[1]) * row_cos
              + 25 * float(ds.PixelSpacing[0]) * col_cos)
    cand = Candidate(id=1, label="microbleed", probability=0.9, x=-centre[0], y=-centre[1], z=centre[2],
                     x_lps=centre[0], y_lps=centre[1], z_lps=centre[2], i=30, j=25, k=0,
                     susceptibility_ppm=0.3, diameter_mm=5.0, volume_mm3=65.0, region="lobar", side="left",
                     lobe="frontal",
                     review_order=1, score=0.9, uncertainty=0.1, p_microbleed=0.9, p_calcification=0.05,
                     p_vein=0.03, p_other=0.02)
    maps = synthetic_maps(oblique_affine((64, 64, 48), (1.0, 1.0, 1.2)))
    out = tmp_path / "dicom"
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        record = write_dicom_outputs([cand], source_datasets=source, out_dir=out, maps=maps)
    assert record["errors"] == [] and record["written"] == ["keyimages/key-0001.dcm", "seg.dcm", "sr.dcm"]
    # highdicom warns about the one-component PatientName: recorded for the provenance, not shown
    assert not escaped and any("person name" in w for w in record["warnings"])
    assert {f: dciodvfy_errors(out / f) for f in record["written"]} == {f: [] for f in record["written"]}
