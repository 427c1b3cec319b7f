"""Input options shared by the ``qsm`` and ``run`` subcommands, and their reading into an Acquisition.

``--mag/--phase`` (NIfTI, one per echo or one 4D file each; repeat in echo order), or ``--dicom DIR``
(repeatable: magnitude and phase series folders); ``--te`` in seconds (repeatable or comma list; wins
over sidecars/headers); ``--b0`` tesla; ``--phase-sign`` (+1 project convention, -1 flips once at
reading); ``--phase-units`` (overrides the vendor scaling; for DICOM it applies to the values after
RescaleSlope/Intercept); ``--mask`` (optional brain mask on the same grid).
"""
from __future__ import annotations

import argparse
import sys


from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.dicom import load_dicom_acquisition
from cmbdetect.pipeline.io.masks import load_user_mask  # noqa: F401  (the --mask reader)
from cmbdetect.pipeline.io.nifti import load_nifti_acquisition


def add_input_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the input options (see the module docstring) to ``parser``; returns it."""
    g = parser.add_argument_group("input")
    g.add_argument("--mag", action="append", metavar="NIFTI",
                   help="magnitude NIfTI; repeat once per echo (in echo order) or give one 4D file")
    g.add_argument("--phase", action="append", metavar="NIFTI",
                   help="phase NIfTI; repeat once per echo (same order as --mag) or give one 4D file")
    g.add_argument("--dicom", action="append", metavar="DIR",
                   help="DICOM folder with magnitude and/or phase images; repeat for separate series")
    g.add_argument("--te", action="append", metavar="SECONDS",
                   help="echo time(s) in seconds, repeat or comma list (e.g. 0.004,0.008); wins over headers")
    g.add_argument("--b0", type=float, metavar="TESLA", help="field strength in tesla; wins over headers")
    g.add_argument("--phase-sign", type=int, choices=(1, -1), default=1,
                   help="+1 if a paramagnetic source raises the phase (default), -1 to flip it once")
    g.add_argument("--phase-units", default="auto",
                   help="phase units: auto (default: from the headers/values), rad, mrad, siemens, uint12 "
                        "or scale:<max>; for DICOM, of the values after RescaleSlope/Intercept")
    g.add_argument("--mask", metavar="NIFTI", help="brain mask on the same grid (default: computed)")
    return parser


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every file or folder the input options of ``args`` name (the output folder must stay clear of them)."""
    paths: list[str] = []
    for name in ("mag", "phase", "dicom"):
        paths.extend(getattr(args, name, None) or [])
    for name in ("mask", "local_field"):
        if getattr(args, name, None):
            paths.append(getattr(args, name))
    return paths


def parse_echo_times(values: list[str] | None) -> list[float] | None:
    """``--te`` values (repeated and/or comma separated) -> seconds, or ``None`` when not given."""
    if not values:
        return None
    out: list[float] = []
    for value in values:
        for piece in str(value).split(","):
            piece = piece.strip()
            if not piece:
                continue
            try:
                out.append(float(piece))
            except ValueError:
                raise InputError(f"--te {piece!r} is not a number (echo times in seconds)") from None
    return out or None


def acquisition_from_args(args: argparse.Namespace) -> Acquisition:
    """Read the acquisition named by the input options of ``args`` (see :func:`add_input_arguments`)."""
    te = parse_echo_times(getattr(args, "te", None))
    mags, phases, dicom = getattr(args, "mag", None), getattr(args, "phase", None), getattr(args, "dicom", None)
    if dicom and (mags or phases):
        raise InputError("give either --dicom or --mag/--phase, not both")
    units = getattr(args, "phase_units", None) or "auto"
    if dicom:
        acq = load_dicom_acquisition(dicom, te=te, b0=args.b0, phase_sign=args.phase_sign, phase_units=units)
        return _report_notes(acq)
    if not mags and not phases:
        raise InputError("no input: give --mag and --phase (NIfTI) or --dicom DIR")
    if not mags:
        raise InputError("magnitude missing: give --mag as well as --phase")
    if not phases:
        raise InputError("phase missing: cmbdetect needs the phase images (--phase) as well as --mag")
    return _report_notes(load_nifti_acquisition(mags, phases, te=te, b0=args.b0, phase_sign=args.phase_sign,
                                                phase_units=units))


def _report_notes(acq: Acquisition) -> Acquisition:
    """Print the reader's notes (e.g. a phase-difference map read at the echo spacing) and warnings
    (e.g. NaN voxels set to 0) on stderr, one line each; they stay in ``acq.source`` for provenance."""
    for note in list(acq.source.get("notes", [])) + list(acq.source.get("warnings", [])):
        print(f"cmbdetect: {note}", file=sys.stderr)
    return acq
