"""BIDS-App form: ``cmbdetect BIDS_DIR OUT_DIR participant|group``.

participant: one workflow per acquisition (``find_bids_subjects``), all in one Nipype run (MultiProc
with ``--nprocs``, or a cluster plugin); BIDS derivatives under OUT_DIR (``dataset_description.json``,
``sub-XX/anat/sub-XX_desc-cmb_candidates.tsv`` + JSON sidecars with Sources and the model hash, maps,
report).  A subject that fails (unreadable input, crash) is reported on stderr, recorded in
``OUT_DIR/logs/failures.tsv`` and skipped; the others finish; the exit status is 1 if any failed.
Each subject's files are staged and moved into place only when all of them are complete.

group: ``OUT_DIR/group/cmb_study_table.tsv`` (per acquisition: candidate counts by class, microbleeds
by region, failures) and ``OUT_DIR/group/index.html`` linking every subject report.
"""
from __future__ import annotations

import argparse
import csv
import html
import json
import os
import re
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.output_folder import add_to_manifest
from cmbdetect.pipeline.cli.run import (EXPORT_STEPS, PipelineOptions, add_execution_arguments, check_model,
                                        command_line_of, node_memory_gb, options_from_args,
                                        physics_meta, prepare_inputs, subject_workflow)

FAILURES_FILE = Path("logs") / "failures.tsv"
#: Output kinds of the export steps: missing after a failed export step, the acquisition is still done.
_EXPORT_KINDS = ("markups", "report", "dicom_dir")
_FAILURE_FIELDS = ("label", "stage", "message")


def add_bids_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("bids_dir", metavar="BIDS_DIR", help="BIDS dataset (raw)")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="derivatives folder")
    parser.add_argument("analysis_level", choices=("participant", "group"), help="analysis level")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier results of a participant in OUT_DIR (only cmbdetect's own files; "
                             "without it a participant with results is reported and skipped)")
    parser.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                        help="subjects to process (with or without 'sub-'); default: all")
    parser.add_argument("--strict-exports", action="store_true",
                        help="exit with status 1 when an export (report, Slicer markups) of an "
                             "acquisition could not be written (its maps and tables are written either way)")
    add_execution_arguments(parser)
    return parser


def build_bids_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmbdetect", description="cmbdetect as a BIDS App: BIDS_DIR OUT_DIR participant|group")
    return add_bids_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.analysis_level == "group":
        return run_group(Path(args.output_dir).absolute(), participant_label=args.participant_label)
    return run_participant(args)


# ---------------------------------------------------------------- participant level

def _progress(message: str) -> None:
    from cmbdetect.workflows.interfaces import progress

    progress("", message)


def claim_derivatives_folder(out_dir: Path, *, bids_dir: Path) -> None:
    """Refuse an OUT_DIR that would mix with the input or with a user's files (one line, InputError): it must
    be new, empty, or a cmbdetect derivatives folder (its manifest, or its dataset_description.json from a
    version before the manifest), and neither be, contain nor lie inside BIDS_DIR except under its
    ``derivatives/``.  Earlier participants' results in it are replaced only with ``--overwrite``."""
    from cmbdetect.pipeline.io.output_folder import GENERATOR, check_clear_of_inputs, claim_output_folder

    try:
        generated = json.loads((out_dir / "dataset_description.json").read_text()).get("GeneratedBy") or [{}]
        legacy = generated[0].get("Name") == GENERATOR
    except (OSError, ValueError, AttributeError, IndexError):
        legacy = False
    if legacy:  # a derivatives folder of cmbdetect before the manifest: only the input checks
        check_clear_of_inputs(out_dir, [bids_dir], option="OUT_DIR", derivatives_of=bids_dir)
        return
    claim_output_folder(out_dir, overwrite=True, inputs=[bids_dir], option="OUT_DIR", derivatives_of=bids_dir)


def write_dataset_description(out_dir: Path, *, bids_dir: Path) -> None:
    """dataset_description.json, .bidsignore and README.md (``pipeline.bids_derivatives``)."""
    from cmbdetect.pipeline.outputs.bids_derivatives import write_derivative_metadata
    from cmbdetect.pipeline.io.provenance import cmbdetect_version

    write_derivative_metadata(out_dir, bids_dir=bids_dir, version=cmbdetect_version())


def _sources(acq, bids_dir: Path) -> list[str]:
    """BIDS URIs of the files an acquisition was read from."""
    found = []

    def walk(value):
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.endswith((".nii", ".nii.gz")) and os.path.isfile(value):
            p = Path(value).absolute()
            found.append(f"bids:raw:{p.relative_to(bids_dir)}" if p.is_relative_to(bids_dir) else str(p))

    for v in acq.source.values():
        walk(v)
    return sorted(set(found))


def _sidecars(sources: list[str], model: dict) -> dict[str, dict]:
    from cmbdetect.pipeline.outputs.bids_derivatives import derivative_sidecars

    return derivative_sidecars(sources, model)


def _node_name(label: str) -> str:
    return re.sub(r"\W", "_", label.replace("-", "")) + "_wf"


def _read_failures(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _write_failures(path: Path, rows: list[dict]) -> None:
    from cmbdetect.pipeline.io.atomic import write_text

    lines = ["\t".join(_FAILURE_FIELDS)]
    lines += ["\t".join(str(r.get(k, "")).replace("\t", " ").replace("\n", " ") for k in _FAILURE_FIELDS)
              for r in rows]
    write_text("\n".join(lines) + "\n", path)


def discover(bids_dir: Path, *, participant_label=None) -> tuple[list, list[dict]]:
    """Acquisitions to process, subject by subject, so that one malformed subject folder is reported
    (a failure record) instead of stopping the whole dataset."""
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects

    if participant_label:
        labels = [str(p).removeprefix("sub-") for p in participant_label]
        absent = [lab for lab in labels if not (bids_dir / f"sub-{lab}").is_dir()]
        if absent:
            raise InputError(f"participant(s) {', '.join(absent)} not found in {bids_dir}")
    else:
        labels = sorted(p.name.removeprefix("sub-") for p in bids_dir.glob("sub-*") if p.is_dir())
    subjects, failures = [], []
    for label in labels:
        try:
            found = find_bids_subjects(bids_dir, participant_label=[label])
        except InputError as exc:
            failures.append({"label": f"sub-{label}", "stage": "discovery", "message": _one_line(exc)})
            _progress(f"error: sub-{label} skipped: {_one_line(exc)}")
            continue
        if not found and participant_label:
            raise InputError(f"participant {label} has no magnitude + phase acquisition in {bids_dir}")
        subjects.extend(found)
    return subjects, failures


def run_participant(args: argparse.Namespace) -> int:
    """Participant level (see the module docstring); returns 0, or 1 if any acquisition failed."""
    from cmbdetect.pipeline.io.atomic import write_json
    from cmbdetect.pipeline.outputs.bids_derivatives import derivative_path
    from cmbdetect.pipeline.io.bids_dataset import load_bids_acquisition
    from cmbdetect.pipeline.io.provenance import build_provenance
    from cmbdetect.workflows.cmb import bids_output_names, configure_execution
    from cmbdetect.workflows.plugins import run_workflow

    bids_dir, out_dir = Path(args.bids_dir).absolute(), Path(args.output_dir).absolute()
    if not bids_dir.is_dir():
        raise InputError(f"BIDS_DIR {bids_dir} is not a folder")
    claim_derivatives_folder(out_dir, bids_dir=bids_dir)
    options: PipelineOptions = options_from_args(args)
    subjects, failures = discover(bids_dir, participant_label=args.participant_label)
    if not subjects and not failures:
        raise InputError(f"no magnitude + phase acquisitions found in {bids_dir}")
    model = check_model(options.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(out_dir, bids_dir=bids_dir)
    add_to_manifest(out_dir, kind="bids", files=["dataset_description.json", ".bidsignore", "README.md"])
    temp_work = options.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="cmbdetect-work-")) if temp_work else options.work_dir
    staging = Path(tempfile.mkdtemp(prefix=".cmbdetect-staging-", dir=out_dir))
    try:
        import nipype.pipeline.engine as pe

        from cmbdetect.pipeline.io.provenance import work_subdir

        meta = pe.Workflow(name="cmbdetect_wf", base_dir=str(work_subdir(work)))
        planned, node_failures, node_seconds, node_outputs, n_incomplete = {}, [], {}, {}, 0
        n_parallel = max(1, min(options.nprocs, len(subjects)))
        for n, subject in enumerate(subjects, 1):
            label = subject.label
            _progress(f"[{n}/{len(subjects)}] {label}: reading input")
            try:
                acq = load_bids_acquisition(subject)
                values = prepare_inputs(acq, work / "inputs" / label)
                sources, mem_gb = _sources(acq, bids_dir), node_memory_gb(acq)
                del acq  # the workflow reads its own input files: do not hold every subject's images
            except Exception as exc:  # one bad subject is reported and skipped
                failures.append({"label": label, "stage": "input", "message": _one_line(exc)})
                _progress(f"error: {label} skipped: {_one_line(exc)}")
                continue
            entities = {"sub": subject.subject, "ses": subject.session,
                        **{k: v for k, v in subject.entities.items() if k in ("acq", "rec", "run")}}
            names = {**bids_output_names(entities),
                     "provenance": derivative_path(entities, suffix="provenance", extension=".json", desc="cmb")}
            done = sorted(rel for rel in names.values() if (out_dir / rel).exists())
            if done and not args.overwrite:
                message = f"already has results in {out_dir} ({done[0]}); add --overwrite to replace them"
                failures.append({"label": label, "stage": "output", "message": message})
                _progress(f"error: {label} skipped: {message}")
                continue
            sub_staging = staging / label
            wf = subject_workflow(options, output_dir=sub_staging,
                                  output_names={k: v for k, v in names.items() if k != "provenance"},
                                  sidecars=_sidecars(sources, model), model_sha256=model["sha256"],
                                  settings={**options.parameters(), "subject": label},
                                  mem_gb=mem_gb, omp_nthreads=max(1, options.nprocs // n_parallel),
                                  label=label, name=_node_name(label))
            for key, value in values.items():
                if key != "reference_files":
                    setattr(wf.inputs.inputnode, key, value)
            meta.add_nodes([wf])
            planned[label] = (wf.name, names, sources, sub_staging)
        if planned:
            crash_dir = work / "crash" / uuid.uuid4().hex[:8]
            configure_execution(meta, crash_dir=crash_dir, stop_on_first_crash=False)
            outcome = run_workflow(meta, plugin_name=options.plugin_name,
                                   plugin_args=options.plugin_args, crash_dir=crash_dir)
            node_failures, node_seconds = outcome.failures, outcome.node_seconds
            node_outputs = outcome.node_outputs or {}
        for label, (wf_name, names, sources, sub_staging) in planned.items():
            failed = [f for f in node_failures if f".{wf_name}." in f".{f.node}."]
            failed_exports = [f for f in failed if EXPORT_STEPS in f".{f.node}."]
            failed = [f for f in failed if f not in failed_exports]
            optional = ("r2star", "provenance") + (_EXPORT_KINDS if failed_exports else ())
            missing = [rel for kind, rel in names.items()
                       if kind not in optional and not (sub_staging / rel).is_file()]
            if failed or missing:
                message = _failure_message(failed[0], out_dir, label) if failed \
                    else f"outputs missing: {', '.join(missing)}"
                failures.append({"label": label, "stage": "workflow", "message": message})
                _progress(f"error: {label} failed: {message}")
                continue
            physics = physics_meta({k: v for k, v in node_outputs.items() if f".{wf_name}." in f".{k}."})
            for warning in physics.get("warnings", []):
                _progress(f"{label}: warning: {warning}")
            prov = build_provenance(command_line=command_line_of(args),
                                    parameters={**options.parameters(), "subject": label,
                                                "execution": options.execution(), "physics": physics},
                                    model=model,
                                    timings={k: v for k, v in node_seconds.items()
                                             if f".{wf_name}." in f".{k}."},
                                    inputs={"sources": sources},
                                    outputs=list(names.values()))
            if failed_exports:
                prov["export_errors"] = [f"{f.node.rsplit('.', 1)[-1]}: {f.kind}: {f.message}"
                                         for f in failed_exports]
                n_incomplete += 1
                _progress(f"warning: {label}: exports incomplete ({'; '.join(prov['export_errors'])}); "
                          "the maps and candidate tables are written")
            write_json(prov, sub_staging / names["provenance"])
            moved = []
            for src in sorted(p for p in sub_staging.rglob("*") if p.is_file()):
                dst = out_dir / src.relative_to(sub_staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                moved.append(str(dst.relative_to(out_dir)))
            add_to_manifest(out_dir, kind="bids", files=moved)
            _progress(f"{label}: done")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if temp_work:
            shutil.rmtree(work, ignore_errors=True)
    processed = {s.label for s in subjects} | {f["label"] for f in failures}
    kept = [r for r in _read_failures(out_dir / FAILURES_FILE) if r.get("label") not in processed]
    _write_failures(out_dir / FAILURES_FILE, kept + failures)
    add_to_manifest(out_dir, kind="bids", files=[str(FAILURES_FILE), *(str(p.relative_to(out_dir))
                                                               for p in (out_dir / "logs").glob("crash-*.txt"))])
    n_all = len(subjects) + sum(f["stage"] == "discovery" for f in failures)
    _progress(f"participant level: {n_all - len(failures)} of {n_all} acquisitions done"
              + (f", {len(failures)} failed (see {out_dir / FAILURES_FILE})" if failures else ""))
    return 1 if failures or (n_incomplete and getattr(args, "strict_exports", False)) else 0


def _failure_message(failure, out_dir: Path, label: str) -> str:
    """One line for the failures table; an unexpected error's crash file is kept in ``logs/`` (the
    work folder may be temporary)."""
    if failure.kind == "InputError":
        return f"InputError: {failure.message}"
    kept = out_dir / "logs" / f"crash-{label}.txt"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(failure.crashfile, kept)
    return f"{failure.kind}: {failure.message} (step {failure.node}; details: {kept})"


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---------------------------------------------------------------- group level

def study_rows(out_dir: Path, *, participant_label=None) -> list[dict]:
    """One row per acquisition found under ``out_dir`` (done or failed)."""
    from cmbdetect.models.detection import READER_LABELS
    from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv

    wanted = {str(p).removeprefix("sub-") for p in participant_label} if participant_label else None
    rows = []
    for tsv in sorted(out_dir.glob("sub-*/**/anat/*_desc-cmb_candidates.tsv")):
        label = tsv.name.removesuffix("_desc-cmb_candidates.tsv")
        if wanted and label.split("_")[0].removeprefix("sub-") not in wanted:
            continue
        cands = read_candidates_tsv(tsv)
        by_class = Counter(c.label for c in cands)
        regions = Counter(c.region for c in cands if c.label == "microbleed")
        report = tsv.with_name(f"{label}_desc-cmb_report.html")
        rows.append({"label": label, "status": "done", "n_candidates": len(cands),
                     **{f"n_{k}": by_class.get(k, 0) for k in READER_LABELS},
                     **{f"microbleeds_{r}": n for r, n in sorted(regions.items())},
                     "report": str(report.relative_to(out_dir)) if report.is_file() else "",
                     "message": ""})
    done = {r["label"] for r in rows}
    for failure in _read_failures(out_dir / FAILURES_FILE):
        if failure["label"] not in done and (not wanted or failure["label"].split("_")[0]
                                             .removeprefix("sub-") in wanted):
            rows.append({"label": failure["label"], "status": "failed", "report": "",
                         "message": f"{failure['stage']}: {failure['message']}"})
    return rows


def run_group(out_dir: Path, *, participant_label=None) -> int:
    """Group level: study table TSV + HTML index of the subject reports."""
    from cmbdetect.pipeline.io.atomic import write_text

    if not out_dir.is_dir():
        raise InputError(f"OUT_DIR {out_dir} does not exist; run the participant level first")
    rows = study_rows(out_dir, participant_label=participant_label)
    if not rows:
        raise InputError(f"no participant results in {out_dir}; run the participant level first")
    from cmbdetect.models.detection import READER_LABELS

    columns = ["label", "status", "n_candidates", *(f"n_{k}" for k in READER_LABELS)]
    columns += sorted({k for r in rows for k in r if k.startswith("microbleeds_")}) + ["report", "message"]
    lines = ["\t".join(columns)]
    lines += ["\t".join(str(r.get(c, "n/a" if c.startswith("n_") and r["status"] == "failed" else 0
                                  if c.startswith(("n_", "microbleeds_")) else "")) for c in columns)
              for r in rows]
    write_text("\n".join(lines) + "\n", out_dir / "group" / "cmb_study_table.tsv")
    write_text(_group_html(rows, columns), out_dir / "group" / "index.html")
    add_to_manifest(out_dir, kind="bids", files=["group/cmb_study_table.tsv", "group/index.html"])
    n_failed = sum(r["status"] == "failed" for r in rows)
    _progress(f"group level: {len(rows)} acquisitions ({n_failed} failed); "
              f"table {out_dir / 'group' / 'cmb_study_table.tsv'}")
    return 0


def _group_html(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns if c != "report")
    body = []
    for r in rows:
        cells = []
        for c in columns:
            if c == "report":
                continue
            value = html.escape(str(r.get(c, "")))
            if c == "label" and r.get("report"):
                value = f'<a href="../{html.escape(r["report"])}">{value}</a>'
            cells.append(f"<td>{value}</td>")
        body.append(f"<tr class=\"{r['status']}\">{''.join(cells)}</tr>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>cmbdetect study</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ccc}"
            "tr.failed{color:#a00}</style></head><body><h1>cmbdetect: study summary</h1>"
            f"<p>{len(rows)} acquisitions. Candidate counts by class; microbleeds by region.</p>"
            f"<table><tr>{head}</tr>{''.join(body)}</table></body></html>\n")
