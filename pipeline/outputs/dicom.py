"""DICOM outputs of one subject: SR (:mod:`export_sr`), key images (:mod:`export_keyimages`) and a SEG
of the accepted lesions (:mod:`export_seg`), written so that a failure never loses the results.

:func:`write_dicom_outputs` writes each object independently: one that fails (an unusual source
header, a highdicom limitation) is recorded with a one-line reason and the others are still written;
the caller keeps the NIfTI/TSV outputs and decides whether an incomplete export is an error
(``cmbdetect run --strict-exports``).  highdicom's warnings are captured into the returned record (for
the provenance) instead of reaching stderr.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from cmbdetect.pipeline.outputs.candidates import Candidate
from cmbdetect.pipeline.outputs.dicom_keyimages import nearest_source_image, write_key_images  # noqa: F401
from cmbdetect.pipeline.outputs.dicom_sr import FINDING_CODES, REGION_CODES, write_dicom_sr  # noqa: F401

#: Labels of the DICOM findings until the reader's list (``candidates.reader_candidates``) is merged:
#: the SR, key images and SEG never list veins or stage-2 rejects.
DICOM_FINDING_LABELS: tuple[str, ...] = ("microbleed", "possible_microbleed", "calcification")
#: Labels of the lesions accepted into the SEG (until a reader's decisions exist).
ACCEPTED_LABELS: tuple[str, ...] = ("microbleed",)


def dicom_findings(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates the DICOM objects report (labels in :data:`DICOM_FINDING_LABELS`), in the given order:
    applied to the reader's list (``candidates.reader_candidates``), it leaves out the listed mimics."""
    return [c for c in candidates if c.label in DICOM_FINDING_LABELS]


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + ((str(exc).strip().splitlines() or [""])[0])


def write_dicom_outputs(candidates: list[Candidate], *, source_datasets, out_dir, maps=None,
                        algorithm_version: str = "0.1.0", seg: bool = True) -> dict:
    """Write ``out_dir/sr.dcm``, ``out_dir/keyimages/key-<id>.dcm`` (needs ``maps``) and, with ``seg``,
    ``out_dir/seg.dcm`` for the DICOM findings (:func:`dicom_findings`) of ``candidates``.

    Returns the record ``{"written": [relative paths of the .dcm files], "errors": [{"object", "message"}],
    "warnings": [str]}``: an object that raised is listed in ``errors`` (one line each) and the others
    are still written; warnings raised while building (highdicom's UserWarnings) are collected there
    rather than shown.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    listed = dicom_findings(candidates)
    record: dict = {"written": [], "errors": [], "warnings": [],
                    "n_findings": len(listed), "labels": list(DICOM_FINDING_LABELS)}
    jobs = [("sr", lambda: [write_dicom_sr(listed, source_datasets=source_datasets, path=out / "sr.dcm",
                                           algorithm_version=algorithm_version)])]
    if maps is not None:
        jobs.append(("keyimages", lambda: write_key_images(listed, maps=maps, source_datasets=source_datasets,
                                                           out_dir=out / "keyimages")))
    if seg:
        from cmbdetect.pipeline.outputs.dicom_seg import write_lesion_seg

        accepted = [c for c in listed if c.label in ACCEPTED_LABELS]
        jobs.append(("seg", lambda: [write_lesion_seg(accepted, source_datasets=source_datasets,
                                                      path=out / "seg.dcm",
                                                      software_version=algorithm_version)]))
    for name, job in jobs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                job()
            except Exception as exc:  # recorded; the other objects and the NIfTI/TSV outputs are kept
                record["errors"].append({"object": name, "message": _one_line(exc)})
        record["warnings"] += sorted({f"{name}: {w.category.__name__}: {w.message}" for w in caught})
    record["written"] = sorted(str(p.relative_to(out)) for p in out.rglob("*.dcm"))
    return record
