"""Voxel geometry from a NIfTI-style affine (voxel index -> scanner RAS mm).

The main field B0 points along scanner +z (the RAS "S" axis, the bore axis).  For an oblique slab or a
reoriented volume it is *not* along the third array axis; :func:`b0_direction` gives it in voxel axes.
"""
from __future__ import annotations

import numpy as np


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm (norms of the affine's first three columns), shape (3,)."""
    a = np.asarray(affine, dtype=float)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def b0_direction(affine: np.ndarray) -> np.ndarray:
    """Unit vector of scanner +z expressed in the voxel axes, shape (3,).

    Component ``n`` is the projection of B0 on the (unit) direction of array axis ``n`` in world
    space, so a dipole kernel built on the voxel grid with these components and the true voxel sizes
    is exact for oblique slabs and anisotropic voxels.  For a sheared affine the world->voxel-axis
    frame is taken from the inverse of the normalised direction matrix.
    """
    a = np.asarray(affine, dtype=float)[:3, :3]
    dirs = a / voxel_sizes(affine)[None, :]  # columns: unit world vectors of the voxel axes
    z = np.array([0.0, 0.0, 1.0])
    if np.allclose(dirs.T @ dirs, np.eye(3), atol=1e-6):
        v = dirs.T @ z
    else:
        v = np.linalg.solve(dirs, z)
    return v / np.linalg.norm(v)


def oblique_affine(
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    *,
    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A RAS affine with the given voxel size, rotated by ``angles_deg`` about x, y, z (degrees),
    centred on the volume centre.  Used by tests and the simulator for oblique slabs."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = rz @ ry @ rx @ np.diag(np.asarray(voxel_size, dtype=float))
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = -m @ ((np.asarray(shape, dtype=float) - 1) / 2.0)
    return aff


def voxel_to_world(affine: np.ndarray, ijk) -> np.ndarray:
    """Voxel coordinates (..., 3) -> scanner RAS mm (..., 3)."""
    ijk = np.asarray(ijk, dtype=float)
    a = np.asarray(affine, dtype=float)
    return ijk @ a[:3, :3].T + a[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz) -> np.ndarray:
    """Scanner RAS mm (..., 3) -> continuous voxel coordinates (..., 3)."""
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    xyz = np.asarray(xyz, dtype=float)
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def ras_to_lps(xyz) -> np.ndarray:
    """Scanner RAS -> LPS (DICOM, 3D Slicer): x and y negated."""
    out = np.array(xyz, dtype=float, copy=True)
    out[..., :2] *= -1
    return out


def ball_kernel(radius_mm: float, voxel_size) -> np.ndarray:
    """Boolean ball: the voxel centres within ``radius_mm`` of the central voxel, with the true (possibly
    anisotropic) voxel sizes in mm; shape ``2*floor(radius/size)+1`` per axis."""
    vs = np.asarray(voxel_size, dtype=float)
    half = [int(np.floor(radius_mm / d)) for d in vs]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * d) ** 2 for g, d in zip(grids, vs)) <= radius_mm**2 + 1e-9
