"""Spatial phase unwrapping: a fast Laplacian (least-squares) unwrapper and an exact one.

Phase is in radians; the output is in radians too, in the same sign convention as the input.

* :func:`unwrap_laplacian` -- Laplacian unwrapping in the Schofield & Zhu sense: the Laplacian of the
  true phase is computed from the wrapped phase alone, ``lap(phi) = div(grad(phi))`` with
  ``grad(phi) = Im(conj(z) grad z)`` for ``z = exp(i*psi)``; its discrete form is the sum over axes of
  wrapped forward differences ``angle(z[i+1] * conj(z[i]))`` (exact while the true phase changes by less
  than pi per voxel), which is the continuum identity ``lap(phi) = cos(psi) lap(sin(psi)) - sin(psi)
  lap(cos(psi))`` written on the grid.  The Poisson equation is solved with a DCT (mirrored
  boundaries: no wrap-around at the edges of the field of view) using the true, anisotropic voxel
  sizes.  With a mask, differences that leave the mask are dropped and a few preconditioned
  conjugate-gradient steps (DCT solver as preconditioner) solve the masked problem.  The result is
  smooth and need not differ from the input by exact multiples of 2*pi (residues from noise spread
  smoothly instead of as 2*pi jumps); its global constant is set so it agrees with the input modulo 2*pi
  on average inside the mask.
* :func:`unwrap_exact` -- quality-guided unwrapping that only adds integer multiples of 2*pi.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from cmbdetect.physics.checks import finite_array
from cmbdetect.physics.errors import InputError

_WORKERS = -1  # all cores for the FFTs


def _check(phase, mask):
    p = finite_array(phase, "phase", ndim=3, what="phase unwrapping needs a 3D phase volume")
    if mask is None:
        m = None
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != p.shape:
            raise InputError(f"mask shape {m.shape} does not match phase shape {p.shape}")
        if not m.any():
            raise InputError("mask is empty: nothing to unwrap")
    return p, m


def _wrap(x: np.ndarray) -> np.ndarray:
    """Wrap radians to [-pi, pi] (float32 in, float32 out; identity inside the interval)."""
    return x - np.float32(2 * np.pi) * np.rint(x * np.float32(0.5 / np.pi))


def _edge_weights(m: np.ndarray | None, axis: int) -> np.ndarray | None:
    """1 where both voxels of a forward edge along ``axis`` are inside the mask."""
    if m is None:
        return None
    n = m.shape[axis]
    a = np.take(m, np.arange(n - 1), axis=axis)
    b = np.take(m, np.arange(1, n), axis=axis)
    return (a & b).astype(np.float32)


def _add_div_adjoint(out: np.ndarray, g: np.ndarray, axis: int) -> None:
    """out += D^T g for forward differences D along ``axis`` (edges -> nodes), Neumann boundaries."""
    n = out.shape[axis]
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
    out[tuple(lo)] -= g
    out[tuple(hi)] += g


def _neumann_eigenvalues(shape, voxel_size) -> np.ndarray:
    """Eigenvalues of sum_n D_n^T D_n / d_n^2 (negative discrete Laplacian, 1/mm^2) in DCT-II space."""
    lam = np.zeros(shape, dtype=np.float32)
    for n, (s, d) in enumerate(zip(shape, voxel_size)):
        k = np.arange(s, dtype=np.float64)
        e = ((2.0 - 2.0 * np.cos(np.pi * k / s)) / float(d) ** 2).astype(np.float32)
        sh = [1, 1, 1]
        sh[n] = s
        lam = lam + e.reshape(sh)
    lam[0, 0, 0] = 1.0  # the constant mode is fixed separately
    return lam


def _poisson_dct(rhs: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Solve (negative Laplacian) x = rhs with Neumann boundaries; x has zero mean."""
    r = sfft.dctn(rhs, type=2, norm="ortho", workers=_WORKERS)
    r /= lam
    r[0, 0, 0] = 0.0
    return sfft.idctn(r, type=2, norm="ortho", workers=_WORKERS).astype(np.float32, copy=False)


def _apply_masked_laplacian(x: np.ndarray, weights, inv_d2) -> np.ndarray:
    out = np.zeros_like(x)
    for axis in range(3):
        g = np.diff(x, axis=axis)
        g *= weights[axis]
        g *= np.float32(inv_d2[axis])
        _add_div_adjoint(out, g, axis)
    return out


def _mask_box(m: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the mask with a one-voxel margin, widened towards FFT-friendly lengths."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(m.any(axis=other))
        lo, hi = max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, m.shape[axis])
        want = sfft.next_fast_len(hi - lo, real=True)
        grow = min(want, m.shape[axis]) - (hi - lo)
        lo = max(lo - grow // 2, 0)
        hi = min(lo + (hi - lo) + grow, m.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def _laplacian_solve(p, m, vs, *, max_iter, tol) -> np.ndarray:
    inv_d2 = 1.0 / vs**2
    weights = [_edge_weights(m, a) for a in range(3)]
    rhs = np.zeros(p.shape, dtype=np.float32)
    for axis in range(3):
        g = _wrap(np.diff(p, axis=axis))
        if weights[axis] is not None:
            g *= weights[axis]
        g *= np.float32(inv_d2[axis])
        _add_div_adjoint(rhs, g, axis)
    lam = _neumann_eigenvalues(p.shape, vs)
    x = _poisson_dct(rhs, lam)
    if m is not None:
        x *= m
        if max_iter > 0:
            x = _pcg_masked(x, rhs * m, m, weights, inv_d2, lam, max_iter=max_iter, tol=tol)
    return x


def unwrap_laplacian(
    phase: np.ndarray,
    voxel_size,
    *,
    mask: np.ndarray | None = None,
    max_iter: int = 8,
    tol: float = 1e-3,
) -> np.ndarray:
    """Laplacian (least-squares) phase unwrapping; radians in, radians out (float32, same shape).

    ``voxel_size`` in mm (true, anisotropic sizes weight the differences along each axis).
    ``mask``: bool brain mask; only differences between two voxels inside the mask are used, the
    output is 0 outside it, and the work is done on the mask's bounding box.  Without a mask the
    whole volume is unwrapped in one DCT solve.  With a mask, up to ``max_iter`` preconditioned CG
    iterations (relative residual ``tol``) solve the masked problem; ``max_iter=0`` gives the single
    DCT solve (faster, adds a smooth error near the mask boundary).  Not 2*pi-exact: where the phase
    has residues (noise, very steep gradients) the output differs from the input by a smooth,
    non-integer amount.  Global constant: chosen so that ``exp(i*out)`` matches ``exp(i*phase)`` on
    average inside the mask.
    """
    p, m = _check(phase, mask)
    vs = np.asarray(voxel_size, dtype=float).reshape(3)
    if np.any(vs <= 0):
        raise InputError(f"voxel sizes must be positive mm, got {vs.tolist()}")
    if m is None:
        x = _laplacian_solve(p, None, vs, max_iter=0, tol=tol)
        sel = np.ones(p.shape, bool)
    else:
        box = _mask_box(m)
        sub = _laplacian_solve(np.ascontiguousarray(p[box]), np.ascontiguousarray(m[box]), vs,
                               max_iter=max_iter, tol=tol)
        x = np.zeros(p.shape, dtype=np.float32)
        x[box] = sub
        sel = m
    c = np.angle(np.sum(np.exp(1j * (p[sel].astype(np.float64) - x[sel]))))
    x[sel] += np.float32(c)
    if m is not None:
        x[~m] = 0.0
    return x.astype(np.float32, copy=False)


def _pcg_masked(x, b, m, weights, inv_d2, lam, *, max_iter, tol):
    """Preconditioned CG on the masked normal equations A x = b (A = masked D^T W D), inside ``m``."""
    def a_op(v):
        return _apply_masked_laplacian(v, weights, inv_d2) * m

    def precond(r):
        z = _poisson_dct(r, lam) * m
        return z - np.float32(z[m].mean()) * m  # stay orthogonal to the constant null space

    r = b - a_op(x)
    bnorm = float(np.linalg.norm(b)) or 1.0
    z = precond(r)
    d = z.copy()
    rz = float(np.vdot(r, z))
    for _ in range(max_iter):
        if float(np.linalg.norm(r)) / bnorm < tol:
            break
        ad = a_op(d)
        dad = float(np.vdot(d, ad))
        if dad <= 0:
            break
        alpha = np.float32(rz / dad)
        x += alpha * d
        r -= alpha * ad
        z = precond(r)
        rz_new = float(np.vdot(r, z))
        d = z + np.float32(rz_new / rz) * d
        rz = rz_new
    return x


def _axis_slices(axis: int, lo: int, hi: int | None) -> tuple:
    sl = [slice(None)] * 3
    sl[axis] = slice(lo, hi)
    return tuple(sl)


def _linearity(jumps: list[np.ndarray], sel: np.ndarray) -> np.ndarray:
    """Per-voxel phase linearity in [0, 1]: ``1 - D/pi`` clipped, with D the root sum of squared
    wrapped second differences along the three axes (Herraez et al. 2002) computed from the
    wrapped forward jumps; second differences that would use a voxel outside ``sel`` count as 0.
    Smooth (even steep) phase -> ~1, noise -> ~0."""
    d2 = np.zeros(sel.shape, dtype=np.float32)
    for axis, dw in enumerate(jumps):
        lo, hi = _axis_slices(axis, 0, -1), _axis_slices(axis, 1, None)
        sec = dw[lo] - dw[hi]
        sec *= sel[_axis_slices(axis, 0, -2)] & sel[_axis_slices(axis, 2, None)]
        d2[_axis_slices(axis, 1, -1)] += sec * sec
    return np.clip(np.float32(1.0) - np.sqrt(d2) * np.float32(1 / np.pi), 0.0, 1.0)


def _edge_quality(dw, lin_a, lin_b, mag_a, mag_b) -> np.ndarray:
    """ROMEO-style reliability in [0, 1] of edges with wrapped jumps ``dw`` between voxels a and b:
    the phase linearity of both voxels times a mild phase-coherence term ``1 - |jump|/(2*pi)`` and,
    with magnitudes (normalised to 1 at their median in the mask), the magnitude coherence
    ``(min/max)^2`` and a magnitude weight ``min(1, min(m_a, m_b)/2)``."""
    q = lin_a * lin_b
    q *= np.float32(1.0) - np.float32(0.5 / np.pi) * np.abs(dw)
    if mag_a is not None:
        lo, hi = np.minimum(mag_a, mag_b), np.maximum(mag_a, mag_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            coh = np.where(hi > 0, lo / hi, 0).astype(np.float32)
        q *= coh * coh * np.minimum(np.float32(1.0), lo * np.float32(0.5))
    return q


def unwrap_exact(
    phase: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    method: str = "quality",
) -> np.ndarray:
    """Exact spatial unwrapping: the output differs from ``phase`` (radians) by integer multiples of
    2*pi in every voxel (float32, same shape), so ``angle(exp(1j*out)) == phase``.

    ``method="quality"`` (default): quality-guided region growing in the ROMEO sense -- the phase is
    integrated along the maximum-reliability spanning tree of the voxel graph (Kruskal's order, the
    same order a quality-guided flood fill with a priority queue visits the edges).  Edge reliability
    is the phase linearity (wrapped second differences) of both voxels and the coherence of the
    wrapped jump, weighted by magnitude coherence and strength when ``magnitude`` is given (so noisy,
    dark voxels are reached last and cannot derail good regions).
    ``method="skimage"``: ``skimage.restoration.unwrap_phase`` (Herraez reliability sorting, no
    magnitude).  Only voxels in ``mask`` (bool) are unwrapped; outside it the input is returned.  Each
    connected part of the mask is unwrapped separately; the global 2*pi multiple is chosen so that
    the mean unwrapped phase inside the mask is closest to 0.  Voxel sizes are not needed.
    """
    p, m = _check(phase, mask)
    p = _wrap(p)
    if method == "skimage":
        from skimage.restoration import unwrap_phase

        data = np.ma.array(p.astype(np.float64), mask=None if m is None else ~m)
        out = np.asarray(np.ma.getdata(unwrap_phase(data)), dtype=np.float64)
        k = np.round((out - p) / (2 * np.pi))
    elif method == "quality":
        mag = None
        if magnitude is not None:
            mag = np.asarray(magnitude, dtype=np.float32)
            if mag.shape != p.shape:
                raise InputError(f"magnitude shape {mag.shape} does not match phase shape {p.shape}")
        k = np.zeros(p.shape, dtype=np.float64)
        box = _mask_box(m) if m is not None else (slice(None),) * 3
        k[box] = _quality_guided_k(np.ascontiguousarray(p[box]), None if m is None else m[box],
                                   None if mag is None else mag[box])
    else:
        raise InputError(f"unknown unwrapping method {method!r}; use 'quality' or 'skimage'")
    sel = m if m is not None else np.ones(p.shape, bool)
    k = np.where(sel, k, 0)
    k -= np.round(np.mean(p[sel] + 2 * np.pi * k[sel]) / (2 * np.pi))
    k = np.where(sel, k, 0)
    return (p + np.float32(2 * np.pi) * k.astype(np.float32)).astype(np.float32)


def _quality_guided_k(p: np.ndarray, m: np.ndarray | None, mag: np.ndarray | None) -> np.ndarray:
    """Integer 2*pi multiples from integrating wrapped jumps along the maximum-reliability
    spanning forest (scipy Kruskal MST on cost ``1.001 - quality``) of the masked 6-neighbour graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

    sel = np.ones(p.shape, bool) if m is None else m
    n = int(sel.sum())
    idx_dtype = np.int32 if n < 2**31 - 2 else np.int64
    node = np.full(p.shape, -1, dtype=idx_dtype)
    node[sel] = np.arange(n, dtype=idx_dtype)
    jumps = [_wrap(np.diff(p, axis=axis)) for axis in range(3)]
    lin = _linearity(jumps, sel)[sel]
    mag_f = None
    if mag is not None:
        mag_f = np.abs(mag[sel])
        med = float(np.median(mag_f[mag_f > 0])) if np.any(mag_f > 0) else 1.0
        mag_f /= np.float32(med)
    rows, cols, cost = [], [], []
    for axis in range(3):
        sa, sb = _axis_slices(axis, 0, -1), _axis_slices(axis, 1, None)
        both = sel[sa] & sel[sb]
        ra, rb = node[sa][both], node[sb][both]
        q = _edge_quality(jumps[axis][both], lin[ra], lin[rb],
                          None if mag_f is None else mag_f[ra], None if mag_f is None else mag_f[rb])
        rows.append(ra)
        cols.append(rb)
        cost.append(np.float32(1.001) - q)  # > 0: zero weights would be read as missing edges
    del jumps, lin
    rows, cols, cost = np.concatenate(rows), np.concatenate(cols), np.concatenate(cost)
    graph = csr_matrix((cost, (rows, cols)), shape=(n, n))
    del rows, cols, cost
    tree = minimum_spanning_tree(graph).tocoo()
    del graph
    ncomp, labels = connected_components(tree, directed=False)
    # a virtual root (node n) joined to one voxel of every component makes a single tree
    first = np.zeros(ncomp, dtype=np.int64)
    first[labels] = np.arange(n)  # any one voxel per component (repeated indices: one wins)
    r = np.concatenate([tree.row, np.full(ncomp, n, dtype=tree.row.dtype)])
    c = np.concatenate([tree.col, first.astype(tree.col.dtype)])
    joined = csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=(n + 1, n + 1))
    _, pred = breadth_first_order(joined, n, directed=False, return_predecessors=True)
    par = pred.astype(idx_dtype)
    par[n] = n
    pv = np.concatenate([p[sel], np.zeros(1, np.float32)])
    step = pv[par] - pv
    jump = np.rint((step - _wrap(step)) * np.float32(0.5 / np.pi)).astype(np.int32)
    jump[par == n] = 0
    while True:  # pointer jumping: k(node) = sum of the jumps on its path to the root
        jump += jump[par]
        new_par = par[par]
        if np.array_equal(new_par, par):
            break
        par = new_par
    k = np.zeros(p.shape, dtype=np.float64)
    k[sel] = jump[:n]
    return k
