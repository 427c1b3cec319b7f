"""The source DICOM series of the exports: checks, Type-2 completion, atomic saving, shared codes.

Anonymised series often lack Type-2 attributes of the Patient / General Study / Frame of Reference
modules (AccessionNumber, StudyID, ReferringPhysicianName, PatientBirthDate, ...).  DICOM allows them
empty, and the derived objects (SR, key images, SEG) copy them from the source: :func:`export_sources`
returns header-only copies of the source datasets with every missing one present and empty, so that the
builders never fail on them and the outputs carry them (empty) as the standard requires.
"""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.atomic import atomic_file

#: Type-2 attributes (may be empty, must be present) that the exports copy from the source images:
#: Patient module, General Study module, Frame of Reference module.
TYPE2_SOURCE_ATTRIBUTES: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "PositionReferenceIndicator",
)

#: Body part of every export (CID 4031 "Common Anatomic Regions"); also what makes the General Series
#: Laterality (Type 2C, paired body parts only) correctly absent.
BODY_PART_EXAMINED = "BRAIN"

#: This tool's private coding scheme, declared in each SR's CodingSchemeIdentificationSequence.
PRIVATE_SCHEME = "99CMBD"
PRIVATE_SCHEME_NAME = "cmbdetect local codes"
PRIVATE_SCHEME_ORGANIZATION = "cmbdetect project"

#: SNOMED CT "Brain" (finding site of every export).
BRAIN = hd.sr.CodedConcept("12738006", "SCT", "Brain")


def check_sources(source_datasets) -> tuple[list[Dataset], str, str]:
    """The source datasets, their FrameOfReferenceUID and SeriesInstanceUID (one series); anything else
    raises :class:`InputError`."""
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


def completed_header(ds: Dataset) -> Dataset:
    """A header-only copy of ``ds`` (no pixel data; elements shared, not copied) with every
    :data:`TYPE2_SOURCE_ATTRIBUTES` entry that is absent added empty; ``ds`` is not modified."""
    out = Dataset()
    for elem in ds:
        if elem.keyword != "PixelData":
            out.add(elem)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    for keyword in TYPE2_SOURCE_ATTRIBUTES:
        if keyword not in out:
            setattr(out, keyword, None)
    return out


def export_sources(source_datasets) -> tuple[list[Dataset], str, str]:
    """:func:`check_sources`, then :func:`completed_header` of each dataset."""
    datasets, for_uid, series_uid = check_sources(source_datasets)
    return [completed_header(ds) for ds in datasets], for_uid, series_uid


def write_atomic(dataset: Dataset, path: Path) -> Path:
    """Save ``dataset`` under a temporary name beside ``path`` and rename it into place."""
    path = Path(path)
    with atomic_file(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path
