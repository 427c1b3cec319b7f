"""``cmbdetect rank``: order unlabelled subjects for annotation by the model's uncertainty.

For every subject of a BIDS dataset the physics maps are computed and both stages run; the subject's
informativeness is the sum of its candidates' uncertainties (normalised entropy of the committee's mean
class probabilities, which grows when the committee disagrees).  Writes a TSV sorted by decreasing
summed uncertainty, columns ``rank subject summed_uncertainty max_uncertainty n_candidates
n_microbleed committee_disagreement``.  ``--reviewed LABELS_DIR`` (the labels of ``cmbdetect review import``)
leaves out the subjects a reader has already reviewed, so the next subject to annotate is new.
"""
from __future__ import annotations

import argparse
import sys

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.output_folder import add_overwrite_argument, claim_output_file

COLUMNS = ("rank", "subject", "summed_uncertainty", "max_uncertainty", "n_candidates", "n_microbleed",
           "committee_disagreement")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rank`` on the main parser's subparsers."""
    p = subparsers.add_parser("rank", help="rank unlabelled subjects for annotation by model uncertainty",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--bids-dir", required=True, help="BIDS dataset with magnitude + phase")
    p.add_argument("--out", required=True, help="ranking TSV to write (an earlier ranking is replaced only with "
                   "--overwrite; no other file is)")
    add_overwrite_argument(p)
    p.add_argument("--model", default="default", help="model name or folder (default: default)")
    p.add_argument("--participant-label", nargs="+", default=None, help="only these subjects")
    p.add_argument("--reviewed", default=None, metavar="LABELS_DIR",
                   help="labels folder of 'cmbdetect review import': its subjects are already reviewed, skip them")
    return p


def subject_row(detections) -> dict:
    """Summary of one subject's detections for the ranking."""
    u = [d.uncertainty for d in detections]
    return {"summed_uncertainty": float(sum(u)), "max_uncertainty": float(max(u, default=0.0)),
            "n_candidates": len(detections), "n_microbleed": sum(d.label == "microbleed" for d in detections),
            "committee_disagreement": float(sum(d.features.get("committee_disagreement", 0.0) for d in detections))}


def format_ranking(rows: dict[str, dict]) -> str:
    """TSV text of ``{subject: subject_row(...)}`` sorted by decreasing summed uncertainty."""
    order = sorted(rows, key=lambda s: (-rows[s]["summed_uncertainty"], s))
    lines = ["\t".join(COLUMNS)]
    for n, s in enumerate(order, start=1):
        r = rows[s]
        lines.append("\t".join([str(n), s, f"{r['summed_uncertainty']:.4f}", f"{r['max_uncertainty']:.4f}",
                                str(r["n_candidates"]), str(r["n_microbleed"]), f"{r['committee_disagreement']:.4f}"]))
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from cmbdetect.models.inference import detect
    from cmbdetect.models.registry import load_model
    from cmbdetect.physics.chain import compute_physics_maps
    from cmbdetect.pipeline.io.atomic import write_text
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, load_bids_acquisition

    out = claim_output_file(args.out, overwrite=args.overwrite, first_line="\t".join(COLUMNS))
    model = load_model(args.model)
    subjects = find_bids_subjects(args.bids_dir, participant_label=args.participant_label)
    if not subjects:
        raise InputError(f"no GRE/SWI magnitude+phase images found in {args.bids_dir}")
    if args.reviewed:
        from cmbdetect.pipeline.outputs.review import reviewed_subjects

        done = reviewed_subjects(args.reviewed)
        skipped = [s.label for s in subjects if s.subject in done]
        subjects = [s for s in subjects if s.subject not in done]
        if skipped:
            print(f"[rank] skipping {len(skipped)} reviewed subject(s): {' '.join(skipped)}", file=sys.stderr)
    rows = {}
    for n, s in enumerate(subjects, start=1):
        acq = load_bids_acquisition(s)
        maps = compute_physics_maps(mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0, affine=acq.affine)
        rows[s.label] = subject_row(detect(maps, model=model))
        print(f"[rank {n}/{len(subjects)}] {s.label}: summed uncertainty {rows[s.label]['summed_uncertainty']:.3f}",
              file=sys.stderr, flush=True)
    write_text(format_ranking(rows), out)
    return 0
