"""The whole training recipe of a model in one TOML file, run by ``cmbdetect train --config FILE --out DIR``.

Steps, in order, each recorded in the model's ``training.lineage``:

1. ``simulate``: every ``[[cohort]]`` is simulated with its ``cmbdetect simulate`` arguments into the work
   folder (``role = "train"`` cohorts train, ``role = "validation"`` ones only fit the operating point).
2. ``train``: each ``[[train]]`` step runs ``cmbdetect train`` on the training cohorts (physics maps cached
   once in the work folder's ``cache``), the first from scratch, each later one from the previous step's model
   (``--init``); the last one writes ``--out``.
3. ``operating_point`` (optional): the stage-1 budget for ``target`` recall on the validation cohorts
   (:mod:`cmbdetect.models.operating_point`).
4. ``vein_model`` (optional): :func:`cmbdetect.models.vein_model_train.train_vein_model` on its cohorts.

A value of the wrong type, an unknown key or a missing one is an :class:`InputError` naming it.
"""
from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cmbdetect.physics.errors import InputError

ROLES = ("train", "validation")


@dataclass(frozen=True)
class Cohort:
    name: str
    role: str
    simulate: tuple[str, ...]


@dataclass(frozen=True)
class TrainStep:
    """One ``cmbdetect train`` run: stage-1 steps, stage-2 epochs, members, spacing and other options."""

    steps: int
    epochs: int
    members: int = 1
    spacing: str | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class OperatingPointStep:
    target: float = 0.98
    budget_step: int = 100
    screen_floor: float = 0.02


@dataclass(frozen=True)
class VeinModelStep:
    cohorts: tuple[str, ...]
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    threads: int
    cohorts: tuple[Cohort, ...]
    train: tuple[TrainStep, ...]
    operating_point: OperatingPointStep | None = None
    vein_model: VeinModelStep | None = None
    source: str = ""

    def cohorts_of(self, role: str) -> list[Cohort]:
        return [c for c in self.cohorts if c.role == role]


def _keys(d, where, required, optional, src):
    if not isinstance(d, Mapping):
        raise InputError(f"training config {src}: [{where}] must be a table")
    for k in d:
        if k not in required and k not in optional:
            raise InputError(f"training config {src}: unknown key {where}.{k}")
    for k in required:
        if k not in d:
            raise InputError(f"training config {src}: {where}.{k} is missing")
    return d


def _typed(v, t, key, src, lo=None):
    ok = isinstance(v, t) and not (t in (int, float) and isinstance(v, bool))
    if t is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if not ok or (lo is not None and v < lo):
        raise InputError(f"training config {src}: {key} must be {t.__name__}"
                         + (f" >= {lo}" if lo is not None else "") + f", got {v!r}")
    return v


def _strings(v, key, src):
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InputError(f"training config {src}: {key} must be a list of strings, got {v!r}")
    return tuple(v)


def parse_config(data: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """:class:`TrainConfig` of a parsed TOML mapping."""
    src = source
    _keys(data, "top level", ("run", "cohort", "train"), ("operating_point", "vein_model"), src)
    run = _keys(data["run"], "run", ("seed",), ("threads",), src)
    cohorts = []
    for i, c in enumerate(_typed(data["cohort"], list, "cohort", src)):
        c = _keys(c, f"cohort[{i}]", ("name", "role", "simulate"), (), src)
        name = _typed(c["name"], str, f"cohort[{i}].name", src)
        if not name or "/" in name or name in {x.name for x in cohorts}:
            raise InputError(f"training config {src}: cohort[{i}].name {name!r} must be a new plain folder name")
        if c["role"] not in ROLES:
            raise InputError(f"training config {src}: cohort[{i}].role must be one of {', '.join(ROLES)}")
        cohorts.append(Cohort(name, c["role"], tuple(shlex.split(_typed(c["simulate"], str, f"cohort[{i}].simulate",
                                                                               src)))))
    steps = []
    for i, t in enumerate(_typed(data["train"], list, "train", src)):
        t = _keys(t, f"train[{i}]", ("steps", "epochs"), ("members", "spacing", "options"), src)
        steps.append(TrainStep(steps=_typed(t["steps"], int, f"train[{i}].steps", src, 0),
                               epochs=_typed(t["epochs"], int, f"train[{i}].epochs", src, 0),
                               members=_typed(t.get("members", 1), int, f"train[{i}].members", src, 1),
                               spacing=None if t.get("spacing") is None
                               else _typed(t["spacing"], str, f"train[{i}].spacing", src),
                               options=_strings(t.get("options", []), f"train[{i}].options", src)))
    if not steps:
        raise InputError(f"training config {src}: needs at least one [[train]] step")
    if not any(c.role == "train" for c in cohorts):
        raise InputError(f"training config {src}: needs at least one cohort with role \"train\"")
    op = None
    if "operating_point" in data:
        o = _keys(data["operating_point"], "operating_point", (), ("target", "budget_step", "screen_floor"), src)
        op = OperatingPointStep(target=_typed(o.get("target", 0.98), float, "operating_point.target", src, 0.0),
                                budget_step=_typed(o.get("budget_step", 100), int, "operating_point.budget_step",
                                                   src, 1),
                                screen_floor=_typed(o.get("screen_floor", 0.02), float,
                                                    "operating_point.screen_floor", src, 0.0))
        if not op.target <= 1.0 or not op.screen_floor <= 1.0:
            raise InputError(f"training config {src}: operating_point target and screen_floor must be <= 1")
        if not any(c.role == "validation" for c in cohorts):
            raise InputError(f"training config {src}: [operating_point] needs a cohort with role \"validation\"")
    vm = None
    if "vein_model" in data:
        v = _keys(data["vein_model"], "vein_model", ("cohorts",), ("seed",), src)
        vm = VeinModelStep(cohorts=_strings(v["cohorts"], "vein_model.cohorts", src),
                           seed=_typed(v.get("seed", 0), int, "vein_model.seed", src, 0))
        unknown = set(vm.cohorts) - {c.name for c in cohorts}
        if unknown:
            raise InputError(f"training config {src}: vein_model.cohorts names unknown cohorts {sorted(unknown)}")
    return TrainConfig(seed=_typed(run["seed"], int, "run.seed", src, 0),
                       threads=_typed(run.get("threads", 2), int, "run.threads", src, 1),
                       cohorts=tuple(cohorts), train=tuple(steps), operating_point=op, vein_model=vm, source=src)


def load_config(path: str | Path) -> TrainConfig:
    """Read and check a training config file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"cannot read training config {p}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"training config {p} is not valid TOML: {exc}") from exc
    return parse_config(data, source=str(p))


def plan(config: TrainConfig, *, out: Path, work: Path) -> list[dict]:
    """The steps :func:`run_config` runs, each ``{"step", "argv"}`` (``cmbdetect`` arguments) or ``{"step"}``."""
    steps = [{"step": "simulate", "cohort": c.name, "argv": ["simulate", str(work / c.name), *c.simulate]}
             for c in config.cohorts]
    bids = [str(work / c.name) for c in config.cohorts_of("train")]
    prev = None
    for k, t in enumerate(config.train):
        last = k == len(config.train) - 1
        dest = out if last else work / f"train-{k}"
        argv = ["train", "--bids-dir", *bids, "--out", str(dest), "--cache-dir", str(work / "cache"),
                "--seed", str(config.seed), "--threads", str(config.threads), "--steps", str(t.steps),
                "--epochs", str(t.epochs), "--members", str(t.members)]
        if t.spacing:
            argv += ["--spacing", t.spacing]
        if prev is not None:
            argv += ["--init", str(prev)]
        steps.append({"step": "train", "index": k, "argv": argv + list(t.options), "out": str(dest)})
        prev = dest
    if config.operating_point:
        steps.append({"step": "operating_point", "cohorts": [c.name for c in config.cohorts_of("validation")],
                      "target": config.operating_point.target})
    if config.vein_model:
        steps.append({"step": "vein_model", "cohorts": list(config.vein_model.cohorts), "seed": config.vein_model.seed})
    return steps
