"""``cmbdetect run``: the whole pipeline on one subject (NIfTI or DICOM) into one output folder.

Outputs in ``--out DIR`` (fixed names): candidates.tsv/.json, chimap, swi, mip, brainmask, localfield
(.nii.gz), candidates.mrk.json, report.html, provenance.json, and with ``--dicom`` a ``dicom/`` folder
(SR + key images).  Everything is written into a temporary folder beside DIR and renamed into place
at the end: a failed run leaves no partial output.  ``-w WORKDIR`` keeps Nipype's cache there, so a
rerun resumes; without it a temporary work folder is used and removed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.settings import (BACKGROUND_CHOICES, DEFAULT_PHYSICS, INVERSION_CHOICES, UNWRAP_CHOICES,
                                        PhysicsSettings)
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.output_folder import OutputClaim



def add_execution_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Model, physics and execution options shared by ``run``, ``demo`` and the BIDS-App form."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="default",
                   help="shipped model name or path to a model folder/file (default: %(default)s)")
    g.add_argument("--prevalence", type=float, metavar="P",
                   help="expected microbleed prevalence (0-1) to recalibrate probabilities")
    p = parser.add_argument_group("physics")
    p.add_argument("--unwrap", choices=UNWRAP_CHOICES, default=DEFAULT_PHYSICS.unwrap,
                   help="phase unwrapping (default: %(default)s)")
    p.add_argument("--background", choices=BACKGROUND_CHOICES, default=DEFAULT_PHYSICS.background,
                   help="background field removal (default: %(default)s)")
    p.add_argument("--inversion", choices=INVERSION_CHOICES, default=DEFAULT_PHYSICS.inversion,
                   help="dipole inversion method (default: %(default)s)")
    e = parser.add_argument_group("execution")
    e.add_argument("--nprocs", type=int, default=None,
                   help="CPUs to use (default: all): subjects in parallel (MultiProc) for BIDS, "
                        "threads for one subject")
    e.add_argument("--mem-gb", type=float, metavar="GB", help="memory limit for MultiProc scheduling")
    e.add_argument("-w", "--work-dir", metavar="WORKDIR",
                   help="Nipype work folder (kept: a rerun resumes from its cache)")
    e.add_argument("--plugin", help="linear, multiproc, slurm, sge, pbs, ... (default: from --nprocs)")
    e.add_argument("--plugin-args", metavar="JSON",
                   help="JSON plugin options, e.g. '{\"sbatch_args\": \"--mem=8G -p short\"}'")
    e.add_argument("-v", "--verbose", action="count", default=0,
                   help="Nipype log lines, and tracebacks of unexpected errors")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cmbdetect.pipeline.cli.common import add_input_arguments
    from cmbdetect.pipeline.io.output_folder import add_overwrite_argument

    parser = subparsers.add_parser(
        "run", help="detect microbleeds in one subject (NIfTI or DICOM magnitude + phase)",
        description="Run QSM physics, detection and exports on one subject.")
    add_input_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: new, empty, or an earlier cmbdetect result (with --overwrite)")
    add_overwrite_argument(parser)
    parser.add_argument("--strict-exports", action="store_true",
                        help="exit with status 1 when an export (report, Slicer markups, DICOM SR, key "
                             "images, SEG) could not be written (the maps and tables are written either way)")
    add_execution_arguments(parser)
    return parser


@dataclass
class PipelineOptions:
    """Typed options of one pipeline run (what the CLI turns its arguments into)."""

    model: str = "default"
    prevalence: float | None = None
    unwrap: str = DEFAULT_PHYSICS.unwrap
    background: str = DEFAULT_PHYSICS.background
    inversion: str = DEFAULT_PHYSICS.inversion
    nprocs: int = 1
    mem_gb: float | None = None
    plugin_name: str = "Linear"
    plugin_args: dict = field(default_factory=dict)
    work_dir: Path | None = None
    verbose: int = 0

    @property
    def physics(self) -> PhysicsSettings:
        """The physics settings of the run (validated: an unknown method is a ValueError)."""
        return PhysicsSettings(unwrap=self.unwrap, background=self.background, inversion=self.inversion)

    def parameters(self) -> dict:
        """JSON-able record for provenance/report (no execution details that do not change results)."""
        d = asdict(self)
        for k in ("work_dir", "verbose", "plugin_args", "mem_gb", "nprocs", "plugin_name"):
            d.pop(k)
        return d

    def execution(self) -> dict:
        """How the run was executed (recorded in provenance; does not change the results)."""
        return {"nprocs": self.nprocs, "mem_gb": self.mem_gb, "plugin": self.plugin_name,
                "plugin_args": dict(self.plugin_args),
                "work_dir": str(self.work_dir) if self.work_dir else None}


def options_from_args(args: argparse.Namespace, *, single_subject: bool = False) -> PipelineOptions:
    """Validate the shared options (one-line InputError on bad values) into :class:`PipelineOptions`.

    ``single_subject``: without ``--plugin`` the nodes run in-process one after the other (``Linear``)
    and ``--nprocs`` becomes the thread count of each node -- one subject's chain is sequential, so a
    process pool would only add start-up and polling time; ``--plugin multiproc`` still forces it.
    """
    from cmbdetect.workflows.plugins import parse_plugin_args, plugin_settings

    if args.prevalence is not None and not 0.0 < args.prevalence < 1.0:
        raise InputError(f"--prevalence must be between 0 and 1, got {args.prevalence}")
    plugin = "linear" if single_subject and args.plugin is None else args.plugin
    nprocs = args.nprocs if args.nprocs is not None else (os.cpu_count() or 1)
    name, pargs = plugin_settings(plugin=plugin, nprocs=nprocs, mem_gb=args.mem_gb,
                                  plugin_args=parse_plugin_args(args.plugin_args))
    model = str(args.model)
    if Path(model).expanduser().exists():  # a model folder: absolute, since nodes run elsewhere
        model = str(Path(model).expanduser().absolute())
    return PipelineOptions(model=model, prevalence=args.prevalence, unwrap=args.unwrap,
                           background=args.background, inversion=args.inversion, nprocs=nprocs,
                           mem_gb=args.mem_gb, plugin_name=name, plugin_args=pargs,
                           work_dir=Path(args.work_dir).absolute() if args.work_dir else None,
                           verbose=args.verbose)


def check_model(model: str) -> dict:
    """Load the model once up front: its description, or a one-line InputError if unusable."""
    from cmbdetect.workflows.interfaces_detect import model_description

    try:
        return model_description(model)
    except InputError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load model {model!r}: {reason}") from None


def subject_workflow(options: PipelineOptions, *, output_dir: Path, model_sha256: str, mem_gb: float,
                     omp_nthreads: int, settings: dict, label: str = "", dicom: bool = False,
                     output_names: dict[str, str] | None = None, sidecars: dict[str, dict] | None = None,
                     name: str = "cmb_wf"):
    """The one workflow of one subject that ``run``, ``demo`` and the BIDS participant level execute: the model
    and physics settings of ``options`` (``options.physics``) into :func:`~cmbdetect.workflows.cmb.init_cmb_wf`."""
    from cmbdetect.workflows.cmb import init_cmb_wf

    return init_cmb_wf(output_dir=output_dir, output_names=output_names, sidecars=sidecars, model=options.model,
                       model_sha256=model_sha256, prevalence=options.prevalence, **options.physics.as_dict(),
                       dicom=dicom, settings=settings, mem_gb=mem_gb, omp_nthreads=omp_nthreads, label=label,
                       name=name)


def node_memory_gb(acq: Acquisition) -> float:
    """Memory estimate (GB) of the heavy nodes: ~30 float32 volumes of the acquisition grid."""
    n = int(acq.mag[0].size)
    return max(0.5, n * 4 * (30 + 2 * acq.n_echoes) / 1e9)


def prepare_inputs(acq: Acquisition, folder: Path, *, mask=None) -> dict:
    """Write the workflow's input files (acquisition, mask, DICOM references) into ``folder``;
    returns the ``inputnode`` values."""
    from cmbdetect.pipeline.io.atomic import save_nifti
    from cmbdetect.workflows.interfaces import save_acquisition

    values = {k: str(v) for k, v in save_acquisition(acq, folder).items()}
    if mask is not None:
        values["mask_file"] = str(save_nifti(mask, acq.affine, folder / "mask.nii", dtype="uint8"))
    datasets = acq.source.get("dicom_datasets")
    if datasets:
        import pydicom

        ref = folder / "dicom_ref"
        ref.mkdir(exist_ok=True)
        files = []
        for n, ds in enumerate(datasets):
            path = ref / f"ref_{n:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=False)
            files.append(str(path))
        values["reference_files"] = files
    return values


def run_acquisition(acq: Acquisition, *, out_dir: Path, options: PipelineOptions, mask=None,
                    command_line: list[str] | None = None, label: str = "",
                    extra_writer: Callable[[Path], None] | None = None,
                    model_info: dict | None = None, claim: OutputClaim | None = None) -> dict:
    """Run the workflow on ``acq`` and put the outputs (+ provenance.json) atomically in ``out_dir``.

    ``mask`` is an optional bool brain mask on the acquisition grid; ``extra_writer(tmp_out)`` may add
    files before the folder is renamed into place; ``model_info`` (from :func:`check_model`) saves
    loading the model again; ``claim`` (:func:`~cmbdetect.pipeline.io.output_folder.claim_output_folder`) lets
    the run replace an earlier result in ``out_dir`` (only its own files).  Returns a summary (candidate counts, model, paths).
    """
    from cmbdetect.pipeline.io.atomic import atomic_directory, write_json
    from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv
    from cmbdetect.pipeline.io.provenance import StageTimer, build_provenance, work_subdir
    from cmbdetect.workflows.cmb import configure_execution
    from cmbdetect.workflows.interfaces import progress
    from cmbdetect.workflows.plugins import raise_for_failures, run_workflow

    timer = StageTimer()
    model_info = model_info or check_model(options.model)
    temp_work = options.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="cmbdetect-work-")) if temp_work else options.work_dir
    ok = False
    try:
        with timer("prepare"):
            work.mkdir(parents=True, exist_ok=True)
            values = prepare_inputs(acq, work / "inputs", mask=mask)
        dicom = "reference_files" in values
        settings = {**options.parameters(), "echo_times_s": [float(t) for t in acq.te],
                    "b0_t": float(acq.b0), "voxel_size_mm": [round(float(v), 4) for v in acq.voxel_size],
                    "shape": list(acq.shape)}
        with atomic_directory(out_dir, claim=claim, kind="run") as tmp:
            wf = subject_workflow(options, output_dir=tmp, model_sha256=model_info["sha256"], dicom=dicom,
                                  settings=settings, mem_gb=node_memory_gb(acq),
                                  omp_nthreads=max(1, options.nprocs), label=label)
            wf.base_dir = str(work_subdir(work))
            crash_dir = work / "crash" / uuid.uuid4().hex[:8]
            # not stopped by a failed export step: the maps and tables are still copied (export_failures)
            configure_execution(wf, crash_dir=crash_dir, stop_on_first_crash=False)
            for key, value in values.items():
                setattr(wf.inputs.inputnode, key, value)
            with timer("workflow"):
                outcome = run_workflow(wf, plugin_name=options.plugin_name,
                                       plugin_args=options.plugin_args, crash_dir=crash_dir)
            failed_exports = [f for f in outcome.failures if EXPORT_STEPS in f".{f.node}."]
            raise_for_failures([f for f in outcome.failures if f not in failed_exports])
            if extra_writer is not None:
                extra_writer(tmp)
            candidates = read_candidates_tsv(tmp / "candidates.tsv")
            outputs = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
            timings = {**timer.seconds, "total": timer.total(),
                       **{f"node:{k}": v for k, v in outcome.node_seconds.items()}}
            physics = physics_meta(outcome.node_outputs)
            for warning in physics.get("warnings", []):
                progress(label, f"warning: {warning}")
            exports = dicom_export_record(wf)
            export_errors = [f"{e['object']}: {e['message']}" for e in exports.get("errors", [])]
            export_errors += [f"{f.node.rsplit('.', 1)[-1]}: {f.kind}: {f.message}" for f in failed_exports]
            if export_errors:
                progress(label, "warning: exports incomplete (" + "; ".join(export_errors)
                         + "); the maps and candidate tables are written")
            prov = build_provenance(command_line=command_line or sys.argv,
                                    parameters={**settings, "execution": options.execution(),
                                                "physics": physics},
                                    model=model_info, timings=timings, inputs=_input_record(acq),
                                    outputs=outputs + ["provenance.json"])
            if exports:
                prov["dicom_export"] = exports
            if export_errors:
                prov["export_errors"] = export_errors
            write_json(prov, tmp / "provenance.json")
        ok = True
    except (InputError, KeyboardInterrupt):
        ok = True  # nothing worth keeping in a temporary work folder after a user error or Ctrl-C
        raise
    finally:
        if temp_work and ok:
            shutil.rmtree(work, ignore_errors=True)
    n_mb = sum(1 for c in candidates if c.label == "microbleed")
    progress(label, f"done: {len(candidates)} candidates, {n_mb} labelled microbleed; "
                    f"report: {Path(out_dir) / 'report.html'}")
    return {"n_candidates": len(candidates), "n_microbleeds": n_mb, "model": model_info,
            "out_dir": str(out_dir), "candidates": candidates,
            "export_errors": export_errors}


def physics_meta(node_outputs: dict | None) -> dict:
    """The physics chain's own record (methods, parameters, warnings) from the maps node's bundle."""
    from cmbdetect.pipeline.io.maps import load_maps_meta

    for name, outputs in (node_outputs or {}).items():
        if name.endswith("compute_maps") and outputs.get("maps_bundle"):
            try:
                return load_maps_meta(outputs["maps_bundle"])
            except (OSError, ValueError, KeyError):
                return {}
    return {}


#: Workflow steps (``report_wf``: markups, report, DICOM) whose failure keeps the maps and tables: a
#: warning, and exit 1 only with ``--strict-exports``.
EXPORT_STEPS = ".report_wf."


def dicom_export_record(wf) -> dict:
    """The DICOM export node's record (objects written, errors, captured warnings) from its folder in
    the work directory (Nipype's ``base_dir/<workflow>/report_wf/dicom``: read even when another step
    failed); {} when the workflow has no DICOM export or the node did not finish."""
    import json

    path = Path(wf.base_dir) / wf.name / "report_wf" / "dicom" / "dicom_export.json"
    if wf.get_node("report_wf.dicom") is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"errors": [{"object": "dicom", "message": f"export record {path} unreadable"}]}


def command_line_of(args: argparse.Namespace) -> list[str]:
    """The command line as given to :func:`cmbdetect.pipeline.cli.main`."""
    return ["cmbdetect", *getattr(args, "_argv", sys.argv[1:])]


def _input_record(acq: Acquisition) -> dict:
    """JSON-able description of the input (files/UIDs from ``acq.source``, grid, TE, B0)."""
    source = {k: v for k, v in acq.source.items() if k != "dicom_datasets"}
    return {"source": source, "shape": list(acq.shape), "n_echoes": acq.n_echoes,
            "te_s": [float(t) for t in acq.te], "b0_t": float(acq.b0),
            "affine": [[float(v) for v in row] for row in acq.affine]}


def run(args: argparse.Namespace) -> int:
    """``cmbdetect run``: read and validate the input, then run the pipeline."""
    from cmbdetect.pipeline.cli.common import acquisition_from_args, input_paths, load_user_mask
    from cmbdetect.pipeline.io.output_folder import claim_output_folder
    from cmbdetect.workflows.interfaces import progress

    options = options_from_args(args, single_subject=True)
    claim = claim_output_folder(args.out, overwrite=args.overwrite, inputs=input_paths(args))
    out = claim.path
    model_info = check_model(options.model)
    progress("", "reading input")
    acq = acquisition_from_args(args)
    mask = load_user_mask(args.mask, acq) if getattr(args, "mask", None) else None
    summary = run_acquisition(acq, out_dir=out, options=options, mask=mask,
                              command_line=command_line_of(args), model_info=model_info, claim=claim)
    return 1 if summary["export_errors"] and getattr(args, "strict_exports", False) else 0
