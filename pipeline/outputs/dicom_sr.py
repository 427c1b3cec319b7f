"""DICOM Comprehensive 3D SR measurement report (TID 1500) of the reader's list, built with highdicom.

One TID 1411 volumetric measurement group per listed candidate with
* a tracking identifier (UID + ``"candidate <id>"``);
* the candidate centre as a ``POINT`` volume surface (SCOORD3D, LPS mm) in the frame of reference of
  the source series, which is referenced as the source series and as evidence;
* the finding type (:data:`FINDING_CODES`): microbleed and possible microbleed -> SNOMED CT 723857007
  "Silent micro-hemorrhage of brain" (the SNOMED CT concept for cerebral microbleeds seen on imaging; a
  possible microbleed also carries the qualitative evaluation 99CMBD CMBCERTAINTY "Microbleed call
  certainty" = SCT 64957009 "Uncertain"), calcification -> SCT 18115005 "Pathologic calcification" (with
  the finding site Brain), vein -> SCT 29092000 "Vein", other -> SCT 365853002 "Imaging finding";
* the finding site "Brain" (SCT 12738006) with the MARS group as topographical modifier: lobar -> DCM
  112158 "Lobar", deep -> SCT 795002 "Deep", infratentorial -> 99CMBD INFRATENT (no standard code);
* measurements: probability of the finding (DCM 122157, UCUM ``1``), mean magnetic susceptibility
  (DCM 126396, UCUM ``ppm``, > 0 paramagnetic), diameter (SCT 81827009, mm), volume (SCT 118565006,
  mm3); values that are not finite are left out;
* the algorithm (name, version) of the detection.
The private scheme 99CMBD is declared in the CodingSchemeIdentificationSequence.  With no listed
candidate the report holds one TID 1501 group whose finding is SCT 272519000 "Absence findings", so
that "nothing found" is stated rather than implied.

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

from cmbdetect.pipeline.outputs.candidates import Candidate
from cmbdetect.pipeline.outputs.dicom_sources import (BRAIN, PRIVATE_SCHEME,
                                              PRIVATE_SCHEME_NAME, PRIVATE_SCHEME_ORGANIZATION,
                                              export_sources, write_atomic)

_MICROBLEED = hd.sr.CodedConcept("723857007", "SCT", "Silent micro-hemorrhage of brain")
FINDING_CODES: dict[str, hd.sr.CodedConcept] = {
    "microbleed": _MICROBLEED,
    "possible_microbleed": _MICROBLEED,
    "calcification": hd.sr.CodedConcept("18115005", "SCT", "Pathologic calcification"),
    "vein": hd.sr.CodedConcept("29092000", "SCT", "Vein"),
    "other": hd.sr.CodedConcept("365853002", "SCT", "Imaging finding"),
}
REGION_CODES: dict[str, hd.sr.CodedConcept] = {
    "lobar": hd.sr.CodedConcept("112158", "DCM", "Lobar"),
    "deep": hd.sr.CodedConcept("795002", "SCT", "Deep"),
    "infratentorial": hd.sr.CodedConcept("INFRATENT", PRIVATE_SCHEME, "Infratentorial"),
}
#: Qualitative evaluation of a possible microbleed (private name, standard value).
CERTAINTY = hd.sr.CodedConcept("CMBCERTAINTY", PRIVATE_SCHEME, "Microbleed call certainty")
UNCERTAIN = hd.sr.CodedConcept("64957009", "SCT", "Uncertain")
_PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
_SUSCEPTIBILITY = hd.sr.CodedConcept("126396", "DCM", "Magnetic Susceptibility")
_UNITY = hd.sr.CodedConcept("1", "UCUM", "no units")
_PPM = hd.sr.CodedConcept("ppm", "UCUM", "ppm")
_MM = hd.sr.CodedConcept("mm", "UCUM", "mm")
_MM3 = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
_BRAIN_MRI = hd.sr.CodedConcept("24590-2", "LN", "Brain MRI")


def _measurements(c: Candidate) -> list[hd.sr.Measurement]:
    values = ((_PROBABILITY, c.probability, _UNITY), (_SUSCEPTIBILITY, c.susceptibility_ppm, _PPM),
              (codes.SCT.Diameter, c.diameter_mm, _MM), (codes.SCT.Volume, c.volume_mm3, _MM3))
    return [hd.sr.Measurement(name=name, value=float(v), unit=unit)
            for name, v, unit in values if math.isfinite(v)]


def measurement_group(c: Candidate, *, frame_of_reference_uid: str, series_uid: str,
                      algorithm: hd.sr.AlgorithmIdentification):
    """The TID 1411 group of one candidate (centre as a POINT in the source frame of reference)."""
    region = REGION_CODES.get(c.region)
    evaluations = [hd.sr.QualitativeEvaluation(CERTAINTY, UNCERTAIN)] if c.label == "possible_microbleed" \
        else None
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"candidate {c.id}"),
        referenced_volume_surface=hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([c.lps], dtype=float),
            frame_of_reference_uid=frame_of_reference_uid,
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid)),
        finding_type=FINDING_CODES.get(c.label, FINDING_CODES["other"]),
        finding_sites=[hd.sr.FindingSite(BRAIN, topographical_modifier=region)] if region else None,
        algorithm_id=algorithm,
        measurements=_measurements(c),
        qualitative_evaluations=evaluations)


def private_scheme_item() -> Dataset:
    """The CodingSchemeIdentificationSequence item that declares :data:`PRIVATE_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    return item


def write_dicom_sr(candidates: list[Candidate], *, source_datasets, path,
                   algorithm_name: str = "cmbdetect", algorithm_version: str = "0.1.0",
                   series_number: int = 990) -> Path:
    """Write a Comprehensive 3D SR (TID 1500) with one measurement group per candidate to ``path``
    (atomically); ``candidates`` are the reader's list (the caller selects them), ``source_datasets``
    the pydicom datasets of the source series (one frame of reference), referenced as evidence; their
    missing Type-2 attributes are written empty.  Returns the path."""
    datasets, for_uid, series_uid = export_sources(source_datasets)
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
    sr.CodingSchemeIdentificationSequence = [private_scheme_item()]
    return write_atomic(sr, Path(path))
