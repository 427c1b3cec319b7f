"""Running a training recipe (:mod:`cmbdetect.models.train_config`): the steps of :func:`plan` in order, each
``simulate`` / ``train`` step as the ``cmbdetect`` command it is, then the operating point and the optional vein
model, recorded in the model's ``training.lineage``.  In the CLI layer because it runs CLI commands."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from cmbdetect.models.train_config import TrainConfig, plan
from cmbdetect.physics.errors import InputError


def run_config(config: TrainConfig, *, out: str | Path, work: str | Path, resume: bool = False, log=print) -> Path:
    """Run every step of ``config`` (:func:`plan`) and record them in ``out/metadata.json``
    (``training.lineage``, with the config file's text as ``training.config``); returns ``out``.
    ``resume``: steps whose output is complete are skipped (a simulated cohort, a trained model)."""
    from cmbdetect.models.ensemble import _write_metadata
    from cmbdetect.models.registry import load_model
    from cmbdetect.pipeline.cli import main as cli

    out, work = Path(out), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    lineage = []
    for step in plan(config, out=out, work=work):
        if step["step"] in ("simulate", "train"):
            argv = list(step["argv"])
            target = Path(argv[1] if step["step"] == "simulate" else step["out"])
            done = (target / "dataset_description.json").is_file() if step["step"] == "simulate" \
                else (target / "metadata.json").is_file() and not list(target.rglob("checkpoint.pt"))
            if resume and done:
                log(f"[config] {step['step']} {target.name}: already done")
            else:
                if step["step"] == "train" and resume:
                    argv.append("--resume")
                log(f"[config] cmbdetect {' '.join(shlex.quote(a) for a in argv)}")
                if cli(argv) != 0:
                    raise InputError(f"training config step failed: cmbdetect {' '.join(argv)}")
            lineage.append({"step": step["step"], "command": "cmbdetect " + " ".join(argv)})
        elif step["step"] == "operating_point":
            lineage.append(_operating_point(config, out, work, log=log))
        else:
            from cmbdetect.models.vein_model_train import train_vein_model

            figures = train_vein_model(model_dir=out, bids_dirs=[work / c for c in step["cohorts"]],
                                       cache_dir=work / "cache", seed=step["seed"], threads=config.threads)
            lineage.append({"step": "vein_model", "cohorts": step["cohorts"], "seed": step["seed"],
                            "figures": figures})
    meta = json.loads((out / "metadata.json").read_text())
    meta.setdefault("training", {})["lineage"] = lineage
    meta["training"]["config"] = Path(config.source).read_text() if Path(config.source).is_file() else config.source
    _write_metadata(out, meta)
    load_model(out)  # the spec check of what was written
    return out


def _operating_point(config: TrainConfig, out: Path, work: Path, *, log) -> dict:
    from cmbdetect.models.operating_point import fit_operating_point, held_out_ranks, write_operating_point
    from cmbdetect.models.registry import load_model
    from cmbdetect.models.training_data import load_training_subjects

    op = config.operating_point
    dirs = [work / c.name for c in config.cohorts_of("validation")]
    model = load_model(out)
    subjects = load_training_subjects(dirs, cache_dir=work / "cache", log=lambda m: None)
    rows = held_out_ranks(model, subjects, {d.name: d for d in dirs})
    point = fit_operating_point(model, rows, n_subjects=len(subjects), target=op.target, budget_step=op.budget_step,
                                screen_floor=op.screen_floor,
                                benchmark=f"operating_point step of {config.source} (target {op.target:g})")
    if point is None:
        log(f"[config] operating point: no budget reaches {op.target:g}; kept")
        return {"step": "operating_point", "target": op.target, "changed": False}
    write_operating_point(out, point)
    log(f"[config] operating point: <= {point.max_candidates} candidates/subject")
    return {"step": "operating_point", "target": op.target, "cohorts": [d.name for d in dirs],
            "max_candidates": point.max_candidates, "low_rank_odds_ratio": point.low_rank_odds_ratio}
