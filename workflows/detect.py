"""``init_detect_wf``: physics maps -> candidate table (stage-1 detector + stage-2 classifier)."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from cmbdetect.workflows.interfaces_detect import DetectCandidates

DETECT_OUTPUTS = ("candidates_tsv", "candidates_json", "candidates_all_tsv", "candidates_all_json", "model_info",
                  "n_candidates", "n_microbleeds")


def init_detect_wf(*, model: str = "default", model_sha256: str | None = None,
                   prevalence: float | None = None, omp_nthreads: int = 1, mem_gb: float = 2.0,
                   label: str = "", name: str = "detect_wf") -> pe.Workflow:
    """Candidate detection on one subject's maps.

    ``model`` is a shipped model name or a model path (``models.registry.load_model``);
    ``model_sha256`` (optional) pins its content (cache key + run-time check); ``prevalence``
    (0..1, ``None`` = the model's own) recalibrates class probabilities; ``omp_nthreads`` bounds the
    torch threads of the node (so parallel subjects do not oversubscribe the CPUs).
    Inputs: ``maps_bundle``.  Outputs: :data:`DETECT_OUTPUTS`.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["maps_bundle"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(DETECT_OUTPUTS), mandatory_inputs=False),
                         name="outputnode")
    detect = pe.Node(DetectCandidates(model=str(model), num_threads=omp_nthreads, label=label),
                     name="detect", mem_gb=mem_gb, n_procs=omp_nthreads)
    if prevalence is not None:
        detect.inputs.prevalence = float(prevalence)
    if model_sha256:
        detect.inputs.model_sha256 = str(model_sha256)
    wf.connect([
        (inputnode, detect, [("maps_bundle", "maps_bundle")]),
        (detect, outputnode, [(f, f) for f in DETECT_OUTPUTS]),
    ])
    return wf
