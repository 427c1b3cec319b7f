"""Multi-echo field and R2* fits: known field/R2*/offset with noise, single echo, real 3-echo crop."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T, hz_to_ppm
from cmbdetect.physics.echoes import (MultiEchoFit, early_echo_coherence, fit_multi_echo, fit_r2star, phase_coherence,
                                     spatial_phase_coherence)
from cmbdetect.physics.mask import reliable_field_mask
from cmbdetect.physics.errors import InputError

VS = (1.0, 1.0, 1.5)
B0 = 3.0


def _grid(shape):
    idx = np.indices(shape).astype(float)
    c = (np.asarray(shape) - 1) / 2.0
    return [(idx[n] - c[n]) * VS[n] for n in range(3)]


def make_echoes(rng, te, *, shape=(48, 52, 36), snr=60.0, field_scale=1.0):
    """Known smooth field (Hz, several wraps at the last echo), R2* map, smooth receiver offset."""
    x, y, z = _grid(shape)
    mask = (x / 21) ** 2 + (y / 23) ** 2 + (z / 24) ** 2 <= 1
    field_hz = field_scale * (12 * x + 10 * y + 7 * z + 0.1 * (x**2 + y**2) + 15 * np.sin(x / 5.0))
    r2s = 20.0 + 15.0 * (x > 0) + 10 * np.cos(y / 7.0)
    offset = 0.8 + 0.03 * x - 0.02 * y
    s0 = 1.0
    te = np.asarray(te)
    mag = s0 * np.exp(-r2s[None] * te[:, None, None, None])
    phase_true = offset[None] + 2 * np.pi * field_hz[None] * te[:, None, None, None]
    z_ = mag * np.exp(1j * phase_true)
    sigma = s0 / snr
    z_ = z_ + sigma * (rng.standard_normal(z_.shape) + 1j * rng.standard_normal(z_.shape))
    mag_n = np.abs(z_).astype(np.float32)
    ph_n = np.angle(z_).astype(np.float32)
    mag_n[:, ~mask] *= 0.05
    return mag_n, ph_n, mask, field_hz, r2s, offset


@pytest.mark.parametrize("te", [(0.005, 0.010, 0.015), (0.004, 0.009, 0.014, 0.019), (0.004, 0.010, 0.020)])
@pytest.mark.parametrize("unwrap", ["laplacian", "exact"])
def test_multi_echo_recovers_field_r2star_offset(rng, te, unwrap):
    mag, ph, mask, f_true, r2_true, off_true = make_echoes(rng, te)
    assert np.ptp((f_true * 2 * np.pi * te[-1])[mask]) / (2 * np.pi) > 10  # > 10 wraps, last echo
    fit = fit_multi_echo(mag, ph, te, B0, mask=mask, voxel_size=VS, unwrap=unwrap)
    assert isinstance(fit, MultiEchoFit)
    err = (fit.field_hz - f_true)[mask]
    if unwrap == "laplacian":
        err -= np.median(err)  # Laplacian unwrapping: up to a constant
    uniform = np.allclose(np.diff(te), np.diff(te)[0])
    # Hz; the Laplacian path uses only the first echo pair when the spacing is not uniform
    tol = 0.5 if (uniform or unwrap == "exact") else 0.8
    assert np.median(np.abs(err)) < tol
    assert np.mean(np.abs(err) < 4 * tol) > 0.99
    np.testing.assert_allclose(fit.field_ppm, hz_to_ppm(fit.field_hz, B0), rtol=1e-5, atol=1e-9)
    r2_err = (fit.r2star - r2_true)[mask]
    assert np.median(np.abs(r2_err)) < 3.0       # 1/s (noise-limited at SNR 60 over 10-15 ms)
    assert fit.r2star.min() >= 0 and fit.r2star.max() <= 1000
    if unwrap == "exact":
        off_err = np.angle(np.exp(1j * (fit.phase_offset - off_true)))[mask]
        assert np.median(np.abs(off_err)) < 0.05
    assert np.all(fit.field_hz[~mask] == 0)
    assert fit.magnitude.shape == mask.shape


def test_single_echo_is_phase_over_te(rng):
    te = 0.02
    shape = (24, 26, 20)
    x, y, z = _grid(shape)
    field_ppm = 0.02 * np.sin(x / 6.0) + 0.01 * z / 10  # small: no wraps
    phase = 2 * np.pi * GAMMA_BAR_HZ_PER_T * B0 * field_ppm * 1e-6 * te
    assert np.abs(phase).max() < np.pi
    mag = np.ones(shape, np.float32)
    mask = np.ones(shape, bool)
    fit = fit_multi_echo(mag, phase, [te], B0, mask=mask, voxel_size=VS, unwrap="none")
    np.testing.assert_allclose(fit.field_ppm, field_ppm, atol=1e-6)
    np.testing.assert_allclose(fit.field_hz, phase / (2 * np.pi * te), rtol=1e-5, atol=1e-4)
    assert fit.r2star is None and np.all(fit.phase_offset == 0)
    # the same through the Laplacian and exact unwrappers (3D input = one echo)
    for method in ("laplacian", "exact"):
        f2 = fit_multi_echo(mag, phase.astype(np.float32), te, B0, mask=mask, voxel_size=VS, unwrap=method)
        np.testing.assert_allclose(f2.field_ppm, field_ppm, atol=2e-4)


def test_single_echo_with_wraps(rng):
    te = (0.02,)
    mag, ph, mask, f_true, _, off = make_echoes(rng, te, snr=200.0, field_scale=0.5)
    fit = fit_multi_echo(mag, ph, te, B0, mask=mask, voxel_size=VS, unwrap="exact")
    # offset not separable: field = (phase incl. offset)/(2 pi TE), up to a global 2 pi / TE
    expected = f_true + off / (2 * np.pi * te[0])
    err = (fit.field_hz - expected)[mask]
    err -= np.round(np.median(err) * te[0]) / te[0]
    assert np.median(np.abs(err)) < 0.5


def test_r2star_fit_direct(rng):
    te = np.array([0.004, 0.012, 0.020, 0.028])
    r2 = np.full((6, 6, 6), 40.0)
    r2[:3] = 900.0
    mag = 2.0 * np.exp(-r2[None] * te[:, None, None, None])
    out = fit_r2star(mag, te)
    np.testing.assert_allclose(out, r2, rtol=1e-4)
    assert fit_r2star(mag * 0 + 1.0, te).max() == 0  # no decay
    clipped = fit_r2star(np.exp(-1500 * te)[:, None, None, None] * np.ones((4, 3, 3, 3)), te)
    assert clipped.max() == 1000
    with pytest.raises(InputError):
        fit_r2star(mag[:1], te[:1])


def test_bad_inputs(rng):
    mag, ph, mask, *_ = make_echoes(rng, (0.005, 0.01), shape=(8, 8, 8))
    with pytest.raises(InputError, match="echo times"):
        fit_multi_echo(mag, ph, (0.01, 0.005), B0, mask=mask, voxel_size=VS)
    with pytest.raises(InputError, match="echo"):
        fit_multi_echo(mag, ph, (0.01,), B0, mask=mask, voxel_size=VS)
    with pytest.raises(InputError, match="tesla"):
        fit_multi_echo(mag, ph, (0.005, 0.01), 3000.0, mask=mask, voxel_size=VS)
    with pytest.raises(InputError, match="unwrapping"):
        fit_multi_echo(mag, ph, (0.005, 0.01), B0, mask=mask, voxel_size=VS, unwrap="magic")
    with pytest.raises(InputError, match="mask"):
        fit_multi_echo(mag, ph, (0.005, 0.01), B0, mask=np.zeros((8, 8, 8), bool), voxel_size=VS)


@pytest.mark.parametrize("unwrap", ["laplacian", "exact"])
def test_real_three_echo_crop(shared_data, unwrap):
    import nibabel as nib

    folder = shared_data / "real" / "gre-3echo-crop"
    if not (folder / "Phase.nii.gz").exists():
        pytest.skip(f"{folder} missing")
    from cmbdetect.physics.mask import brain_mask
    from cmbdetect.physics.phase import rescale_phase

    img = nib.load(str(folder / "Mag.nii.gz"))
    mag = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), -1, 0)
    raw = np.moveaxis(np.asarray(nib.load(str(folder / "Phase.nii.gz")).dataobj, dtype=np.float32), -1, 0)
    phase = rescale_phase(raw, units="scale:0.0036744")
    vs = img.header.get_zooms()[:3]
    mask = brain_mask(np.sqrt((mag**2).sum(0)), vs)
    fit = fit_multi_echo(mag, phase, (0.004, 0.008, 0.012), 3.0, mask=mask, voxel_size=vs, unwrap=unwrap)
    assert np.all(np.isfinite(fit.field_ppm)) and np.all(np.isfinite(fit.r2star))
    assert np.abs(fit.field_ppm[mask]).max() < 20  # ppm: physiological, not a wrapping artefact
    assert 0 < np.median(fit.r2star[mask]) < 100   # 1/s, typical brain at 3 T
    # the fitted model re-wraps onto the measured later echoes where the signal is good
    model = fit.phase_offset + 2 * np.pi * fit.field_hz * 0.012
    resid = np.abs(np.angle(np.exp(1j * (model - phase[2]))))[mask]
    assert np.median(resid) < 0.3


def test_phase_coherence_hand_values(rng):
    te = np.array([0.005, 0.010, 0.015, 0.020])
    omega = np.array([100.0, -300.0])
    offset = np.array([0.3, -1.0])
    mag = np.ones((4, 2))
    on_line = offset + omega * te[:, None] + 2 * np.pi * rng.integers(-3, 4, size=(4, 2))  # 2*pi jumps allowed
    np.testing.assert_allclose(phase_coherence(mag, on_line, te, omega, offset), 1.0, atol=1e-6)
    # two echoes half a cycle off the line: the four unit phasors cancel pairwise
    off = on_line.copy()
    off[2:] += np.pi
    np.testing.assert_allclose(phase_coherence(mag, off, te, omega, offset), 0.0, atol=1e-6)
    # random phases: about 1/sqrt(E)
    n = 20000
    rnd = phase_coherence(np.ones((4, n)), rng.uniform(-np.pi, np.pi, (4, n)), te, np.zeros(n), np.zeros(n))
    assert 0.4 < rnd.mean() < 0.5
    # spatial: a smooth phase ramp is coherent, noise is not
    ramp = np.indices((12, 12, 12))[0] * 0.2
    assert spatial_phase_coherence(np.ones(ramp.shape), ramp)[3:-3, 3:-3, 3:-3].min() > 0.97
    assert spatial_phase_coherence(np.ones(ramp.shape), rng.uniform(-np.pi, np.pi, ramp.shape)).mean() < 0.35


def test_multi_echo_coherence_marks_a_void_and_the_mask_drops_only_surface_zones(rng):
    """Fit on a 3-echo box: coherence ~1 where the phase is linear in TE, low where the signal is noise.  The
    reliability mask drops a noisy zone at the surface and keeps (fills) a noisy lesion void inside."""
    shape = (40, 40, 30)
    te = np.array([0.005, 0.010, 0.015])
    idx = np.indices(shape).astype(float)
    brain = np.zeros(shape, bool)
    brain[4:36, 4:36, 4:26] = True
    f_hz = 20.0 * np.sin(idx[0] / 9.0) + 5.0
    mag = np.where(brain, 1.0, 0.0)[None].repeat(3, 0)
    phase = 0.4 + 2 * np.pi * f_hz[None] * te[:, None, None, None]
    surface_zone = brain & (idx[0] < 9)  # bad at the surface (e.g. next to a sinus)
    void = (idx[0] - 20) ** 2 + (idx[1] - 20) ** 2 + (idx[2] - 15) ** 2 <= 9  # a lesion void inside
    noisy = surface_zone | void
    phase = np.where(noisy[None], rng.uniform(-np.pi, np.pi, (3, *shape)), phase)
    mag = np.where(noisy[None], 0.1, mag)
    fit = fit_multi_echo(mag, np.angle(np.exp(1j * phase)), te, 3.0, mask=brain, voxel_size=(1, 1, 1))
    q = fit.coherence
    assert q.shape == shape and np.median(q[brain & ~noisy]) > 0.99
    assert np.median(q[noisy]) < 0.7
    ok = reliable_field_mask(brain, q, threshold=0.7)
    assert ok[20, 20, 15] and ok[void].all()  # the enclosed void stays
    assert ok[surface_zone].mean() < 0.3  # the surface zone goes (but random phases pass now and then)
    assert (ok <= brain).all() and ok[brain & ~noisy].mean() > 0.99
    with pytest.raises(InputError):
        reliable_field_mask(brain, np.zeros(shape), threshold=0.5)
    single = fit_multi_echo(mag[:1], np.angle(np.exp(1j * phase[:1])), te[:1], 3.0, mask=brain, voxel_size=(1, 1, 1))
    assert single.coherence is None  # one echo: no temporal coherence (spatial is opt-in in the chain)


def test_early_echo_coherence_ignores_dephased_late_echoes(rng):
    """A zone whose late echoes are noise (intra-voxel dephasing at long TE) is incoherent over all echoes and
    coherent over the early ones, measured against the same fitted line; outside the mask it is 0."""
    shape = (24, 24, 16)
    te = np.array([0.005, 0.010, 0.015, 0.020, 0.025])
    brain = np.zeros(shape, bool)
    brain[2:22, 2:22, 2:14] = True
    f_hz = np.full(shape, 12.0)
    phase = 0.3 + 2 * np.pi * f_hz[None] * te[:, None, None, None]
    mag = np.ones((5, *shape))
    zone = np.zeros(shape, bool)
    zone[6:12, 6:12, 4:10] = True
    late = np.zeros((5, *shape), bool)
    late[3:] = zone
    phase = np.where(late, rng.uniform(-np.pi, np.pi, phase.shape), phase)
    mag = np.where(late, 0.05, mag)  # little signal left, as in a real dephased void
    wrapped = np.angle(np.exp(1j * phase))
    fit = fit_multi_echo(mag, wrapped, te, 7.0, mask=brain, voxel_size=(1, 1, 1))
    early = early_echo_coherence(fit, mag[:3], wrapped[:3], te[:3], brain)
    assert np.median(early[zone]) > 0.95
    assert np.median(early[brain & ~zone]) > 0.99
    assert (early[~brain] == 0).all()
    # every echo, with the dephased ones at full magnitude, is far less coherent there
    full = phase_coherence(np.ones((5, int(zone.sum()))), wrapped[:, zone], te, 2 * np.pi * fit.field_hz[zone],
                           fit.phase_offset[zone])
    assert np.median(full) < 0.8
