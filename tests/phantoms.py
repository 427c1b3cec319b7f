"""A small numerical head phantom for physics tests (not a test module).

Geometry (voxel frame, mm): an ellipsoidal head of tissue surrounded by air, an air-filled sinus
and two ear canals (outside the brain) that create a strong background field, an ellipsoidal brain
mask, and >= 20 paramagnetic (+0.3..+1.5 ppm, "bleeds") and >= 20 diamagnetic (-0.3..-1.5 ppm,
"calcifications") spheres of 2-8 mm diameter placed on a jittered lattice so that neighbouring
spheres (with a blooming margin) never overlap.

Susceptibility is absolute relative to air (air 0, tissue -9.4 ppm: ``CHI_AIR_VS_TISSUE_PPM``), so
the zero padding of the FFT forward model is air, as it physically is.  Spheres are partial-volume
(supersampled 4x per axis), so the true magnetic moment of sphere ``n`` is exactly
``sum(truth_chi_n) * voxel_volume``.  The true local field is the field of the spheres alone
(tissue-referenced), the true background field is ``total - local``.

Phase follows the project convention ``phase = +2 pi gamma_bar B0 field_ppm 1e-6 TE`` and is
wrapped after complex Gaussian noise is added.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cmbdetect.physics.constants import CHI_AIR_VS_TISSUE_PPM, GAMMA_BAR_HZ_PER_T
from cmbdetect.physics.forward import forward_field
from cmbdetect.physics.geometry import b0_direction, oblique_affine, voxel_sizes


@dataclass
class Sphere:
    centre_vox: np.ndarray
    diameter_mm: float
    chi_ppm: float
    moment_ppm_mm3: float  # exact (partial-volume) sum chi * voxel volume
    region: np.ndarray = field(repr=False)  # bool, voxels with >= 50% volume inside


@dataclass
class Phantom:
    affine: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    b0: float
    te: np.ndarray
    mask: np.ndarray
    chi_spheres: np.ndarray  # tissue-referenced chi of the spheres only (ppm)
    total_field_ppm: np.ndarray
    local_field_ppm: np.ndarray
    background_field_ppm: np.ndarray
    mag: np.ndarray  # [E, X, Y, Z]
    phase: np.ndarray  # [E, X, Y, Z], wrapped radians
    spheres: list[Sphere]


def _ellipsoid(shape, vs, centre_mm, semi_mm) -> np.ndarray:
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    r2 = sum(((gi * d - c) / a) ** 2 for gi, d, c, a in zip(g, vs, centre_mm, semi_mm))
    return r2 <= 1.0


def _sphere_pv(shape, vs, centre_vox, radius_mm, sub=4) -> np.ndarray:
    """Partial-volume fraction (0..1) of a sphere on the voxel grid, supersampled ``sub``^3."""
    out = np.zeros(shape, dtype=np.float32)
    ext = [int(np.ceil(radius_mm / d)) + 1 for d in vs]
    lo = [max(int(np.floor(c)) - e, 0) for c, e in zip(centre_vox, ext)]
    hi = [min(int(np.ceil(c)) + e + 1, s) for c, e, s in zip(centre_vox, ext, shape)]
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    grids = []
    for a in range(3):
        v = np.arange(lo[a], hi[a])[:, None] + offs[None, :]
        grids.append(((v - centre_vox[a]) * vs[a]).reshape(-1))
    x, y, z = np.meshgrid(*grids, indexing="ij", sparse=True)
    inside = (x**2 + y**2 + z**2) <= radius_mm**2
    n = [hi[a] - lo[a] for a in range(3)]
    frac = inside.reshape(n[0], sub, n[1], sub, n[2], sub).mean(axis=(1, 3, 5))
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = frac
    return out


def make_head_phantom(
    *,
    seed: int = 0,
    shape=(96, 96, 80),
    voxel_size=(1.0, 1.0, 1.0),
    angles_deg=(0.0, 0.0, 0.0),
    b0: float = 3.0,
    te=(0.010,),
    snr: float = 60.0,
    n_para: int = 20,
    n_dia: int = 20,
    diameters_mm=(2.0, 8.0),
    gap_mm: float = 3.0,
    edge_mm: float = 6.0,
) -> Phantom:
    """Build the phantom; see the module docstring.  ``te`` in s, ``b0`` in T, lengths mm."""
    rng = np.random.default_rng(seed)
    vs = np.asarray(voxel_size, dtype=float)
    shape = tuple(int(s) for s in shape)
    affine = oblique_affine(shape, tuple(vs), angles_deg=tuple(angles_deg))
    assert np.allclose(voxel_sizes(affine), vs)
    b0_dir = b0_direction(affine)
    ext = np.asarray(shape) * vs
    c = ext / 2.0 - vs / 2.0
    semi_head = ext * np.array([0.46, 0.47, 0.45])
    semi_mask = semi_head - np.array([6.0, 6.0, 6.0])
    head = _ellipsoid(shape, vs, c, semi_head)
    mask = _ellipsoid(shape, vs, c, semi_mask)
    # Air cavities just outside the brain (gap ~3 mm): a frontal sinus below the front of the brain
    # and two ear canals beside its lower half; they make a realistic, strong background field.
    sy, sz = 0.55 * semi_mask[1], -(semi_mask[2] * np.sqrt(1 - 0.55**2) + 3.0 + 5.0)
    sinus = _ellipsoid(shape, vs, c + np.array([0.0, sy, sz]), np.array([12.0, 9.0, 5.0]))
    ex = semi_mask[0] * np.sqrt(1 - 0.3**2) + 3.0 + 3.0
    ear_l = _ellipsoid(shape, vs, c + np.array([-ex, 0.0, -0.3 * semi_mask[2]]), np.array([3.0, 4.0, 4.0]))
    ear_r = _ellipsoid(shape, vs, c + np.array([ex, 0.0, -0.3 * semi_mask[2]]), np.array([3.0, 4.0, 4.0]))
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    neck = (((g[0] * vs[0] - c[0]) / (0.6 * semi_head[0])) ** 2 + ((g[1] * vs[1] - c[1] + 0.15 * semi_head[1]) / (0.6 * semi_head[1])) ** 2 <= 1) & (g[2] * vs[2] < c[2])
    head = head | neck
    air = ~head | ((sinus | ear_l | ear_r) & ~mask)
    # Partial-volume air/tissue edges (Gaussian, sigma 1 mm): a voxel-sharp 9.4 ppm step would make
    # the band-limited FFT field ring (Gibbs) into the brain, which real, continuous fields do not.
    tissue = ndimage.gaussian_filter((~air).astype(np.float32), sigma=1.0 / vs)
    chi_abs = (-CHI_AIR_VS_TISSUE_PPM * tissue).astype(np.float32)

    # Random centres inside the mask (surface >= ``edge_mm`` from its boundary), rejection-sampled so that the
    # surfaces of any two spheres are >= ``gap_mm`` apart (room for blooming / a dilated region).
    n_tot = n_para + n_dia
    dmin, dmax = diameters_mm
    diams = rng.uniform(dmin, dmax, n_tot)
    diams = diams[np.argsort(-diams)]  # place the big ones first
    sites: list[np.ndarray] = []
    for d in diams:
        semi_in = semi_mask - (d / 2 + edge_mm)
        for _ in range(20000):
            s = c + rng.uniform(-1, 1, 3) * semi_in
            if (((s - c) / semi_in) ** 2).sum() > 1.0:
                continue
            if all(np.linalg.norm(s - q) >= (d + dq) / 2 + gap_mm for q, dq in zip(sites, diams)):
                sites.append(s)
                break
        else:
            raise ValueError("could not place all spheres; enlarge the phantom or reduce their number")
    order = rng.permutation(n_tot)  # sign independent of size
    chi_sph = np.zeros(shape, dtype=np.float32)
    spheres: list[Sphere] = []
    vox_vol = float(np.prod(vs))
    for n in range(n_tot):
        diam = float(diams[n])
        mag = float(rng.uniform(0.3, 1.5))
        chi = mag if order[n] < n_para else -mag
        centre_vox = sites[n] / vs
        pv = _sphere_pv(shape, vs, centre_vox, diam / 2)
        chi_sph += chi * pv
        spheres.append(Sphere(centre_vox, diam, chi, float(chi * pv.sum() * vox_vol), pv >= 0.5))
    chi_abs = chi_abs + chi_sph
    total = forward_field(chi_abs, vs, b0_dir)
    local = forward_field(chi_sph, vs, b0_dir)
    background = total - local

    te = np.atleast_1d(np.asarray(te, dtype=float))
    m0 = np.where(air, 0.02, 1.0).astype(np.float32)
    m0 = m0 * (1.0 - 0.5 * np.clip(np.abs(chi_sph) / 1.5, 0, 1))  # lesions a bit darker
    r2s = 25.0
    mags, phases = [], []
    for t in te:
        phi = 2 * np.pi * GAMMA_BAR_HZ_PER_T * b0 * total * 1e-6 * t
        sig = m0 * np.exp(-r2s * t) * np.exp(1j * phi)
        noise = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / snr
        sig = sig + noise
        mags.append(np.abs(sig).astype(np.float32))
        phases.append(np.angle(sig).astype(np.float32))
    return Phantom(
        affine=affine, voxel_size=vs, b0_dir=b0_dir, b0=float(b0), te=te, mask=mask,
        chi_spheres=chi_sph, total_field_ppm=total, local_field_ppm=local, background_field_ppm=background,
        mag=np.stack(mags), phase=np.stack(phases), spheres=spheres,
    )


#: Acquisition settings of the phantom test cases (B0 * TE kept at 0.03-0.035 T*s so that the field
#: of the strongest spheres stays below one phase cycle per voxel at their surface).
CONFIGS: dict[str, dict] = {
    "3T": dict(b0=3.0, te=(0.010,)),
    "3T-oblique15": dict(b0=3.0, te=(0.010,), angles_deg=(15.0, 0.0, 0.0)),
    "1.5T": dict(b0=1.5, te=(0.020,)),
    "7T": dict(b0=7.0, te=(0.005,)),
}

_CACHE: dict = {}


def phantom_case(name: str, seed: int = 3):
    """(phantom, PhysicsMaps from the full chain with the true brain mask), cached per process so
    several test modules share one computation."""
    key = (name, seed)
    if key not in _CACHE:
        from cmbdetect.physics.chain import compute_physics_maps

        p = make_head_phantom(seed=seed, **CONFIGS[name])
        maps = compute_physics_maps(mag=p.mag, phase=p.phase, te=p.te, b0=p.b0, affine=p.affine, mask=p.mask)
        _CACHE[key] = (p, maps)
    return _CACHE[key]


def local_field_error_ratio(p: Phantom, local_est: np.ndarray, valid: np.ndarray) -> float:
    """Background suppression factor: RMS of the true background field over ``valid`` divided by the
    RMS of (estimated local - true local) there, both after removing their mean over ``valid`` (a
    constant field offset is not measurable and irrelevant to QSM)."""
    d = (local_est - p.local_field_ppm)[valid]
    b = p.background_field_ppm[valid]
    return float(np.std(b) / max(np.std(d), 1e-12))


def coarse_head(rng, voxel_size=(2.3, 2.3, 3.2), gap_mm=4.0, scalp_above_mm=None):
    """Adult-sized head on thick anisotropic voxels: brain ellipsoid (semi-axes 60/70/55 mm), a dark skull
    gap of ``gap_mm`` crossed by four tissue-bright partial-volume bridges, a bright 6 mm scalp (fat at
    1.5 T), and a 9 mm microbleed void centred 1 mm inside the lateral brain surface (blooming reaches
    the skull gap).  ``scalp_above_mm``: only the scalp above this height (mm from the centre, along the third
    axis) is there, a bright patch instead of a shell.  Returns (magnitude, brain, scalp, lesion)."""
    vs = np.asarray(voxel_size)
    axes = np.array([60.0, 70.0, 55.0])
    shape = tuple(int(np.ceil(2 * (a + gap_mm + 14.0) / v)) for a, v in zip(axes, vs))
    c = (np.asarray(shape) - 1) / 2.0
    idx = np.indices(shape).astype(float)
    x, y, z = [(idx[n] - c[n]) * vs[n] for n in range(3)]
    r = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)
    outside_mm = (r - 1.0) * axes.min()
    brain = r <= 1.0
    scalp = (outside_mm >= gap_mm) & (outside_mm <= gap_mm + 6.0)
    if scalp_above_mm is not None:
        scalp &= z > scalp_above_mm
    signal = np.zeros(shape)
    signal[brain] = 1.0
    signal[scalp] = 1.4
    for d in ([0, 0, 1], [0.7, 0, 0.7], [-0.6, 0.5, 0.6], [0, -0.8, 0.6]):
        p = np.asarray(d) / np.linalg.norm(d) * (axes + gap_mm / 2)
        signal[np.sqrt((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) <= 5.0] = 1.0
    lesion = np.sqrt((x - axes[0] + 1.0) ** 2 + y ** 2 + z ** 2) <= 4.5
    signal[lesion] = 0.05
    sigma = 0.05
    noisy = np.abs(signal + sigma * rng.standard_normal(shape) + 1j * sigma * rng.standard_normal(shape))
    return noisy.astype(np.float32), brain, scalp, lesion
