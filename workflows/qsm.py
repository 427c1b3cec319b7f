"""``init_qsm_wf``: acquisition files -> physics maps (local field, QSM, SWI, mIP)."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from cmbdetect.physics.settings import DEFAULT_PHYSICS

from cmbdetect.workflows.interfaces_physics import ComputeMaps

#: Fields of the QSM workflow's outputnode (files).
QSM_OUTPUTS = ("maps_bundle", "chimap", "localfield", "brainmask", "swi", "mip", "r2star")


def init_qsm_wf(*, unwrap: str = DEFAULT_PHYSICS.unwrap, background: str = DEFAULT_PHYSICS.background,
                inversion: str = DEFAULT_PHYSICS.inversion,
                swi_slab_mm: float = DEFAULT_PHYSICS.swi_slab_mm, mem_gb: float = 2.0, label: str = "",
                name: str = "qsm_wf") -> pe.Workflow:
    """Physics maps of one subject.

    Inputs (``inputnode``): ``mag_file``, ``phase_file`` (4D NIfTI, echoes last, phase in radians in the
    project's sign convention), ``acq_json`` (``te`` s, ``b0`` T), optional ``mask_file``.
    Outputs (``outputnode``): :data:`QSM_OUTPUTS` (``maps_bundle`` .npz + NIfTI maps, chi in ppm).

    ``unwrap``/``background``/``inversion`` select the methods of ``physics.chain``; ``swi_slab_mm`` is
    the mIP slab thickness (mm); ``mem_gb`` is the memory estimate of the maps node (for MultiProc).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["mag_file", "phase_file", "acq_json", "mask_file"],
                                              mandatory_inputs=False), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(QSM_OUTPUTS), mandatory_inputs=False),
                         name="outputnode")
    compute = pe.Node(ComputeMaps(unwrap=unwrap, background=background, inversion=inversion,
                                  swi_slab_mm=swi_slab_mm, label=label),
                      name="compute_maps", mem_gb=mem_gb)
    wf.connect([
        (inputnode, compute, [("mag_file", "mag_file"), ("phase_file", "phase_file"),
                              ("acq_json", "acq_json"), ("mask_file", "mask_file")]),
        (compute, outputnode, [(f, f) for f in QSM_OUTPUTS]),
    ])
    return wf
