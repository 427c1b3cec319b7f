"""Forward model: susceptibility (ppm) -> field perturbation (ppm of B0).

Dipole kernel (Lorentz-sphere corrected, SI):  D(k) = 1/3 - (k . b0_dir)^2 / |k|^2,  D(0) = 0.
A paramagnetic source (chi > 0) gives a positive field along B0 (poles) and a negative one
in the equatorial plane.
"""
from __future__ import annotations

import numpy as np


def kspace_grid(shape, voxel_size) -> list[np.ndarray]:
    """Spatial-frequency coordinates (cycles/mm) of an FFT grid, broadcastable, one per axis."""
    ks = []
    for n, (s, d) in enumerate(zip(shape, voxel_size)):
        k = np.fft.fftfreq(s, d=float(d))
        sh = [1, 1, 1]
        sh[n] = s
        ks.append(k.reshape(sh))
    return ks


def dipole_kernel(shape, voxel_size, b0_dir, *, dtype=np.float32) -> np.ndarray:
    """Unit dipole kernel D(k) on an FFT grid of ``shape`` with true voxel sizes (mm) and
    ``b0_dir`` in voxel axes (unit vector; see :func:`cmbdetect.physics.geometry.b0_direction`).

    Computed in float64 a slab of the first axis at a time (peak memory: the ``dtype`` output and one
    slab), then stored as ``dtype``."""
    kx, ky, kz = kspace_grid(shape, voxel_size)
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    out = np.empty(tuple(int(s) for s in shape), dtype=dtype)
    step = max(1, (1 << 21) // max(1, out.shape[1] * out.shape[2]))
    for s in range(0, out.shape[0], step):
        x = kx[s:s + step]
        k2 = x**2 + ky**2 + kz**2
        kb = x * b[0] + ky * b[1] + kz * b[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[s:s + step] = 1.0 / 3.0 - kb**2 / k2
    out[0, 0, 0] = 0.0
    return out


def even_part(kernel: np.ndarray) -> np.ndarray:
    """``(D(k) + D(-k)) / 2`` of a kernel on an FFT grid, in place (returned).

    The sampled dipole kernel is not even on the Nyquist planes of even-sized axes when B0 is oblique; its
    even part gives exactly ``Re(ifft(D fft(chi)))`` (what :func:`forward_field` returns) for real ``chi``, so
    two real maps packed as ``a + i b`` into one complex FFT come back apart: ``D*a + i D*b``."""
    for ax, n in enumerate(kernel.shape):
        if n % 2 == 0:
            idx = [slice(None)] * kernel.ndim
            idx[ax] = n // 2
            plane = kernel[tuple(idx)]
            mirrored = np.roll(np.flip(plane), 1, axis=tuple(range(plane.ndim)))
            kernel[tuple(idx)] = 0.5 * (plane + mirrored)
    return kernel


def dipole_kernel_image_space(shape, voxel_size, b0_dir, *, dtype=np.float32) -> np.ndarray:
    """D(k) computed as the FFT of the point-dipole response sampled at the voxel centres.

    Real space (periodic grid of ``shape``, true voxel sizes in mm, ``b0_dir`` in voxel axes):
    ``d(r) = V / (4 pi) * (3 cos^2(theta) - 1) / |r|^3`` with ``V`` the voxel volume; the self term
    ``d(0)`` (a constant in k) is set to match :func:`dipole_kernel` away from the k-space corners (the
    Lorentz-sphere correction, independent of the box shape), and D(0) = 0.  Unlike the sampled continuous
    kernel, this one is periodic in k-space for any B0 direction, so an oblique B0 gives no voxel-scale
    ringing outside sources (exact for cubic voxels; see the limitation below).  Same sign convention
    (paramagnetic -> positive field along B0).  Not used by the pipeline, whose inversion inverts
    :func:`dipole_kernel`; offered for forward simulation and verification.
    """
    vs = np.asarray(voxel_size, dtype=float)
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    # wrapped voxel offsets in mm: fftfreq(n, d) * n * d^2 = (index wrapped to [-n/2, n/2)) * d
    axes = [k * (n * d * d) for k, n, d in zip(kspace_grid(shape, vs), shape, vs)]
    r2 = axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2
    rb = axes[0] * b[0] + axes[1] * b[1] + axes[2] * b[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.prod(vs) / (4 * np.pi) * (3 * rb**2 / r2 - 1) / r2**1.5
    d[0, 0, 0] = 0.0
    k = np.fft.fftn(d).real
    # The self term d(0) is a constant in k.  The truncated lattice sum of a box-shaped grid shifts D by
    # a box-shape (demagnetisation) constant, so d(0) is chosen to match the continuous Lorentz-corrected
    # kernel where both are valid (median difference over k-space; they differ only near the corners).
    k += float(np.median(dipole_kernel(shape, vs, b, dtype=np.float64) - k))
    k[0, 0, 0] = 0.0
    return k.astype(dtype)


def forward_field(chi_ppm: np.ndarray, voxel_size, b0_dir, *, pad=None, kernel: str = "kspace") -> np.ndarray:
    """Field perturbation (ppm) of a susceptibility distribution (ppm): ifft(D * fft(chi)).

    ``pad`` voxels of zeros are added on each side (default: half the shape, which keeps the
    periodic wrap-around of the FFT small) and removed afterwards.  ``kernel``: "kspace" (the sampled
    continuous kernel, :func:`dipole_kernel`, the one the inversion inverts) or "image"
    (:func:`dipole_kernel_image_space`, exact for oblique B0).  Returns float32, same shape.
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    if pad is None:
        pad = [s // 2 for s in chi.shape]
    p = np.broadcast_to(np.asarray(pad, dtype=int), (3,))
    padded = np.pad(chi, [(q, q) for q in p])
    if kernel == "kspace":
        d = dipole_kernel(padded.shape, voxel_size, b0_dir)
    elif kernel == "image":
        d = dipole_kernel_image_space(padded.shape, voxel_size, b0_dir)
    else:
        raise ValueError(f"kernel must be 'kspace' or 'image', not {kernel!r}")
    f = np.fft.ifftn(np.fft.fftn(padded) * d).real.astype(np.float32)
    sl = tuple(slice(q, q + s) for q, s in zip(p, chi.shape))
    return f[sl]


def sphere_field(
    delta_chi_ppm: float,
    radius_mm: float,
    offsets_mm: np.ndarray,
    b0_dir_world=(0.0, 0.0, 1.0),
    *,
    dtype=np.float64,
) -> np.ndarray:
    """Closed-form field (ppm of B0) of a uniformly magnetised sphere, Lorentz-corrected.

    Outside: dchi/3 * (a/r)^3 * (3 cos^2(theta) - 1); inside: 0.  ``offsets_mm`` (..., 3) are
    displacements from the sphere centre in any orthonormal frame in which ``b0_dir_world`` is given.
    Computed and returned in ``dtype`` (float32 halves the memory of large sample sets).
    """
    r_vec = np.asarray(offsets_mm, dtype=dtype)
    b = np.asarray(b0_dir_world, dtype=float)
    b = (b / np.linalg.norm(b)).astype(dtype)
    r = np.sqrt((r_vec**2).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (r_vec @ b) / r
        out = delta_chi_ppm / 3.0 * (radius_mm / r) ** 3 * (3 * cos**2 - 1)
    return np.where(r > radius_mm, out, 0.0)


def voxel_offsets_mm(shape, affine: np.ndarray, centre_vox) -> np.ndarray:
    """World-frame (RAS mm) displacement of every voxel centre from ``centre_vox``, shape (*shape, 3)."""
    idx = np.indices(shape, dtype=float).reshape(3, -1).T - np.asarray(centre_vox, dtype=float)
    a = np.asarray(affine, dtype=float)[:3, :3]
    return (idx @ a.T).reshape(*shape, 3)


def subvoxel_offsets(n) -> np.ndarray:
    """Points evenly spread inside a voxel, as offsets from its centre in voxel units ``[N, 3]``: ``n`` per
    axis (an int, or one count per axis), each in ``(-0.5, 0.5)``, the first axis slowest (``n=1``: the
    centre)."""
    counts = np.broadcast_to(np.asarray(n), (3,))
    if not np.all(counts == np.round(counts)) or np.any(counts < 1):
        raise ValueError("subsamples must be >= 1")
    f = [(np.arange(int(k)) + 0.5) / int(k) - 0.5 for k in counts]
    return np.stack(np.meshgrid(*f, indexing="ij"), -1).reshape(-1, 3)


def voxel_averaged_sphere_field(delta_chi_ppm: float, radius_mm: float, shape, affine: np.ndarray, centre_vox, *,
                                b0_dir_world=(0.0, 0.0, 1.0), subsamples: int = 3) -> np.ndarray:
    """Closed-form field (ppm of B0) of a sphere as a voxel grid measures it: :func:`sphere_field` averaged over
    ``subsamples**3`` points evenly spread inside each voxel (partial volume; ``subsamples=1``: the voxel centre).

    ``shape`` and ``centre_vox`` (continuous voxel index of the sphere centre, may lie outside the grid) are on
    the grid of ``affine`` (voxel -> scanner RAS mm; oblique allowed); ``b0_dir_world`` is B0 in scanner axes.
    A small lesion on coarse voxels is thereby weakened, as in the acquired field map."""
    sub = subvoxel_offsets(subsamples)
    out = np.zeros(tuple(shape), dtype=float)
    for d in sub:  # one point per voxel at a time keeps memory at one (*shape, 3) offset array
        out += sphere_field(delta_chi_ppm, radius_mm, voxel_offsets_mm(shape, affine, np.asarray(centre_vox) - d),
                            b0_dir_world)
    return out / len(sub)
