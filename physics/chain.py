"""The physics chain: GRE magnitude + phase -> :class:`~cmbdetect.physics.maps.PhysicsMaps`.

mask -> multi-echo field fit (unwrapping) -> background removal -> dipole inversion -> chi+/chi- (sign split for one
echo; chi-separation with R' = R2* - R2 for multi-echo) ->
SWI (echo closest to 20 ms) and its minimum-intensity projection; R2* for multi-echo data.  Everything
stays on the input grid; units: chi ppm (mean 0 inside the mask), fields ppm, R2* 1/s, TE s, B0 T.
Sign: phase in the project convention (paramagnetic -> positive frequency -> chi > 0).
"""
from __future__ import annotations

import time

import numpy as np

from . import background as bg
from .checks import finite_array
from .errors import InputError
from .fitness import assess_fitness, calls_withheld_reason
from .geometry import b0_direction, voxel_sizes
from .inversion import DEFAULT_METHOD, invert_dipole
from .constants import BACKGROUND_METHODS
from .maps import PhysicsMaps
from .sources import assumed_r2, chi_separation, relaxometric_constant, split_by_sign
from .swi import minimum_intensity_projection, swi_from_phase, through_slice_axis

#: Echo time (s) whose echo is used for SWI (closest available).
SWI_TE_S = 0.020
#: Warn when the removed background field has an RMS above this (ppm) inside the mask.
STRONG_BACKGROUND_PPM = 1.0
#: Default phase-coherence threshold of the multi-echo reliability mask (see compute_physics_maps).
#: Voxels whose echo-to-echo phase coherence (0-1) is below it leave the mask (docs/decisions.md, "Physics
#: defaults"; benchmarks/physics_cohort.py).
DEFAULT_MIN_COHERENCE = 0.5
#: The same for one echo, with the spatial phase coherence (0-1); 0: off by default, since a deep lesion's
#: dephasing zone may join a surface-connected unreliable zone through veins (docs/decisions.md).
DEFAULT_MIN_SPATIAL_COHERENCE = 0.0
#: The multi-echo coherence of the reliability mask uses only the echoes with B0 * TE <= this (T*s; at least
#: the first two echoes).  Intra-voxel dephasing around a source grows with B0 * TE, so at 7 T with long echo
#: times the blooming void of a lobar microbleed joins the surface-connected unreliable zone and is cut out of
#: the mask; the early echoes still measure its surroundings.  0.2 T*s is TE 67 ms at 3 T (every echo of a
#: clinical protocol) and 28.6 ms at 7 T (docs/decisions.md).  ``inf`` uses every echo.
DEFAULT_COHERENCE_MAX_B0_TE = 0.2
#: Warn when the local field has an RMS above this (ppm): likely unwrapping/background failure.
STRONG_LOCAL_PPM = 0.3
#: Warn when the median |chi| inside the mask is above this (ppm).  Brain tissue sits within about
#: +-0.1 ppm of its mean; a larger median means the mask took in the scalp, whose fat and air-bordered shell no
#: background removal can explain (figures: docs/decisions.md, "Physics defaults").
IMPLAUSIBLE_CHI_MEDIAN_PPM = 0.4
#: When the chi map of an automatic brain mask fails :func:`chi_map_quality`, the chain retries with the automatic
#: magnitude threshold scaled by each of these factors and keeps the passing map of lowest median |chi|
#: (dimensionless factors; figures: docs/acquisition_fitness.md).
MASK_RETRY_THRESHOLD_SCALES: tuple[float, ...] = (1.3, 1.6)


def chi_map_quality(chi_ppm: np.ndarray, mask: np.ndarray) -> tuple[dict, str | None]:
    """Plausibility of a susceptibility map: ``({"chi_abs_median_ppm", "chi_abs_p99_ppm"}, warning)``.

    ``chi_ppm`` in ppm, ``mask`` the voxels where it is valid.  ``warning`` is one line when the median
    |chi| exceeds :data:`IMPLAUSIBLE_CHI_MEDIAN_PPM` (a failed map: detections from it are unreliable),
    else ``None``.  An empty mask gives zeros and no warning.
    """
    values = np.abs(np.asarray(chi_ppm, dtype=np.float64)[np.asarray(mask, dtype=bool)])
    if values.size == 0:
        return {"chi_abs_median_ppm": 0.0, "chi_abs_p99_ppm": 0.0}, None
    med, p99 = float(np.median(values)), float(np.percentile(values, 99))
    stats = {"chi_abs_median_ppm": round(med, 4), "chi_abs_p99_ppm": round(p99, 4)}
    if med <= IMPLAUSIBLE_CHI_MEDIAN_PPM:
        return stats, None
    return stats, (f"susceptibility map implausible: median |chi| {med:.2f} ppm in the brain (tissue is below about "
                   f"{IMPLAUSIBLE_CHI_MEDIAN_PPM:g} ppm); the brain mask may hold scalp or background removal failed, "
                   "so no candidate is labelled microbleed: check the brain mask or supply one")


def _as_4d(a, name) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"{name} must be [echo, i, j, k] (or 3D for one echo), got shape {arr.shape}")
    if min(arr.shape[1:]) < 3:
        raise InputError(f"{name} has shape {arr.shape[1:]}: a 3D volume (>= 3 voxels per axis) is needed")
    return finite_array(arr, name)


def _check_geometry(affine, b0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise InputError("affine must be a finite, invertible 4x4 voxel-to-world matrix")
    if not (np.isfinite(b0) and 0.1 <= float(b0) <= 20.0):
        raise InputError(f"field strength must be given in tesla (0.1-20), got {b0}")
    return aff, voxel_sizes(aff), b0_direction(aff)


def _remove_background(field, mask, vs, b0_dir, method, weights, vsharp_radii=None):
    if method == "vsharp":
        radii = bg.vsharp_radii_mm(vs) if vsharp_radii is None else tuple(float(r) for r in vsharp_radii)
        local, valid = bg.vsharp(field, mask, vs, radii_mm=radii)
        return local, valid, {"method": "vsharp", "radii_mm": list(radii),
                              "radii_rule": "fixed (given)" if vsharp_radii is not None else
                              f"{list(bg.DEFAULT_VSHARP_RADII_MM)} mm up to {bg.VSHARP_REFERENCE_VOXEL_MM:g} mm in-plane"
                              " voxels, scaled with the in-plane voxel edge beyond",
                              "refine_iter": 3, "threshold": 0.05}
    if method == "lbv":
        local, valid = bg.lbv(field, mask, vs)
        return local, valid, {"method": "lbv", "tol": bg.LBV_TOLERANCE, "max_iter": bg.LBV_MAX_ITER}
    if method == "pdf":
        local = bg.pdf(field, mask, vs, b0_dir, weights=weights)
        return local, mask.copy(), {"method": "pdf"}
    raise InputError(f"unknown background removal {method!r}; use one of {', '.join(BACKGROUND_METHODS)}")


def _invert(local, valid, vs, b0_dir, inversion, magnitude):
    chi = invert_dipole(local, valid, vs, b0_dir, method=inversion, magnitude=magnitude)
    chi[valid] -= chi[valid].mean()
    chi[~valid] = 0.0
    return chi


def compute_physics_maps(
    *,
    mag,
    phase,
    te,
    b0: float,
    affine,
    mask=None,
    unwrap: str = "laplacian",
    background: str = "vsharp",
    inversion: str = "default",
    swi_slab_mm: float = 8.0,
    min_coherence: float = DEFAULT_MIN_COHERENCE,
    min_spatial_coherence: float = DEFAULT_MIN_SPATIAL_COHERENCE,
    coherence_max_b0_te: float = DEFAULT_COHERENCE_MAX_B0_TE,
    vsharp_radii_mm=None,
) -> PhysicsMaps:
    """Run the whole physics chain on one acquisition.

    Parameters
    ----------
    mag, phase : ``[E, i, j, k]`` float32 magnitude (a.u.) and phase (rad, wrapped or not, project
        sign convention).  A 3D array is one echo.
    te : E echo times (s).  b0 : field strength (T).  affine : 4x4 voxel -> scanner RAS (mm).
    mask : optional bool brain mask; default :func:`cmbdetect.physics.mask.brain_mask` on the
        echo-combined magnitude.
    unwrap : passed to :func:`cmbdetect.physics.echoes.fit_multi_echo`.
    background : one of :data:`cmbdetect.physics.constants.BACKGROUND_METHODS`: "vsharp" (default), "lbv" (erodes
        one voxel; benchmarks/lesion_fidelity.py --background) or "pdf".  inversion : see :func:`invert_dipole`.
    swi_slab_mm : slab of the sliding minimum-intensity projection of the SWI.
    min_coherence : multi-echo: brain voxels whose echo phases follow the fitted line with a
        coherence below this (:func:`cmbdetect.physics.echoes.phase_coherence`) and that reach the
        brain surface are left out of background removal and inversion
        (:func:`cmbdetect.physics.mask.reliable_field_mask`); 0 keeps the whole brain mask.
    min_spatial_coherence : the same for one echo with the 3x3x3 spatial phase coherence
        (:func:`cmbdetect.physics.echoes.spatial_phase_coherence`); 0 (default) keeps the brain mask.
    coherence_max_b0_te : multi-echo: the coherence is measured on the echoes with ``b0 * TE`` at most
        this (T*s; never fewer than the first two), against the line fitted to all echoes.
    vsharp_radii_mm : V-SHARP radii (mm); ``None`` (default) scales them to the voxel size
        (:func:`cmbdetect.physics.background.vsharp_radii_mm`).

    The acquisition's fitness for a microbleed call (:func:`cmbdetect.physics.fitness.assess_fitness`) is
    recorded in ``meta["fitness"]``; ``meta["calls_withheld"]`` is the reason no candidate may be labelled
    microbleed (acquisition outside the validated range, or a failed chi quality check), else ``None``; each
    such reason is also a warning line.

    Returns :class:`PhysicsMaps`; ``mask`` is the mask where the local field and chi are valid (the
    brain mask eroded by the background removal); ``meta`` records methods, parameters, timings (s)
    and warnings.
    """
    from .domain import brain_domain
    from .echoes import early_echo_coherence, fit_multi_echo, spatial_phase_coherence
    from .mask import brain_masks, pick_brain_mask, reliable_field_mask

    m4 = _as_4d(mag, "magnitude")
    p4 = _as_4d(phase, "phase")
    if m4.shape != p4.shape:
        raise InputError(f"magnitude {m4.shape} and phase {p4.shape} shapes differ")
    t = np.atleast_1d(np.asarray(te, dtype=float))
    if t.shape != (m4.shape[0],) or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise InputError(f"need {m4.shape[0]} positive echo times in seconds, got {list(np.ravel(te))}")
    if np.any(t > 1.0):
        raise InputError(f"echo times {list(t)} look like milliseconds; give them in seconds")
    aff, vs, b0_dir = _check_geometry(affine, b0)
    meta: dict = {"b0_t": float(b0), "te_s": [float(x) for x in t], "voxel_size_mm": vs.tolist(),
                  "b0_dir_voxel": b0_dir.tolist(), "warnings": [], "timings_s": {}}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        meta["timings_s"][name] = round(now - clock, 3)
        clock = now

    combined = np.sqrt((m4.astype(np.float32) ** 2).sum(0))
    plain = guarded = None
    if mask is None:
        plain, guarded = brain_masks(combined, vs)
        brain = pick_brain_mask(plain, guarded)
        meta["mask"] = "automatic (brain_mask)"
    else:
        brain = np.asarray(mask).astype(bool)
        if brain.shape != m4.shape[1:]:
            raise InputError(f"mask shape {brain.shape} does not match the images {m4.shape[1:]}")
        if not brain.any():
            raise InputError("the supplied brain mask is empty")
        meta["mask"] = "supplied"
    lap("mask")

    def attempt(brain):
        """Field fit, background removal and inversion inside ``brain``: (fit, local, valid, chi, chi warning,
        meta parts, warnings)."""
        part: dict = {}
        warns: list[str] = []
        fit = fit_multi_echo(m4, p4, t, b0, mask=brain, voxel_size=vs, unwrap=unwrap)
        part["field_fit"] = {"unwrap": unwrap, "echoes": int(m4.shape[0]), **dict(getattr(fit, "meta", {}) or {})}
        q_min = min_coherence if m4.shape[0] >= 2 else min_spatial_coherence
        if q_min > 0:
            if m4.shape[0] < 2:
                n_q, quality = 1, spatial_phase_coherence(m4[0], p4[0])
            else:
                n_q = max(2, int(np.sum(t * float(b0) <= coherence_max_b0_te)))
                quality = fit.coherence if n_q >= m4.shape[0] else \
                    early_echo_coherence(fit, m4[:n_q], p4[:n_q], t[:n_q], brain)
            reliable = reliable_field_mask(brain, quality, threshold=q_min)
            part["field_fit"]["reliable_mask"] = {
                "coherence": f"temporal (echo phases vs the fitted line, first {n_q} echoes)" if m4.shape[0] >= 2
                             else "spatial (3x3x3 neighbourhood)",
                "coherence_max_b0_te": float(coherence_max_b0_te),
                "coherence_min": float(q_min), "brain_voxels": int(brain.sum()),
                "dropped_voxels": int((brain & ~reliable).sum())}
            brain = reliable
        lap("field_fit")

        local, valid, bmeta = _remove_background(fit.field_ppm, brain, vs, b0_dir, background, fit.magnitude,
                                                 vsharp_radii_mm)
        bg_rms = bg.background_rms_ppm(fit.field_ppm, local, valid)
        loc_rms = float(np.sqrt(np.mean(local[valid] ** 2)))
        part["background"] = {**bmeta, "background_rms_ppm": round(bg_rms, 4), "local_rms_ppm": round(loc_rms, 4),
                              "valid_voxels": int(valid.sum()), "brain_voxels": int(brain.sum())}
        if bg_rms > STRONG_BACKGROUND_PPM:
            warns.append(f"strong background field (RMS {bg_rms:.2f} ppm inside the brain): "
                         "check shimming and the brain mask near air/tissue interfaces")
        if loc_rms > STRONG_LOCAL_PPM:
            warns.append(f"local field RMS {loc_rms:.2f} ppm is implausibly large: phase unwrapping or "
                         "background removal may have failed (check --phase-units/--phase-sign)")
        lap("background")

        chi = _invert(local, valid, vs, b0_dir, inversion, fit.magnitude)
        part["inversion"] = {"method": DEFAULT_METHOD if inversion == "default" else inversion,
                             "reference": "mean 0 inside mask"}
        part["quality"], chi_warning = chi_map_quality(chi, valid)
        if chi_warning:
            warns.append(chi_warning)
        return fit, local, valid, chi, chi_warning, part, warns

    fit, local, valid, chi, chi_warning, part, warns = attempt(brain)
    if chi_warning and mask is None:
        # A failed chi map from an automatic mask is the signature of scalp in the mask (short TE: scalp, muscle
        # and brain all bright; coarse voxels: partial-volume bridges over the skull): stricter thresholds, and
        # the most plausible map (lowest median |chi|) is kept when it passes.
        tried = [{"threshold_scale": 1.0, "brain_voxels": int(brain.sum()), **part["quality"]}]
        best = None
        for scale in MASK_RETRY_THRESHOLD_SCALES:
            try:
                p2, g2 = brain_masks(combined, vs, threshold_scale=scale)
                b2 = pick_brain_mask(p2, g2)
                retry = attempt(b2)
            except InputError:
                break
            tried.append({"threshold_scale": scale, "brain_voxels": int(b2.sum()), **retry[5]["quality"]})
            if retry[4] is None and (best is None or retry[5]["quality"]["chi_abs_median_ppm"] <
                                     best[0][5]["quality"]["chi_abs_median_ppm"]):
                best = (retry, p2, g2, scale)
        if best is not None:
            (fit, local, valid, chi, chi_warning, part, warns), plain, guarded, scale = best
            meta["mask"] = f"automatic (brain_mask, threshold x{scale:g} after a failed chi map)"
            warns.append(f"the automatic brain mask took in non-brain tissue (median |chi| "
                         f"{tried[0]['chi_abs_median_ppm']:.2f} ppm); a {scale:g}x stricter magnitude threshold "
                         "gave a plausible map: check the brain mask")
        meta["mask_retries"] = tried
    meta.update(part)
    meta["warnings"].extend(warns)
    fitness = assess_fitness(voxel_size_mm=vs, b0_t=float(b0), te_s=t, mask=valid, local_field_ppm=local,
                             affine=aff)
    meta["fitness"] = fitness.as_dict()
    meta["calls_withheld"] = calls_withheld_reason(fitness, chi_warning)
    meta["warnings"].extend(f"no microbleed calls: {r}" for r in fitness.reasons)
    if fit.r2star is None:
        chi_pos, chi_neg = split_by_sign(chi)
        meta["sources"] = {"method": "sign", "note": "single echo: chi_pos/chi_neg = positive/negative part of chi"}
    else:
        chi_pos, chi_neg = chi_separation(chi_ppm=chi, r2star=fit.r2star, mask=valid, b0=float(b0))
        meta["sources"] = {"method": "chi-separation (R2' = R2* - R2, after Shin et al. 2021)",
                           "assumed_r2_per_s": float(assumed_r2(float(b0))),
                           "relaxometric_constant_hz_per_ppm": float(relaxometric_constant(float(b0)))}
    lap("inversion")

    e_swi = int(np.argmin(np.abs(t - SWI_TE_S)))
    swi = swi_from_phase(m4[e_swi], p4[e_swi], n=4, voxel_size=vs)
    ax = through_slice_axis(vs, b0_dir)
    mip = minimum_intensity_projection(swi, vs, slab_mm=swi_slab_mm, axis=ax)
    meta["swi"] = {"echo_index": e_swi, "te_s": float(t[e_swi]), "n": 4, "mip_slab_mm": float(swi_slab_mm), "mip_axis": ax}
    lap("swi")

    r2star = None if fit.r2star is None else np.asarray(fit.r2star, dtype=np.float32)
    return PhysicsMaps(
        mask=valid, magnitude=combined,
        field_ppm=np.asarray(fit.field_ppm, dtype=np.float32), local_field_ppm=local.astype(np.float32),
        chi_ppm=chi.astype(np.float32), chi_pos=chi_pos, chi_neg=chi_neg, swi=swi, mip=mip,
        affine=aff, b0=float(b0), r2star=r2star, meta=meta, brain_plain=plain, brain_guarded=guarded,
        brain_domain=None if plain is None else brain_domain(valid, plain, guarded),
    )


def invert_local_field(*, local_field_ppm, mask, affine, b0: float, inversion: str = "default") -> PhysicsMaps:
    """Dipole inversion for a user who already has a local (background-free) field in ppm.

    Returns :class:`PhysicsMaps` whose magnitude/SWI/MIP are placeholders of ones (no magnitude
    available) and whose ``field_ppm`` is the given local field; ``meta['placeholders']`` says so.
    """
    f = finite_array(local_field_ppm, "local field", ndim=3)
    m = np.asarray(mask).astype(bool)
    if m.shape != f.shape:
        raise InputError(f"mask shape {m.shape} does not match the local field {f.shape}")
    if not m.any():
        raise InputError("the supplied mask is empty")
    aff, vs, b0_dir = _check_geometry(affine, b0)
    local = np.where(m, f, 0.0).astype(np.float32)
    chi = _invert(local, m, vs, b0_dir, inversion, None)
    chi_pos, chi_neg = split_by_sign(chi)
    ones = np.ones_like(f)
    meta = {"b0_t": float(b0), "voxel_size_mm": vs.tolist(), "b0_dir_voxel": b0_dir.tolist(), "warnings": [],
            "inversion": {"method": DEFAULT_METHOD if inversion == "default" else inversion,
                          "reference": "mean 0 inside mask"},
            "placeholders": ["magnitude", "swi", "mip"], "input": "local field (ppm)"}
    return PhysicsMaps(mask=m, magnitude=ones, field_ppm=local, local_field_ppm=local, chi_ppm=chi,
                       chi_pos=chi_pos, chi_neg=chi_neg, swi=ones.copy(), mip=ones.copy(), affine=aff,
                       b0=float(b0), r2star=None, meta=meta)
