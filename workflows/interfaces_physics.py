"""Nipype interface around the physics chain: acquisition files -> physics maps (bundle + NIfTI maps)."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, TraitedSpec, isdefined, traits)

from cmbdetect.physics.settings import (BACKGROUND_CHOICES, DEFAULT_PHYSICS, INVERSION_CHOICES,
                                        UNWRAP_CHOICES)
from cmbdetect.pipeline.io.maps import save_maps_bundle
from cmbdetect.workflows.interfaces import CmbInterface, load_acquisition, load_mask, progress

#: NIfTI maps written by :func:`write_output_maps` (``<name>.nii.gz``, as ``pipeline.maps_io`` names them).
MAP_NAMES = ("chimap", "localfield", "brainmask", "swi", "mip", "r2star")


class _ComputeMapsInputSpec(BaseInterfaceInputSpec):
    mag_file = File(exists=True, mandatory=True, desc="magnitude NIfTI, 3D or 4D (echoes last)")
    phase_file = File(exists=True, mandatory=True,
                      desc="phase NIfTI in radians, project sign convention, same grid as mag_file")
    acq_json = File(exists=True, mandatory=True, desc="JSON with te (s, one per echo) and b0 (T)")
    mask_file = File(exists=True, desc="optional brain mask on the same grid (non-zero = brain)")
    unwrap = traits.Enum(DEFAULT_PHYSICS.unwrap, *[m for m in UNWRAP_CHOICES if m != DEFAULT_PHYSICS.unwrap],
                         usedefault=True, desc="phase unwrapping method")
    background = traits.Enum(DEFAULT_PHYSICS.background,
                             *[m for m in BACKGROUND_CHOICES if m != DEFAULT_PHYSICS.background],
                             usedefault=True, desc="background field removal method")
    inversion = traits.Enum(DEFAULT_PHYSICS.inversion,
                            *[m for m in INVERSION_CHOICES if m != DEFAULT_PHYSICS.inversion],
                            usedefault=True, desc="dipole inversion method")
    swi_slab_mm = traits.Float(DEFAULT_PHYSICS.swi_slab_mm, usedefault=True, desc="minimum-intensity projection slab (mm)")
    label = traits.Str("", usedefault=True, nohash=True,
                       desc="subject label for progress lines (not part of the cache key)")


class _ComputeMapsOutputSpec(TraitedSpec):
    maps_bundle = File(exists=True, desc="all physics maps in one .npz (see pipeline.io.maps.load_maps_bundle)")
    chimap = File(exists=True, desc="susceptibility (ppm)")
    localfield = File(exists=True, desc="local field (ppm of B0)")
    brainmask = File(exists=True, desc="brain mask used (uint8)")
    swi = File(exists=True, desc="susceptibility-weighted image")
    mip = File(exists=True, desc="minimum-intensity projection of the SWI")
    r2star = File(exists=True, desc="R2* (1/s), multi-echo only")


class ComputeMaps(CmbInterface):
    """Local field, QSM, SWI and mIP of one acquisition (``physics.chain.compute_physics_maps``).

    The magnitude/phase files must share shape and affine; a mask, when given, must lie on the same
    grid (otherwise :class:`InputError`).  Outputs are written in the node's own folder.
    """

    input_spec = _ComputeMapsInputSpec
    output_spec = _ComputeMapsOutputSpec

    def _run(self, cwd: Path) -> None:
        inputs = self.inputs
        acq = load_acquisition(inputs.mag_file, inputs.phase_file, inputs.acq_json)
        mask = None
        if isdefined(inputs.mask_file):
            mask = load_mask(inputs.mask_file, shape=acq.shape, affine=acq.affine)

        from cmbdetect.physics.chain import compute_physics_maps

        progress(inputs.label, f"computing physics maps ({acq.n_echoes} echo(es), "
                               f"{'x'.join(map(str, acq.shape))} voxels)")
        maps = compute_physics_maps(mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0,
                                    affine=acq.affine, mask=mask, unwrap=inputs.unwrap,
                                    background=inputs.background, inversion=inputs.inversion,
                                    swi_slab_mm=inputs.swi_slab_mm)
        self._results["maps_bundle"] = str(save_maps_bundle(maps, cwd / "maps.npz"))
        for name, path in write_output_maps(maps, cwd).items():
            self._results[name] = str(path)


def write_output_maps(maps, out_dir: Path) -> dict[str, Path]:
    """The NIfTI maps handed on (``<name>.nii.gz``, names as :data:`MAP_NAMES`; ``r2star`` only for
    multi-echo).  The other arrays (chi+/chi-, magnitude, total field) travel in the maps bundle only
    (writing all ten compressed maps took longer than the rest of the node's I/O together)."""
    from cmbdetect.pipeline.io.atomic import save_nifti

    arrays = {"chimap": maps.chi_ppm, "localfield": maps.local_field_ppm, "brainmask": maps.mask,
              "swi": maps.swi, "mip": maps.mip, "r2star": maps.r2star}
    return {name: save_nifti(arr, maps.affine, out_dir / f"{name}.nii.gz")
            for name, arr in arrays.items() if arr is not None}
