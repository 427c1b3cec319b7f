"""``cmbdetect train``: train the two-stage detector on BIDS data and write a model folder.

Labels are the simulator's ground truth (``<bids>/derivatives/groundtruth``) unless ``--labels`` names a
folder of per-subject ``sub-<label>*.tsv`` (columns ``x y z`` scanner RAS mm, optional ``kind``,
``diameter_mm``) or ``sub-<label>*.nii.gz`` label maps (1 microbleed, 2 calcification, 3 vein).
Physics maps are cached in ``OUT/cache`` (or ``--cache-dir``); ``--resume`` continues from
``OUT/checkpoint.pt``; ``--init`` fine-tunes a shipped model or a model folder.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.output_folder import add_overwrite_argument


def add_parser(subparsers, *, developer: bool = False) -> argparse.ArgumentParser:
    """Register ``train`` on the main parser's subparsers.  ``developer``: also the options that were measured
    and not shipped (``--augment``, ``--stage1-resolution-augment``, ``--domain-close``, ``--lr-schedule``,
    ``--ablation``), for the benchmarks (``python benchmarks/train_dev.py``); the user CLI has none of them."""
    p = subparsers.add_parser("train", help="train the detector (stage 1) and classifier (stage 2)",
                              description=__doc__.split("\n\n")[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a training config (TOML, e.g. models/weights/default/training.toml) holding the whole "
                   "recipe: simulation, training steps, operating point; only --out, --work-dir, --resume and "
                   "--overwrite go with it (models/train_config.py)")
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="with --config: where the cohorts, physics cache and intermediate models go (default OUT.work)")
    p.add_argument("--bids-dir", nargs="+", help="BIDS dataset folder(s) with magnitude + phase (required "
                   "without --config)")
    p.add_argument("--labels", default=None, help="folder of per-subject label TSVs or label maps "
                   "(default: derivatives/groundtruth)")
    p.add_argument("--out", required=True, help="model folder to write (weights + metadata.json): new, empty, or "
                   "an earlier cmbdetect model (with --overwrite or --resume)")
    add_overwrite_argument(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init", default=None, help="fine-tune from this model name or folder")
    p.add_argument("--cache-dir", default=None, help="where to cache physics maps (default OUT/cache)")
    p.add_argument("--steps", type=int, default=None, help="stage-1 optimisation steps (default 300)")
    p.add_argument("--epochs", type=int, default=None,
                   help="stage-2 epochs (default 20; 0 with --init keeps the init model's classifier and re-fits "
                   "its calibration and stacking on the validation candidates)")
    p.add_argument("--max-candidates", type=int, default=None, metavar="N",
                   help="stage-1 candidate budget per subject: for the recall-tuned threshold, the validation "
                   "candidates that calibrate stage 2, and the model's own budget (default 200)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--sigma-size-fraction", type=float, default=None, metavar="F",
                   help="size-adaptive heatmap targets: sigma = max(2 mm, F * lesion diameter) (default 0: fixed)")
    p.add_argument("--members", type=int, default=1, metavar="K",
                   help="train an ensemble of K models with seeds SEED..SEED+K-1 (folders OUT/member-k; default 1)")
    p.add_argument("--stage2-resolution-augment", type=float, default=None, metavar="P",
                   help="blur stage-2 patches as a coarser acquisition (up to 3 mm voxels) with probability P "
                   "(default 0: off)")
    p.add_argument("--spacing", default=None, metavar="DX,DY,DZ",
                   help="voxel size (mm) of the model grid, e.g. 1,1,1.5 (default: the training subjects' median)")
    p.add_argument("--domain", choices=("brain", "mask"), default="brain",
                   help="where the models look: the magnitude brain mask (default; juxtacortical lesions in the rim "
                   "that background removal erodes stay visible) or only the chi mask (as older models)")
    p.add_argument("--hard-negative-budget", type=int, default=None, metavar="N",
                   help="stage-2 hard negatives: besides the 48 best stage-1 candidates of each training subject, "
                   "48 drawn at random from its ranks 49..N (default 0: only the best)")
    p.add_argument("--new-classifier", action="store_true",
                   help="with --init: train stage 2 from scratch (the current architecture) instead of fine-tuning "
                   "the init model's classifier; with --steps 0 the init model's detector is kept as it is")
    p.add_argument("--classifier-centre", type=int, default=2, metavar="W",
                   help="stage-2 centre pooling width on the last feature map (default 2; 0 = global pooling "
                   "only, the architecture of earlier models)")
    if developer:
        p.add_argument("--augment", action="store_true",
                       help="intensity augmentation (per-channel-group gains, noise, in-plane axis swap) and three "
                       "jittered copies of each true lesion for stage 2 (default off: lower on the development cohort)")
        p.add_argument("--stage1-resolution-augment", type=float, default=None, metavar="P",
                       help="the blur of --stage2-resolution-augment on stage-1 patches with probability P (default 0)")
        p.add_argument("--domain-close", type=float, default=0.0, metavar="MM",
                       help="with --domain brain: fill surface notches of the brain mask narrower than about 2*MM "
                       "(default 0 = none; 10 is the measured alternative, not better on validation)")
        p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                       help="learning-rate schedule of both stages (default constant; cosine measured lower)")
        p.add_argument("--ablation", choices=("none", "no-balancing", "uniform-patches", "no-hard-negatives",
                                              "no-physics-channels", "bce-heatmap", "dice-bce-heatmap"), default="none",
                       help="train a baseline variant for the ablation table: no-balancing = uniform patches, "
                       "plain BCE heatmap, unweighted CE; uniform-patches = only the patch sampling uniform; "
                       "no-hard-negatives = stage 2 without stage-1 false "
                       "positives (use with --init and --steps 0); no-physics-channels = magnitude + SWI inputs; "
                       "bce-heatmap / dice-bce-heatmap = other heatmap losses")
    return p


def options_from_args(args):
    """:class:`TrainOptions` from parsed arguments (ablation switches included)."""
    from cmbdetect.models.channels import APPEARANCE_CHANNELS
    from cmbdetect.models.train import TrainOptions

    kw = {"seed": args.seed, "threads": args.threads, "domain": args.domain}
    if args.sigma_size_fraction is not None:
        if not 0.0 <= args.sigma_size_fraction <= 1.0:
            raise InputError(f"--sigma-size-fraction must be in [0, 1], got {args.sigma_size_fraction}")
        kw["sigma_size_fraction"] = args.sigma_size_fraction
    if getattr(args, "lr_schedule", "constant") != "constant":
        kw["lr_schedule"] = args.lr_schedule
    if getattr(args, "augment", False):
        kw.update(augment=True, truth_copies=3, truth_jitter=1.5)
    for name in ("stage1_resolution_augment", "stage2_resolution_augment"):
        value = getattr(args, name, None)
        if value is not None:
            if not 0.0 <= value <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
            kw[name] = value
    if args.spacing is not None:
        try:
            sp = tuple(float(v) for v in str(args.spacing).split(","))
        except ValueError:
            sp = ()
        if len(sp) != 3 or not all(0.1 <= v <= 10.0 for v in sp):
            raise InputError(f"--spacing must be three voxel sizes in mm (0.1-10), e.g. 1,1,1.5; got {args.spacing!r}")
        kw["spacing_mm"] = sp
    if args.steps is not None:
        if args.steps < 0:
            raise InputError(f"--steps must be >= 0, got {args.steps}")
        kw["stage1_steps"] = args.steps
    if args.epochs is not None:
        if args.epochs < 0 or (args.epochs == 0 and (args.init is None or args.new_classifier)):
            raise InputError(f"--epochs must be >= 1 (or 0 with --init and without --new-classifier: "
                             f"recalibration only), got {args.epochs}")
        kw["stage2_epochs"] = args.epochs
    if args.hard_negative_budget is not None:
        if not 0 <= args.hard_negative_budget <= 100_000:
            raise InputError(f"--hard-negative-budget must be between 0 and 100000, got {args.hard_negative_budget}")
        kw["hard_negative_budget"] = args.hard_negative_budget
    if args.max_candidates is not None:
        if not 1 <= args.max_candidates <= 100_000:
            raise InputError(f"--max-candidates must be between 1 and 100000, got {args.max_candidates}")
        kw["max_candidates"] = args.max_candidates
    domain_close = getattr(args, "domain_close", 0.0)
    if not 0.0 <= domain_close <= 30.0:
        raise InputError(f"--domain-close must be between 0 and 30 mm, got {domain_close}")
    kw["domain_close_mm"] = domain_close
    if not 0 <= args.classifier_centre <= 6:
        raise InputError(f"--classifier-centre must be between 0 and 6, got {args.classifier_centre}")
    kw["classifier_centre"] = args.classifier_centre
    if args.new_classifier:
        if args.init is None:
            raise InputError("--new-classifier needs --init (a new model always gets a new classifier)")
        kw["init_classifier"] = False
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    bce_floor = 1e-4  # a BCE heatmap peaks far below the focal loss's floor of 0.02 (TrainOptions.heatmap_floor)
    kw.update({"none": {}, "no-balancing": {"balanced": False, "class_weighting": False, "heatmap_loss": "bce",
                                            "heatmap_floor": bce_floor},
               "uniform-patches": {"balanced": False},
               "no-hard-negatives": {"hard_negatives": False, "init_classifier": False},
               "no-physics-channels": {"channels": APPEARANCE_CHANNELS},
               "bce-heatmap": {"heatmap_loss": "bce", "heatmap_floor": bce_floor},
               "dice-bce-heatmap": {"heatmap_loss": "dice_bce", "heatmap_floor": bce_floor}}[
                   getattr(args, "ablation", "none")])
    return TrainOptions(**kw)


#: options that go with --config (the config holds everything else)
CONFIG_OPTIONS = ("config", "work_dir", "out", "resume", "overwrite")


def run_with_config(args) -> int:
    """``cmbdetect train --config FILE --out DIR``: refuse any other training option (the config wins over
    nothing: mixing the two would leave one of them silently unused)."""
    from pathlib import Path

    from cmbdetect.models.train_config import load_config
    from cmbdetect.pipeline.cli.train_recipe import run_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    defaults = vars(parser.parse_args(["train", "--config", "x", "--out", "x"]))
    given = [k for k, v in vars(args).items() if k in defaults and k not in CONFIG_OPTIONS and v != defaults[k]]
    if given:
        raise InputError(f"--config holds the whole training recipe; drop --{given[0].replace('_', '-')} "
                         "(or train without --config)")
    config = load_config(args.config)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".work")
    run_config(config, out=out, work=work, resume=args.resume,
               log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


def run(args) -> int:
    from cmbdetect.pipeline.io.output_folder import MANIFEST_NAME, claim_output_folder, write_manifest

    if args.config is not None:
        return run_with_config(args)
    if not args.bids_dir:
        raise InputError("cmbdetect train needs --bids-dir (or --config FILE)")
    if args.members < 1:
        raise InputError(f"--members must be >= 1, got {args.members}")
    opts = options_from_args(args)
    inputs = [*args.bids_dir, *([args.labels] if args.labels else [])]
    claim = claim_output_folder(args.out, overwrite=args.overwrite or args.resume, inputs=inputs)
    foreign = {str(p.relative_to(claim.path)) for p in claim.path.rglob("*") if p.is_file()} - claim.own_files \
        if claim.previous else set()
    claim.path.mkdir(parents=True, exist_ok=True)
    write_manifest(claim.path, kind="train", files=claim.own_files - {MANIFEST_NAME})  # recognisable if interrupted
    try:
        _train_members(args, opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        write_manifest(claim.path, kind="train",
                       files={str(p.relative_to(claim.path)) for p in claim.path.rglob("*") if p.is_file()}
                       - foreign - {MANIFEST_NAME})
    return 0


def _train_members(args, opts, *, log) -> None:
    """Train ``args.members`` member(s) into ``args.out`` (one model, or an ensemble of members)."""
    from dataclasses import replace
    from pathlib import Path

    from cmbdetect.models.ensemble import member_name, write_ensemble
    from cmbdetect.models.train import train

    command = "cmbdetect " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "cmbdetect train"
    if args.members == 1:
        train(args.bids_dir, args.out, labels=args.labels, options=opts, resume=args.resume, init=args.init,
              cache_dir=args.cache_dir, command=command, log=log)
        return
    out = Path(args.out)
    cache = args.cache_dir or out / "cache"
    for k in range(args.members):
        folder = out / member_name(k)
        if args.resume and (folder / "metadata.json").is_file() and not (folder / "checkpoint.pt").exists():
            log(f"[ensemble] {folder.name} already trained")
            continue
        log(f"[ensemble] training {folder.name} (seed {opts.seed + k})")
        train(args.bids_dir, folder, labels=args.labels, options=replace(opts, seed=opts.seed + k),
              resume=args.resume, init=args.init, init_member=k, cache_dir=cache, command=command, log=log)
    write_ensemble(out, command=command)
    log(f"[ensemble] {args.members} members written to {out}")
