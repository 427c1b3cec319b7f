"""What the detection models hand to the rest of the pipeline: one record per candidate."""
from __future__ import annotations

from dataclasses import dataclass, field

#: Stage-2 classes, in the order of the classifier's outputs.
CLASSES: tuple[str, ...] = ("microbleed", "calcification", "vein", "other")


@dataclass
class Detection:
    """One candidate lesion found by the models, in voxel space of the input grid.

    ``centre_vox`` are continuous voxel indices (i, j, k); ``score`` is the stage-1 heatmap peak;
    ``probabilities`` maps each of :data:`CLASSES` to a calibrated, prevalence-adjusted probability;
    ``label`` is the arg-max class; ``features`` are the physics features (integrated chi in
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
    labelled microbleed or calcification claims the ball of half its diameter (at most
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
        if d.label in ("microbleed", "calcification"):
            claims.append((d.centre_vox, 0.5 * min(float(d.diameter_mm), MAX_CLAIM_DIAMETER_MM)))
    return kept
