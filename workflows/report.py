"""``init_report_wf``: candidate table + maps -> Slicer markups, HTML report, optional DICOM SR."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from cmbdetect.workflows.interfaces_report import ExportDicom, ExportMarkups, ExportReport

REPORT_OUTPUTS = ("markups", "report", "dicom_dir")


def init_report_wf(*, settings: dict | None = None, dicom: bool = False, mem_gb: float = 1.0,
                   label: str = "", name: str = "report_wf") -> pe.Workflow:
    """Exports of one subject.

    ``settings`` (JSON-able) are shown in the report; ``dicom`` adds the DICOM SR + key images node
    (needs ``reference_files``, the source DICOM files, whose headers also head the report).  Inputs:
    ``maps_bundle``, ``candidates_tsv`` (reader's list), ``candidates_all_tsv`` (audit table, optional),
    ``model_info``, ``reference_files``, ``acq_json`` (identity of the input, optional).  Outputs: :data:`REPORT_OUTPUTS` (``dicom_dir`` only with
    ``dicom``).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["maps_bundle", "candidates_tsv", "candidates_all_tsv", "model_info", "reference_files", "acq_json"],
        mandatory_inputs=False),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(REPORT_OUTPUTS), mandatory_inputs=False),
                         name="outputnode")
    markups = pe.Node(ExportMarkups(), name="markups", mem_gb=0.2)
    report = pe.Node(ExportReport(settings=dict(settings or {}), label=label), name="report",
                     mem_gb=mem_gb)
    wf.connect([
        (inputnode, markups, [("candidates_tsv", "candidates_tsv")]),
        (inputnode, report, [("maps_bundle", "maps_bundle"), ("candidates_tsv", "candidates_tsv"),
                             ("candidates_all_tsv", "candidates_all_tsv"), ("model_info", "model_info"),
                             ("acq_json", "acq_json")]),
        (markups, outputnode, [("markups", "markups")]),
        (report, outputnode, [("report", "report")]),
    ])
    if dicom:
        wf.connect(inputnode, "reference_files", report, "reference_files")
        export = pe.Node(ExportDicom(), name="dicom", mem_gb=mem_gb)
        wf.connect([
            (inputnode, export, [("candidates_tsv", "candidates_tsv"), ("maps_bundle", "maps_bundle"),
                                 ("reference_files", "reference_files")]),
            (export, outputnode, [("dicom_dir", "dicom_dir")]),
        ])
    return wf
