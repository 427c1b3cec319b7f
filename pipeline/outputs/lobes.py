"""Side and lobe of a candidate, for the MARS lobar sub-regions, from the brain mask's geometry (no atlas).

MARS counts lobar microbleeds per lobe (frontal, parietal, temporal, occipital, insula) and side, and deep
and infratentorial ones per side.  Like :mod:`pipeline.regions` this is a **geometric estimate** from the
mask extent measured by :func:`pipeline.regions.brain_geometry` (scanner RAS, mm), with the brain
normalised to the unit ball (``u = (xyz - centre) / half extent`` along R, A, S):

* side: ``right`` when x (RAS) lies right of the mask centroid, else ``left``; ``midline`` within
  :data:`MIDLINE_MM` of it.
* lobe (``lobar`` candidates only): ``occipital`` behind ``u_A <`` :data:`OCCIPITAL_U`; ``temporal`` below
  ``u_S <`` :data:`TEMPORAL_U_S` and lateral ``|u_R| >`` :data:`TEMPORAL_U_R`; ``frontal`` in front of
  ``u_A >`` :data:`CENTRAL_U` (the central sulcus); otherwise ``parietal``.  The insula (deep to the
  lateral sulcus) is not separated and is counted with the temporal or frontal lobe.

A head tilted in the scanner, or an asymmetric field of view, shifts these boundaries: a reader confirms them.
"""
from __future__ import annotations

import numpy as np

from cmbdetect.physics.geometry import voxel_to_world
from cmbdetect.pipeline.outputs.regions import BrainGeometry

#: Lobes written in the candidate table (``""`` for candidates that are not lobar).
LOBES: tuple[str, ...] = ("frontal", "parietal", "temporal", "occipital")
#: Sides written in the candidate table (``unknown`` when the mask cannot stand for a brain).
SIDES: tuple[str, ...] = ("left", "right", "midline", "unknown")
#: Distance (mm) from the mask centroid in x within which a candidate is ``midline``.
MIDLINE_MM: float = 2.0
#: Normalised anterior coordinate behind which a lobar candidate is occipital.
OCCIPITAL_U: float = -0.6
#: Normalised anterior coordinate of the central sulcus (frontal in front of it).
CENTRAL_U: float = -0.05
#: Normalised superior coordinate below which a lateral lobar candidate is temporal.
TEMPORAL_U_S: float = -0.15
#: Normalised lateral coordinate beyond which a low lobar candidate is temporal.
TEMPORAL_U_R: float = 0.45


def side_and_lobe(geometry: BrainGeometry, ijk, region: str) -> tuple[str, str]:
    """``(side, lobe)`` of the point at continuous voxel index ``ijk`` whose MARS ``region`` is known;
    lobe is ``""`` unless ``region == "lobar"``; ``("unknown", "")`` when the geometry is unusable or
    the region unknown."""
    if not geometry.usable or region == "unknown":
        return "unknown", ""
    xyz = voxel_to_world(geometry.affine, np.asarray(ijk, dtype=float))
    dx = float(xyz[0] - geometry.centroid[0])
    side = "midline" if abs(dx) < MIDLINE_MM else ("right" if dx > 0 else "left")
    if region != "lobar":
        return side, ""
    half = (geometry.hi - geometry.lo) / 2.0
    u = (xyz - (geometry.hi + geometry.lo) / 2.0) / half
    if u[1] < OCCIPITAL_U:
        lobe = "occipital"
    elif u[2] < TEMPORAL_U_S and abs(u[0]) > TEMPORAL_U_R:
        lobe = "temporal"
    elif u[1] > CENTRAL_U:
        lobe = "frontal"
    else:
        lobe = "parietal"
    return side, lobe
