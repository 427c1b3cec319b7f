"""Signal model of the simulator: tissue properties, the field of the susceptibility map and the
spoiled-GRE complex signal with bias field, receiver phase and noise.

Units: chi in ppm relative to brain tissue (air is +CHI_AIR_VS_TISSUE_PPM); fields in ppm of B0;
R2* in 1/s; T1 and TE in s; B0 in T.  Phase follows the project convention
``phase = +2*pi*gamma_bar*B0*field_ppm*1e-6*TE + offset`` (wrapped to [-pi, pi)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from cmbdetect.physics.constants import CHI_AIR_VS_TISSUE_PPM
from cmbdetect.physics.forward import dipole_kernel, even_part
from cmbdetect.pipeline.simulate.anatomy import TISSUES
from cmbdetect.pipeline.simulate.geometry import smooth_grid_field

#: Reference properties at 3 T: (proton density, T1 s, R2* 1/s, chi ppm) as (low, high) ranges.
PROPERTIES_3T: dict[str, tuple[tuple[float, float], ...]] = {
    "air": ((0, 0), (1, 1), (0, 0), (CHI_AIR_VS_TISSUE_PPM, CHI_AIR_VS_TISSUE_PPM)),
    "soft": ((0.6, 0.8), (1.1, 1.5), (25, 40), (-0.1, 0.1)),
    "scalp": ((0.8, 1.0), (0.3, 0.5), (25, 45), (0.3, 0.7)),
    "skull": ((0.04, 0.15), (0.3, 0.6), (250, 600), (-2.5, -1.2)),
    "csf": ((0.95, 1.0), (3.5, 4.5), (1.5, 4), (-0.02, 0.02)),
    "gm": ((0.78, 0.87), (1.25, 1.5), (13, 19), (0.0, 0.04)),
    "wm": ((0.64, 0.73), (0.75, 0.95), (19, 28), (-0.06, -0.02)),
    "caudate": ((0.78, 0.84), (1.1, 1.3), (18, 28), (0.03, 0.09)),
    "putamen": ((0.76, 0.84), (1.0, 1.2), (22, 40), (0.03, 0.12)),
    "pallidum": ((0.7, 0.8), (0.8, 1.0), (35, 60), (0.1, 0.22)),
    "thalamus": ((0.72, 0.8), (0.95, 1.15), (18, 26), (0.0, 0.05)),
    "nigra": ((0.7, 0.8), (0.85, 1.05), (35, 60), (0.08, 0.2)),
    "red_nucleus": ((0.7, 0.8), (0.85, 1.05), (30, 50), (0.06, 0.16)),
    "dentate": ((0.72, 0.8), (0.9, 1.1), (30, 50), (0.06, 0.18)),
    "eye": ((0.95, 1.0), (3.5, 4.5), (1.5, 4), (-0.02, 0.02)),
    "marrow": ((0.7, 0.95), (0.3, 0.45), (40, 90), (0.2, 0.6)),
}
#: Venous blood (3 T): proton density, T1, R2*, chi ranges.
BLOOD_3T = ((0.8, 0.9), (1.5, 1.8), (45, 110), (0.3, 0.6))


@dataclass
class TissueTable:
    """Per-tissue property values of one subject (arrays indexed by tissue code) at its B0."""

    pd: np.ndarray
    t1: np.ndarray
    r2s: np.ndarray
    chi: np.ndarray


def r2star_at(r2s_3t, b0: float):
    """R2* (1/s) at ``b0`` tesla from its 3 T value (roughly linear in B0 with a field-free part)."""
    return np.asarray(r2s_3t) * (0.35 + 0.65 * b0 / 3.0)


def t1_at(t1_3t, b0: float):
    """T1 (s) at ``b0`` tesla from its 3 T value (weak field dependence)."""
    return np.asarray(t1_3t) * (b0 / 3.0) ** 0.25


def draw_tissue_table(rng: np.random.Generator, b0: float) -> TissueTable:
    """Draw each tissue's properties uniformly within :data:`PROPERTIES_3T` and scale them to ``b0``."""
    vals = np.array([[rng.uniform(lo, hi) for lo, hi in PROPERTIES_3T[name]] for name in TISSUES])
    return TissueTable(pd=vals[:, 0].astype(np.float32), t1=t1_at(vals[:, 1], b0).astype(np.float32),
                       r2s=r2star_at(vals[:, 2], b0).astype(np.float32), chi=vals[:, 3].astype(np.float32))


def spoiled_gre(pd, t1, r2s, *, te: float, tr: float, flip_deg: float):
    """Steady-state spoiled GRE magnitude: PD sin(a)(1-E1)/(1-cos(a)E1) exp(-TE R2*)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr / np.maximum(t1, 1e-3))
    return (pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te * r2s)).astype(np.float32)


def fields_from_chi(chi_vs_air: np.ndarray, chi_local: np.ndarray, voxel_size, b0_dir, *,
                    pad_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Fields (ppm) of two susceptibility maps with one complex64 FFT pair on a padded grid.

    ``chi_vs_air`` (ppm relative to air, so that air around the head is zero) and ``chi_local``
    (sources inside the intracranial mask) are edge-padded: a head cut by the slab (or a crop of a
    brain) continues beyond the field of view instead of ending in an artificial susceptibility step,
    and air at the edges stays air.  The dipole kernel
    (:func:`cmbdetect.physics.forward.dipole_kernel`, its :func:`~cmbdetect.physics.forward.even_part`) is
    real and even, so ``ifft(D * fft(a + i b)) = D*a + i D*b`` gives both fields at once.  The padded
    grid is rounded up to fast FFT sizes.  Returns float32 ``(total_field, local_field)``.
    """
    shape = chi_vs_air.shape
    tgt = [sfft.next_fast_len(int(s + 2 * np.ceil(pad_fraction * s))) for s in shape]
    lo = [(t - s) // 2 for t, s in zip(tgt, shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(lo, shape))
    buf = np.zeros(tgt, np.complex64)
    buf.real[sl] = chi_vs_air
    buf.imag[sl] = chi_local
    for ax in range(3):  # edge padding: the outermost plane continues (air stays air)
        idx = [slice(None)] * 3
        idx[ax] = slice(0, lo[ax])
        src = [slice(None)] * 3
        src[ax] = slice(lo[ax], lo[ax] + 1)
        buf[tuple(idx)] = buf[tuple(src)]
        idx[ax] = slice(lo[ax] + shape[ax], None)
        src[ax] = slice(lo[ax] + shape[ax] - 1, lo[ax] + shape[ax])
        buf[tuple(idx)] = buf[tuple(src)]
    buf = sfft.fftn(buf, workers=-1, overwrite_x=True)
    buf *= even_part(dipole_kernel(tgt, voxel_size, b0_dir))
    buf = sfft.ifftn(buf, workers=-1, overwrite_x=True)
    return np.ascontiguousarray(buf.real[sl]), np.ascontiguousarray(buf.imag[sl])


def shim(field_ppm: np.ndarray, mask: np.ndarray, *, order: int = 2, fraction: float = 1.0) -> np.ndarray:
    """Subtract ``fraction`` of the least-squares polynomial (``order`` <= 2, voxel coordinates) fitted
    to ``field_ppm`` inside ``mask``: the scanner's shim.  Returns the shimmed field (float32)."""
    idx = np.argwhere(mask)[::7].astype(np.float32)
    c = np.array(field_ppm.shape, np.float32) / 2

    def basis(p):
        x, y, z = [(p[:, n] - c[n]) / c[n] for n in range(3)]
        cols = [np.ones_like(x), x, y, z]
        if order >= 2:
            cols += [x * x, y * y, z * z, x * y, x * z, y * z]
        return np.stack(cols, 1)

    coef, *_ = np.linalg.lstsq(basis(idx), field_ppm[tuple(idx.astype(int).T)], rcond=None)
    grid = np.indices(field_ppm.shape, dtype=np.float32).reshape(3, -1).T
    out = field_ppm.reshape(-1) - fraction * (basis(grid) @ coef).astype(np.float32)
    return out.reshape(field_ppm.shape).astype(np.float32)


def dephasing_factor(field_ppm: np.ndarray, rad_per_ppm: float) -> np.ndarray:
    """Intravoxel dephasing of a linear field across each voxel: prod over axes of sinc(dphi/2pi)
    where dphi is the phase change across one voxel (the through-slice signal loss near air)."""
    out = np.ones(field_ppm.shape, np.float32)
    for ax in range(3):
        g = np.gradient(field_ppm, axis=ax) * np.float32(rad_per_ppm)
        out *= np.sinc(g / np.float32(2 * np.pi)).astype(np.float32)
    return out


def receiver_phase(rng: np.random.Generator, shape) -> np.ndarray:
    """Echo-independent receiver/coil phase offset (rad): a constant, a smooth random term and, in half
    of the subjects, a centred quadratic term of up to pi (as after some coil combinations)."""
    out = rng.uniform(-np.pi, np.pi) + rng.uniform(0.0, 2.5) * smooth_grid_field(rng, shape, n_coarse=4)
    if rng.random() < 0.5:
        r2 = sum(((np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n / 2)).reshape(
            [n if a == ax else 1 for a in range(3)]) ** 2 for ax, n in enumerate(shape))
        out = out - rng.uniform(0.3, 1.0) * np.pi * r2 / 3.0
    return np.asarray(out, np.float32)


def bias_field(rng: np.random.Generator, shape, *, b0: float) -> np.ndarray:
    """Smooth multiplicative receive/transmit bias (mean 1); stronger at high field."""
    amp = rng.uniform(0.05, 0.15) * (1.0 + 0.5 * (b0 >= 7.0))
    return np.exp(amp * smooth_grid_field(rng, shape, n_coarse=5)).astype(np.float32)


def kspace_truncate(signal: np.ndarray, fractions, *, fermi_width: float = 0.0) -> np.ndarray:
    """Keep the central ``fractions`` (per axis, 0-1] of k-space of a complex image: the finite acquired
    resolution, with its blur and Gibbs ringing at sharp edges (complex64).  ``fermi_width`` > 0
    rounds the edge of the kept region with a Fermi filter (as scanners do), which damps the ringing."""
    f = sfft.fftn(signal.astype(np.complex64), workers=-1)
    for ax, (n, frac) in enumerate(zip(signal.shape, fractions)):
        u = np.abs(np.fft.fftfreq(n)) / (0.5 * min(float(frac), 1.0))
        if fermi_width > 0:
            w = 1.0 / (1.0 + np.exp(np.clip((u - 1.0) / fermi_width, -50, 50)))
        else:
            w = (u <= 1.0).astype(float)
        sh = [1, 1, 1]
        sh[ax] = n
        f *= w.astype(np.float32).reshape(sh)
    return sfft.ifftn(f, workers=-1, overwrite_x=True).astype(np.complex64)


def add_noise(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Complex Gaussian noise of standard deviation ``sigma`` per channel (complex64)."""
    n = rng.standard_normal((2, *signal.shape), dtype=np.float32) * np.float32(sigma)
    return (signal + n[0] + 1j * n[1]).astype(np.complex64)
