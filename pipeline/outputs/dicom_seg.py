"""DICOM Segmentation (binary SEG, highdicom) of the accepted lesions on the source series' grid.

One segment per accepted candidate (tracking identifier ``"candidate <id>"``, as in the SR), segmented
property category SCT 49755003 "Morphologically abnormal structure", type SCT 723857007 "Silent
micro-hemorrhage of brain", anatomic region Brain.  The segment is the sphere of the candidate's
equivalent diameter around its centre (a geometric summary of the detection, not a voxel-wise
delineation), evaluated at the pixel centres of the source images in DICOM patient coordinates (LPS mm);
a lesion smaller than a pixel marks the pixel nearest its centre.  The source images are those of one
echo (one image per slice position): multi-echo series repeat each position.
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
from cmbdetect.pipeline.outputs.dicom_sources import BODY_PART_EXAMINED, BRAIN, export_sources, write_atomic
from cmbdetect.pipeline.outputs.dicom_sr import FINDING_CODES


def one_image_per_position(datasets: list[Dataset]) -> list[Dataset]:
    """The first echo's image at each ImagePositionPatient (lowest EchoNumbers, then EchoTime)."""
    def echo_key(ds):
        return (float(getattr(ds, "EchoNumbers", 0) or 0), float(getattr(ds, "EchoTime", 0) or 0),
                int(getattr(ds, "InstanceNumber", 0) or 0))

    by_position: dict[tuple, Dataset] = {}
    for ds in sorted(datasets, key=echo_key):
        key = tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
        by_position.setdefault(key, ds)
    return list(by_position.values())


def _frame_geometry(ds: Dataset):
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_cos, col_cos = iop[:3], iop[3:]
    d_row, d_col = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    return np.asarray(ds.ImagePositionPatient, dtype=float), row_cos, col_cos, np.cross(row_cos, col_cos), \
        d_row, d_col


def lesion_masks(candidates: list[Candidate], images: list[Dataset]) -> np.ndarray:
    """Boolean array (frames, rows, columns, candidates): pixel centres within the candidate's sphere
    (radius ``diameter_mm / 2``, LPS mm), or the nearest pixel of the nearest frame when none is."""
    rows, cols = int(images[0].Rows), int(images[0].Columns)
    masks = np.zeros((len(images), rows, cols, len(candidates)), dtype=bool)
    geometry = [_frame_geometry(ds) for ds in images]
    for s, c in enumerate(candidates):
        radius = c.diameter_mm / 2.0 if math.isfinite(c.diameter_mm) else 0.0
        best = (math.inf, None)
        for f, (ipp, row_cos, col_cos, normal, d_row, d_col) in enumerate(geometry):
            offset = c.lps - ipp
            w, u, v = float(offset @ normal), float(offset @ row_cos), float(offset @ col_cos)
            col_i, row_i = int(round(u / d_col)), int(round(v / d_row))
            if abs(w) < best[0] and 0 <= row_i < rows and 0 <= col_i < cols:
                best = (abs(w), (f, row_i, col_i))
            if abs(w) > radius:
                continue
            cc = np.arange(cols) * d_col - u
            rr = np.arange(rows) * d_row - v
            masks[f, :, :, s] = rr[:, None] ** 2 + cc[None, :] ** 2 + w ** 2 <= radius ** 2
        if not masks[..., s].any() and best[1] is not None:
            f, r, col = best[1]
            masks[f, r, col, s] = True
    return masks


def write_lesion_seg(candidates: list[Candidate], *, source_datasets, path, software_version: str = "0.1.0",
                     series_number: int = 992) -> Path | None:
    """Write a binary SEG of ``candidates`` (the accepted lesions) to ``path`` (atomically), referencing
    the source series; ``None`` (nothing written) when there is no accepted lesion or none lies in the
    source images' field of view."""
    datasets, _, _ = export_sources(source_datasets)
    images = one_image_per_position(datasets)
    masks = lesion_masks(list(candidates), images)
    keep = [s for s in range(masks.shape[3]) if masks[..., s].any()]
    if not keep:
        return None
    algorithm = hd.AlgorithmIdentificationSequence(name="cmbdetect", version=software_version,
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=f"candidate {candidates[s].id}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=FINDING_CODES["microbleed"],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=generate_uid(), tracking_id=f"candidate {candidates[s].id}",
        anatomic_regions=[BRAIN]) for n, s in enumerate(keep, start=1)]
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=masks[..., keep].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="cmbdetect", manufacturer_model_name="cmbdetect",
        software_versions=software_version, device_serial_number="0",
        series_description="cmbdetect accepted microbleeds")
    seg.BodyPartExamined = BODY_PART_EXAMINED
    return write_atomic(seg, Path(path))
