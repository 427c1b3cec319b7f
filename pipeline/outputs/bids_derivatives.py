"""The BIDS derivative dataset written by the BIDS-App form: names, dataset_description, sidecars, .bidsignore.

Names (``sub-<label>[/ses-<label>]/anat/``, entities of the acquisition kept):
``_Chimap`` (χ, ppm), ``_desc-localfield_T2starw`` (local field, ppm, derived from the GRE acquisition:
BIDS has no suffix for a tissue field; ``fieldmap`` belongs to ``fmap/`` and needs a magnitude, and
``part-phase`` requires Units rad),
``_desc-swi_T2starw`` / ``_desc-mip_T2starw`` (SWI and its minimum-intensity projection),
``_desc-brain_mask``, ``_R2starmap`` (1/s, multi-echo).  Each image's sidecar has ``SkullStripped``
(REQUIRED for anatomical derivatives: true where the map is zero outside the brain mask), ``Sources``
(BIDS URIs into the raw dataset, linked as ``raw`` in ``DatasetLinks``) and the model.
Outside the BIDS specification, and so listed in ``.bidsignore`` (:data:`BIDSIGNORE`, patterns the
deno ``bids-validator`` honours: a folder is named without a trailing slash): the candidate tables and
their sidecars, the Slicer markups, the provenance record, the HTML report, ``group/`` and ``logs/``.
The candidate table's sidecar describes every column in the BIDS form (``{"<column>": {"Description",
"Units"}}``) from :data:`cmbdetect.pipeline.outputs.candidates.COLUMN_INFO`, the one source ``cmbdetect run``
uses too.
"""
from __future__ import annotations

from pathlib import Path

from cmbdetect.pipeline.io.bids import bids_path

#: BIDS version the derivative dataset declares.
BIDS_VERSION = "1.10.0"

#: ``.bidsignore`` of the derivative dataset.
BIDSIGNORE: tuple[str, ...] = ("/group", "/logs", "*_candidates.tsv", "*_candidates.json",
                               "*_markups.mrk.json", "*_provenance.json", "*_report.html")

#: ``SkullStripped`` of each image kind: true where the map is zero outside the brain mask.
SKULL_STRIPPED: dict[str, bool] = {"chimap": True, "localfield": True, "swi": False, "mip": False,
                                   "r2star": False}

_README = """# cmbdetect derivatives

Cerebral microbleed candidates (cmbdetect) and the maps they were found on, one folder per subject:
susceptibility (`_Chimap`, ppm), local field (`_desc-localfield_T2starw`, ppm), SWI and
minimum-intensity projection (`_desc-swi_T2starw`, `_desc-mip_T2starw`), brain mask, R2* (multi-echo),
the candidate table (`_desc-cmb_candidates.tsv` with its JSON sidecar describing each column), 3D Slicer
markups, an HTML report and the provenance record.  `group/` holds the study table and index (group level);
`logs/` the failures of the participant level.
"""


def derivative_path(entities: dict[str, str | None], *, suffix: str, extension: str, **extra) -> str:
    """Path relative to the derivatives root, e.g. ``sub-01/anat/sub-01_desc-cmb_candidates.tsv``, from the
    acquisition's entities (``sub`` required; ``echo``/``part``/``desc`` of the input are dropped) and
    ``extra`` entities of the output."""
    ent = {k: v for k, v in entities.items() if v is not None and k not in ("echo", "part", "desc")}
    if "sub" not in ent:
        raise ValueError("BIDS output names need a subject label")
    return str(bids_path(Path(), datatype="anat", suffix=suffix, extension=extension, **ent, **extra))


def dataset_description(bids_dir: Path, *, version: str) -> dict:
    """``dataset_description.json`` of the derivative dataset (GeneratedBy without a CodeURL: the field
    is optional, and null is not a URL)."""
    raw = Path(bids_dir).absolute().as_uri()
    return {"Name": "cmbdetect cerebral microbleed candidates", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "cmbdetect", "Version": version,
                             "Description": "QSM physics and 3D CNN cerebral microbleed detection"}],
            "SourceDatasets": [{"URL": raw}], "DatasetLinks": {"raw": raw}}


def write_derivative_metadata(out_dir: Path, *, bids_dir: Path, version: str) -> None:
    """Write ``dataset_description.json``, ``.bidsignore`` and ``README.md`` into ``out_dir`` (atomically)."""
    from cmbdetect.pipeline.io.atomic import write_json, write_text

    out_dir = Path(out_dir)
    write_json(dataset_description(bids_dir, version=version), out_dir / "dataset_description.json")
    write_text("\n".join(BIDSIGNORE) + "\n", out_dir / ".bidsignore")
    write_text(_README, out_dir / "README.md")


def candidates_columns() -> dict[str, dict[str, str]]:
    """BIDS column descriptions of the candidate table (``{"id": {"Description": ..., "Units": ...}}``;
    ``Units`` left out where the column has none), from ``candidates.COLUMN_INFO``."""
    from cmbdetect.pipeline.outputs.candidates import COLUMN_INFO

    return {name: {"Description": info["description"], **({"Units": info["units"]} if info["units"] else {})}
            for name, info in COLUMN_INFO.items()}


def derivative_sidecars(sources: list[str], model: dict) -> dict[str, dict]:
    """JSON sidecar of each output kind (keys as ``workflows.cmb.bids_output_names``)."""
    from cmbdetect.pipeline.outputs.candidates import COORDINATE_SYSTEM

    base = {"Sources": list(sources), "Model": {k: model.get(k) for k in ("name", "version", "sha256")}}
    magnitude = next((s for s in sources if "part-mag" in s), sources[0] if sources else None)
    table = {"Description": "cerebral microbleed candidates (cmbdetect)", **base,
             "CoordinateSystem": dict(COORDINATE_SYSTEM), **candidates_columns()}
    maps = {
        "chimap": {"Description": "magnetic susceptibility (QSM), > 0 paramagnetic", "Units": "ppm"},
        "localfield": {"Description": "local (tissue) field after background field removal, in ppm of B0",
                       "Units": "ppm"},
        "swi": {"Description": "susceptibility-weighted image (magnitude x phase mask)"},
        "mip": {"Description": "minimum-intensity projection of the SWI"},
        "r2star": {"Description": "R2* from the multi-echo magnitude", "Units": "1/s"},
    }
    out = {"candidates_tsv": table, "candidates_all_tsv": dict(table),
           "brainmask": {"Description": "brain mask the maps were computed in", **base, "Type": "Brain",
                         **({"SpatialReference": magnitude} if magnitude else {})}}
    for kind, meta in maps.items():
        out[kind] = {**meta, **base, "SkullStripped": SKULL_STRIPPED[kind]}
    return out
