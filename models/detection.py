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
