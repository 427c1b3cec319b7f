"""The typed model spec: everything inference reads from a model's ``metadata.json``, checked once at load.

:func:`model_spec` turns the metadata of a model folder into frozen dataclasses (:class:`ModelSpec` with
:class:`Thresholds`, :class:`InferenceSettings`, :class:`Calibration`, :class:`Gates`).  A key the spec does
not know, a setting an ensemble would ignore, a wrong type or a value out of range is an :class:`InputError`
naming the key and the file, so a wrong edit of ``metadata.json`` fails loudly instead of being carried along.

**Precedence between an ensemble and its members.**  A member is a complete model, loadable on its own.
What runs a member's own networks belongs to the member and is read from the member's metadata only: its
architecture, features, calibration (stacking included) and the per-network inference settings
:data:`MEMBER_INFERENCE_KEYS` (``tile``, ``overlap``, ``stage1_tta_flips``, ``stage2_tta``).  What decides on
the combined output belongs to the ensemble and is read from the ensemble's metadata only: the thresholds
(heatmap threshold, budget, reader thresholds), the detection domain, the stage-2 screen, the low-rank prior,
the vein gate switch and duplicate merging (:data:`OUTPUT_INFERENCE_KEYS`); a member's own values of these
apply when the member is loaded alone.  An ensemble's metadata may not hold the member-owned keys (they would
be ignored), which is an error.

**Derived values are computed, not stored.**  The low-rank prior applies from the budget stage 2 was fitted
on (:attr:`ModelSpec.fitted_budget`), so ``inference.low_rank_prior`` holds only its ``odds_ratio``; the
stage-2 screen holds only its ``floor``.  The prose of the gates is kept in the metadata for readers and must
equal the text built from the constants (:data:`cmbdetect.models.registry.PHYSICS_GATE`, ``VEIN_GATE``).

A top-level ``vein_model`` section (a fitted feature model) is accepted as a mapping and validated by
:mod:`cmbdetect.models.vein_model`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from cmbdetect.models.detection import DEFAULT_MICROBLEED_BORDERLINE, DEFAULT_MICROBLEED_CALL, LabelPolicy
from cmbdetect.physics.domain import DOMAINS  # detection domains (inference.domain; default "mask")
from cmbdetect.physics.errors import InputError

#: ``inference`` keys of the settings that run one model's networks (a member's own).
MEMBER_INFERENCE_KEYS = ("tile", "overlap", "stage1_tta_flips", "stage2_tta")
#: ``inference`` keys that decide on the combined output (an ensemble's own).
OUTPUT_INFERENCE_KEYS = ("domain", "domain_close_mm", "stage2_screen", "low_rank_prior", "vein_gate",
                         "merge_duplicates")
#: top-level keys of a model's metadata (``required``, ``optional``) and of an ensemble's.
MODEL_KEYS = (("channels", "normalisation", "architecture", "classes", "patch_size", "features", "thresholds",
               "calibration"),
              ("format_version", "version", "name", "spacing", "physics_gate", "vein_gate", "inference",
               "training", "metrics", "changelog", "vein_model"))
ENSEMBLE_KEYS = (("channels", "normalisation", "classes", "patch_size", "thresholds", "ensemble"),
                 ("format_version", "version", "name", "spacing", "physics_gate", "vein_gate", "inference",
                  "training", "metrics", "changelog", "vein_model"))


class _Check:
    """Type and range checks that name the key and the file."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, why: str):
        raise InputError(f"model metadata {self.source}: {key} {why}")

    def keys(self, d, where: str, required=(), optional=()) -> dict:
        if not isinstance(d, Mapping):
            self.fail(where or "metadata", f"must be a mapping, got {type(d).__name__}")
        for k in d:
            if k not in required and k not in optional:
                self.fail(f"{where}.{k}".lstrip("."), "is not a known key (unknown keys are refused, not ignored)")
        for k in required:
            if k not in d:
                self.fail(f"{where}.{k}".lstrip("."), "is missing")
        return dict(d)

    def number(self, v, key: str, lo=None, hi=None, *, integer=False, open_lo=False):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and int(v) != v):
            self.fail(key, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
        v = int(v) if integer else float(v)
        if lo is not None and (v < lo or (open_lo and v == lo)):
            self.fail(key, f"must be {'>' if open_lo else '>='} {lo:g}, got {v:g}")
        if hi is not None and v > hi:
            self.fail(key, f"must be <= {hi:g}, got {v:g}")
        return v

    def boolean(self, v, key: str) -> bool:
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false, got {v!r}")
        return v


@dataclass(frozen=True)
class Thresholds:
    """Stage-1 operating point and the reader label thresholds (``thresholds``)."""

    heatmap: float
    min_distance_mm: float
    max_candidates: int
    microbleed_call: float = DEFAULT_MICROBLEED_CALL
    microbleed_borderline: float = DEFAULT_MICROBLEED_BORDERLINE

    def label_policy(self, *, calls_withheld: str | None = None) -> LabelPolicy:
        return LabelPolicy(call=self.microbleed_call, borderline=self.microbleed_borderline,
                           calls_withheld=calls_withheld or None)


@dataclass(frozen=True)
class Stacking:
    """``logit p'_mb = a logit p_mb + b logit s1 + c`` (:mod:`cmbdetect.models.stacking`)."""

    a: float
    b: float
    c: float
    n: int = 0
    n_microbleed: int = 0

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c}


@dataclass(frozen=True)
class Calibration:
    """Stage-2 calibration of one model (``calibration``): logit adjustment, temperature, bias, the prior it
    was fitted at (microbleeds among the validation candidates of its fitted budget), stacking."""

    method: str
    temperature: float
    class_weights: tuple[float, ...]
    training_prevalence: float
    bias: tuple[float, ...] | None = None
    stacking: Stacking | None = None

    def as_dict(self) -> dict:
        """The mapping :func:`cmbdetect.models.classifier.calibrated_probabilities` takes."""
        d = {"class_weights": list(self.class_weights), "temperature": self.temperature}
        if self.bias is not None:
            d["bias"] = list(self.bias)
        return d


@dataclass(frozen=True)
class InferenceSettings:
    """``inference``: the network settings (a member's own) and the output settings (an ensemble's own)."""

    tile: int = 160
    overlap: int = 16
    stage1_tta_flips: tuple[tuple[int, ...], ...] = ((),)
    stage2_tta: bool = False
    domain: str = "mask"
    domain_close_mm: float = 0.0
    #: stage-2 screen floor (None: every candidate gets the full pass)
    screen_floor: float | None = None
    #: microbleed prior odds of the candidates beyond the fitted budget, relative to those within it
    low_rank_odds_ratio: float | None = None
    vein_gate: bool = True
    merge_duplicates: bool = True


@dataclass(frozen=True)
class Gates:
    """The prose of the gates recorded in the metadata ("" when absent)."""

    physics_gate: str = ""
    vein_gate: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One model (or an ensemble, with ``members``), as inference reads it."""

    source: str
    channels: tuple[str, ...]
    classes: tuple[str, ...]
    spacing: tuple[float, float, float] | None
    clip: float
    patch_size: int
    thresholds: Thresholds
    inference: InferenceSettings
    gates: Gates
    version: str = ""
    #: per-model parts (None for an ensemble)
    calibration: Calibration | None = None
    feature_names: tuple[str, ...] = ()
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    #: the budget stage 2 was fitted on (``training.options.max_candidates``, else ``thresholds.max_candidates``)
    own_fitted_budget: int = 0
    members: tuple["ModelSpec", ...] = ()
    vein_model: Mapping[str, Any] | None = None
    changelog: tuple = field(default=())

    @property
    def parts(self) -> tuple["ModelSpec", ...]:
        return self.members or (self,)

    @property
    def fitted_budget(self) -> int:
        """The stage-1 budget stage 2 was fitted on: the largest of the parts' own."""
        return max(p.own_fitted_budget for p in self.parts)

    @property
    def low_rank_from(self) -> int | None:
        """First stage-1 rank (0-based) that gets the low-rank prior (None: no low-rank prior)."""
        return None if self.inference.low_rank_odds_ratio is None else self.fitted_budget


def _thresholds(t, c: _Check) -> Thresholds:
    t = c.keys(t, "thresholds", ("heatmap", "min_distance_mm", "max_candidates"),
               ("microbleed_call", "microbleed_borderline"))
    out = Thresholds(heatmap=c.number(t["heatmap"], "thresholds.heatmap", 0.0, 1.0),
                     min_distance_mm=c.number(t["min_distance_mm"], "thresholds.min_distance_mm", 0.0),
                     max_candidates=c.number(t["max_candidates"], "thresholds.max_candidates", 1, integer=True),
                     microbleed_call=c.number(t.get("microbleed_call", DEFAULT_MICROBLEED_CALL),
                                              "thresholds.microbleed_call", 0.0, 1.0),
                     microbleed_borderline=c.number(t.get("microbleed_borderline", DEFAULT_MICROBLEED_BORDERLINE),
                                                    "thresholds.microbleed_borderline", 0.0, 1.0))
    try:
        out.label_policy()
    except ValueError as exc:
        c.fail("thresholds.microbleed_call/microbleed_borderline", str(exc))
    return out


def _calibration(d, n_classes: int, c: _Check) -> Calibration:
    d = c.keys(d, "calibration", ("temperature", "class_weights", "training_prevalence"),
               ("method", "bias", "stacking"))

    def vec(v, key):
        if not isinstance(v, (list, tuple)) or len(v) != n_classes:
            c.fail(key, f"must be a list of {n_classes} numbers, got {v!r}")
        return tuple(c.number(x, key) for x in v)

    st = d.get("stacking")
    if st is not None:
        st = c.keys(st, "calibration.stacking", ("a", "b", "c"), ("n", "n_microbleed"))
        st = Stacking(**{k: c.number(v, f"calibration.stacking.{k}", integer=k in ("n", "n_microbleed"))
                         for k, v in st.items()})
    return Calibration(method=str(d.get("method", "")),
                       temperature=c.number(d["temperature"], "calibration.temperature", 0.0, open_lo=True),
                       class_weights=vec(d["class_weights"], "calibration.class_weights"),
                       training_prevalence=c.number(d["training_prevalence"], "calibration.training_prevalence",
                                                    0.0, 1.0, open_lo=True),
                       bias=None if d.get("bias") is None else vec(d["bias"], "calibration.bias"), stacking=st)


def _legacy_inference(d, c: _Check, *, ensemble: bool) -> dict:
    """Format-1 metadata (before this spec): an ensemble's copies of the member settings were ignored and are
    dropped; the stored derived values must be what is now computed (``stage2_screen.full_top`` 0;
    ``low_rank_prior.from_rank`` is checked against the fitted budget by :func:`model_spec`)."""
    d = dict(d or {})
    if ensemble:
        d = {k: v for k, v in d.items() if k not in MEMBER_INFERENCE_KEYS}
    if isinstance(d.get("stage2_screen"), Mapping):
        scr = dict(d["stage2_screen"])
        if scr.pop("full_top", 0) != 0:
            c.fail("inference.stage2_screen.full_top", "must be 0 (format 1; it is no longer a setting)")
        d["stage2_screen"] = scr
    if isinstance(d.get("low_rank_prior"), Mapping):
        d["low_rank_prior"] = {k: v for k, v in d["low_rank_prior"].items() if k != "from_rank"}
    return d


def _inference(d, c: _Check, *, ensemble: bool) -> InferenceSettings:
    allowed = OUTPUT_INFERENCE_KEYS if ensemble else MEMBER_INFERENCE_KEYS + OUTPUT_INFERENCE_KEYS
    for k in d or {}:
        if ensemble and k in MEMBER_INFERENCE_KEYS:
            c.fail(f"inference.{k}", "belongs to the members (each member's metadata.json); an ensemble's copy "
                   "would be ignored, so it is refused")
    d = c.keys(d or {}, "inference", (), allowed)
    kw: dict[str, Any] = {}
    if "tile" in d:
        kw["tile"] = c.number(d["tile"], "inference.tile", 8, integer=True)
    if "overlap" in d:
        kw["overlap"] = c.number(d["overlap"], "inference.overlap", 0, integer=True)
    if "stage1_tta_flips" in d:
        flips = d["stage1_tta_flips"]
        if not isinstance(flips, list) or not flips or not all(
                isinstance(f, list) and all(isinstance(a, int) and 0 <= a <= 2 for a in f) for f in flips):
            c.fail("inference.stage1_tta_flips", f"must be a non-empty list of axis lists (0-2), got {flips!r}")
        kw["stage1_tta_flips"] = tuple(tuple(f) for f in flips)
    for k in ("stage2_tta", "vein_gate", "merge_duplicates"):
        if k in d:
            kw[k] = c.boolean(d[k], f"inference.{k}")
    if "domain" in d:
        if d["domain"] not in DOMAINS:
            c.fail("inference.domain", f"must be one of {', '.join(DOMAINS)}, got {d['domain']!r}")
        kw["domain"] = d["domain"]
    if "domain_close_mm" in d:
        kw["domain_close_mm"] = c.number(d["domain_close_mm"], "inference.domain_close_mm", 0.0, 30.0)
    if "stage2_screen" in d:
        s = c.keys(d["stage2_screen"], "inference.stage2_screen", ("floor",))
        kw["screen_floor"] = c.number(s["floor"], "inference.stage2_screen.floor", 0.0, 1.0)
    if "low_rank_prior" in d:
        s = c.keys(d["low_rank_prior"], "inference.low_rank_prior", ("odds_ratio",))
        kw["low_rank_odds_ratio"] = c.number(s["odds_ratio"], "inference.low_rank_prior.odds_ratio", 0.0,
                                             open_lo=True)
    return InferenceSettings(**kw)


def _gates(meta, c: _Check) -> Gates:
    from cmbdetect.models.registry import PHYSICS_GATE, VEIN_GATE

    out = Gates(physics_gate=str(meta.get("physics_gate", "")), vein_gate=str(meta.get("vein_gate", "")))
    for key, text, now in (("physics_gate", out.physics_gate, PHYSICS_GATE), ("vein_gate", out.vein_gate, VEIN_GATE)):
        if text and text != now:
            c.fail(key, "differs from what the code does (models/registry.py "
                   f"{key.upper()}): the recorded text must be the text built from the constants")
    return out


def _common(meta, c: _Check) -> dict:
    ch = meta["channels"]
    if not isinstance(ch, list) or not ch or not all(isinstance(x, str) for x in ch):
        c.fail("channels", f"must be a list of channel names, got {ch!r}")
    classes = meta["classes"]
    if not isinstance(classes, list) or not all(isinstance(x, str) for x in classes):
        c.fail("classes", f"must be a list of class names, got {classes!r}")
    sp = meta.get("spacing")
    if sp is not None:
        if not isinstance(sp, list) or len(sp) != 3:
            c.fail("spacing", f"must be three voxel sizes (mm) or null, got {sp!r}")
        sp = tuple(c.number(v, "spacing", 0.05, 20.0) for v in sp)
    norm = meta["normalisation"]
    if not isinstance(norm, Mapping) or "clip" not in norm:
        c.fail("normalisation", "must be a mapping with 'clip'")
    vm = meta.get("vein_model")
    if vm is not None and not isinstance(vm, Mapping):
        c.fail("vein_model", "must be a mapping")
    log = meta.get("changelog", [])
    if not isinstance(log, list):
        c.fail("changelog", "must be a list")
    return dict(channels=tuple(ch), classes=tuple(classes), spacing=sp,
                clip=c.number(norm["clip"], "normalisation.clip", 0.0, open_lo=True),
                patch_size=c.number(meta["patch_size"], "patch_size", 4, integer=True),
                thresholds=_thresholds(meta["thresholds"], c), gates=_gates(meta, c),
                version=str(meta.get("version", "")),
                vein_model=None if vm is None else MappingProxyType(dict(vm)), changelog=tuple(log))


def grid_settings(metadata: Mapping, *, source: str = "metadata given in code"):
    """``(channels, clip, spacing, InferenceSettings)`` of a (possibly partial) metadata mapping: what the model
    grid needs (:func:`cmbdetect.models.inference.model_grid`), checked as in :func:`model_spec`."""
    c = _Check(source)
    sp = metadata.get("spacing")
    if sp is not None:
        if not isinstance(sp, (list, tuple)) or len(sp) != 3:
            c.fail("spacing", f"must be three voxel sizes (mm) or null, got {sp!r}")
        sp = tuple(c.number(v, "spacing", 0.05, 20.0) for v in sp)
    return (tuple(metadata["channels"]), c.number(metadata["normalisation"]["clip"], "normalisation.clip", 0.0,
                                                  open_lo=True), sp,
            _inference(metadata.get("inference"), c, ensemble=False))


def calibration_spec(calibration: Mapping, *, n_classes: int, source: str = "training") -> Calibration:
    """:class:`Calibration` of a ``calibration`` mapping (as training writes it)."""
    return _calibration(calibration, n_classes, _Check(source))


def model_spec(metadata: Mapping, *, source: str | Path = "metadata.json", members=()) -> ModelSpec:
    """The spec of one model's metadata, or of an ensemble's (``members``: the members' specs, in order).
    Format-1 metadata (``format_version`` 1) is read as before, its ignored and derived keys dropped."""
    c = _Check(str(source))
    fmt = metadata.get("format_version", 1) if isinstance(metadata, Mapping) else 1
    if fmt == 1 and isinstance(metadata, Mapping):
        old = metadata.get("inference") or {}
        metadata = {**metadata, "inference": _legacy_inference(old, c, ensemble=bool(members))}
        from_rank = (old.get("low_rank_prior") or {}).get("from_rank") if isinstance(old, Mapping) else None
        spec = model_spec(metadata | {"format_version": 2}, source=source, members=members)
        if from_rank is not None and int(from_rank) != spec.fitted_budget:
            c.fail("inference.low_rank_prior.from_rank", f"is {from_rank}, but stage 2 was fitted on "
                   f"{spec.fitted_budget} candidates (format 1; the rank is now computed)")
        return spec
    if fmt != 2:
        c.fail("format_version", f"must be 1 or 2, got {fmt!r}")
    if members:
        meta = c.keys(metadata, "", *ENSEMBLE_KEYS)
        c.keys(meta["ensemble"], "ensemble", ("members",), ("combination",))
        base = _common(meta, c)
        for m in members:
            for key in ("channels", "classes", "spacing", "clip", "patch_size"):
                if getattr(m, key) != base[key]:
                    c.fail(key, f"differs between the ensemble and member {m.source}; members share their inputs")
        return ModelSpec(source=c.source, inference=_inference(meta.get("inference"), c, ensemble=True),
                         members=tuple(members), **base)
    meta = c.keys(metadata, "", *MODEL_KEYS)
    base = _common(meta, c)
    f = c.keys(meta["features"], "features", ("names", "mean", "std"))
    if not (len(f["names"]) == len(f["mean"]) == len(f["std"])):
        c.fail("features", "names, mean and std must have the same length")
    opts = ((meta.get("training") or {}).get("options") or {}) if isinstance(meta.get("training"), Mapping) else {}
    fitted = opts.get("max_candidates") or base["thresholds"].max_candidates
    return ModelSpec(source=c.source, inference=_inference(meta.get("inference"), c, ensemble=False),
                     calibration=_calibration(meta["calibration"], len(base["classes"]), c),
                     feature_names=tuple(f["names"]), feature_mean=tuple(float(x) for x in f["mean"]),
                     feature_std=tuple(float(x) for x in f["std"]),
                     own_fitted_budget=c.number(fitted, "training.options.max_candidates", 1, integer=True), **base)
