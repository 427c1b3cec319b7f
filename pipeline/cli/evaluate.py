"""``cmbdetect evaluate``: VALDO-style detection metrics of candidate tables against ground truth.

``--pred`` is a folder searched for ``*candidates.tsv`` (run outputs or a BIDS derivatives folder; the
subject is the first ``sub-<label>`` part of each file's path; where a folder also holds the audit table of
every stage-1 candidate, ``candidates_all.tsv`` or ``*_desc-cmball_candidates.tsv``, that one is read, since
the FROC ranks all candidates, not only the reader's list) or a single candidate table.  ``--truth`` is
a ground-truth folder (``derivatives/groundtruth`` or a BIDS root containing it) searched for
``*lesions*.tsv`` with at least the columns ``kind x y z`` (scanner RAS mm); only ``kind == microbleed``
rows are lesions to find.  Writes ``metrics.json``, ``froc.tsv`` and ``froc.png`` into ``--out``.

The score ranked by the FROC is the candidate's ``p_microbleed``; where that is missing, ``probability``
for rows labelled microbleed and 0 otherwise.  See :mod:`cmbdetect.models.evaluate` for the protocol.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from cmbdetect.models.evaluate import evaluate_detections, write_evaluation
from cmbdetect.pipeline.io.atomic import atomic_directory
from cmbdetect.pipeline.io.output_folder import add_overwrite_argument, claim_output_folder
from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv, read_tsv

_SUBJECT = re.compile(r"^sub-([A-Za-z0-9]+)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the main parser's subparsers."""
    p = subparsers.add_parser(
        "evaluate", help="detection metrics (sensitivity, FP/subject, FROC) against ground truth",
        description=__doc__.split("\n\n")[1].replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="folder with *candidates.tsv per subject, or one TSV")
    p.add_argument("--truth", required=True,
                   help="ground-truth folder (derivatives/groundtruth or a BIDS root) or one lesion TSV")
    p.add_argument("--out", required=True, help="output folder for metrics.json, froc.tsv, froc.png: new, empty, "
                   "or an earlier cmbdetect result (with --overwrite)")
    add_overwrite_argument(p)
    p.add_argument("--hit-mm", type=float, default=5.0,
                   help="a prediction hits a lesion when the centres are closer than this (mm, default 5)")
    return p


def subject_of(path: Path, root: Path | None = None) -> str | None:
    """Label of the first ``sub-<label>`` part of ``path`` (relative to ``root`` when given)."""
    parts = path.relative_to(root).parts if root is not None else path.parts
    for part in parts:
        m = _SUBJECT.match(part)
        if m:
            return m.group(1)
    return None


def _find(root: Path, pattern: str, what: str) -> list[tuple[str | None, Path]]:
    """``(subject or None, file)`` for ``root`` itself (a file) or the files under it matching
    ``pattern``; the subject is the first ``sub-<label>`` part below ``root``, else of the full path."""
    if root.is_file():
        return [(subject_of(root.resolve()), root)]
    if not root.is_dir():
        raise InputError(f"{what} path {root} does not exist")
    files = sorted(p for p in root.rglob(pattern) if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"no {pattern} files found under {root}")
    return [(subject_of(f, root) or subject_of(f.resolve()), f) for f in files]


def _by_subject(found: list[tuple[str | None, Path]], what: str, *,
                only_subject: str | None = None) -> dict[str, Path]:
    """One file per subject; a single file without a subject goes to ``only_subject`` when given."""
    if len(found) == 1 and found[0][0] is None and only_subject is not None:
        return {only_subject: found[0][1]}
    out: dict[str, Path] = {}
    for sub, f in found:
        if sub is None:
            raise InputError(f"cannot tell the subject of {f}: no sub-<label> in its path")
        if sub in out:
            raise InputError(f"two {what} files for subject {sub}: {out[sub]} and {f}")
        out[sub] = f
    return out


def _is_audit(path: Path) -> bool:
    return path.name == "candidates_all.tsv" or path.name.endswith("_desc-cmball_candidates.tsv")


def prediction_files(root: Path) -> list[tuple[str | None, Path]]:
    """``(subject or None, table)``: in each folder the audit table when there is one, else its
    ``*candidates.tsv``."""
    if root.is_file():
        return _find(root, "", "prediction")
    found = [(s, f) for s, f in _find(root, "*candidates*.tsv", "prediction")
             if _is_audit(f) or f.name.endswith("candidates.tsv")]
    audited = {f.parent for _, f in found if _is_audit(f)}
    return [(s, f) for s, f in found if _is_audit(f) or f.parent not in audited]


def read_truth_points(path: Path) -> list[tuple[float, float, float]]:
    """Centres (scanner RAS mm) of the ``kind == microbleed`` rows of a lesion table."""
    _, rows = read_tsv(path, required=("kind", "x", "y", "z"), what="lesion table")
    points = []
    for n, row in enumerate(rows, start=2):
        if (row.get("kind") or "").strip().lower() != "microbleed":
            continue
        try:
            xyz = tuple(float(row[c]) for c in ("x", "y", "z"))
        except (TypeError, ValueError):
            raise InputError(f"lesion table {path} line {n}: non-numeric x y z") from None
        if not all(math.isfinite(v) for v in xyz):
            raise InputError(f"lesion table {path} line {n}: x y z must be finite")
        points.append(xyz)
    return points


def read_predictions(path: Path) -> list[tuple[tuple[float, float, float], float, str]]:
    """``(xyz_mm, score, label)`` of each row of a candidate table (score as in the module doc)."""
    preds = []
    for c in read_candidates_tsv(path):
        if not all(math.isfinite(v) for v in (c.x, c.y, c.z)):
            raise InputError(f"candidate table {path}: candidate {c.id} has no finite x y z")
        if math.isfinite(c.p_microbleed):
            score = c.p_microbleed
        else:
            score = c.probability if c.label == "microbleed" and math.isfinite(c.probability) else 0.0
        preds.append(((c.x, c.y, c.z), float(score), c.label))
    return preds


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the outputs; returns 0.  Bad input raises :class:`InputError`."""
    if not (args.hit_mm > 0 and math.isfinite(args.hit_mm)):
        raise InputError(f"--hit-mm must be a positive distance in mm, got {args.hit_mm}")
    claim = claim_output_folder(args.out, overwrite=args.overwrite, inputs=[args.pred, args.truth])
    truth_root = Path(args.truth)
    if (truth_root / "derivatives" / "groundtruth").is_dir():
        truth_root = truth_root / "derivatives" / "groundtruth"
    truth_files = _by_subject(_find(truth_root, "*lesions*.tsv", "ground-truth"), "ground-truth")
    only = next(iter(truth_files)) if len(truth_files) == 1 else None
    pred_files = _by_subject(prediction_files(Path(args.pred)), "prediction", only_subject=only)
    extra = sorted(set(pred_files) - set(truth_files))
    if extra:
        raise InputError(f"predictions for subjects without ground truth: {', '.join(extra)}")
    truth = {s: read_truth_points(f) for s, f in truth_files.items()}
    preds = {s: read_predictions(f) for s, f in pred_files.items()}
    result = evaluate_detections(preds, truth, hit_mm=float(args.hit_mm))
    with atomic_directory(claim.path, claim=claim, kind="evaluate") as tmp:
        write_evaluation(result, tmp)
    missing = sorted(set(truth_files) - set(pred_files))
    note = f"; {len(missing)} subject(s) without predictions counted as all missed" if missing else ""
    def f(v) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"

    print(f"{result.n_subjects} subjects, {result.n_true} microbleeds: sensitivity {f(result.sensitivity)}, "
          f"precision {f(result.precision)}, F1 {f(result.f1)}, FP/subject {f(result.fp_per_subject)}, "
          f"sensitivity at 1 FP/subject {f(result.sensitivity_at_fp.get('1'))}{note}; written to {args.out}")
    return 0
