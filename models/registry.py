"""Model registry: named models shipped in ``models/weights/<folder>/`` and models saved anywhere.

A model folder holds ``detector.pt`` and ``classifier.pt`` (``state_dict`` s of plain tensors, loaded with
``torch.load(weights_only=True)``) and ``metadata.json`` (architecture, channels, spacing, normalisation,
thresholds, calibration, feature standardisation, training command/seed/data, metrics).  Names are looked
up in :data:`REGISTRY` only (a fixed dict, never a folder scan); anything else is taken as a path.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmbdetect.models.channels import ALL_CHANNELS, normalisation_spec
from cmbdetect.models.detection import CLASSES, reader_thresholds
from cmbdetect.models.networks import CentreNet3D, PatchClassifier
from cmbdetect.models.spec import ModelSpec, model_spec
from cmbdetect.physics.constants import (MICROBLEED_MAX_CHI_PPM, MICROBLEED_MAX_DIAMETER_MM,
                                        MICROBLEED_MAX_MOMENT_PPM_MM3, VEIN_CONTINUATION_FACTOR, VEIN_FIT_MIN_R2,
                                        VEIN_FIT_R2_MARGIN, VEIN_MIN_CONTINUATION_MM, VEIN_MIN_ONE_SIDED_MM,
                                        VEIN_ONE_SIDED_FACTOR)
from cmbdetect.physics.errors import InputError

#: Folder holding the shipped models.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Shipped model names -> folder under :data:`WEIGHTS_DIR`.
REGISTRY: dict[str, str] = {"default": "default"}
#: Metadata format version.
FORMAT_VERSION = 2
WEIGHT_FILES = ("detector.pt", "classifier.pt")
#: What :func:`cmbdetect.models.classifier.physics_gate` does (recorded in each model's metadata).
PHYSICS_GATE = ("a candidate whose integrated chi and dipole sign are both negative (diamagnetic) cannot be called "
                "microbleed: its microbleed probability moves to calcification; nor can one whose integrated chi "
                f"exceeds the largest moment of a microbleed ({MICROBLEED_MAX_DIAMETER_MM:g} mm at "
                f"{MICROBLEED_MAX_CHI_PPM:g} ppm, about {MICROBLEED_MAX_MOMENT_PPM_MM3:.0f} ppm mm^3): it moves to other")
#: What :func:`cmbdetect.models.classifier.vein_gate` does (recorded in each model's metadata; metadata
#: ``inference.vein_gate`` false turns it off).
VEIN_GATE = ("a candidate with microbleed probability >= 0.05 after stage 2 is measured in mm on the native grid "
             "(models/features.vein_features): its magnitude void and its positive chi are followed along their "
             "axis by a ridge tracker, and its local field is fitted by a magnetised sphere and by an infinite "
             "cylinder of free axis. It cannot be called microbleed, and its microbleed probability moves to vein, "
             "when its magnitude void goes on both ways for at least "
             f"{VEIN_CONTINUATION_FACTOR:g} times its width across the axis and at least "
             f"{VEIN_MIN_CONTINUATION_MM:g} mm, or one way for at least {VEIN_ONE_SIDED_FACTOR:g} times its width and "
             f"at least {VEIN_MIN_ONE_SIDED_MM:g} mm, unless it holds a positive chi spot that does not go on "
             f"({VEIN_CONTINUATION_FACTOR:g} widths: a bleed, also beside a vein), or when the "
             f"cylinder explains at least {VEIN_FIT_R2_MARGIN:g} more of the field variance (R^2) than the sphere "
             f"and at least {VEIN_FIT_MIN_R2:g} of it: a microbleed is an isolated ball, a vein a tube that goes on")
#: Physics features fed to stage 2 (keys of ``physics.sources.lesion_features``).
FEATURE_NAMES: tuple[str, ...] = ("integrated_chi_ppm_mm3", "mean_chi_ppm", "dipole_sign", "dipole_corr", "diameter_mm",
                                  "volume_mm3", "elongation", "sphericity", "blooming_ratio", "void_mean_chi_ppm",
                                  "chi_available")


@dataclass
class LoadedModel:
    """Both stages in eval mode, their metadata, the folder and the sha256 of the model files."""

    detector: CentreNet3D
    classifier: PatchClassifier
    metadata: dict
    sha256: str
    path: Path
    #: for an ensemble folder: its member models (``detector``/``classifier`` are then the first member's)
    members: list = field(default_factory=list)
    #: the typed spec inference reads (:func:`cmbdetect.models.spec.model_spec`), built from ``metadata`` at load
    spec: ModelSpec | None = None

    def __post_init__(self):
        if self.spec is None:
            self.spec = model_spec(self.metadata, source=self.path / "metadata.json",
                                   members=tuple(m.spec for m in self.members))

    def with_metadata(self, metadata: dict) -> "LoadedModel":
        """The same networks with other metadata (a changed setting, for benchmarks and tests): the spec is
        built anew from it, so it is checked as at load."""
        return LoadedModel(self.detector, self.classifier, metadata, self.sha256, self.path, members=self.members)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.path.name))

    @property
    def parts(self) -> list:
        """The models whose outputs are combined: the members of an ensemble, else this model alone."""
        return list(self.members) or [self]


def resolve_model_dir(name_or_path: str | Path = "default") -> Path:
    """Folder of a registered name, or ``name_or_path`` itself; :class:`InputError` if it is no model."""
    key = str(name_or_path)
    folder = WEIGHTS_DIR / REGISTRY[key] if key in REGISTRY else Path(key).expanduser()
    if (folder / "metadata.json").is_file() and _ensemble_members(folder) is not None:
        return folder
    if not (folder / "metadata.json").is_file() or not all((folder / f).is_file() for f in WEIGHT_FILES):
        known = ", ".join(sorted(REGISTRY))
        raise InputError(f"model {key!r} not found: give a registered name ({known}) or a folder with "
                         f"metadata.json, {' and '.join(WEIGHT_FILES)}")
    return folder


def _ensemble_members(folder: Path) -> list[str] | None:
    """Member folder names of an ensemble model folder (``metadata["ensemble"]["members"]``), else None."""
    try:
        meta = json.loads((Path(folder) / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    ens = meta.get("ensemble") if isinstance(meta, dict) else None
    if not isinstance(ens, dict) or not isinstance(ens.get("members"), list) or not ens["members"]:
        return None
    return [str(m) for m in ens["members"]]


def model_sha256(folder: Path) -> str:
    """sha256 over the weight files and metadata.json (fixed order, names included); for an ensemble, over
    its metadata.json and each member's own sha256."""
    h = hashlib.sha256()
    members = _ensemble_members(folder)
    if members is not None:
        for m in members:
            h.update(m.encode())
            h.update(model_sha256(Path(folder) / m).encode())
        h.update((Path(folder) / "metadata.json").read_bytes())
        return h.hexdigest()
    for name in (*WEIGHT_FILES, "metadata.json"):
        h.update(name.encode())
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def build_networks(metadata: dict) -> tuple[CentreNet3D, PatchClassifier]:
    """Untrained networks with the architecture recorded in ``metadata['architecture']``."""
    arch = metadata["architecture"]
    det = CentreNet3D(**arch["detector"])
    cls = PatchClassifier(**arch["classifier"])
    return det, cls


#: Metadata keys every member of an ensemble must share (they see the same inputs).
ENSEMBLE_SHARED_KEYS = ("channels", "spacing", "normalisation", "patch_size", "classes")


def load_model(name_or_path: str | Path = "default") -> LoadedModel:
    """Load a registered model by name or a model folder by path (weights with ``weights_only=True``).
    An ensemble folder (``metadata.json`` with ``ensemble.members``) loads each member folder inside it."""
    folder = resolve_model_dir(name_or_path)
    members = _ensemble_members(folder)
    if members is not None:
        metadata = json.loads((folder / "metadata.json").read_text())
        loaded = [load_model(folder / m) for m in members]
        for key in ENSEMBLE_SHARED_KEYS:
            if any(p.metadata.get(key) != metadata.get(key) for p in loaded):
                raise InputError(f"ensemble at {folder}: member metadata {key!r} differs from the ensemble's")
        return LoadedModel(loaded[0].detector, loaded[0].classifier, metadata, model_sha256(folder), folder,
                           members=loaded)
    try:
        metadata = json.loads((folder / "metadata.json").read_text())
        det, cls = build_networks(metadata)
        det.load_state_dict(torch.load(folder / "detector.pt", map_location="cpu", weights_only=True))
        cls.load_state_dict(torch.load(folder / "classifier.pt", map_location="cpu", weights_only=True))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise InputError(f"model at {folder} cannot be loaded: {str(exc).splitlines()[0]}") from exc
    det.eval()
    cls.eval()
    return LoadedModel(det, cls, metadata, model_sha256(folder), folder)


def save_model(out_dir: str | Path, *, detector: CentreNet3D, classifier: PatchClassifier, metadata: dict) -> Path:
    """Write the model files into ``out_dir`` (created if needed; other files there are left alone), each
    through a temporary file renamed into place, ``metadata.json`` last.  Returns ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create model folder {out}: {exc.strerror or exc}") from exc
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for name, net in (("detector.pt", detector), ("classifier.pt", classifier)):
        tmp = out / f".{name}.{tag}"
        torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, tmp)
        os.replace(tmp, out / name)
    tmp = out / f".metadata.json.{tag}"
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "metadata.json")
    return out


def base_metadata(*, channels=ALL_CHANNELS, spacing=None, detector_arch: dict, classifier_arch: dict,
                  patch_size: int = 24) -> dict:
    """Metadata skeleton shared by trained and random models (thresholds/calibration at neutral values)."""
    return {
        "format_version": FORMAT_VERSION,
        "version": "0.2.0",
        "channels": list(channels),
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "normalisation": normalisation_spec(),
        "architecture": {"detector": detector_arch, "classifier": classifier_arch},
        "classes": list(CLASSES),
        "patch_size": int(patch_size),
        "features": {"names": list(FEATURE_NAMES), "mean": [0.0] * len(FEATURE_NAMES),
                     "std": [1.0] * len(FEATURE_NAMES)},
        "thresholds": {"heatmap": 0.3, "min_distance_mm": 3.0, "max_candidates": 200, **reader_thresholds()},
        "calibration": {"method": "temperature", "temperature": 1.0, "class_weights": [1.0] * len(CLASSES),
                        "training_prevalence": 0.5},
        "physics_gate": PHYSICS_GATE,
        "vein_gate": VEIN_GATE,
        "inference": {"tile": 160, "overlap": 16, "stage2_tta": False, "stage1_tta_flips": [[]]},
        "changelog": [],
    }


def create_random_model(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny randomly initialised model in the shipped format (for end-to-end tests); returns its path."""
    torch.manual_seed(seed)
    det_arch = {"in_channels": len(ALL_CHANNELS), "base": 4, "depth": 1}
    cls_arch = {"in_channels": len(ALL_CHANNELS), "n_features": len(FEATURE_NAMES), "n_classes": len(CLASSES),
                "base": 4, "n_heads": 3, "centre": 2}
    meta = base_metadata(detector_arch=det_arch, classifier_arch=cls_arch, patch_size=16)
    meta["thresholds"] = {"heatmap": 0.0, "min_distance_mm": 4.0, "max_candidates": 10}
    meta["inference"] = {"tile": 48, "overlap": 8}
    meta.update(name="random", training={"command": f"create_random_model(seed={seed})", "seed": seed,
                                         "data": "none (random weights)"}, metrics={})
    det, cls = build_networks(meta)
    return save_model(out_dir, detector=det, classifier=cls, metadata=meta)
