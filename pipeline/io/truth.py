"""Ground truth of a subject: the lesion table, a label map and the true susceptibility and local field.

Files live in a BIDS derivative folder ``<bids>/derivatives/groundtruth/sub-XX/`` (names from
:mod:`cmbdetect.pipeline.io.bids`):

* ``sub-XX_desc-lesions_table.tsv``: one row per lesion, columns :data:`TABLE_COLUMNS`
  (``kind`` microbleed | calcification; ``i j k`` continuous voxel centre; ``x y z`` scanner RAS mm;
  ``diameter_mm``; ``chi_ppm`` susceptibility relative to the surrounding tissue, ppm; ``region``
  lobar | deep | infratentorial).
* ``sub-XX_desc-lesions_dseg.nii.gz``: label map (uint8) with :data:`LABELS` codes
  (0 background, 1 microbleed, 2 calcification, 3 vein).
* ``sub-XX_desc-truth_Chimap.nii.gz``: true susceptibility (ppm, brain tissue/CSF reference 0).
* ``sub-XX_desc-truth_localfield.nii.gz``: true local field (ppm of B0) of the sources inside the
  intracranial mask (what background removal should recover; zero outside that mask).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.atomic import save_nifti
from cmbdetect.pipeline.io.bids import bids_name

#: Label codes of the label map.
LABELS: dict[str, int] = {"background": 0, "microbleed": 1, "calcification": 2, "vein": 3}
#: Lesion kinds of the table.
LESION_KINDS: tuple[str, ...] = ("microbleed", "calcification")
#: Columns of the lesion table, in order.
TABLE_COLUMNS: tuple[str, ...] = ("kind", "i", "j", "k", "x", "y", "z", "diameter_mm", "chi_ppm", "region")


@dataclass(frozen=True)
class Lesion:
    """One simulated (or annotated) lesion.

    ``centre_vox`` continuous voxel index (i, j, k); ``centre_ras`` scanner RAS mm; ``diameter_mm`` the
    diameter of the equivalent sphere; ``chi_ppm`` susceptibility relative to the surrounding tissue
    (> 0 paramagnetic microbleed, < 0 diamagnetic calcification); ``region`` lobar | deep |
    infratentorial (MARS grouping).
    """

    kind: str
    centre_vox: tuple[float, float, float]
    centre_ras: tuple[float, float, float]
    diameter_mm: float
    chi_ppm: float
    region: str


@dataclass
class Truth:
    """Ground truth of one subject on its acquisition grid ``[i, j, k]``.

    ``labels`` uint8 (:data:`LABELS`), ``chi_ppm`` float32 true susceptibility (ppm), ``local_field_ppm``
    float32 true local field (ppm of B0), ``affine`` 4x4 voxel -> scanner RAS mm.
    """

    lesions: list[Lesion]
    labels: np.ndarray
    chi_ppm: np.ndarray
    local_field_ppm: np.ndarray
    affine: np.ndarray

    def of_kind(self, kind: str) -> list[Lesion]:
        """The lesions of one kind (``"microbleed"`` or ``"calcification"``)."""
        return [les for les in self.lesions if les.kind == kind]


def _file_names(subject: str) -> dict[str, str]:
    return {
        "table": bids_name(sub=subject, desc="lesions", suffix="table", extension=".tsv"),
        "labels": bids_name(sub=subject, desc="lesions", suffix="dseg", extension=".nii.gz"),
        "chi": bids_name(sub=subject, desc="truth", suffix="Chimap", extension=".nii.gz"),
        "field": bids_name(sub=subject, desc="truth", suffix="localfield", extension=".nii.gz"),
    }


def subject_folder(groundtruth_root: Path | str, subject: str) -> Path:
    """``<groundtruth_root>/sub-<subject>`` (``subject`` without the ``sub-`` prefix)."""
    return Path(groundtruth_root) / f"sub-{subject}"


def write_lesion_table(lesions: list[Lesion], path: Path | str) -> Path:
    """Write the lesion table (TSV, :data:`TABLE_COLUMNS`); returns the path."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(TABLE_COLUMNS)
        for les in lesions:
            w.writerow([les.kind, *(f"{v:.3f}" for v in les.centre_vox), *(f"{v:.3f}" for v in les.centre_ras),
                        f"{les.diameter_mm:.3f}", f"{les.chi_ppm:.4f}", les.region])
    return path


def read_lesion_table(path: Path | str) -> list[Lesion]:
    """Read a lesion table written by :func:`write_lesion_table` (InputError if malformed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"lesion table {path} not found")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows or tuple(rows[0]) != TABLE_COLUMNS:
        raise InputError(f"lesion table {path} must have the columns {' '.join(TABLE_COLUMNS)}")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            num = [float(v) for v in row[1:9]]
        except (ValueError, IndexError):
            raise InputError(f"lesion table {path} line {n}: non-numeric or missing values") from None
        if len(row) != len(TABLE_COLUMNS) or not all(math.isfinite(v) for v in num):
            raise InputError(f"lesion table {path} line {n}: expected {len(TABLE_COLUMNS)} finite fields")
        out.append(Lesion(kind=row[0], centre_vox=tuple(num[0:3]), centre_ras=tuple(num[3:6]),
                          diameter_mm=num[6], chi_ppm=num[7], region=row[9]))
    return out


def write_truth(truth: Truth, groundtruth_root: Path | str, subject: str) -> Path:
    """Write ``truth`` into ``<groundtruth_root>/sub-<subject>/`` (created); returns that folder.

    Meant to be called inside a directory that is renamed into place when complete (the simulator
    builds the whole dataset in a temporary directory)."""
    folder = subject_folder(groundtruth_root, subject)
    folder.mkdir(parents=True, exist_ok=True)
    names = _file_names(subject)
    aff = np.asarray(truth.affine, dtype=float)
    write_lesion_table(truth.lesions, folder / names["table"])
    save_nifti(truth.labels, aff, folder / names["labels"], dtype=np.uint8)
    for key, arr in (("chi", truth.chi_ppm), ("field", truth.local_field_ppm)):
        save_nifti(arr, aff, folder / names[key])
    return folder


def read_truth(groundtruth_root: Path | str, subject: str) -> Truth:
    """Read the ground truth of ``subject`` (without ``sub-``) written by :func:`write_truth`."""
    folder = subject_folder(groundtruth_root, subject)
    names = _file_names(subject)
    for key in ("labels", "chi", "field"):
        if not (folder / names[key]).is_file():
            raise InputError(f"ground truth file {folder / names[key]} not found")
    lab = nib.load(folder / names["labels"])
    chi = nib.load(folder / names["chi"])
    field = nib.load(folder / names["field"])
    return Truth(
        lesions=read_lesion_table(folder / names["table"]),
        labels=np.asarray(lab.dataobj).astype(np.uint8),
        chi_ppm=np.asarray(chi.dataobj, dtype=np.float32),
        local_field_ppm=np.asarray(field.dataobj, dtype=np.float32),
        affine=np.asarray(lab.affine, dtype=float),
    )
