"""Nipype interfaces around the exports (Slicer markups, HTML report, DICOM SR) and the output sink."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from nipype.interfaces.base import (BaseInterfaceInputSpec, Directory, File, InputMultiObject,
                                    TraitedSpec, isdefined, traits)

from cmbdetect.pipeline.io.atomic import copy_file, write_json
from cmbdetect.pipeline.io.maps import load_maps_bundle
from cmbdetect.workflows.interfaces import CmbInterface, progress


class _MarkupsInputSpec(BaseInterfaceInputSpec):
    candidates_tsv = File(exists=True, mandatory=True, desc="candidate table")


class _MarkupsOutputSpec(TraitedSpec):
    markups = File(exists=True, desc="3D Slicer markups (LPS), candidates.mrk.json")


class ExportMarkups(CmbInterface):
    """Candidate table -> 3D Slicer point list (``pipeline.export_slicer.write_slicer_markups``) of the
    reader's list (``pipeline.candidates.reader_candidates``: the rest stay in candidates_all.tsv only)."""

    input_spec = _MarkupsInputSpec
    output_spec = _MarkupsOutputSpec

    def _run(self, cwd: Path) -> None:
        from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv, reader_candidates
        from cmbdetect.pipeline.outputs.slicer import write_slicer_markups

        path = cwd / "candidates.mrk.json"
        write_slicer_markups(reader_candidates(read_candidates_tsv(self.inputs.candidates_tsv)), path)
        self._results["markups"] = str(path)


class _ReportInputSpec(BaseInterfaceInputSpec):
    maps_bundle = File(exists=True, mandatory=True, desc="physics maps bundle (.npz)")
    candidates_tsv = File(exists=True, mandatory=True, desc="candidate table (the reader's list)")
    candidates_all_tsv = File(exists=True, desc="audit table of every stage-1 candidate (for its count)")
    model_info = File(exists=True, mandatory=True, desc="model.json from DetectCandidates")
    acq_json = File(exists=True, desc="acquisition.json (its source gives subject / patient identity)")
    reference_files = InputMultiObject(File(exists=True), desc="source DICOM files (patient, study, series)")
    settings = traits.Dict(desc="processing settings shown in the report")
    label = traits.Str("", usedefault=True, nohash=True,
                       desc="subject label for progress lines (not part of the cache key)")


class _ReportOutputSpec(TraitedSpec):
    report = File(exists=True, desc="report.html")


class ExportReport(CmbInterface):
    """Self-contained HTML report of one subject (``pipeline.report.write_report``), headed by the identity
    of ``pipeline.report_identity.report_identity``."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run(self, cwd: Path) -> None:
        from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv
        from cmbdetect.pipeline.outputs.report import write_report
        from cmbdetect.pipeline.outputs.report_identity import report_identity

        inputs = self.inputs
        progress(inputs.label, "writing report")
        maps = load_maps_bundle(inputs.maps_bundle)
        warnings = [str(w) for w in maps.meta.get("warnings", [])]
        settings = dict(inputs.settings) if isdefined(inputs.settings) else {}
        source = json.loads(Path(inputs.acq_json).read_text()).get("source", {}) if isdefined(inputs.acq_json) else {}
        acquisition = {k: settings[s] for k, s in (("Echo times (s)", "echo_times_s"), ("B0 (T)", "b0_t"),
                                                   ("Voxel size (mm)", "voxel_size_mm"), ("Matrix", "shape"))
                       if s in settings}
        refs = list(inputs.reference_files) if isdefined(inputs.reference_files) else []
        n_all = None
        if isdefined(inputs.candidates_all_tsv):
            n_all = len(read_candidates_tsv(inputs.candidates_all_tsv))
        path = cwd / "report.html"
        write_report(path, maps=maps, candidates=read_candidates_tsv(inputs.candidates_tsv),
                     settings=settings, warnings=warnings, n_all=n_all,
                     identity=report_identity(source, reference_files=refs, acquisition=acquisition),
                     model_info=json.loads(Path(inputs.model_info).read_text()))
        self._results["report"] = str(path)


class _DicomInputSpec(BaseInterfaceInputSpec):
    candidates_tsv = File(exists=True, mandatory=True, desc="candidate table")
    maps_bundle = File(exists=True, mandatory=True, desc="physics maps bundle (.npz), for key images")
    reference_files = InputMultiObject(File(exists=True), mandatory=True,
                                       desc="DICOM files of the source series (headers are referenced)")


class _DicomOutputSpec(TraitedSpec):
    dicom_dir = Directory(exists=True, desc="folder with the SR (sr.dcm), key images and SEG (seg.dcm)")
    export_record = File(exists=True, desc="dicom_export.json: objects written, errors, captured warnings")


class ExportDicom(CmbInterface):
    """DICOM Structured Report, key images and SEG of the DICOM findings of the reader's list, referencing the
    source series (``pipeline.export_dicom.write_dicom_outputs``); a failed object is listed in ``export_record``."""

    input_spec = _DicomInputSpec
    output_spec = _DicomOutputSpec

    def _run(self, cwd: Path) -> None:
        import pydicom

        from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv, reader_candidates

        candidates = reader_candidates(read_candidates_tsv(self.inputs.candidates_tsv))
        datasets = [pydicom.dcmread(f) for f in self.inputs.reference_files]
        out = cwd / "dicom"
        out.mkdir(exist_ok=True)
        from cmbdetect.pipeline.outputs.dicom import write_dicom_outputs
        from cmbdetect.pipeline.io.provenance import cmbdetect_version

        # A DICOM export that fails is recorded, never fatal: the NIfTI/TSV outputs are kept and the CLI
        # decides (--strict-exports) whether an incomplete export is an error.  The SR, key images and
        # SEG list the DICOM findings only (export_dicom.dicom_findings).
        record = write_dicom_outputs(candidates, source_datasets=datasets, out_dir=out,
                                     maps=load_maps_bundle(self.inputs.maps_bundle),
                                     algorithm_version=cmbdetect_version())
        self._results["export_record"] = str(write_json(record, cwd / "dicom_export.json"))
        self._results["dicom_dir"] = str(out)


class _SinkInputSpec(BaseInterfaceInputSpec):
    in_file = traits.Either(File(exists=True), Directory(exists=True),
                            desc="file or folder to copy; nothing happens when undefined")
    out_dir = Directory(mandatory=True, desc="output root (a staging folder renamed into place later)")
    out_name = traits.Str(mandatory=True, desc="path relative to out_dir")
    sidecar = traits.Dict(desc="JSON sidecar written beside the copy (<stem>.json)")


class _SinkOutputSpec(TraitedSpec):
    out_file = traits.Str(desc="path of the copy")


class DerivativesSink(CmbInterface):
    """Copy one output into ``out_dir/out_name`` (atomically per file), with an optional JSON sidecar.

    Always runs (never served from the cache), since its target lies outside the work directory."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run(self, cwd: Path) -> None:
        if not isdefined(self.inputs.in_file):
            return
        src = Path(self.inputs.in_file)
        dst = Path(self.inputs.out_dir) / self.inputs.out_name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copytree(src, tmp)
            if dst.exists():
                shutil.rmtree(dst)
            os.rename(tmp, dst)
        else:
            copy_file(src, dst)
        if isdefined(self.inputs.sidecar) and self.inputs.sidecar:
            write_json(self.inputs.sidecar, dst.parent / f"{dst.name.split('.')[0]}.json")
        self._results["out_file"] = str(dst)
