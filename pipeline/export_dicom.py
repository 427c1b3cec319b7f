"""DICOM outputs: a Comprehensive 3D SR measurement report (TID 1500) and secondary-capture key images.

SR content (built with highdicom): one TID 1411 volumetric measurement group per candidate with
* a tracking identifier (UID + ``"candidate <id>"``);
* the candidate centre as a ``POINT`` volume surface (SCOORD3D, LPS mm) in the frame of reference of
  the source series, which is referenced as the source series and as evidence;
* the finding type: microbleed -> SCT 50960005 "Hemorrhage" (SNOMED CT as shipped with pydicom has no
  separate microbleed concept; the finding site and size make it a microbleed), calcification -> SCT
  18115005 "Pathologic calcification", vein -> SCT 29092000 "Vein", other -> SCT 365853002
  "Imaging finding";
* the finding site "Brain" (SCT 12738006) with the MARS group as topographical modifier: lobar -> DCM
  112158 "Lobar", deep -> SCT 795002 "Deep", infratentorial -> local code 99CMBD "INFRATENT";
* measurements: probability of the finding (DCM 122157, UCUM ``1``), mean magnetic susceptibility
  (DCM 126396, UCUM ``ppm``, > 0 paramagnetic), diameter (SCT 81827009, mm), volume (SCT 118565006,
  mm3); values that are not finite are left out;
* the algorithm (name, version) of the detection.
With no candidates the report holds one TID 1501 group whose finding is SCT 272519000 "Absence
findings", so that "nothing found" is stated rather than implied.

Coordinates: the SR uses DICOM patient coordinates (LPS); the candidate's ``x_lps y_lps z_lps`` are
the scanner RAS centre with x and y negated, valid when the image affine was read from this series.
"""
from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.atomic import atomic_file
from cmbdetect.pipeline.candidates import Candidate
from cmbdetect.pipeline.report import display_windows, render_candidate_tile

_CMBD = "99CMBD"  # local coding scheme of this tool
FINDING_CODES: dict[str, hd.sr.CodedConcept] = {
    "microbleed": hd.sr.CodedConcept("50960005", "SCT", "Hemorrhage"),
    "calcification": hd.sr.CodedConcept("18115005", "SCT", "Pathologic calcification"),
    "vein": hd.sr.CodedConcept("29092000", "SCT", "Vein"),
    "other": hd.sr.CodedConcept("365853002", "SCT", "Imaging finding"),
}
REGION_CODES: dict[str, hd.sr.CodedConcept] = {
    "lobar": hd.sr.CodedConcept("112158", "DCM", "Lobar"),
    "deep": hd.sr.CodedConcept("795002", "SCT", "Deep"),
    "infratentorial": hd.sr.CodedConcept("INFRATENT", _CMBD, "Infratentorial"),
}
_BRAIN = hd.sr.CodedConcept("12738006", "SCT", "Brain")
_PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
_SUSCEPTIBILITY = hd.sr.CodedConcept("126396", "DCM", "Magnetic Susceptibility")
_UNITY = hd.sr.CodedConcept("1", "UCUM", "no units")
_PPM = hd.sr.CodedConcept("ppm", "UCUM", "ppm")
_MM = hd.sr.CodedConcept("mm", "UCUM", "mm")
_MM3 = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
_BRAIN_MRI = hd.sr.CodedConcept("24590-2", "LN", "Brain MRI")


def _check_sources(source_datasets) -> tuple[list[Dataset], str, str]:
    """The source datasets, their FrameOfReferenceUID and SeriesInstanceUID (one series)."""
    datasets = list(source_datasets or [])
    if not datasets:
        raise InputError("DICOM outputs need the source DICOM series (the input was not DICOM)")
    for_uids = {getattr(ds, "FrameOfReferenceUID", None) for ds in datasets}
    series = {getattr(ds, "SeriesInstanceUID", None) for ds in datasets}
    if None in for_uids or len(for_uids) != 1:
        raise InputError("source DICOM images must share one FrameOfReferenceUID")
    if None in series or len(series) != 1:
        raise InputError("source DICOM images must come from one series")
    return datasets, for_uids.pop(), series.pop()


def _write_atomic(dataset: Dataset, path: Path) -> Path:
    """Save ``dataset`` under a temporary name beside ``path`` and rename it into place."""
    with atomic_file(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path


def _measurements(c: Candidate) -> list[hd.sr.Measurement]:
    values = ((_PROBABILITY, c.probability, _UNITY), (_SUSCEPTIBILITY, c.susceptibility_ppm, _PPM),
              (codes.SCT.Diameter, c.diameter_mm, _MM), (codes.SCT.Volume, c.volume_mm3, _MM3))
    return [hd.sr.Measurement(name=name, value=float(v), unit=unit)
            for name, v, unit in values if math.isfinite(v)]


def measurement_group(c: Candidate, *, frame_of_reference_uid: str, series_uid: str,
                      algorithm: hd.sr.AlgorithmIdentification):
    """The TID 1411 group of one candidate (centre as a POINT in the source frame of reference)."""
    region = REGION_CODES.get(c.region)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"candidate {c.id}"),
        referenced_volume_surface=hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([c.lps], dtype=float),
            frame_of_reference_uid=frame_of_reference_uid,
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid)),
        finding_type=FINDING_CODES.get(c.label, FINDING_CODES["other"]),
        finding_sites=[hd.sr.FindingSite(_BRAIN, topographical_modifier=region)] if region else None,
        algorithm_id=algorithm,
        measurements=_measurements(c))


def write_dicom_sr(candidates: list[Candidate], *, source_datasets, path,
                   algorithm_name: str = "cmbdetect", algorithm_version: str = "0.1.0",
                   series_number: int = 990) -> Path:
    """Write a Comprehensive 3D SR (TID 1500) with one measurement group per candidate to ``path``
    (atomically); ``source_datasets`` are the pydicom datasets of the source series (one frame of
    reference), referenced as evidence.  Returns the path."""
    datasets, for_uid, series_uid = _check_sources(source_datasets)
    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=algorithm_version)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=algorithm_name, model_name=algorithm_version))
    groups = [measurement_group(c, frame_of_reference_uid=for_uid, series_uid=series_uid,
                                algorithm=algorithm) for c in candidates]
    if not groups:  # TID 1500 needs a group: state "no findings" explicitly (TID 1501)
        groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="no candidates"),
            algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=codes.DCM.Finding, value=codes.SCT.AbsenceFindings)])]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_BRAIN_MRI, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=datasets, content=report[0], series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=algorithm_name, is_complete=True, series_description="cmbdetect candidates")
    return _write_atomic(sr, Path(path))


def nearest_source_image(datasets: list[Dataset], lps) -> Dataset:
    """The source image whose plane passes nearest the LPS point (by ImagePosition/Orientation)."""
    point = np.asarray(lps, dtype=float)

    def distance(ds: Dataset) -> float:
        iop = np.asarray(getattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
        ipp = np.asarray(getattr(ds, "ImagePositionPatient", [0, 0, 0]), dtype=float)
        return abs(float(np.dot(point - ipp, np.cross(iop[:3], iop[3:]))))

    return min(datasets, key=distance)


def write_key_images(candidates: list[Candidate], *, maps: PhysicsMaps, source_datasets, out_dir,
                     max_images: int = 100, series_number: int = 991) -> list[Path]:
    """Write one secondary-capture RGB image per candidate (the report's tile: magnitude, SWI, χ and
    local field in three planes) into ``out_dir`` as ``key-<id>.dcm``, in the source study, each
    referencing the source image nearest the candidate.  At most ``max_images`` (most probable
    first).  ``PatientOrientation`` describes the tile's axial row (columns to L, rows to P).
    Returns the paths."""
    datasets, _, _ = _check_sources(source_datasets)
    windows = display_windows(maps)
    series_uid = generate_uid()
    paths = []
    for n, c in enumerate(candidates[:max_images], start=1):
        rgb = np.ascontiguousarray(render_candidate_tile(maps, c, windows=windows))
        ref = nearest_source_image(datasets, c.lps)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=n, manufacturer="cmbdetect",
            patient_orientation=("L", "P"))
        sc.SeriesDescription = "cmbdetect key images"
        sc.ImageComments = (f"candidate {c.id}: {c.label} p={c.probability:.2f}, region {c.region}, "
                            f"review priority {c.review_priority}")[:10240]
        item = Dataset()
        item.ReferencedSOPClassUID = ref.SOPClassUID
        item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        sc.ReferencedImageSequence = [item]
        paths.append(_write_atomic(sc, Path(out_dir) / f"key-{c.id:04d}.dcm"))
    return paths
