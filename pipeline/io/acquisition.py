"""The in-memory form of one GRE/SWI acquisition: the one thing every reader produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import b0_direction, voxel_sizes


@dataclass
class Acquisition:
    """Magnitude + phase of one subject.

    Attributes
    ----------
    mag : float32 ``[E, X, Y, Z]`` magnitude, arbitrary units.
    phase : float32 ``[E, X, Y, Z]`` phase in radians, already in the project's sign convention
        (a paramagnetic source raises the phase: ``phase = +2*pi*gamma_bar*B0*dB*TE``); wrapped or not.
    te : float ``[E]`` echo times in seconds, increasing.
    b0 : main field in tesla.
    affine : 4x4 voxel -> scanner RAS (mm).
    source : provenance (paths, DICOM UIDs, sidecar fields) for reports and DICOM outputs.
    """

    mag: np.ndarray
    phase: np.ndarray
    te: np.ndarray
    b0: float
    affine: np.ndarray
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mag = np.asarray(self.mag, dtype=np.float32)
        self.phase = np.asarray(self.phase, dtype=np.float32)
        if self.mag.ndim == 3:
            self.mag = self.mag[None]
        if self.phase.ndim == 3:
            self.phase = self.phase[None]
        self.te = np.atleast_1d(np.asarray(self.te, dtype=float))
        self.affine = np.asarray(self.affine, dtype=float)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` (one line) if the data cannot be processed."""
        if self.mag.ndim != 4 or self.phase.ndim != 4:
            raise InputError("magnitude and phase must be 3D volumes (or 4D with echoes)")
        if self.mag.shape != self.phase.shape:
            raise InputError(f"magnitude shape {self.mag.shape[1:]}x{self.mag.shape[0]} echoes does not match "
                             f"phase shape {self.phase.shape[1:]}x{self.phase.shape[0]} echoes")
        if min(self.mag.shape[1:]) < 3:
            raise InputError(f"data are 2D (shape {self.mag.shape[1:]}); a 3D volume of at least 3 slices is needed")
        if self.te.size != self.mag.shape[0]:
            raise InputError(f"{self.mag.shape[0]} echoes but {self.te.size} echo times given")
        if not np.all(np.isfinite(self.te)) or np.any(self.te <= 0) or np.any(self.te > 1.0):
            raise InputError(f"echo times must be positive and in seconds, got {self.te.tolist()}")
        if np.any(np.diff(self.te) <= 0):
            raise InputError(f"echo times must increase, got {self.te.tolist()}")
        try:
            self.b0 = float(self.b0)
        except (TypeError, ValueError):
            raise InputError(f"field strength must be a number in tesla, got {self.b0!r}") from None
        if not (np.isfinite(self.b0) and 0.1 <= self.b0 <= 20.0):
            raise InputError(f"field strength must be given in tesla (0.1-20), got {float(self.b0):g}")
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)) \
                or abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise InputError("the image affine is missing or singular")
        if not np.all(np.isfinite(self.mag)) or not np.all(np.isfinite(self.phase)):
            raise InputError("magnitude or phase contains NaN or infinite values")
        if np.abs(self.phase).max() > 2 * np.pi * 1.01 and self.source.get("phase_unwrapped") is not True:
            raise InputError(f"phase range {self.phase.min():.4g}..{self.phase.max():.4g} is not radians; "
                             "use --phase-units or rescale the phase to -pi..pi")

    @property
    def n_echoes(self) -> int:
        return int(self.mag.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mag.shape[1:])

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel edge lengths in mm."""
        return voxel_sizes(self.affine)

    @property
    def b0_dir(self) -> np.ndarray:
        """Unit vector of scanner z (B0) in voxel axes."""
        return b0_direction(self.affine)
