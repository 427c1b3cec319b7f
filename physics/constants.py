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


def ppm_to_hz(field_ppm, b0_t: float):
    """Convert a field offset in ppm of B0 to a frequency offset in Hz at ``b0_t`` tesla."""
    return field_ppm * GAMMA_BAR_MHZ_PER_T * b0_t


def hz_to_ppm(field_hz, b0_t: float):
    """Convert a frequency offset in Hz to ppm of B0 at ``b0_t`` tesla."""
    return field_hz / (GAMMA_BAR_MHZ_PER_T * b0_t)
