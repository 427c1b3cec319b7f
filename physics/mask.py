"""Brain mask from a GRE magnitude image, and validation of a user-supplied mask.

Sizes are in mm and use the true (possibly anisotropic) voxel sizes; all morphology is done with ball
kernels of the true voxel sizes (FFT convolutions, identical to thresholding a Euclidean distance transform),
so an erosion by ``r`` mm is the same physical size along every axis.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdetect.physics.checks import finite_array
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import ball_kernel


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of a 1D sample (between-class variance maximum of its histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m / w0
        mu1 = (m[-1] - m) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1
    return float(centres[int(np.argmax(between))])


#: The automatic threshold sits this far from the background level towards the tissue level.
TISSUE_FRACTION = 0.45
#: Without background in the field of view (a crop inside the brain): this fraction of tissue.
NO_BACKGROUND_FRACTION = 0.3
#: Scalp guard of :func:`brain_masks`: opening radius (mm; at least 1.6 voxels) that cuts the scalp off ...
SCALP_OPEN_MM = 5.0
#: ... and how far (mm) the mask may reach beyond that cut one (surface lesion voids stay, the scalp goes).
SCALP_MARGIN_MM = 3.0
#: ... and the guard acts only when it removes more than this fraction of the mask (a scalp shell is a third of
#: the head mask); smaller cuts (sinus and orbit tissue, scalp patches) are left alone, so the field-reliability mask
#: at the surface does not move (docs/decisions.md, "Physics defaults").
SCALP_LEAK_FRACTION = 0.2


def _auto_threshold(sm: np.ndarray, *, all_faces: bool = False) -> float:
    """Threshold between background and tissue of a smoothed magnitude.

    Tissue level: median of the bright Otsu class of the voxels above a 2 % noise floor.
    Background: the six faces of the volume (noise, zeros of a skull-stripped image, or tissue for a
    crop inside the brain).  When their median is below 60 % of the tissue level the field of view
    holds background, whose level is the median of the face voxels below 60 % of tissue (a slab that
    cuts through the brain has tissue on its top and bottom faces, which must not raise the background
    level: at the skull base that would cut out dimmer cerebellum and brainstem), and the threshold is
    ``background + 0.45 * (tissue - background)``; else it is ``0.3 * tissue`` (no background in the
    field of view).  Unlike a plain Otsu threshold this stays right at low SNR (a bright noise floor),
    without background, for a slab and for skull-stripped input.  ``all_faces``: the background level
    is the median of all face voxels (the rule before the slab fix; for comparison only).
    """
    robust_max = float(np.percentile(sm, 99.5))
    if robust_max <= 0:
        raise InputError("magnitude image is empty (all zero); cannot compute a brain mask")
    sample = np.clip(sm[sm > 0.02 * robust_max], None, robust_max)
    if sample.size < 10:
        return 0.5 * robust_max
    bright = sample[sample > _otsu(sample)]
    tissue = float(np.median(bright)) if bright.size else robust_max
    faces = np.concatenate([np.ravel(np.take(sm, [0, -1], axis=a)) for a in range(3)])
    if float(np.median(faces)) < 0.6 * tissue:
        background = float(np.median(faces if all_faces else faces[faces < 0.6 * tissue]))
        return background + TISSUE_FRACTION * (tissue - background)
    return NO_BACKGROUND_FRACTION * tissue


def _ball_count(padded: np.ndarray, ball: np.ndarray) -> np.ndarray:
    """Number of true voxels of ``padded`` under a ``ball`` centred on each voxel at least ``p = ball.shape//2``
    from its edge; returns the counts of the inner ``padded.shape - 2p`` voxels (float32).  One real FFT
    convolution with a zero-filled tail (no wrap-around), multithreaded."""
    from scipy import fft

    p = np.array(ball.shape) // 2
    shape = [fft.next_fast_len(int(s), real=True) for s in padded.shape]
    spec = fft.rfftn(padded.astype(np.float32), shape, workers=-1)
    spec *= fft.rfftn(ball.astype(np.float32), shape, workers=-1)
    full = fft.irfftn(spec, shape, workers=-1)
    return full[tuple(slice(2 * q, s) for q, s in zip(p, padded.shape))]


def _erode(mask: np.ndarray, radius_mm: float, sampling) -> np.ndarray:
    """Voxels of ``mask`` whose ball of ``radius_mm`` (true voxel sizes) holds no background voxel; beyond the
    array edge counts as foreground (a field-of-view edge is not a brain edge)."""
    if radius_mm <= 0 or mask.all():
        return mask.copy()
    ball = ball_kernel(radius_mm, sampling)
    padded = np.pad(mask, [(q, q) for q in np.array(ball.shape) // 2], constant_values=True)
    return _ball_count(padded, ball) > ball.sum() - 0.5


def _dilate(mask: np.ndarray, radius_mm: float, sampling) -> np.ndarray:
    """Voxels with a ``mask`` voxel within ``radius_mm`` (true voxel sizes)."""
    if radius_mm <= 0:
        return mask.copy()
    ball = ball_kernel(radius_mm, sampling)
    padded = np.pad(mask, [(q, q) for q in np.array(ball.shape) // 2])
    return _ball_count(padded, ball) > 0.5


def _close(mask: np.ndarray, radius_mm: float, sampling) -> np.ndarray:
    """Morphological closing by a ball of ``radius_mm`` (true voxel sizes) on a zero-padded copy (the array
    edge does not stop the dilation, which would leave a band on erosion)."""
    if radius_mm <= 0:
        return mask.copy()
    ball = ball_kernel(radius_mm, sampling)
    q = np.array(ball.shape) // 2
    big = np.pad(mask, [(2 * a + 1, 2 * a + 1) for a in q])
    dilated = _ball_count(big, ball) > 0.5                      # shape: mask + 2 * (q + 1)
    closed = _ball_count(np.pad(dilated, [(a, a) for a in q]), ball) > ball.sum() - 0.5
    return closed[tuple(slice(a + 1, a + 1 + n) for a, n in zip(q, mask.shape))] | mask


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """3D hole filling, then 2D filling slice by slice along each axis (closes holes that touch
    the volume edge in a cropped field of view)."""
    out = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)
        filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
        out = np.moveaxis(filled, 0, axis)
    return out


def close_surface_notches(mask: np.ndarray, radius_mm: float, voxel_size) -> np.ndarray:
    """``mask`` closed by a ball of ``radius_mm`` (true voxel sizes), then hole-filled: notches in its surface
    narrower than about ``2 * radius_mm`` are filled.  A superset of ``mask``; ``radius_mm <= 0`` returns a
    copy."""
    m = np.asarray(mask, dtype=bool)
    if radius_mm <= 0:
        return m.copy()
    return fill_holes(_close(m, float(radius_mm), np.asarray(voxel_size, dtype=float)))


def brain_mask(mag3d: np.ndarray, voxel_size, *, scalp_leak_fraction: float = SCALP_LEAK_FRACTION,
               **options: float | None) -> np.ndarray:
    """Brain mask (bool, same shape) from a 3D magnitude image (arbitrary units): the scalp-guarded mask of
    :func:`brain_masks` when it removes more than ``scalp_leak_fraction`` of the plain one (default
    :data:`SCALP_LEAK_FRACTION`: a whole scalp shell; 0 uses it whenever it removes anything, small scalp patches
    included), else the plain one.  ``options``: the keyword arguments of :func:`brain_masks`.  Raises
    :class:`InputError` when the result is empty.
    """
    return pick_brain_mask(*brain_masks(mag3d, voxel_size, **options), scalp_leak_fraction=scalp_leak_fraction)


def pick_brain_mask(plain: np.ndarray, guarded: np.ndarray, *,
                    scalp_leak_fraction: float = SCALP_LEAK_FRACTION) -> np.ndarray:
    """The mask :func:`brain_mask` returns, from the pair of :func:`brain_masks`: ``guarded`` when it removes more
    than ``scalp_leak_fraction`` of ``plain``, else ``plain``."""
    return guarded if guarded.sum() < (1.0 - scalp_leak_fraction) * plain.sum() else plain


def brain_masks(
    mag3d: np.ndarray,
    voxel_size,
    *,
    erode_mm: float = 1.0,
    threshold: float | None = None,
    smooth_mm: float = 1.0,
    open_mm: float = 3.0,
    close_mm: float = 4.0,
    scalp_open_mm: float = SCALP_OPEN_MM,
    scalp_margin_mm: float = SCALP_MARGIN_MM,
    threshold_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The brain mask from a 3D magnitude image (arbitrary units) without and with its scalp guard:
    ``(plain, guarded)``, bool arrays of the image's shape, ``guarded`` a subset of ``plain`` (equal to it when the
    guard is off or cuts nothing).  :func:`brain_mask` picks one.

    Steps: Gaussian smoothing (``smooth_mm``, true voxel sizes) -> threshold (``threshold`` in the
    magnitude's units; default 45 % of the way from the background level, read on the faces of
    the volume, to the tissue level, see :func:`_auto_threshold`) -> morphological opening by
    ``open_mm`` (erode, keep the largest connected component, geodesic dilation back inside the
    thresholded mask) which cuts thin bridges to the scalp and drops background specks -> closing
    by ``close_mm`` (dilate, erode back) so that notches narrower than ``2 * close_mm`` in the
    surface are kept: the signal void ("blooming") of a cortical or juxtacortical microbleed, or of a
    cortical vein, touches the dark outside and would otherwise be cut out with the lesion in it ->
    hole filling (3D and slice-wise, so dark veins/CSF inside stay) -> erosion of the noisy rim by
    ``erode_mm`` mm from the mask boundary (the field-of-view edge is not eroded).

    Scalp guard: where the skull is thin against the voxel size (thick slices, bright fat at 1.5 T),
    partial-volume bridges survive the ``open_mm`` opening and the closing then seals the skull gap, so
    the whole scalp joins the mask and background removal fails.  The same steps are therefore also run
    with an opening of ``max(scalp_open_mm, 1.6 * largest voxel size)``, which cuts the scalp off but also
    cuts open the void of a surface microbleed; the guarded mask is the plain one limited to
    ``scalp_margin_mm`` around that result (largest component), so lesion voids at the brain surface stay
    and the scalp, which lies beyond the skull, goes.  ``scalp_open_mm <= open_mm`` turns the guard off.
    ``threshold_scale`` multiplies the threshold (the chain's retry after a failed chi map: on short-TE data scalp,
    muscle and brain are all bright and only a stricter threshold opens the skull gap).
    Raises :class:`InputError` when ``plain`` is empty.
    """
    mag = finite_array(mag3d, "magnitude", ndim=3, what="brain mask needs a 3D magnitude image")
    vs = np.asarray(voxel_size, dtype=float).reshape(3)
    if np.any(vs <= 0):
        raise InputError(f"voxel sizes must be positive mm, got {vs.tolist()}")
    sm = ndimage.gaussian_filter(mag, sigma=smooth_mm / vs, mode="nearest") if smooth_mm > 0 else mag
    thr = (float(threshold) if threshold is not None else _auto_threshold(sm)) * float(threshold_scale)
    fg = sm > thr
    if not fg.any():
        raise InputError("brain mask is empty: no voxel above the magnitude threshold")
    box = _foreground_box(fg, margin=2)
    fg = fg[box]
    inner = _shape_mask(fg, vs, open_mm=open_mm, close_mm=close_mm, erode_mm=erode_mm)
    if not inner.any():
        raise InputError("brain mask is empty after erosion; lower erode_mm or give a mask")
    guarded = inner
    if scalp_open_mm > open_mm:
        cut = _shape_mask(fg, vs, open_mm=max(float(scalp_open_mm), 1.6 * float(vs.max())), close_mm=close_mm,
                          erode_mm=erode_mm)
        if cut.any():
            guarded = _largest_component(inner & _dilate(cut, scalp_margin_mm, vs))
    plain = np.zeros(mag.shape, dtype=bool)
    plain[box] = inner
    full = np.zeros(mag.shape, dtype=bool)
    full[box] = guarded
    return plain, full


def _shape_mask(fg: np.ndarray, vs: np.ndarray, *, open_mm: float, close_mm: float, erode_mm: float) -> np.ndarray:
    """Opening by ``open_mm`` (erode, largest component, dilate back inside ``fg``), closing by ``close_mm``,
    hole filling, erosion by ``erode_mm``: the morphology of :func:`brain_mask` on a thresholded box."""
    core = _largest_component(_erode(fg, open_mm, vs))
    if not core.any():  # object thinner than the opening: fall back to the plain threshold
        core = _largest_component(fg)
    opened = _largest_component(_dilate(core, open_mm * 1.05, vs) & fg)
    inner = fill_holes(_close(opened, close_mm, vs))
    return _erode(inner, erode_mm, vs) if erode_mm > 0 else inner


def reliable_field_mask(brain: np.ndarray, quality: np.ndarray, *, threshold: float) -> np.ndarray:
    """The part of ``brain`` whose field can be trusted: voxels with ``quality >= threshold``, then 3D hole
    filling and the largest connected component (and never more than ``brain``).

    Unreliable voxels that reach the brain surface (signal voids and steep-gradient zones at air/bone
    interfaces, where the field is not measurable) are dropped, so they cannot act as false sources in
    background removal; unreliable voxels *enclosed* by reliable ones (the void of a microbleed, a
    calcification or a vein) are filled back, so lesions stay in the mask.  Raises :class:`InputError`
    when nothing is left.
    """
    b = np.asarray(brain, dtype=bool)
    ok = b & (np.asarray(quality) >= threshold)
    if not ok.any():
        raise InputError(f"no voxel of the brain mask has a reliable field (quality >= {threshold})")
    return _largest_component(ndimage.binary_fill_holes(ok)) & b


def _foreground_box(fg: np.ndarray, *, margin: int) -> tuple[slice, ...]:
    """Bounding box (with ``margin`` voxels) of the foreground components holding at least 1 % of
    the largest one's voxels: the morphology runs on this box only (background specks ignored)."""
    labels, n = ndimage.label(fg)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= 0.01 * sizes.max())
    objs = ndimage.find_objects(labels)
    lo = np.min([[objs[k - 1][a].start for a in range(3)] for k in keep], axis=0)
    hi = np.max([[objs[k - 1][a].stop for a in range(3)] for k in keep], axis=0)
    return tuple(slice(max(int(l) - margin, 0), min(int(h) + margin, s)) for l, h, s in zip(lo, hi, fg.shape))


def validate_mask(mask, shape) -> np.ndarray:
    """A user mask as bool of ``shape`` (nonzero = brain); :class:`InputError` when its shape
    differs, it holds NaN, or it is empty."""
    m = np.asarray(mask)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if tuple(m.shape) != tuple(shape):
        raise InputError(f"mask shape {tuple(m.shape)} does not match the image shape {tuple(shape)}")
    if np.issubdtype(m.dtype, np.floating) and not np.all(np.isfinite(m)):
        raise InputError("mask contains NaN or infinite values")
    out = m != 0
    if not out.any():
        raise InputError("the given mask is empty")
    return out
