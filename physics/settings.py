"""The physics settings of one subject run: one frozen definition of the method names and their defaults.

The command line offers :data:`UNWRAP_CHOICES`, :data:`BACKGROUND_CHOICES` and :data:`INVERSION_CHOICES`
(from the method tables of ``physics.echoes``, ``physics.chain`` and ``physics.inversion``); the workflow
interfaces and ``init_*_wf`` factories take their defaults from :data:`DEFAULT_PHYSICS`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .chain import BACKGROUND_METHODS
from .echoes import UNWRAP_METHODS
from .inversion import METHODS as INVERSION_METHODS

#: Unwrapping methods offered to users (the validated ones of ``UNWRAP_METHODS``).
UNWRAP_CHOICES: tuple[str, ...] = tuple(m for m in UNWRAP_METHODS if m in ("laplacian", "exact"))
BACKGROUND_CHOICES: tuple[str, ...] = tuple(BACKGROUND_METHODS)
INVERSION_CHOICES: tuple[str, ...] = tuple(INVERSION_METHODS)


@dataclass(frozen=True)
class PhysicsSettings:
    """Methods of the physics chain (``physics.chain.compute_physics_maps``): phase ``unwrap``, ``background``
    field removal, dipole ``inversion`` (``"default"`` = ``physics.inversion.DEFAULT_METHOD``) and the SWI
    minimum-intensity projection slab ``swi_slab_mm`` (mm)."""

    unwrap: str = "laplacian"
    background: str = "vsharp"
    inversion: str = "default"
    swi_slab_mm: float = 8.0

    def __post_init__(self):
        for name, choices in (("unwrap", UNWRAP_CHOICES), ("background", BACKGROUND_CHOICES),
                              ("inversion", INVERSION_CHOICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} {getattr(self, name)!r}: use one of {', '.join(choices)}")
        if not self.swi_slab_mm > 0:
            raise ValueError(f"swi_slab_mm must be positive, got {self.swi_slab_mm}")

    def as_dict(self) -> dict:
        return asdict(self)


#: The defaults of every physics option (CLI, workflow factories, interfaces).
DEFAULT_PHYSICS = PhysicsSettings()
