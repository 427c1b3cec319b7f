"""``cmbdetect review import``: a reader's decisions on a run -> training labels for ``train`` and ``rank``.

Reads the decisions TSV saved from the HTML report and/or the candidates.mrk.json edited in 3D Slicer,
checks them against the run's candidates (ids and positions: decisions of another run or patient are
refused), and writes ``LABELS_DIR/sub-<subject>_desc-reviewed_labels.tsv`` (``x y z`` RAS mm, ``kind``,
``diameter_mm``, provenance columns) + a JSON sidecar.  ``cmbdetect train --labels LABELS_DIR`` reads these
files; ``cmbdetect rank --reviewed LABELS_DIR`` skips the subjects they cover.  An existing labels file of the
subject is merged (the new decision on a candidate replaces the old one), never lost.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from cmbdetect.physics.errors import InputError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``review`` (with its ``import`` action) on the main parser's subparsers."""
    p = subparsers.add_parser("review", help="turn a reader's decisions into training labels",
                              description=__doc__.split("\n\n")[1])
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="decisions TSV / edited Slicer markups -> labels TSV",
                             description=__doc__.split("\n\n")[1])
    imp.add_argument("--decisions", nargs="+", default=[], metavar="TSV",
                     help="decisions TSV(s) saved from the HTML report (later rows win)")
    imp.add_argument("--markups", default=None, metavar="MRK_JSON",
                     help="candidates.mrk.json as edited and saved in 3D Slicer")
    imp.add_argument("--run", required=True, metavar="RUN_DIR",
                     help="output folder of 'cmbdetect run' (or a BIDS derivatives subject folder)")
    imp.add_argument("--out", required=True, metavar="LABELS_DIR", help="folder of per-subject labels TSVs")
    imp.add_argument("--subject", default=None,
                     help="subject label (default: from the run's provenance.json or file names)")
    imp.add_argument("--reader", default="", help="reader name recorded where the decisions have none")
    return p


def _one(folder: Path, patterns: tuple[str, ...], what: str) -> Path | None:
    for pattern in patterns:
        found = sorted(folder.rglob(pattern))
        if len(found) > 1:
            raise InputError(f"{folder} holds {len(found)} {what} ({pattern}); point --run at one subject's folder")
        if found:
            return found[0]
    return None


def run_tables(run_dir: Path) -> tuple[Path, Path]:
    """(reader's list, audit table) of a run folder: ``candidates.tsv`` / ``candidates_all.tsv`` of
    ``cmbdetect run``, or the ``desc-cmb`` / ``desc-cmball`` candidates of a BIDS derivatives folder."""
    if not run_dir.is_dir():
        raise InputError(f"--run {run_dir} is not a folder")
    listed = _one(run_dir, ("candidates.tsv", "*_desc-cmb_candidates.tsv"), "candidate tables")
    audit = _one(run_dir, ("candidates_all.tsv", "*_desc-cmball_candidates.tsv"), "audit tables")
    if listed is None and audit is None:
        raise InputError(f"--run {run_dir} holds no candidates.tsv: give the output folder of 'cmbdetect run'")
    return listed or audit, audit or listed


def run_subject(run_dir: Path, table: Path) -> str | None:
    """The subject label of a run: provenance.json (BIDS / subject entries of the input), else ``sub-XX`` in
    the table's name."""
    for prov in (run_dir / "provenance.json", *sorted(run_dir.rglob("*_provenance.json"))):
        if prov.is_file():
            try:
                source = json.loads(prov.read_text()).get("inputs", {}).get("source", {})
            except (OSError, ValueError):
                continue
            if source.get("subject"):
                return str(source["subject"])
    m = re.match(r"sub-([A-Za-z0-9]+)", table.name)
    return m.group(1) if m else None


def run(args) -> int:
    from cmbdetect.pipeline.io.bids import bids_name
    from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv
    from cmbdetect.pipeline.outputs.review import (decisions_from_markups, labels_from_decisions, merge_labels,
                                           read_decisions, read_labels_tsv, with_reader, write_labels)

    if not args.decisions and not args.markups:
        raise InputError("give --decisions TSV (from the HTML report) and/or --markups (edited in 3D Slicer)")
    run_dir = Path(args.run)
    listed_tsv, all_tsv = run_tables(run_dir)
    subject = args.subject or run_subject(run_dir, listed_tsv)
    if not subject:
        raise InputError(f"cannot tell the subject of {run_dir}: give --subject LABEL")
    subject = subject.removeprefix("sub-")
    if not re.fullmatch(r"[A-Za-z0-9]+", subject):
        raise InputError(f"--subject {subject!r} must be letters and digits only (a BIDS label)")
    listed, everything = read_candidates_tsv(listed_tsv), read_candidates_tsv(all_tsv)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    decisions = []
    if args.markups:
        decisions += decisions_from_markups(args.markups, listed, reader=args.reader, time=stamp)
    for path in args.decisions:
        decisions += with_reader(read_decisions(path), args.reader)
    if not decisions:
        raise InputError("the decisions name no candidate (nothing accepted, rejected, relabelled or added)")
    rows = labels_from_decisions(decisions, everything)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    path = out / bids_name(suffix="labels", extension=".tsv", sub=subject, desc="reviewed")
    previous = read_labels_tsv(path) if path.is_file() else []
    merged = merge_labels(previous, rows)
    reviewed_ids = {r["id"] for r in merged if r["id"] not in ("", "n/a")}
    complete = all(str(c.id) in reviewed_ids for c in listed)
    sidecar = {"Description": "reader-reviewed labels (cmbdetect review import); x y z scanner RAS mm",
               "subject": subject, "run": str(run_dir.absolute()),
               "sources": [str(Path(p).absolute()) for p in [*args.decisions, *([args.markups] if args.markups else [])]],
               "n_labels": len(merged), "kinds": {k: sum(r["kind"] == k for r in merged)
                                                  for k in sorted({r["kind"] for r in merged})},
               "reader_list_size": len(listed), "complete": complete,
               "note": "complete = every candidate of the reader's list has a decision; otherwise unreviewed "
                       "lesions may be counted as background by training"}
    out.mkdir(parents=True, exist_ok=True)
    write_labels(merged, path, sidecar=sidecar)
    print(f"[review] sub-{subject}: {len(rows)} decisions -> {path} ({len(merged)} labels"
          f"{'' if complete else f'; {len(listed) - len(reviewed_ids & {str(c.id) for c in listed})} listed candidates not reviewed'})",
          file=sys.stderr)
    return 0
