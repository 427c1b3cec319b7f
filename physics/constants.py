"""Physical constants: the one place each lives."""
import math

#: Reduced gyromagnetic ratio of 1H, gamma / (2*pi), in MHz per tesla.
GAMMA_BAR_MHZ_PER_T: float = 42.577478
#: The same in Hz per tesla.
GAMMA_BAR_HZ_PER_T: float = GAMMA_BAR_MHZ_PER_T * 1e6
#: Susceptibility of air relative to brain tissue (ppm, SI volume susceptibility).
CHI_AIR_VS_TISSUE_PPM: float = 9.4
#: Largest diameter (mm) of a cerebral microbleed (the usual radiological definition: 2-10 mm).
MICROBLEED_MAX_DIAMETER_MM: float = 10.0
#: Generous upper bound (ppm, SI, relative to tissue) on the susceptibility of a microbleed's blood products:
#: QSM studies measure about 0.2-2 ppm; 10 ppm exceeds even the air/tissue step.
MICROBLEED_MAX_CHI_PPM: float = 10.0
#: Largest magnetic moment a microbleed can carry, chi * volume of the largest one (ppm * mm^3, about 5236):
#: a candidate whose integrated chi exceeds it is no microbleed (a failed chi map, a large haemorrhage, air).
MICROBLEED_MAX_MOMENT_PPM_MM3: float = MICROBLEED_MAX_CHI_PPM * math.pi / 6.0 * MICROBLEED_MAX_DIAMETER_MM ** 3
#: Susceptibility difference (ppm, SI) between fully deoxygenated and fully oxygenated red cells / blood per
#: unit haematocrit: 0.27 ppm cgs x 4 pi (Spees et al. 2001, Magn Reson Med 45:533); venous blood chi vs tissue is
#: about Hct (1 - Y) times this (0.3-0.7 ppm for Hct 0.4, Y 0.5-0.75).
DCHI_DEOXY_BLOOD_PPM: float = 0.27 * 4.0 * math.pi

# --- The vein gate (models/classifier.py vein_gate; features in models/features.py vein_features) ---
#: A candidate's dark (magnitude void) or paramagnetic (chi+) structure is a tube when it goes on, both ways along
#: its axis, for at least this many times its own width across the axis (a ball goes on about half its width)...
VEIN_CONTINUATION_FACTOR: float = 2.0
#: ...and at least this far (mm; several voxels of a 2 mm slice, beyond the blooming of a 10 mm bleed's edge).
VEIN_MIN_CONTINUATION_MM: float = 4.0
#: A void that goes on this many times its width, and at least ``VEIN_MIN_ONE_SIDED_MM``, on one side only is a tube
#: too (a vein seen where it bends, branches or leaves the slab; on the held-out vein family most false calls).
VEIN_ONE_SIDED_FACTOR: float = 3.0
VEIN_MIN_ONE_SIDED_MM: float = 8.0
#: How far (mm) the ridge tracker follows a structure from the candidate (the gate needs only a few mm).
VEIN_TRACK_MAX_MM: float = 12.0
#: Darkness (1 - magnitude / local median) below which there is no void to follow.
VEIN_MIN_VOID_DARKNESS: float = 0.15
#: The local field is a vein's when the cylinder explains at least this much more of its variance (R^2) than
#: a magnetised sphere, and at least ``VEIN_FIT_MIN_R2`` of it.
VEIN_FIT_R2_MARGIN: float = 0.2
VEIN_FIT_MIN_R2: float = 0.5


def ppm_to_hz(field_ppm, b0_t: float):
    """Convert a field offset in ppm of B0 to a frequency offset in Hz at ``b0_t`` tesla."""
    return field_ppm * GAMMA_BAR_MHZ_PER_T * b0_t


def hz_to_ppm(field_hz, b0_t: float):
    """Convert a frequency offset in Hz to ppm of B0 at ``b0_t`` tesla."""
    return field_hz / (GAMMA_BAR_MHZ_PER_T * b0_t)

# --- Validated acquisition range of a microbleed call (physics/fitness.py) ---------------------------------
# The acquisitions on which a microbleed call is validated (why these limits: docs/acquisition_fitness.md).  Outside
# them the maps are still written, but no candidate is labelled microbleed (physics.fitness.assess_fitness says why).
#: Largest in-plane voxel edge (mm; the two finer edges of the voxel) of a microbleed call.
FITNESS_MAX_INPLANE_MM: float = 1.5
#: Largest slice thickness (mm; the coarsest voxel edge) of a microbleed call.
FITNESS_MAX_SLICE_MM: float = 3.0
#: Smallest B0 x longest TE (T*s) of a microbleed call: the phase a microbleed's field accrues, and its blooming,
#: grow with it; 0.03 T*s is TE 10 ms at 3 T (20 ms at 1.5 T).
FITNESS_MIN_B0_TE_T_S: float = 0.03
#: Smallest extent (mm) of the valid (background-removed) brain mask along each voxel axis: thinner slabs leave
#: background removal no room.  The real 3-echo crop (24 x 24 x 41 mm field of view) keeps 20 mm.
FITNESS_MIN_BRAIN_EXTENT_MM: float = 15.0
#: Reference microbleed of the field-CNR measure: diameter (mm) and susceptibility (ppm, relative to tissue).
FITNESS_REFERENCE_MICROBLEED_DIAMETER_MM: float = 3.0
FITNESS_REFERENCE_MICROBLEED_CHI_PPM: float = 0.5
#: Smallest field CNR (peak voxel-averaged field of the reference microbleed / local-field noise) of a call.
FITNESS_MIN_FIELD_CNR: float = 2.0

# --- QSM: background removal and lesion moments (issue 23; docs/qsm_lesion_fidelity.md) ----------------------------
#: Background removal methods of :func:`cmbdetect.physics.chain.compute_physics_maps` (``--background``): V-SHARP
#: (default; erodes the smallest SMV radius), LBV (Laplacian boundary value; erodes one voxel), PDF (no erosion, slow).
BACKGROUND_METHODS: tuple[str, ...] = ("vsharp", "lbv", "pdf")
