"""Simulated GRE/SWI subjects with ground truth, and BIDS datasets of them.

:func:`simulate_subject` draws a procedural head (:mod:`simulate_anatomy`), veins
(:mod:`simulate_vessels`), microbleeds and calcifications (:mod:`simulate_lesions`) and computes the
multi-echo complex spoiled-GRE signal (:mod:`simulate_signal`): field from the dipole convolution of
the whole head (air +9.4 ppm vs tissue) on a padded grid with B0 along scanner z (oblique slabs and
head tilt included), shim, closed-form lesion fields integrated over sub-voxels, intravoxel
dephasing, bias field, receiver phase and complex Gaussian noise.  :func:`simulate_dataset` writes
``N`` subjects as a BIDS dataset (see :mod:`simulate_bids`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cmbdetect.physics.constants import CHI_AIR_VS_TISSUE_PPM
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import b0_direction, oblique_affine, voxel_to_world
from cmbdetect.physics.phase import rad_per_ppm
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.bids import bids_name
from cmbdetect.pipeline.simulate.anatomy import T, build_anatomy
from cmbdetect.pipeline.simulate.geometry import HeadFrame, random_rotation, smooth_grid_field
from cmbdetect.pipeline.simulate.lesions import draw_lesions, lesion_samples
from cmbdetect.pipeline.simulate.signal import (BLOOD_3T, add_noise, bias_field, dephasing_factor, kspace_truncate,
                                                draw_tissue_table, fields_from_chi,
                                                r2star_at, receiver_phase, shim, spoiled_gre, t1_at)
from cmbdetect.pipeline.simulate.vessels import build_arteries, build_veins
from cmbdetect.pipeline.io.truth import LABELS, Lesion, Truth


@dataclass
class SimulatedSubject:
    """One simulated subject: the acquisition as a reader would produce it, its truth, its parameters."""

    acq: Acquisition
    truth: Truth
    params: dict = field(default_factory=dict)
    #: total field (ppm of B0) after shimming, lesions included, at voxel centres (for checks)
    total_field_ppm: np.ndarray | None = None


def _seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise InputError(f"seed must be a non-negative integer, got {seed!r}")


def child_rng(seed, n: int) -> np.random.Generator:
    """Independent generator number ``n`` derived from ``seed`` (deterministic, order independent)."""
    ss = _seed_sequence(seed)
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (n,)))


def _check(shape, te, b0, voxel_size):
    if len(shape) != 3 or min(shape) < 16:
        raise InputError(f"simulation shape must be three sizes of at least 16 voxels, got {tuple(shape)}")
    te = np.atleast_1d(np.asarray(te, float))
    if te.size == 0 or np.any(te <= 0) or np.any(te > 0.2) or np.any(np.diff(te) <= 0):
        raise InputError(f"echo times must be increasing and in seconds (0-0.2), got {te.tolist()}")
    if not 0.1 <= float(b0) <= 12.0:
        raise InputError(f"field strength must be in tesla (0.1-12), got {b0}")
    if voxel_size is not None and (len(voxel_size) != 3 or min(voxel_size) <= 0):
        raise InputError(f"voxel size must be three positive lengths in mm, got {voxel_size}")
    return tuple(int(s) for s in shape), te


def simulate_subject(*, seed, shape=(192, 224, 96), voxel_size=None, b0: float = 3.0, te=(0.02,),
                     oblique_deg=0.0, n_microbleeds: int | None = None, n_calcifications: int | None = None,
                     snr: float | None = None, tr: float | None = None, flip_deg: float | None = None,
                     head_tilt_deg: float | None = None, flip_lr: bool = False, vein_family: str = "trees",
                     vein_density: float | None = None, iron_spots: int | None = 0,
                     mimics=None) -> SimulatedSubject:
    """Simulate one subject.

    ``seed`` int or :class:`numpy.random.SeedSequence`; ``shape`` voxels; ``voxel_size`` mm (None: a
    random field of view of 170-240 mm in-plane and 110-200 mm slab, voxels at most 4.5 x 4.5 x 5 mm);
    ``b0`` T; ``te`` echo times s; ``oblique_deg`` slab angulation about the left-right axis (or three
    angles about x, y, z), B0 stays along scanner z; ``n_microbleeds`` / ``n_calcifications`` None
    draws 0-15 / 0-4; ``snr`` white matter signal / noise sigma at the first echo (None: 8-80); ``tr``
    s and ``flip_deg`` (None: random); ``head_tilt_deg`` limit of the random head rotation in the
    scanner (None: 8 deg pitch, 4 deg roll/yaw); ``flip_lr`` stores the first axis right-to-left
    (negative affine column); ``vein_family`` the vein geometry (:data:`simulate_vessels.VEIN_FAMILIES`:
    "trees" the default, "tortuous" random-walk veins of every orientation and calibre (held out of training),
    "radial" straight/curved segments, fans and Y-branches) and ``vein_density`` its density factor (None: random;
    not "trees"); ``iron_spots`` small iron-rich deep-grey spots
    (mimics, +0.03...+0.12 ppm; 0 by default, None: 0-5 at random); ``mimics`` the other mimics
    (:mod:`cmbdetect.pipeline.simulate.mimics`: None / "none" the default, "random", or a list of
    :data:`~cmbdetect.pipeline.simulate.mimics.MIMICS`).  Also random per seed: anatomy, tissue values, veins, arteries, lesion
    sites/sizes/chi, shim residual, receiver phase, bias field, acquired resolution (k-space
    truncation, Gibbs ringing) and whether the noise is white or k-space filtered.
    """
    shape, te = _check(shape, te, b0, voxel_size)
    rng = [child_rng(seed, n) for n in range(6)]  # protocol, anatomy, veins, lesions, tissue, noise
    r = rng[0]
    if voxel_size is None:
        vx = min(r.uniform(170.0, 240.0) / shape[0], 4.5)  # small test grids: at most 4.5 x 4.5 x 5 mm
        voxel_size = (vx, vx, min(max(vx, r.uniform(110.0, 200.0) / shape[2]), 5.0))
    voxel_size = tuple(float(v) for v in voxel_size)
    angles = tuple(float(a) for a in np.broadcast_to(np.asarray(oblique_deg, float), (3,))) \
        if np.ndim(oblique_deg) else (float(oblique_deg), 0.0, 0.0)
    affine = oblique_affine(shape, voxel_size, angles_deg=angles)
    if flip_lr:
        affine[:3, 0] *= -1
        affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, float) - 1) / 2.0)
    tilt = np.array([8.0, 4.0, 4.0]) if head_tilt_deg is None else np.full(3, float(head_tilt_deg))
    rot = random_rotation(r, tilt)
    slab_centre_head = np.array([r.uniform(-4, 4), r.uniform(-12, 0), r.uniform(-2, 18)])
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = -rot @ slab_centre_head
    tr = float(tr) if tr is not None else float(te[-1] + r.uniform(0.006, 0.015))
    flip_deg = float(flip_deg) if flip_deg is not None else float(r.uniform(8.0, 25.0))
    snr = float(snr) if snr is not None else float(np.exp(r.uniform(np.log(8.0), np.log(80.0))))
    frame = HeadFrame(shape, affine, pose)

    anat = build_anatomy(frame, rng[1])
    specs = draw_lesions(anat, rng[3], n_microbleeds=n_microbleeds, n_calcifications=n_calcifications)
    mim, mim_params, void, dots = (), {}, None, None
    if mimics is not None:
        from cmbdetect.pipeline.simulate.mimics import draw_subject_mimics

        mim, mim_params, void, dots = draw_subject_mimics(mimics, anat, specs, lambda n: child_rng(seed, n))
    if "noise_dots" in mim:
        snr = min(snr, float(child_rng(seed, 10).uniform(4.0, 10.0)))
    veins = build_veins(anat, rng[2], family=vein_family, density=vein_density,
                        near_mm=[(o.centres_head[0], float(o.radii_mm.max())) for o in specs if o.kind == "microbleed"])
    arteries, flow_tag = build_arteries(anat, rng[2])
    arteries = np.where(anat.tissue != T["air"], arteries, 0).astype(np.float32)
    inflow = rng[2].uniform(1.3, 2.5) if rng[2].random() < 0.6 else rng[2].uniform(0.05, 0.3)  # bright or void
    flow_phase = np.float32(0.0 if inflow > 1 else rng[2].uniform(0.5, 3.0))

    # tissue property maps, veins mixed in by partial volume, mild texture
    tab = draw_tissue_table(rng[4], b0)
    rt = rng[4]
    blood = [rt.uniform(*BLOOD_3T[0]), t1_at(rt.uniform(*BLOOD_3T[1]), b0), r2star_at(rt.uniform(*BLOOD_3T[2]), b0)]
    occ = np.where(anat.tissue != T["air"], veins.occupancy, 0).astype(np.float32)
    if void is not None:  # flow voids: oxygenated arterial blood, no vein chi where they run
        occ *= 1 - void
    tex = smooth_grid_field(rt, shape, voxel_size=voxel_size, corr_mm=5.0)
    pd = tab.pd[anat.tissue] * (1 + 0.03 * tex)
    r1 = 1.0 / tab.t1[anat.tissue]
    r2s = tab.r2s[anat.tissue] * (1 + 0.08 * tex)
    del tex
    pd += occ * (blood[0] - pd)
    r1 += occ * (1 / blood[1] - r1)
    r2s += occ * (blood[2] - r2s)
    sig = 0.45
    pd, r1, r2s = (ndimage.gaussian_filter(a, sig).astype(np.float32) for a in (pd, r1, r2s))
    chi_tissue = tab.chi[anat.tissue]
    n_iron = 0
    if iron_spots is None or iron_spots > 0:
        from cmbdetect.pipeline.simulate.veins_tortuous import add_iron_spots

        chi_tissue = chi_tissue.astype(np.float32, copy=True)
        n_iron = add_iron_spots(anat, child_rng(seed, 6), chi_tissue, n=iron_spots)
    if "iron" in mim:
        from cmbdetect.pipeline.simulate.mimics import add_iron_nuclei

        chi_tissue = chi_tissue.astype(np.float32, copy=True)
        mim_params["iron_spots"] = add_iron_nuclei(anat, child_rng(seed, 11), chi_tissue)
    chi = chi_tissue + occ * (veins.chi_ppm - np.minimum(tab.chi[anat.tissue], 1.0))
    del chi_tissue
    chi = np.where(anat.tissue == T["air"], tab.chi[T["air"]], chi).astype(np.float32)
    chi_local = np.where(anat.intracranial, chi, 0).astype(np.float32)
    # the air/tissue step (9.4 ppm) is given a partial-volume edge (0.7 voxel): a voxel-sharp step makes
    # the discrete dipole kernel ring through the whole brain (concentric ripples of ~0.01 ppm)
    chi_vs_air = ndimage.gaussian_filter(chi - np.float32(CHI_AIR_VS_TISSUE_PPM), 0.7, mode="nearest")
    total, local = fields_from_chi(chi_vs_air, chi_local, voxel_size, b0_direction(affine))
    del chi_vs_air
    del chi
    total = shim(total, anat.intracranial, fraction=r.uniform(0.5, 1.0)) + np.float32(r.normal(0, 0.05))
    local = np.where(anat.intracranial, local, 0).astype(np.float32)

    # lesions: closed-form fields at voxel centres far out, sub-voxel integration near
    labels = np.zeros(shape, np.uint8)
    labels[(occ >= 0.3) & anat.intracranial] = LABELS["vein"]
    truth_chi = np.where(anat.intracranial, chi_local, 0).astype(np.float32)
    del chi_local, occ
    bg_total = total.copy()
    inner, lesions_out = _lesion_fields(frame, specs, total=total, local=local, labels=labels, chi=truth_chi,
                                        intracranial=anat.intracranial, rad_max=rad_per_ppm(float(te[-1]), b0))
    phi0 = receiver_phase(rng[5], shape)
    # acquired resolution below the grid's (zero-filled k-space): blur and Gibbs ringing, in 70% of subjects
    kfrac = tuple(r.uniform(0.7, 1.0, 3)) if r.random() < 0.7 else None
    fermi = float(r.uniform(0.0, 0.12))
    filter_noise = bool(r.random() < 0.35)
    bias = bias_field(rng[5], shape, b0=b0)
    wm_mask = anat.tissue == T["wm"]
    mags, phases = [], []
    sigma = None
    for e, t_e in enumerate(te):
        k = np.float32(rad_per_ppm(float(t_e), b0))
        m = spoiled_gre(pd, 1 / r1, r2s, te=float(t_e), tr=tr, flip_deg=flip_deg) * bias
        if sigma is None:
            sigma = float(np.median(m[wm_mask]) / snr) if wm_mask.any() else float(m.mean() / snr)
        if e == 0:
            m_ref = float(np.median(m[wm_mask])) if wm_mask.any() else float(m.mean())
        m += arteries * (np.float32(inflow * m_ref) - m)
        if void is not None:
            m *= 1 - np.float32(0.95) * void
        s = (m * dephasing_factor(total, k)) * np.exp(1j * (total * k + phi0 + flow_phase * flow_tag * arteries))\
            .astype(np.complex64)
        for ibox, fsum, owner, near in inner:
            mag_les = np.array([spoiled_gre(o.pd, t1_at(o.t1, b0), r2star_at(o.r2s_3t, b0), te=float(t_e), tr=tr,
                                            flip_deg=flip_deg) for o in near] + [0.0], np.float32)
            mm = np.where(owner >= 0, mag_les[owner] * bias[ibox][..., None], m[ibox][..., None])
            ph = fsum * k
            integral = (mm * np.cos(ph)).mean(-1) + 1j * (mm * np.sin(ph)).mean(-1)
            deph = dephasing_factor(bg_total[ibox], k) if min(integral.shape) >= 2 else np.float32(1)
            s[ibox] = (deph * integral * np.exp(1j * (bg_total[ibox] * k + phi0[ibox]))).astype(np.complex64)
        if kfrac is not None and not filter_noise:
            s = kspace_truncate(s, kfrac, fermi_width=fermi)
        s = add_noise(rng[5], s, sigma)
        if dots is not None:
            s.flat[dots[0]] *= dots[1]
        if kfrac is not None and filter_noise:  # k-space filter after the noise: spatially correlated noise
            s = kspace_truncate(s, kfrac, fermi_width=fermi)
        mags.append(np.abs(s).astype(np.float32))
        ph = np.angle(s).astype(np.float32)
        ph[ph >= np.float32(np.pi)] -= np.float32(2 * np.pi)
        phases.append(ph)
    acq = Acquisition(mag=np.stack(mags), phase=np.stack(phases), te=te, b0=float(b0), affine=affine,
                      source={"simulated": True})
    truth = Truth(lesions=lesions_out, labels=labels, chi_ppm=truth_chi, local_field_ppm=local, affine=affine)
    params = {"voxel_size_mm": list(voxel_size), "oblique_deg": list(angles), "b0_t": float(b0),
              "te_s": te.tolist(), "tr_s": tr, "flip_deg": flip_deg, "snr_wm": snr, "noise_sigma": sigma,
              "flip_lr": bool(flip_lr), "veins": veins.params, "iron_spots": n_iron,
              **({"mimics": mim_params} if mimics is not None else {}),
              "kspace_fraction": None if kfrac is None else [float(v) for v in kfrac], "kspace_fermi_width": fermi,
              "noise_filtered": filter_noise and kfrac is not None,
              "n_microbleeds": sum(l.kind == "microbleed" for l in lesions_out),
              "n_calcifications": sum(l.kind == "calcification" for l in lesions_out)}
    return SimulatedSubject(acq=acq, truth=truth, params=params, total_field_ppm=total)


def _lesion_fields(frame, specs, *, total, local, labels, chi, intracranial, rad_max):
    """Add the lesions' fields to ``total`` and ``local`` (voxel centres, out to where they fall below
    ~0.002 ppm), and prepare the sub-voxel samples near each lesion (to within ~0.3 rad of phase at
    the last echo): returns ``(inner, lesions)`` with ``inner`` a list of ``(box, field_samples,
    owner_samples, lesions_near)`` and the truth :class:`Lesion` rows; writes labels, chi and the
    sub-voxel mean local field of each lesion into the truth arrays."""
    boxes = []
    for spec in specs:
        a = float(spec.radii_mm.max())
        reach = float(np.max(np.linalg.norm(spec.centres_head - spec.centres_head[0], axis=1))) + a
        # sub-voxel integration where the lesion's phase changes by > 0.4 rad across a voxel; further out
        # the voxel-centre field and the sinc dephasing of its gradient are accurate
        h = float(frame.voxel_size.max())
        r_in = min(25.0, max(a + 1.5 * h, a * (3 * rad_max * abs(spec.chi_ppm) * 0.67 * h / (0.4 * a)) ** 0.25))
        r_out = max(r_in, min(45.0, a * (abs(spec.chi_ppm) * 0.67 / 0.002) ** (1 / 3)))
        box = frame.box(spec.centres_head[0], margin_mm=r_out + reach - a)
        ibox = frame.box(spec.centres_head[0], margin_mm=r_in + reach - a)
        f = lesion_samples(frame, [spec], box, sub=False)
        total[box] += f
        local[box] += np.where(intracranial[box], f, 0)
        boxes.append((spec, box, ibox, f))
    inner, rows = [], []
    for spec, box, ibox, f in boxes:
        others = [o for o, ob, _i, _f in boxes if o is not spec and _overlap(ob, ibox)]
        f_own, own, chi_own = lesion_samples(frame, [spec], ibox, sub=True)
        f_oth, owner, _ = lesion_samples(frame, others, ibox, sub=True)
        owner = np.where(own >= 0, len(others), owner).astype(np.int16)
        inner.append((ibox, f_own + f_oth, owner, others + [spec]))
        frac = (own >= 0).mean(-1)
        labels[ibox] = np.where(frac >= 0.5, LABELS[spec.kind], labels[ibox])
        chi[ibox] += chi_own.mean(-1)
        centre_f = f[tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(ibox, box))]
        local[ibox] += np.where(intracranial[ibox], f_own.mean(-1) - centre_f, 0)
        vol = (4 / 3) * np.pi * spec.radii_mm ** 3
        c_vox = frame.head_to_vox((spec.centres_head * vol[:, None]).sum(0) / vol.sum())
        ijk = tuple(int(round(v)) for v in c_vox)
        if all(0 <= i < n for i, n in zip(ijk, labels.shape)):
            labels[ijk] = LABELS[spec.kind]
        eq_d = float(2 * (3 * _union_volume(spec) / (4 * np.pi)) ** (1 / 3))
        rows.append(Lesion(kind=spec.kind, centre_vox=tuple(float(v) for v in c_vox),
                           centre_ras=tuple(float(v) for v in voxel_to_world(frame.affine, c_vox)),
                           diameter_mm=eq_d, chi_ppm=float(spec.chi_ppm), region=spec.region))
    return inner, rows


def _overlap(a, b) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))


def _union_volume(spec, n: int = 4000) -> float:
    """Volume (mm3) of the union of the lesion's spheres (Monte Carlo with a fixed seed)."""
    if len(spec.radii_mm) == 1:
        return float(4 / 3 * np.pi * spec.radii_mm[0] ** 3)
    lo = (spec.centres_head - spec.radii_mm[:, None]).min(0)
    hi = (spec.centres_head + spec.radii_mm[:, None]).max(0)
    p = np.random.default_rng(0).uniform(lo, hi, (n, 3))
    ins = np.zeros(n, bool)
    for c, r in zip(spec.centres_head, spec.radii_mm):
        ins |= ((p - c) ** 2).sum(1) <= r * r
    return float(ins.mean() * np.prod(hi - lo))


def subject_label(index: int) -> str:
    """BIDS label of subject ``index`` (0-based): ``01``, ``02``, ... (independent of the dataset size)."""
    return f"{index + 1:02d}"


def subject_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed of subject ``index`` of a dataset with ``seed``: the same whatever the number of subjects."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(index),))


def simulate_dataset(out_dir, *, subjects: int, seed: int, b0=None, echoes="random", shape=(192, 224, 96),
                     voxel_size=None, n_microbleeds: int | None = None, preview: bool = False,
                     progress=None, claim=None, vein_family: str = "trees", vein_density: float | None = None,
                     iron_spots: int | None = 0, mimics=None, randomise_acquisition: bool = False) -> list[str]:
    """Simulate ``subjects`` subjects and write them as a BIDS dataset at ``out_dir`` (built in a
    temporary directory beside it and renamed into place).  Returns the subject labels.

    ``b0`` None (random 1.5/3/7 T), a number, or a list to draw from; ``echoes`` "random", a number of
    echoes or a list of echo times (s); ``shape`` voxels; ``voxel_size`` mm (None: random field of
    view); ``n_microbleeds`` None draws 0-15 per subject; ``preview`` also writes
    ``derivatives/preview/sub-XX_preview.png``; ``progress`` optional callable(label, params); ``claim``
    (:func:`cmbdetect.pipeline.io.output_folder.claim_output_folder`) lets it replace an earlier simulated
    dataset at ``out_dir`` (only the files that one wrote); without it ``out_dir`` must be new or empty.
    ``vein_family``, ``vein_density``, ``iron_spots``, ``mimics`` as in :func:`simulate_subject` ("random"
    mimics are drawn per subject); ``randomise_acquisition`` also draws each subject's voxel size (0.5-1 mm
    in-plane, 2-3 mm slices) and slab tilt (:func:`simulate_bids.draw_acquisition`; ``voxel_size`` must be None).
    Subject ``k`` depends only on (``seed``, ``k``) and the options, not on ``subjects``.
    """
    from cmbdetect.pipeline.io.atomic import atomic_directory
    from cmbdetect.pipeline.simulate.bids import draw_protocol, write_dataset_files, write_subject

    if int(subjects) < 1:
        raise InputError(f"number of subjects must be at least 1, got {subjects}")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if randomise_acquisition and voxel_size is not None:
        raise InputError("a random acquisition draws each subject's voxel size; give no voxel size with it")
    if mimics is not None:
        from cmbdetect.pipeline.simulate.mimics import parse_mimics

        parse_mimics(mimics)  # a bad name fails before anything is written
    b0_choices = None if b0 is None else [float(v) for v in np.atleast_1d(b0)]
    labels = [subject_label(k) for k in range(int(subjects))]
    with atomic_directory(out_dir, claim=claim, kind="simulate") as tmp:
        write_dataset_files(tmp, labels, int(seed))
        for k, label in enumerate(labels):
            ss = subject_seed(seed, k)
            proto = draw_protocol(child_rng(ss, 100), b0_choices=b0_choices, echoes=echoes)
            vs_k = voxel_size
            if randomise_acquisition:
                from cmbdetect.pipeline.simulate.bids import draw_acquisition

                proto.update(draw_acquisition(child_rng(ss, 101)))
                vs_k = proto["voxel_size_mm"]
            sub = simulate_subject(seed=ss, shape=shape, voxel_size=vs_k, b0=proto["b0"], te=proto["te"],
                                   oblique_deg=proto["oblique_deg"], flip_lr=proto["flip_lr"],
                                   n_microbleeds=n_microbleeds, vein_family=vein_family,
                                   vein_density=vein_density, iron_spots=iron_spots, mimics=mimics)
            sub.params.update({"seed": int(seed), "subject_index": k})
            if randomise_acquisition:
                sub.params["acquisition_randomised"] = True
            write_subject(tmp, label, sub)
            if preview:
                from cmbdetect.pipeline.simulate.preview import write_preview

                write_preview(sub, tmp / "derivatives" / "preview" / bids_name(sub=label, suffix="preview",
                                                                               extension=".png"))
            if progress is not None:
                progress(label, sub.params)
    return labels
