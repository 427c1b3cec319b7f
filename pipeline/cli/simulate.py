"""``cmbdetect simulate OUT``: write a simulated BIDS dataset with ground truth (``--dicom STYLE``: also
each subject as scanner-style DICOM in ``sourcedata/dicom/sub-XX/STYLE/``, see
:mod:`cmbdetect.pipeline.simulate.dicom`)."""
from __future__ import annotations

import argparse
import sys

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.output_folder import add_overwrite_argument
from cmbdetect.pipeline.simulate.dicom import DICOM_STYLES


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise InputError(f"{what} is empty")
    return vals


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"192,224,96"`` or ``"192x224x96"`` -> (192, 224, 96)."""
    vals = _floats(text, "--shape")
    if len(vals) != 3 or any(v != int(v) or v < 16 for v in vals):
        raise InputError(f"--shape needs three whole sizes of at least 16 voxels, got {text!r}")
    return tuple(int(v) for v in vals)


def parse_echoes(text: str):
    """``random`` | a number of echoes (``1``, ``4``) | echo times in ms (``5,10,15`` or ``20ms``)."""
    t = text.strip().lower()
    if t == "random":
        return "random"
    if t.isdigit():
        n = int(t)
        if not 1 <= n <= 16:
            raise InputError(f"--echoes: number of echoes must be 1-16, got {n}")
        return n
    vals = _floats(t.replace("ms", ""), "--echoes")
    if any(v <= 0 or v > 200 for v in vals) or any(b <= a for a, b in zip(vals, vals[1:])):
        raise InputError(f"--echoes: echo times must be increasing milliseconds (0-200), got {text!r}")
    return [v / 1000.0 for v in vals]


def parse_b0(text: str):
    """``random`` or field strengths in tesla (``3`` or ``1.5,3,7`` to draw from)."""
    if text.strip().lower() == "random":
        return None
    vals = _floats(text, "--b0")
    if any(not 0.1 <= v <= 12 for v in vals):
        raise InputError(f"--b0 must be field strengths in tesla (0.1-12), got {text!r}")
    return vals


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``simulate`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("simulate", help="write a simulated GRE/SWI BIDS dataset with ground truth",
                              description="Simulate subjects (procedural anatomy, veins, microbleeds, "
                                          "calcifications; magnitude and phase) as a BIDS dataset with "
                                          "ground truth in derivatives/groundtruth.")
    p.add_argument("out", metavar="OUT",
                   help="output BIDS folder: new, empty, or an earlier cmbdetect result (with --overwrite)")
    add_overwrite_argument(p)
    p.add_argument("--subjects", type=int, default=1, help="number of subjects (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); subject k depends only on it")
    p.add_argument("--b0", default="random", help="field strength(s) in T to draw from, or 'random' (1.5/3/7)")
    p.add_argument("--echoes", default="random",
                   help="'random', a number of echoes (e.g. 4), or echo times in ms (e.g. 5,10,15,20 or 25ms)")
    p.add_argument("--shape", default="192,224,96", help="volume size in voxels (default 192,224,96)")
    p.add_argument("--voxel-size", default=None, help="voxel size in mm, e.g. 0.9,0.9,2 (default: random FOV)")
    p.add_argument("--microbleeds", type=int, default=None, help="microbleeds per subject (default random 0-15)")
    p.add_argument("--preview", action="store_true", help="also write derivatives/preview/sub-XX_preview.png")
    p.add_argument("--vein-family", default="trees",
                   help="vein geometry: 'trees' (default: cortical trees, radial medullary veins), 'tortuous' "
                        "(random-walk veins of every orientation and calibre; the held-out validation family) or "
                        "'radial' (straight/curved segments of any orientation, medullary fans, transcerebral, "
                        "subependymal and sulcal veins, Y-branches; for training)")
    p.add_argument("--vein-density", type=float, default=None,
                   help="density factor of the 'tortuous' / 'radial' veins (default random 0.5-1.5; 3 = dense)")
    p.add_argument("--iron-spots", default="0",
                   help="small iron-rich deep-grey spots per subject (mimics): a number, or 'random' (0-5)")
    p.add_argument("--mimics", default="none",
                   help="other microbleed mimics: 'none' (default), 'random' (each present with p 1/2 per subject) "
                        "or a comma list of calcifications (choroid plexus, pineal), flow_voids, air (frontal "
                        "sinus / mastoid artefacts), noise_dots (low SNR), iron (irregular iron-rich nuclei)")
    p.add_argument("--randomise-acquisition", action="store_true",
                   help="draw every subject's voxel size (0.5-1 mm in-plane, 2-3 mm slices) and slab tilt; with "
                        "--b0 random and --echoes random, each subject's B0, TE, echoes and contrast differ too")
    p.add_argument("--dicom", action="append", metavar="STYLE", choices=DICOM_STYLES,
                   help="also write each subject as scanner-style DICOM under sourcedata/dicom/sub-XX/STYLE/ "
                        f"(repeatable; one of {', '.join(DICOM_STYLES)})")
    return p


def _write_dicom_copies(bids_root, styles: list[str]) -> None:
    """Each simulated subject (read back from the BIDS files) as DICOM in each style, beside the BIDS data."""
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, load_bids_acquisition
    from cmbdetect.pipeline.simulate.dicom import write_acquisition_dicom

    for subject in find_bids_subjects(bids_root):
        acq = load_bids_acquisition(subject)
        for style in dict.fromkeys(styles):
            write_acquisition_dicom(acq, bids_root / "sourcedata" / "dicom" / f"sub-{subject.subject}" / style,
                                    style=style, patient_id=f"sub-{subject.subject}")


def run(args) -> int:
    """Run ``simulate`` from parsed arguments; InputError for bad options."""
    from cmbdetect.pipeline.io.output_folder import claim_output_folder

    claim = claim_output_folder(args.out, overwrite=args.overwrite, option="OUT")
    if args.subjects < 1:
        raise InputError(f"--subjects must be at least 1, got {args.subjects}")
    if args.seed < 0:
        raise InputError(f"--seed must be non-negative, got {args.seed}")
    if args.microbleeds is not None and not 0 <= args.microbleeds <= 50:
        raise InputError(f"--microbleeds must be 0-50, got {args.microbleeds}")
    vs = None
    if args.voxel_size is not None:
        vs = _floats(args.voxel_size, "--voxel-size")
        if len(vs) != 3 or min(vs) <= 0:
            raise InputError(f"--voxel-size needs three positive lengths in mm, got {args.voxel_size!r}")
    from cmbdetect.pipeline.simulate.vessels import VEIN_FAMILIES

    if args.vein_family not in VEIN_FAMILIES:
        raise InputError(f"--vein-family must be one of {', '.join(VEIN_FAMILIES)}, got {args.vein_family!r}")
    if args.vein_density is not None and not 0 < args.vein_density <= 10:
        raise InputError(f"--vein-density must be a factor in (0, 10], got {args.vein_density}")
    iron = args.iron_spots.strip().lower()
    if iron != "random" and not (iron.isdigit() and int(iron) <= 20):
        raise InputError(f"--iron-spots must be a number 0-20 or 'random', got {args.iron_spots!r}")
    from cmbdetect.pipeline.simulate.mimics import parse_mimics

    parse_mimics(args.mimics)
    if args.randomise_acquisition and vs is not None:
        raise InputError("--randomise-acquisition draws each subject's voxel size; leave out --voxel-size")
    styles = getattr(args, "dicom", None) or []
    if styles:  # BIDS and DICOM appear together or not at all
        from cmbdetect.pipeline.io.atomic import atomic_directory

        with atomic_directory(claim.path, claim=claim, kind="simulate") as tmp:
            labels = _simulate(args, tmp / "bids", vs)
            for child in (tmp / "bids").iterdir():
                child.rename(tmp / child.name)
            (tmp / "bids").rmdir()
            _write_dicom_copies(tmp, styles)
        print(f"wrote {len(labels)} subjects to {args.out} (DICOM: {', '.join(styles)} in sourcedata/dicom)")
        return 0
    labels = _simulate(args, claim.path, vs, claim=claim)
    print(f"wrote {len(labels)} subjects to {args.out}")
    return 0


def _simulate(args, out, vs, *, claim=None) -> list[str]:
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    return simulate_dataset(
        out, claim=claim, subjects=args.subjects, seed=args.seed, b0=parse_b0(args.b0),
        echoes=parse_echoes(args.echoes),
        shape=parse_shape(args.shape), voxel_size=vs, n_microbleeds=args.microbleeds, preview=args.preview,
        vein_family=args.vein_family, vein_density=args.vein_density,
        mimics=None if args.mimics.strip().lower() == "none" else args.mimics,
        randomise_acquisition=args.randomise_acquisition,
        iron_spots=None if args.iron_spots.strip().lower() == "random" else int(args.iron_spots),
        progress=lambda label, p: print(f"sub-{label}: B0 {p['b0_t']} T, {len(p['te_s'])} echo(es), "
                                        f"{p['n_microbleeds']} microbleeds, {p['n_calcifications']} calcifications",
                                        file=sys.stderr))
