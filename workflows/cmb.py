"""``init_cmb_wf``: the whole microbleed pipeline of one subject (QSM -> detection -> exports -> sink).

fMRIPrep style: every option is a typed keyword argument (the CLI turns its arguments into these, the
workflow never reads CLI arguments); results are copied by :class:`DerivativesSink` nodes into
``output_dir`` under names given by ``output_names`` (:func:`plain_output_names` for ``cmbdetect run``,
:func:`bids_output_names` for BIDS derivatives).
"""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from cmbdetect.physics.settings import DEFAULT_PHYSICS

from cmbdetect.workflows.detect import DETECT_OUTPUTS, init_detect_wf
from cmbdetect.workflows.interfaces_report import DerivativesSink
from cmbdetect.workflows.qsm import QSM_OUTPUTS, init_qsm_wf
from cmbdetect.workflows.report import REPORT_OUTPUTS, init_report_wf

#: Output kind -> (sub-workflow, outputnode field).
_SOURCES = {
    "candidates_tsv": ("detect_wf", "candidates_tsv"), "candidates_json": ("detect_wf", "candidates_json"),
    "candidates_all_tsv": ("detect_wf", "candidates_all_tsv"),
    "candidates_all_json": ("detect_wf", "candidates_all_json"),
    "chimap": ("qsm_wf", "chimap"), "localfield": ("qsm_wf", "localfield"),
    "brainmask": ("qsm_wf", "brainmask"), "swi": ("qsm_wf", "swi"), "mip": ("qsm_wf", "mip"),
    "r2star": ("qsm_wf", "r2star"), "markups": ("report_wf", "markups"),
    "report": ("report_wf", "report"), "dicom_dir": ("report_wf", "dicom_dir"),
}


def plain_output_names() -> dict[str, str]:
    """Fixed file names of ``cmbdetect run --out DIR`` (``r2star`` only for multi-echo data)."""
    return {"candidates_tsv": "candidates.tsv", "candidates_json": "candidates.json",
            "candidates_all_tsv": "candidates_all.tsv", "candidates_all_json": "candidates_all.json",
            "chimap": "chimap.nii.gz", "swi": "swi.nii.gz", "mip": "mip.nii.gz",
            "brainmask": "brainmask.nii.gz", "localfield": "localfield.nii.gz",
            "r2star": "r2star.nii.gz", "markups": "candidates.mrk.json", "report": "report.html",
            "dicom_dir": "dicom"}


def bids_output_names(entities: dict[str, str | None]) -> dict[str, str]:
    """BIDS-derivative names relative to the derivatives root, from the acquisition's entities
    (``sub`` required; ``ses``, ``acq``, ``run`` ... kept): ``sub-01/anat/sub-01_Chimap.nii.gz`` ...
    (:mod:`cmbdetect.pipeline.outputs.bids_derivatives` says why these names)."""
    from cmbdetect.pipeline.outputs.bids_derivatives import derivative_path

    def name(suffix: str, extension: str, **extra) -> str:
        return derivative_path(entities, suffix=suffix, extension=extension, **extra)

    return {"candidates_tsv": name("candidates", ".tsv", desc="cmb"),
            "candidates_all_tsv": name("candidates", ".tsv", desc="cmball"),
            "chimap": name("Chimap", ".nii.gz"),
            "swi": name("T2starw", ".nii.gz", desc="swi"),
            "mip": name("T2starw", ".nii.gz", desc="mip"),
            "brainmask": name("mask", ".nii.gz", desc="brain"),
            "localfield": name("T2starw", ".nii.gz", desc="localfield"),
            "r2star": name("R2starmap", ".nii.gz"),
            "markups": name("markups", ".mrk.json", desc="cmb"),
            "report": name("report", ".html", desc="cmb")}


def init_cmb_wf(*, output_dir: str | Path, output_names: dict[str, str] | None = None,
                sidecars: dict[str, dict] | None = None, model: str = "default",
                model_sha256: str | None = None, prevalence: float | None = None,
                unwrap: str = DEFAULT_PHYSICS.unwrap, background: str = DEFAULT_PHYSICS.background,
                inversion: str = DEFAULT_PHYSICS.inversion,
                swi_slab_mm: float = DEFAULT_PHYSICS.swi_slab_mm, dicom: bool = False,
                settings: dict | None = None, mem_gb: float = 2.0, omp_nthreads: int = 1,
                label: str = "", name: str = "cmb_wf") -> pe.Workflow:
    """Full pipeline of one subject.

    Inputs (``inputnode``): ``mag_file``, ``phase_file``, ``acq_json`` (see
    :func:`cmbdetect.workflows.interfaces.save_acquisition`), optional ``mask_file``, and with ``dicom``
    the source DICOM ``reference_files``.  Outputs (``outputnode``): the work-folder files of the QSM,
    detection and report sub-workflows (``n_candidates``, ``n_microbleeds`` included).
    Each output kind named in ``output_names`` is copied to ``output_dir/<name>``, with
    ``sidecars[kind]`` (if any) written as a JSON sidecar.  ``model_sha256`` pins the model content.
    ``mem_gb`` is the memory estimate of the heavy nodes (GB), ``omp_nthreads`` the threads of the
    detection node.
    """
    names = plain_output_names() if output_names is None else dict(output_names)
    sidecars = dict(sidecars or {})
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["mag_file", "phase_file", "acq_json", "mask_file", "reference_files"],
        mandatory_inputs=False), name="inputnode")
    outputs = list(QSM_OUTPUTS) + list(DETECT_OUTPUTS) + list(REPORT_OUTPUTS)
    outputnode = pe.Node(niu.IdentityInterface(fields=outputs, mandatory_inputs=False), name="outputnode")
    subs = {
        "qsm_wf": init_qsm_wf(unwrap=unwrap, background=background, inversion=inversion,
                              swi_slab_mm=swi_slab_mm, mem_gb=mem_gb, label=label),
        "detect_wf": init_detect_wf(model=model, model_sha256=model_sha256, prevalence=prevalence,
                                    omp_nthreads=omp_nthreads, mem_gb=mem_gb, label=label),
        "report_wf": init_report_wf(settings=settings, dicom=dicom, mem_gb=mem_gb, label=label),
    }
    qsm_wf, detect_wf, report_wf = subs["qsm_wf"], subs["detect_wf"], subs["report_wf"]
    wf.connect([
        (inputnode, qsm_wf, [(f"{f}", f"inputnode.{f}")
                             for f in ("mag_file", "phase_file", "acq_json", "mask_file")]),
        (qsm_wf, detect_wf, [("outputnode.maps_bundle", "inputnode.maps_bundle")]),
        (qsm_wf, report_wf, [("outputnode.maps_bundle", "inputnode.maps_bundle")]),
        (inputnode, report_wf, [("acq_json", "inputnode.acq_json")]),
        (detect_wf, report_wf, [("outputnode.candidates_tsv", "inputnode.candidates_tsv"),
                                ("outputnode.candidates_all_tsv", "inputnode.candidates_all_tsv"),
                                ("outputnode.model_info", "inputnode.model_info")]),
        (qsm_wf, outputnode, [(f"outputnode.{f}", f) for f in QSM_OUTPUTS]),
        (detect_wf, outputnode, [(f"outputnode.{f}", f) for f in DETECT_OUTPUTS]),
        (report_wf, outputnode, [(f"outputnode.{f}", f) for f in REPORT_OUTPUTS
                                 if dicom or f != "dicom_dir"]),
    ])
    if dicom:
        wf.connect(inputnode, "reference_files", report_wf, "inputnode.reference_files")
    for kind, rel in names.items():
        if kind not in _SOURCES:
            raise ValueError(f"unknown output kind {kind!r}")
        if kind == "dicom_dir" and not dicom:
            continue
        sink = pe.Node(DerivativesSink(out_dir=str(output_dir), out_name=rel), name=f"ds_{kind}",
                       run_without_submitting=True, mem_gb=0.1)
        if kind in sidecars:
            sink.inputs.sidecar = sidecars[kind]
        sub, field = _SOURCES[kind]
        wf.connect(subs[sub], f"outputnode.{field}", sink, "in_file")
    return wf


def configure_execution(wf: pe.Workflow, *, crash_dir: str | Path, stop_on_first_crash: bool) -> None:
    """Per-workflow Nipype settings (never the global config): text crash files in ``crash_dir``;
    timestamp hashing (inputs are rewritten only when their content changes, see
    ``interfaces.save_acquisition``), so a rerun over the same work directory resumes from the cache
    without re-reading hundreds of MB of intermediate files."""
    wf.config["execution"] = {
        "crashfile_format": "txt",
        "crashdump_dir": str(crash_dir),
        "hash_method": "timestamp",
        "stop_on_first_crash": "true" if stop_on_first_crash else "false",
        "remove_unnecessary_outputs": "false",
        "create_report": "false",
    }
