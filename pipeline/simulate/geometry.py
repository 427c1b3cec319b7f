"""Geometry helpers of the simulator: the head frame, smooth random fields, shapes and tubes.

Coordinates: the *head frame* is a right-handed mm frame fixed to the head (x right, y anterior,
z superior, origin near the thalamus).  ``pose`` maps head mm -> scanner RAS mm; the acquisition
``affine`` maps voxel index -> scanner RAS mm.  All shape helpers evaluate in head mm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmbdetect.physics.geometry import voxel_sizes


@dataclass
class HeadFrame:
    """Voxel grid of one acquisition and the pose of the head in the scanner."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # voxel -> scanner RAS mm
    pose: np.ndarray  # head mm -> scanner RAS mm (rigid)

    @property
    def vox_to_head(self) -> np.ndarray:
        return np.linalg.inv(self.pose) @ self.affine

    @property
    def voxel_size(self) -> np.ndarray:
        return voxel_sizes(self.affine)

    def head_to_vox(self, pts) -> np.ndarray:
        """Head mm (..., 3) -> continuous voxel index (..., 3)."""
        m = np.linalg.inv(self.vox_to_head)
        return np.asarray(pts, float) @ m[:3, :3].T + m[:3, 3]

    def vox_to_head_pts(self, ijk) -> np.ndarray:
        m = self.vox_to_head
        return np.asarray(ijk, float) @ m[:3, :3].T + m[:3, 3]

    def coords(self, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, ...]:
        """Head-frame coordinates (X, Y, Z) float32 of the voxel centres of ``box`` (default: all)."""
        if box is None:
            box = tuple(slice(0, s) for s in self.shape)
        m = self.vox_to_head.astype(np.float32)
        ii = [np.arange(b.start, b.stop, dtype=np.float32) for b in box]
        g = [ii[0][:, None, None], ii[1][None, :, None], ii[2][None, None, :]]
        return tuple(m[r, 0] * g[0] + m[r, 1] * g[1] + m[r, 2] * g[2] + m[r, 3] for r in range(3))

    def box(self, lo_head, hi_head=None, *, margin_mm: float = 0.0) -> tuple[slice, slice, slice] | None:
        """Voxel box (slices) containing the head-frame points ``lo_head`` (N, 3) (or the axis box between
        ``lo_head`` and ``hi_head``) dilated by ``margin_mm``; ``None`` if it misses the grid."""
        pts = np.atleast_2d(np.asarray(lo_head, float))
        if hi_head is not None:
            lo, hi = np.minimum(pts[0], hi_head), np.maximum(pts[0], hi_head)
            pts = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        v = self.head_to_vox(pts)
        m = margin_mm / self.voxel_size + 1.0
        lo = np.floor(v.min(0) - m).astype(int)
        hi = np.ceil(v.max(0) + m).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class LatticeNoise:
    """Smooth Gaussian random field in head mm (unit variance), sampled by trilinear interpolation.

    ``corr_mm`` sets the correlation length (the lattice spacing is half of it)."""

    LO = np.array([-150.0, -170.0, -170.0])
    HI = np.array([150.0, 150.0, 140.0])

    def __init__(self, rng: np.random.Generator, corr_mm: float):
        self.spacing = corr_mm / 2.0
        n = np.ceil((self.HI - self.LO) / self.spacing).astype(int) + 1
        g = ndimage.gaussian_filter(rng.standard_normal(n).astype(np.float32), 1.0, mode="wrap")
        self.grid = g / max(float(g.std()), 1e-6)

    def __call__(self, x, y, z) -> np.ndarray:
        x, y, z = np.broadcast_arrays(x, y, z)
        c = np.stack([(np.asarray(v, np.float32) - lo) / self.spacing for v, lo in zip((x, y, z), self.LO)])
        out = ndimage.map_coordinates(self.grid, c.reshape(3, -1), order=1, mode="nearest")
        return out.reshape(x.shape).astype(np.float32)


def ellipsoid_sdf(x, y, z, centre, axes, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an ellipsoid in head mm: first-order
    ``(rho - 1) / |grad rho|`` with ``rho`` the normalised radius.

    ``rot`` (3x3) rotates the ellipsoid axes (columns = the ellipsoid's axes in head frame)."""
    d = [np.asarray(x, np.float32) - np.float32(centre[0]), np.asarray(y, np.float32) - np.float32(centre[1]),
         np.asarray(z, np.float32) - np.float32(centre[2])]
    if rot is not None:
        d = [np.float32(rot[0, n]) * d[0] + np.float32(rot[1, n]) * d[1] + np.float32(rot[2, n]) * d[2]
             for n in range(3)]
    rho2 = np.zeros(np.broadcast_shapes(*[a.shape for a in d]), np.float32)
    grad2 = np.zeros_like(rho2)
    for n in range(3):
        u = d[n] * np.float32(1.0 / axes[n])
        rho2 += u * u
        u *= np.float32(1.0 / axes[n])
        grad2 += u * u
    rho = np.sqrt(rho2)
    rho2 = np.sqrt(grad2, out=grad2)  # |grad rho| * rho
    rho2 += np.float32(1e-6 / min(axes))
    return (rho - 1.0) * (rho + np.float32(1e-6)) / rho2


def segment_distance(x, y, z, p0, p1) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) of points to the segment p0-p1 and the position t in [0, 1] of the nearest point."""
    p0 = np.asarray(p0, np.float32)
    v = np.asarray(p1, np.float32) - p0
    vv = float(v @ v) + 1e-9
    dx, dy, dz = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / vv, 0.0, 1.0)
    ex, ey, ez = dx - t * v[0], dy - t * v[1], dz - t * v[2]
    return np.sqrt(ex * ex + ey * ey + ez * ez), t


def paint_tube(frame: HeadFrame, occ: np.ndarray, points, radii, *, soft: bool = True,
               value: np.ndarray | None = None, tag: float = 1.0) -> None:
    """Rasterise a tube along a polyline (head mm ``points`` (N, 3), ``radii`` (N,) mm) into ``occ``.

    ``occ`` (float32 or bool, grid shape) takes the maximum with the tube's occupancy: a partial-volume
    estimate ``clip((r - d)/h + 0.5)`` scaled by ``min(1, 2r/h)`` for sub-voxel vessels (h the mean
    voxel size), or a hard mask when ``soft`` is False.  Where ``value`` is given it receives ``tag`` at
    the voxels where this tube's occupancy is the largest so far.
    """
    points = np.asarray(points, float)
    radii = np.broadcast_to(np.asarray(radii, float), (len(points),))
    h = float(np.mean(frame.voxel_size))
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        box = frame.box(np.array([a, b]), margin_mm=max(ra, rb) + h)
        if box is None:
            continue
        x, y, z = frame.coords(box)
        d, t = segment_distance(x, y, z, a, b)
        r = ra + t * (rb - ra)
        if soft:
            o = np.clip((r - d) / h + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * r / h)
        else:
            o = d <= r
        cur = occ[box]
        if value is not None:
            value[box] = np.where(o > cur, np.float32(tag), value[box])
        occ[box] = np.maximum(cur, o.astype(occ.dtype))


def random_rotation(rng: np.random.Generator, max_deg) -> np.ndarray:
    """Rotation matrix from three independent angles uniform in +-``max_deg`` (x, y, z; degrees)."""
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * np.broadcast_to(max_deg, (3,)))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_grid_field(rng: np.random.Generator, shape, *, n_coarse=5, voxel_size=None,
                      corr_mm: float | None = None) -> np.ndarray:
    """Smooth random field on a voxel grid (zero mean, unit std, float32): a coarse random lattice
    spread over the grid with separable Gaussian weights (three small matrix products, fast).

    The lattice has ``n_coarse`` nodes per axis, or, with ``voxel_size`` and ``corr_mm``, one node per
    ``corr_mm`` of extent (the correlation length in mm)."""
    if corr_mm is not None:
        ext = np.asarray(shape, float) * np.asarray(voxel_size, float)
        n_axes = [int(np.ceil(e / corr_mm)) + 2 for e in ext]
    else:
        n_axes = [int(n_coarse)] * 3
    g = rng.standard_normal(n_axes).astype(np.float32)
    for axis, (s, n) in enumerate(zip(shape, n_axes)):
        pos = np.linspace(0.5, n - 1.5, s, dtype=np.float32)[:, None] if corr_mm is not None \
            else np.linspace(0, n - 1, s, dtype=np.float32)[:, None]
        w = np.exp(-0.5 * ((pos - np.arange(n, dtype=np.float32)[None]) / 0.8) ** 2)
        w /= w.sum(1, keepdims=True)
        g = np.moveaxis(np.tensordot(w, np.moveaxis(g, axis, 0), axes=(1, 0)), 0, axis)
    g -= g.mean()
    return (g / max(float(g.std()), 1e-6)).astype(np.float32)
