"""DICOM secondary-capture key images: the report's tile of each listed candidate, in the source study.

Each image copies the patient and study of the source series (missing Type-2 attributes written empty,
:func:`cmbdetect.pipeline.outputs.dicom_sources.export_sources`), references the source image whose plane passes
nearest the candidate, and states ``BodyPartExamined`` BRAIN (an unpaired body part, so the General
Series Laterality, Type 2C, is correctly absent).
"""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.outputs.candidates import Candidate
from cmbdetect.pipeline.outputs.dicom_sources import BODY_PART_EXAMINED, export_sources, write_atomic
from cmbdetect.pipeline.outputs.report import display_windows, render_candidate_tile


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
    referencing the source image nearest the candidate.  At most ``max_images`` (the first ones: the
    caller passes the reader's list in review order).  ``PatientOrientation`` describes the tile's
    axial row (columns to L, rows to P).  Returns the paths."""
    datasets, _, _ = export_sources(source_datasets)
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
        sc.BodyPartExamined = BODY_PART_EXAMINED
        sc.ImageComments = (f"candidate {c.id}: {c.label} p={c.probability:.2f}, region {c.region}, "
                            f"review order {c.review_order}")[:10240]
        item = Dataset()
        item.ReferencedSOPClassUID = ref.SOPClassUID
        item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        sc.ReferencedImageSequence = [item]
        paths.append(write_atomic(sc, Path(out_dir) / f"key-{c.id:04d}.dcm"))
    return paths
