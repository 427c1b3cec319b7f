"""``cmbdetect demo OUT``: simulate one subject and run the whole pipeline on it.

Prints where the report is and how many microbleeds were found against the simulated truth (a found
microbleed matches a true one within ``--hit-mm`` of its centre, one-to-one: the project's evaluation
``models.evaluate.match_count``).  The truth lesion table is written beside the outputs as
``truth_lesions.tsv``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.cli.run import add_execution_arguments, options_from_args, run_acquisition
from cmbdetect.pipeline.io.output_folder import add_overwrite_argument, claim_output_folder


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="simulate one subject and run the whole pipeline on it",
        description="Simulate a subject with known microbleeds, run cmbdetect, compare with the truth.")
    parser.add_argument("out", metavar="OUT",
                        help="output folder: new, empty, or an earlier cmbdetect result (with --overwrite)")
    add_overwrite_argument(parser)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=(192, 224, 96),
                        help="simulated volume shape in voxels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    parser.add_argument("--hit-mm", type=float, default=5.0,
                        help="distance (mm) within which a found microbleed matches a true one")
    add_execution_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from cmbdetect.models.evaluate import match_count
    from cmbdetect.pipeline.cli.run import command_line_of
    from cmbdetect.pipeline.simulate.subject import simulate_subject
    from cmbdetect.pipeline.io.truth import write_lesion_table
    from cmbdetect.workflows.interfaces import progress

    if min(args.shape) < 16:
        raise InputError(f"--shape {tuple(args.shape)} is too small; use at least 16 voxels per axis")
    if args.hit_mm <= 0:
        raise InputError("--hit-mm must be positive")
    from cmbdetect.pipeline.cli.run import check_model

    options = options_from_args(args, single_subject=True)
    claim = claim_output_folder(args.out, overwrite=args.overwrite)
    out = claim.path
    model_info = check_model(options.model)
    progress("demo", f"simulating a subject ({'x'.join(map(str, args.shape))} voxels, seed {args.seed})")
    sim = simulate_subject(seed=args.seed, shape=tuple(args.shape))
    summary = run_acquisition(
        sim.acq, out_dir=out, options=options, command_line=command_line_of(args), label="demo",
        model_info=model_info, claim=claim,
        extra_writer=lambda tmp: write_lesion_table(sim.truth.lesions, tmp / "truth_lesions.tsv"))
    true_mb = [les for les in sim.truth.lesions if les.kind == "microbleed"]
    found = [c for c in summary["candidates"] if c.label == "microbleed"]
    hits = match_count(np.array([[c.x, c.y, c.z] for c in found]),
                       np.array([les.centre_ras for les in true_mb]), hit_mm=args.hit_mm)
    print(f"report: {out / 'report.html'}")
    print(f"microbleeds: {len(found)} found, {len(true_mb)} simulated, {hits} of them detected "
          f"(within {args.hit_mm:g} mm); {len(found) - hits} false positives")
    sys.stdout.flush()
    return 0
