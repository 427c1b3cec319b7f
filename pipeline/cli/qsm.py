"""``cmbdetect qsm``: magnitude + phase (or a local field) -> susceptibility and companion maps.

Two forms::

    cmbdetect qsm --mag M.nii.gz --phase P.nii.gz [--te 0.02 --b0 3] --out DIR
    cmbdetect qsm --local-field F.nii.gz --mask M.nii.gz --b0 3 --out DIR

The output folder (see :mod:`cmbdetect.pipeline.io.maps` for its files) is written atomically: it
appears complete or not at all, and a failed run leaves any earlier output untouched.  An existing
folder is replaced only when it is empty or an earlier ``qsm`` output (holds ``qsm_settings.json``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cmbdetect.physics.constants import BACKGROUND_METHODS
from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.atomic import atomic_directory, write_json
from cmbdetect.pipeline.cli.common import acquisition_from_args, add_input_arguments, input_paths, load_user_mask
from cmbdetect.pipeline.io.output_folder import add_overwrite_argument, claim_output_folder
from cmbdetect.pipeline.io.nifti import read_nifti_volume
from cmbdetect.pipeline.io.maps import write_physics_maps

SETTINGS_FILE = "qsm_settings.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``qsm`` subcommand on an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "qsm", help="compute QSM, local field, SWI/mIP and R2* maps from magnitude + phase",
        description="Compute the susceptibility map (ppm) and companion maps from GRE magnitude + phase "
                    "(NIfTI or DICOM), or invert a given local field (ppm).")
    add_input_arguments(p)
    p.add_argument("--local-field", metavar="NIFTI",
                   help="local (tissue) field in ppm: skip unwrapping/background removal (needs --mask, --b0)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: new, empty, or an earlier cmbdetect result (with --overwrite)")
    add_overwrite_argument(p)
    p.add_argument("--unwrap", default="laplacian", help="phase unwrapping: laplacian (default) or exact")
    p.add_argument("--background", default="vsharp",
                   help=f"background field removal: {', '.join(BACKGROUND_METHODS)} (default vsharp; lbv erodes one "
                        "voxel, pdf none)")
    p.add_argument("--inversion", default="default", help="dipole inversion method (default: the chain's)")
    p.add_argument("--swi-slab-mm", type=float, default=8.0, help="minimum-intensity projection slab (mm)")
    return p


def _maps_from_local_field(args: argparse.Namespace):
    if args.mag or args.phase or args.dicom:
        raise InputError("--local-field replaces --mag/--phase/--dicom; give one or the other")
    if not args.mask:
        raise InputError("--local-field needs --mask (the brain mask the field was computed in)")
    if args.b0 is None:
        raise InputError("--local-field needs --b0 (tesla)")
    field, affine = read_nifti_volume(args.local_field, what="local field")
    if field.ndim != 3 or min(field.shape) < 3:
        raise InputError(f"local field {args.local_field} must be a 3D volume, got shape {field.shape}")
    if not np.all(np.isfinite(field)):
        raise InputError(f"local field {args.local_field} contains NaN or infinite values")
    mask = load_user_mask(args.mask, affine, field.shape)
    from cmbdetect.physics.chain import invert_local_field  # after the input checks

    maps = invert_local_field(local_field_ppm=field, mask=mask, affine=affine, b0=float(args.b0),
                              inversion=args.inversion)
    return maps, {"local_field": str(args.local_field), "mask": str(args.mask), "b0_t": float(args.b0)}


def _maps_from_acquisition(args: argparse.Namespace):
    acq = acquisition_from_args(args)
    for warning in acq.source.get("warnings", []):
        print(f"cmbdetect qsm: warning: {warning}", file=sys.stderr)
    mask = load_user_mask(args.mask, acq) if args.mask else None
    from cmbdetect.physics.chain import compute_physics_maps  # after the input checks

    maps = compute_physics_maps(mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0, affine=acq.affine,
                                mask=mask, unwrap=args.unwrap, background=args.background,
                                inversion=args.inversion, swi_slab_mm=args.swi_slab_mm)
    source = {k: v for k, v in acq.source.items() if k != "dicom_datasets"}
    return maps, {"source": source, "te_s": acq.te.tolist(), "b0_t": acq.b0, "shape": list(acq.shape),
                  "voxel_size_mm": acq.voxel_size.tolist(), "mask": str(args.mask) if args.mask else None}


def run(args: argparse.Namespace) -> int:
    """Run ``qsm``; returns the exit status (bad input raises :class:`InputError` for ``cli.main``)."""
    claim = claim_output_folder(args.out, overwrite=args.overwrite, inputs=input_paths(args))
    out = claim.path
    if args.swi_slab_mm is not None and not args.swi_slab_mm > 0:
        raise InputError(f"--swi-slab-mm must be positive, got {args.swi_slab_mm}")
    if args.local_field:
        maps, inputs = _maps_from_local_field(args)
    else:
        maps, inputs = _maps_from_acquisition(args)
    settings = {"command": "qsm", "inputs": inputs,
                "options": {"unwrap": args.unwrap, "background": args.background, "inversion": args.inversion,
                            "swi_slab_mm": args.swi_slab_mm}}
    with atomic_directory(out, claim=claim, kind="qsm") as tmp:
        write_physics_maps(maps, tmp)
        write_json(settings, tmp / SETTINGS_FILE)
    print(f"cmbdetect qsm: wrote {len(list(out.glob('*.nii.gz')))} maps to {out}")
    return 0
