"""Preview mosaic of a simulated subject: magnitude, wrapped phase and true chi in three planes (PNG).

Planes go through the first microbleed (else the first lesion, else the volume centre); lesions
within half a slice of a plane are circled (red microbleed, cyan calcification).  Matplotlib Agg only.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cmbdetect.physics.geometry import voxel_sizes
from cmbdetect.pipeline.io.atomic import atomic_file


def _planes(vol, ijk):
    i, j, k = ijk
    return [vol[:, :, k].T, vol[:, j, :].T, vol[i, :, :].T]


def write_preview(subject, path: Path | str, *, echo: int = 0, dpi: int = 80) -> Path:
    """Write a 3x3 PNG mosaic (rows: magnitude, phase [rad], true chi [ppm]; columns: planes k, j, i of
    the voxel grid) of a :class:`~cmbdetect.pipeline.simulate.subject.SimulatedSubject`; returns the path.
    Written to a temporary name and renamed into place."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acq, truth = subject.acq, subject.truth
    vs = voxel_sizes(acq.affine)
    les = truth.of_kind("microbleed") or truth.lesions
    ijk = [int(round(v)) for v in les[0].centre_vox] if les else [s // 2 for s in acq.shape]
    ijk = [min(max(v, 0), s - 1) for v, s in zip(ijk, acq.shape)]
    mag = acq.mag[echo]
    hi = float(np.percentile(mag, 99.5)) or 1.0
    chi_lim = 0.25
    rows = [("magnitude", mag, dict(cmap="gray", vmin=0, vmax=hi)),
            ("phase (rad)", acq.phase[echo], dict(cmap="gray", vmin=-np.pi, vmax=np.pi)),
            ("true chi (ppm)", truth.chi_ppm, dict(cmap="gray", vmin=-chi_lim, vmax=chi_lim))]
    aspects = [vs[1] / vs[0], vs[2] / vs[0], vs[2] / vs[1]]
    fig, axes = plt.subplots(3, 3, figsize=(13, 12))
    for r, (name, vol, kw) in enumerate(rows):
        for c, (img, asp) in enumerate(zip(_planes(vol, ijk), aspects)):
            ax = axes[r, c]
            ax.imshow(img, origin="lower", aspect=asp, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(["axial (k=%d)", "coronal (j=%d)", "sagittal (i=%d)"][c] % ijk[2 - c])
            if c == 0:
                ax.set_ylabel(name)
            for les_ in truth.lesions:
                v = les_.centre_vox
                if abs(v[2 - c] - ijk[2 - c]) <= max(0.5, les_.diameter_mm / 2 / vs[2 - c]):
                    xy = [(v[0], v[1]), (v[0], v[2]), (v[1], v[2])][c]
                    col = "red" if les_.kind == "microbleed" else "cyan"
                    ax.add_patch(plt.Circle(xy, 2.5 + les_.diameter_mm / vs[0], fill=False, color=col, lw=0.8))
    p = subject.params
    fig.suptitle(f"B0 {p.get('b0_t', acq.b0)} T, TE {1000 * acq.te[echo]:.1f} ms, voxel "
                 + "x".join(f"{v:.2f}" for v in vs) + f" mm, SNR {p.get('snr_wm', float('nan')):.0f}, "
                 f"{p.get('n_microbleeds', '?')} microbleeds, {p.get('n_calcifications', '?')} calcifications")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
