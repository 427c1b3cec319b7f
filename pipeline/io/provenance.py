"""Provenance record of a run: software versions, model hash, parameters, command line, timings."""
from __future__ import annotations

import hashlib
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata

_PACKAGES = ("cmbdetect", "numpy", "scipy", "torch", "nibabel", "nipype", "pydicom", "highdicom",
             "scikit-image")


def software_versions() -> dict[str, str]:
    """Installed versions of Python and the packages cmbdetect's results depend on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_CODE_PACKAGES = ("physics", "models", "pipeline", "workflows")


def code_fingerprint(packages: tuple[str, ...] = _CODE_PACKAGES) -> str:
    """sha256 over the source files (``*.py``, relative name and content) of cmbdetect ``packages`` (default:
    all four).

    It changes with any edit of the code, even without a version bump (an editable install), so a Nipype
    working directory keyed by it (``WORK/code-<first 12 hex>``) is never reused by different code: the
    Nipype cache keys nodes by their inputs only, not by the code their interfaces run.
    """
    import importlib
    from pathlib import Path

    h = hashlib.sha256()
    for name in packages:
        root = Path(importlib.import_module(f"cmbdetect.{name}").__file__).resolve().parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{name}/{f.relative_to(root).as_posix()}".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def work_subdir(work):
    """The Nipype base directory inside the user's working directory for this code (see
    :func:`code_fingerprint`)."""
    from pathlib import Path

    return Path(work) / f"code-{code_fingerprint()[:12]}"


def cmbdetect_version() -> str:
    try:
        return metadata.version("cmbdetect")
    except metadata.PackageNotFoundError:
        return "unknown"


class StageTimer:
    """Wall-clock seconds per named stage (``with timer("physics"): ...``), in order of first use."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def __call__(self, stage: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[stage] = timer.seconds.get(stage, 0.0) + time.perf_counter() - self.start
                return False

        return _Stage()

    def total(self) -> float:
        return time.perf_counter() - self._t0


def build_provenance(*, command_line: list[str], parameters: dict, model: dict, timings: dict,
                     inputs: dict | None = None, outputs: list[str] | None = None) -> dict:
    """The ``provenance.json`` record (JSON-able): when, what (versions, model name/sha256/metadata),
    with which parameters and inputs, from which command line, and how long each stage took (s)."""
    return {
        "generated_by": {"name": "cmbdetect", "version": cmbdetect_version(), "code_sha256": code_fingerprint()},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": list(command_line),
        "python_executable": sys.executable,
        "software": software_versions(),
        "model": dict(model),
        "parameters": dict(parameters),
        "inputs": dict(inputs or {}),
        "outputs": sorted(outputs or []),
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
    }
