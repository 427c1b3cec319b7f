"""Physical constants: the one place each lives."""

#: Reduced gyromagnetic ratio of 1H, gamma / (2*pi), in MHz per tesla.
GAMMA_BAR_MHZ_PER_T: float = 42.577478
#: The same in Hz per tesla.
GAMMA_BAR_HZ_PER_T: float = GAMMA_BAR_MHZ_PER_T * 1e6
#: Susceptibility of air relative to brain tissue (ppm, SI volume susceptibility).
CHI_AIR_VS_TISSUE_PPM: float = 9.4


def ppm_to_hz(field_ppm, b0_t: float):
    """Convert a field offset in ppm of B0 to a frequency offset in Hz at ``b0_t`` tesla."""
    return field_ppm * GAMMA_BAR_MHZ_PER_T * b0_t


def hz_to_ppm(field_hz, b0_t: float):
    """Convert a frequency offset in Hz to ppm of B0 at ``b0_t`` tesla."""
    return field_hz / (GAMMA_BAR_MHZ_PER_T * b0_t)
