"""Nipype interface around the detection models: physics-map bundle -> candidate table."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, isdefined, traits

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.maps import load_maps_bundle
from cmbdetect.workflows.interfaces import CmbInterface, progress


class _DetectInputSpec(BaseInterfaceInputSpec):
    maps_bundle = File(exists=True, mandatory=True, desc="physics maps bundle (.npz) from ComputeMaps")
    model = traits.Str("default", usedefault=True, desc="shipped model name or model folder/file path")
    model_sha256 = traits.Str(desc="SHA-256 the model must have (part of the cache key, so a model "
                                   "replaced in place is not served from the cache); checked at run time")
    prevalence = traits.Float(desc="expected microbleed prevalence for probability calibration (0..1)")
    num_threads = traits.Int(0, usedefault=True, nohash=True,
                             desc="torch CPU threads (0 = library default; not part of the cache key)")
    label = traits.Str("", usedefault=True, nohash=True,
                       desc="subject label for progress lines (not part of the cache key)")


class _DetectOutputSpec(TraitedSpec):
    candidates_tsv = File(exists=True, desc="candidates.tsv (the reader's list, in review order)")
    candidates_json = File(exists=True, desc="candidates.json (its sidecar: columns, selection, rows)")
    candidates_all_tsv = File(exists=True, desc="candidates_all.tsv (every stage-1 candidate, for audit)")
    candidates_all_json = File(exists=True, desc="candidates_all.json (its sidecar)")
    model_info = File(exists=True, desc="model.json: name, sha256 and metadata of the model used")
    n_candidates = traits.Int(desc="number of candidates")
    n_microbleeds = traits.Int(desc="number of candidates labelled microbleed")


def model_description(model: str) -> dict:
    """Name, SHA-256 and metadata of a model (``models.registry.load_model``), JSON-able."""
    from cmbdetect.models.registry import load_model

    loaded = load_model(model)
    metadata = getattr(loaded, "metadata", {}) or {}
    return {"name": str(model), "sha256": str(getattr(loaded, "sha256", "")),
            "version": str(metadata.get("version", "")) if isinstance(metadata, dict) else "",
            "metadata": metadata}


def calls_withheld(maps) -> str | None:
    """Why no candidate of these maps may be labelled microbleed (``maps.meta["calls_withheld"]``: acquisition
    outside the validated range or a failed chi quality check, see ``physics.fitness``), else ``None``."""
    reason = (maps.meta or {}).get("calls_withheld")
    return str(reason) if reason else None


class DetectCandidates(CmbInterface):
    """Stage-1 detector + stage-2 classifier (``models.inference.detect``) on one subject's maps,
    written as a candidate table (``pipeline.candidates.write_candidates``) in the node's folder.  When the maps
    withhold microbleed calls (:func:`calls_withheld`), ``detect`` labels no candidate microbleed."""

    input_spec = _DetectInputSpec
    output_spec = _DetectOutputSpec

    def _run(self, cwd: Path) -> None:
        import torch

        from cmbdetect.models.inference import detect
        from cmbdetect.pipeline.io.atomic import write_json
        from cmbdetect.pipeline.outputs.candidates import candidates_from_detections, write_candidates

        inputs = self.inputs
        if inputs.num_threads > 0:
            torch.set_num_threads(inputs.num_threads)
        maps = load_maps_bundle(inputs.maps_bundle)
        prevalence = inputs.prevalence if isdefined(inputs.prevalence) else None
        withheld = calls_withheld(maps)
        info = model_description(inputs.model)  # checked before detection, not after
        if isdefined(inputs.model_sha256) and inputs.model_sha256 and info["sha256"] != inputs.model_sha256:
            raise InputError(f"model {inputs.model} changed while the pipeline ran (sha256 differs)")
        progress(inputs.label, f"detecting candidates (model {inputs.model})")
        detections = detect(maps, model=inputs.model, prevalence=prevalence, calls_withheld=withheld)
        candidates = candidates_from_detections(detections, affine=maps.affine, mask=maps.mask)
        write_candidates(candidates, cwd)
        self._results["model_info"] = str(write_json(info, cwd / "model.json"))
        self._results["candidates_tsv"] = str(cwd / "candidates.tsv")
        self._results["candidates_json"] = str(cwd / "candidates.json")
        self._results["candidates_all_tsv"] = str(cwd / "candidates_all.tsv")
        self._results["candidates_all_json"] = str(cwd / "candidates_all.json")
        self._results["n_candidates"] = len(candidates)
        self._results["n_microbleeds"] = sum(1 for c in candidates if c.label == "microbleed")
        progress(inputs.label, f"{len(candidates)} candidates, "
                               f"{self._results['n_microbleeds']} labelled microbleed"
                               + (" (microbleed calls withheld: see the warnings)" if withheld else ""))
