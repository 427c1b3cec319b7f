"""What the detection models hand to the rest of the pipeline: one record per candidate."""
from __future__ import annotations

from dataclasses import dataclass, field

#: Stage-2 classes, in the order of the classifier's outputs.
CLASSES: tuple[str, ...] = ("microbleed", "calcification", "vein", "other")

#: Labels a reader sees: the stage-2 classes, with the microbleed class split by the model's thresholds into a
#: call ("microbleed") and a borderline one ("possible_microbleed"); in reading order of importance.
READER_LABELS: tuple[str, ...] = ("microbleed", "possible_microbleed", "calcification", "vein", "other")

#: Defaults of the reader thresholds on the calibrated microbleed probability (a model stores its own in
#: ``metadata["thresholds"]``): at or above ``microbleed_call`` a candidate is labelled microbleed, at or above
#: ``microbleed_borderline`` (and below the call) possible_microbleed.
DEFAULT_MICROBLEED_CALL = 0.5
DEFAULT_MICROBLEED_BORDERLINE = 0.2


@dataclass(frozen=True)
class LabelPolicy:
    """How a candidate's calibrated probabilities become its reader label.

    ``call`` / ``borderline``: thresholds on the microbleed probability (0 < borderline <= call < 1).
    ``calls_withheld``: a reason (plain sentence) why this acquisition or map cannot carry a microbleed call
    (outside the validated range, failed chi quality check); when set, no candidate is labelled microbleed or
    possible_microbleed, whatever its probability.
    """

    call: float = DEFAULT_MICROBLEED_CALL
    borderline: float = DEFAULT_MICROBLEED_BORDERLINE
    calls_withheld: str | None = None

    def __post_init__(self):
        if not 0.0 < self.borderline <= self.call < 1.0:
            raise ValueError(f"reader thresholds must satisfy 0 < borderline <= call < 1, "
                             f"got borderline {self.borderline:g}, call {self.call:g}")

    @classmethod
    def from_metadata(cls, metadata: dict, *, calls_withheld: str | None = None) -> "LabelPolicy":
        """The policy stored with a model (``thresholds.microbleed_call`` / ``microbleed_borderline``)."""
        t = metadata.get("thresholds") or {}
        return cls(call=float(t.get("microbleed_call", DEFAULT_MICROBLEED_CALL)),
                   borderline=float(t.get("microbleed_borderline", DEFAULT_MICROBLEED_BORDERLINE)),
                   calls_withheld=calls_withheld or None)

    def label(self, probabilities: dict[str, float]) -> str:
        """The reader label of one candidate from its class probabilities (keys :data:`CLASSES`).

        Not the arg-max of the four classes: a microbleed label needs the calibrated microbleed probability to
        pass ``call`` (``borderline``: possible_microbleed); every other candidate gets the most probable of
        calcification, vein and other."""
        p_mb = float(probabilities.get("microbleed", 0.0))
        if not self.calls_withheld and p_mb == p_mb:
            if p_mb >= self.call:
                return "microbleed"
            if p_mb >= self.borderline:
                return "possible_microbleed"
        rest = [c for c in CLASSES if c != "microbleed"]
        return max(rest, key=lambda c: (float(probabilities.get(c, 0.0)), -rest.index(c)))


def reader_thresholds(*, call: float = DEFAULT_MICROBLEED_CALL,
                      borderline: float = DEFAULT_MICROBLEED_BORDERLINE) -> dict[str, float]:
    """The ``metadata["thresholds"]`` entries of the reader label policy (checked by :class:`LabelPolicy`)."""
    LabelPolicy(call=call, borderline=borderline)
    return {"microbleed_call": float(call), "microbleed_borderline": float(borderline)}


def stage2_class(label: str) -> str:
    """The stage-2 class a reader label belongs to (possible_microbleed -> microbleed)."""
    if label not in READER_LABELS:
        raise ValueError(f"label {label!r} is not one of {READER_LABELS}")
    return "microbleed" if label == "possible_microbleed" else label


@dataclass
class Detection:
    """One candidate lesion found by the models, in voxel space of the input grid.

    ``centre_vox`` are continuous voxel indices (i, j, k); ``score`` is the stage-1 heatmap peak;
    ``probabilities`` maps each of :data:`CLASSES` to a calibrated, prevalence-adjusted probability;
    ``label`` is the reader label (one of :data:`READER_LABELS`, :class:`LabelPolicy`); ``features`` are the physics features (integrated chi in
    ppm*mm^3, mean chi ppm, dipole sign, diameter_mm, volume_mm3, elongation, ...);
    ``uncertainty`` (0..1, higher = more informative to review) ranks review order.
    """

    centre_vox: tuple[float, float, float]
    score: float
    probabilities: dict[str, float]
    label: str
    diameter_mm: float
    features: dict[str, float] = field(default_factory=dict)
    uncertainty: float = 0.0


#: Largest lesion extent (mm) that :func:`merge_duplicates` lets one detection claim.
MAX_CLAIM_DIAMETER_MM = 10.0


def merge_duplicates(detections: list[Detection], voxel_size) -> list[Detection]:
    """One entry per lesion: going down the list in order of decreasing microbleed probability, a detection
    whose most probable stage-2 class is microbleed or calcification claims the ball of half its diameter (at most
    :data:`MAX_CLAIM_DIAMETER_MM`); a later detection whose centre lies inside an earlier claim is a second peak
    of the same large lesion and is dropped.  Veins and "other" claim nothing, so a bleed next to a vein stays.
    ``voxel_size`` (mm) of the grid of ``centre_vox``."""
    vs = [float(v) for v in voxel_size]
    order = sorted(detections, key=lambda d: -d.probabilities["microbleed"])
    claims: list[tuple[tuple[float, ...], float]] = []
    kept = []
    for d in order:
        if any(sum(((a - b) * s) ** 2 for a, b, s in zip(d.centre_vox, c, vs)) < r * r for c, r in claims):
            continue
        kept.append(d)
        if max(CLASSES, key=lambda c: d.probabilities.get(c, 0.0)) in ("microbleed", "calcification"):
            claims.append((d.centre_vox, 0.5 * min(float(d.diameter_mm), MAX_CLAIM_DIAMETER_MM)))
    return kept
