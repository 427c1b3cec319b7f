"""Who and what a report is about: patient / subject identity, study, series and acquisition, for its header.

A report without the patient's identity at the top invites a wrong-patient reading.  For DICOM input the
identity comes from the source series' headers (``PatientName``, ``PatientID``, ``StudyDate``,
``SeriesDescription``, ``SeriesNumber``...), for NIfTI / BIDS input from the subject label and the input file
names (what the reader can check against their own records).
"""
from __future__ import annotations

from pathlib import Path

#: DICOM header keywords shown, in order, with their labels.
DICOM_FIELDS: tuple[tuple[str, str], ...] = (
    ("PatientName", "Patient name"), ("PatientID", "Patient ID"), ("PatientBirthDate", "Birth date"),
    ("PatientSex", "Sex"), ("StudyDate", "Study date"), ("AccessionNumber", "Accession"),
    ("StudyDescription", "Study"), ("SeriesNumber", "Series number"), ("SeriesDescription", "Series"),
    ("ProtocolName", "Protocol"), ("Manufacturer", "Manufacturer"), ("InstitutionName", "Institution"))


def _date(value: str) -> str:
    """DICOM DA ``YYYYMMDD`` as ``YYYY-MM-DD`` (anything else unchanged)."""
    v = str(value).strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else v


def _from_datasets(datasets) -> dict[str, str]:
    out: dict[str, str] = {}
    for keyword, label in DICOM_FIELDS:
        values = []
        for ds in datasets:
            v = ds.get(keyword)
            v = "" if v is None else str(v).strip()
            if v and v not in values:
                values.append(v)
        if values:
            out[label] = " / ".join(_date(v) if keyword.endswith("Date") else v for v in values)
    return out


def _names(paths) -> str:
    return ", ".join(Path(str(p)).name for p in paths)


def report_identity(source: dict | None, *, reference_files=(), acquisition: dict | None = None) -> dict[str, str]:
    """Ordered ``{label: value}`` for the report header.

    ``source`` is ``Acquisition.source`` as saved with the acquisition (``dicom.patient`` / ``dicom.study``
    for DICOM input, the file names and BIDS subject otherwise); ``reference_files`` the source DICOM files
    (their headers, read without pixel data, give the series description and number); ``acquisition``
    extra lines such as TE, B0 and voxel size.  Keys absent from the input are left out; a DICOM input
    without a patient name or ID says so."""
    source = dict(source or {})
    out: dict[str, str] = {}
    datasets = []
    if reference_files:
        import pydicom

        for f in reference_files:
            try:
                datasets.append(pydicom.dcmread(str(f), stop_before_pixels=True))
            except Exception:  # an unreadable reference only loses header lines, never the report
                continue
    dicom = source.get("dicom") or {}
    if datasets:
        out.update(_from_datasets(datasets))
    elif dicom:
        keys = {**dicom.get("patient", {}), **dicom.get("study", {}), "Manufacturer": dicom.get("manufacturer", "")}
        out.update(_from_datasets([keys]))
    if source.get("format") == "dicom" or dicom:
        out.setdefault("Patient name", "(not in the DICOM headers)")
        out.setdefault("Patient ID", "(not in the DICOM headers)")
        if source.get("folders"):
            out["Input"] = "DICOM " + ", ".join(str(f) for f in source["folders"])
    else:
        subject = source.get("bids_label") or (f"sub-{source['subject']}" if source.get("subject") else "")
        out["Subject"] = subject or "(not given: NIfTI input without a subject label)"
        if source.get("session"):
            out["Session"] = str(source["session"])
        sidecar = source.get("sidecar") or {}
        for key, label in (("SeriesDescription", "Series"), ("SeriesNumber", "Series number"),
                           ("ProtocolName", "Protocol"), ("AcquisitionDateTime", "Acquired"),
                           ("Manufacturer", "Manufacturer")):
            if sidecar.get(key) not in (None, ""):
                out[label] = str(sidecar[key])
        if source.get("mag"):
            out["Magnitude"] = _names(source["mag"])
        if source.get("phase"):
            out["Phase"] = _names(source["phase"])
    for k, v in (acquisition or {}).items():
        out[k] = _value(v)
    return out


def _value(v) -> str:
    """Numbers as ``%g``, lists of them joined (``0.004, 0.008``; ``160 x 192 x 72`` for integers)."""
    if isinstance(v, (list, tuple)) or hasattr(v, "tolist"):
        items = list(v.tolist() if hasattr(v, "tolist") else v)
        if items and all(isinstance(x, int) for x in items):
            return " x ".join(str(x) for x in items)
        return ", ".join(_value(x) for x in items)
    try:
        return f"{float(v):g}" if not isinstance(v, str) else v
    except (TypeError, ValueError):
        return str(v)
