"""Microbleed mimics of the simulator other than veins (all off by default: existing cohorts are unchanged).

``mimics`` of :func:`cmbdetect.pipeline.simulate.subject.simulate_subject` is ``None`` / ``"none"`` (default),
``"random"`` (each mimic present with probability 1/2, drawn per subject) or a list of :data:`MIMICS`:

- ``calcifications``: choroid-plexus calcifications in the glomus of the lateral ventricles' atria (often both
  sides) and a pineal calcification: irregular clusters, 2-8 mm, chi -0.2...-1.5 ppm (diamagnetic), truth
  label ``calcification``;
- ``flow_voids``: large arteries in the basal cisterns and the Sylvian fissures, 1.5-4 mm, whose magnitude is a
  void (fast flow) and whose chi is that of the tissue (oxygenated blood: no paramagnetic source), not labelled;
- ``air``: extra pneumatisation of the frontal sinus and the mastoids reaching the dura (air +9.4 ppm vs tissue):
  a strong background field and signal dropout at the brain edge, through the same dipole forward model;
- ``noise_dots``: low SNR (4-10) and isolated dark voxels with a random phase (spikes), fixed across echoes;
- ``iron``: irregular iron-rich deep nuclei (patchy chi +0...+0.15 ppm over pallidum, putamen, nigra, red
  nucleus, dentate) plus small iron spots (:func:`cmbdetect.pipeline.simulate.veins_tortuous.add_iron_spots`).

Positions in head mm, chi in ppm vs tissue.  Each mimic draws from the generator it is given, so the same seed
gives the same subject.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.simulate.anatomy import T, Anatomy
from cmbdetect.pipeline.simulate.geometry import LatticeNoise, ellipsoid_sdf, paint_tube
from cmbdetect.pipeline.simulate.lesions import LesionSpec, _blob

#: Mimics :func:`simulate_subject` can add (``mimics=`` / ``cmbdetect simulate --mimics``).
MIMICS: tuple[str, ...] = ("calcifications", "flow_voids", "air", "noise_dots", "iron")


def parse_mimics(value) -> str | tuple[str, ...]:
    """``None`` / "none" -> (); "random" -> "random"; "a,b" or a list -> the tuple of those :data:`MIMICS`
    (InputError for an unknown name)."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none"):
            return ()
        if text == "random":
            return "random"
        value = [v.strip() for v in text.replace("+", ",").split(",") if v.strip()]
    names = tuple(dict.fromkeys(str(v).replace("-", "_") for v in value))
    bad = [n for n in names if n not in MIMICS]
    if bad:
        raise InputError(f"unknown mimic(s) {', '.join(bad)}; use 'none', 'random' or a comma list of "
                         f"{', '.join(MIMICS)}")
    return names


def choose_mimics(value, rng: np.random.Generator) -> tuple[str, ...]:
    """The mimics of one subject: the parsed ``value``, or for "random" each of :data:`MIMICS` with p = 1/2."""
    parsed = parse_mimics(value)
    if parsed == "random":
        return tuple(m for m, on in zip(MIMICS, rng.random(len(MIMICS)) < 0.5) if on)
    return parsed


def draw_subject_mimics(mimics, anatomy: Anatomy, specs: list, rng_for):
    """Draw one subject's mimics, each from its own generator ``rng_for(n)`` (n = 7 which mimics, 8 air, 9
    calcifications, 12 flow voids, 13 noise dots; 10 and 11 are the SNR and iron draws of the caller), so the
    default draws stay as they were: air pockets into ``anatomy.tissue`` and calcifications onto ``specs`` in
    place.  Returns (names, their parameters, flow-void occupancy or None, noise dots or None)."""
    names = choose_mimics(mimics, rng_for(7))
    params: dict = {"names": list(names)}
    if "air" in names:
        params["air_pockets_head_mm"] = add_air_pockets(anatomy, rng_for(8))
    if "calcifications" in names:
        extra = calcification_specs(anatomy, rng_for(9), specs)
        specs.extend(extra)
        params["calcifications"] = len(extra)
    void = flow_void_occupancy(anatomy, rng_for(12)) if "flow_voids" in names else None
    dots = noise_dots(rng_for(13), anatomy.region > 0) if "noise_dots" in names else None
    if dots is not None:
        params["noise_dots"] = int(len(dots[0]))
    return names, params, void, dots


def add_air_pockets(anatomy: Anatomy, rng: np.random.Generator) -> list[list[float]]:
    """Enlarge the frontal sinus and the mastoid air cells up to 0.5-1.5 mm from the dura (tissue set to air in
    place, never inside the intracranial mask).  Returns the pocket centres (head mm)."""
    fr, lm = anatomy.frame, anatomy.landmarks
    s, csf = lm["scale"], lm["csf_mm"]
    sdf = lm["sdf_brain"]
    pockets = [(np.array([0.0, 64.0, 2.0]), np.array([22.0, 10.0, 18.0]))]
    for side in (1, -1):
        if rng.random() < 0.7:
            pockets.append((np.array([side * 50.0, -26.0, -36.0]), np.array([13.0, 15.0, 14.0])))
    centres = []
    for c, ax in pockets:
        c = c * s + rng.normal(0, 2.0, 3)
        ax = ax * s * rng.uniform(0.8, 1.2, 3)
        b = fr.box(c, margin_mm=float(ax.max()) + 2.0)
        if b is None:
            continue
        x, y, z = fr.coords(b)
        inside = (ellipsoid_sdf(x, y, z, c, ax) < 0) & ~anatomy.intracranial[b] \
            & (sdf[b] > csf + rng.uniform(0.5, 1.5)) & (anatomy.tissue[b] != T["eye"])
        anatomy.tissue[b][inside] = T["air"]
        centres.append([float(v) for v in c])
    return centres


def calcification_specs(anatomy: Anatomy, rng: np.random.Generator, existing) -> list[LesionSpec]:
    """Choroid-plexus (atrium of the lateral ventricles) and pineal calcifications as lesions (kind
    "calcification", chi -0.2...-1.5 ppm), kept 3 mm clear of the ``existing`` lesion specs."""
    lm, s = anatomy.landmarks, anatomy.landmarks["scale"]
    sites = []
    both = rng.random() < 0.7
    first = "right" if rng.random() < 0.5 else "left"
    for side in (("right", "left") if both else (first,)):
        vp, vr = lm["ventricles"][f"body_{side}"]
        sites.append(vp[4] + rng.normal(0, 0.25 * vr[4], 3))  # glomus of the choroid plexus (atrium)
    if rng.random() < 0.7:
        sites.append(np.array([0.0, -30.0, 2.0]) * s + rng.normal(0, 1.0, 3))  # pineal
    out: list[LesionSpec] = []
    fr = anatomy.frame
    margin = 2.0 + 6.0 / np.asarray(fr.voxel_size)  # as for the other lesions: well inside the grid
    for c in sites:
        r = 0.5 * float(np.exp(rng.uniform(np.log(2.0), np.log(8.0))))
        v = fr.head_to_vox(c)
        if np.any(v < margin) or np.any(v > np.asarray(fr.shape) - 1 - margin):
            continue
        if any(np.linalg.norm(c - o.centres_head[0]) < r + o.radii_mm[0] + 3.0 for o in list(existing) + out):
            continue
        cs, rs = _blob(rng, c, r, irregular_p=0.8)
        out.append(LesionSpec("calcification", cs, rs, -float(rng.uniform(0.2, 1.5)), "deep",
                              pd=rng.uniform(0.02, 0.4), t1=rng.uniform(0.4, 1.0),
                              r2s_3t=float(np.exp(rng.uniform(np.log(60.0), np.log(350.0))))))
    return out


def flow_void_occupancy(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Occupancy (float32 0..1) of large arteries seen as flow voids: straight and gently bent tubes of 1.5-4 mm
    in the basal cisterns (around the brainstem) and along the Sylvian fissures, inside the intracranial mask."""
    fr, s = anatomy.frame, anatomy.landmarks["scale"]
    occ = np.zeros(fr.shape, np.float32)
    tubes = []
    for side in (1, -1):  # posterior cerebral / superior cerebellar arteries around the midbrain, Sylvian MCA
        tubes.append(np.array([[side * 3, -12, -22], [side * 12, -18, -18], [side * 18, -30, -10]]) * s)
        tubes.append(np.array([[side * 14, 6, -18], [side * 30, 6, -14], [side * 40, 0, -6]]) * s)
    tubes.append(np.array([[0, -8, -70], [0, -12, -45], [0, -12, -26]]) * s)  # basilar / vertebral
    for _ in range(int(rng.integers(2, 6))):  # further segments of random orientation near the skull base
        p0 = np.array([rng.uniform(-35, 35), rng.uniform(-30, 25), rng.uniform(-30, -5)]) * s
        d = rng.normal(size=3)
        tubes.append(np.array([p0, p0 + d / np.linalg.norm(d) * rng.uniform(10, 30)]))
    for pts in tubes:
        pts = pts + rng.normal(0, 1.5, 3)
        paint_tube(fr, occ, pts, 0.5 * rng.uniform(1.5, 4.0), soft=True)
    return np.where(anatomy.intracranial, occ, 0).astype(np.float32)


def add_iron_nuclei(anatomy: Anatomy, rng: np.random.Generator, chi_tissue: np.ndarray) -> int:
    """Irregular iron-rich deep nuclei: patchy chi (+0...+0.15 ppm, a smooth random field of 3-6 mm correlation
    thresholded at its median) added to the iron-rich nuclei in ``chi_tissue`` (ppm, in place), plus 2-8 small
    iron spots.  Returns the number of spots."""
    from cmbdetect.pipeline.simulate.veins_tortuous import add_iron_spots

    nuclei = np.isin(anatomy.tissue, [T[k] for k in ("pallidum", "putamen", "nigra", "red_nucleus", "dentate")])
    if nuclei.any():
        idx = np.nonzero(nuclei)
        x, y, z = (a[idx] for a in anatomy.frame.coords())
        patch = LatticeNoise(rng, rng.uniform(3.0, 6.0))(x, y, z)
        chi_tissue[idx] += np.float32(rng.uniform(0.05, 0.15)) * np.clip(patch, 0, 2).astype(np.float32) / 2
    return add_iron_spots(anatomy, rng, chi_tissue, n=int(rng.integers(2, 9)))


def noise_dots(rng: np.random.Generator, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isolated dark voxels (flat indices into the grid, 2-10 per 10,000 brain voxels) and their complex gain
    (magnitude 0-0.35, random phase), applied to every echo's signal after the noise."""
    idx = np.flatnonzero(brain)
    n = int(min(len(idx), max(1, rng.uniform(2e-4, 1e-3) * len(idx))))
    pick = rng.choice(idx, n, replace=False) if n else idx[:0]
    gain = (rng.uniform(0.0, 0.35, n) * np.exp(1j * rng.uniform(-np.pi, np.pi, n))).astype(np.complex64)
    return pick, gain


def brain_edge(anatomy: Anatomy, mm: float = 6.0) -> np.ndarray:
    """Intracranial voxels within ``mm`` of the edge of the intracranial mask (where air artefacts bite)."""
    it = max(1, int(round(mm / float(np.min(anatomy.frame.voxel_size)))))
    return anatomy.intracranial & ~ndimage.binary_erosion(anatomy.intracranial, iterations=it)
