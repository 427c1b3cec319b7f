"""The candidate table of a model on the stored maps of one small simulated subject (tests/data), as the
before/after reference of the shipped model (``python tests/shipped_table.py OUT.json`` writes it)."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

from cmbdetect.physics.maps import PhysicsMaps

DATA = Path(__file__).resolve().parent / "data"
#: physics maps (float32) of ``simulate_subject(seed=11, shape=(36, 36, 24), n_microbleeds=3,
#: n_calcifications=1)`` through ``compute_physics_maps`` (defaults), stored so the table does not move with
#: the simulator or the physics chain
SUBJECT = DATA / "shipped_model_subject.npz"
TABLE = DATA / "shipped_model_table.json.gz"


def reference_table() -> dict:
    """The stored tables: ``{"default": [...], "prevalence_0.01": [...]}``."""
    return json.loads(gzip.decompress(TABLE.read_bytes()))


def stored_maps() -> PhysicsMaps:
    z = np.load(SUBJECT)
    kw = {k: z[k] for k in z.files if k not in ("affine", "b0")}
    return PhysicsMaps(field_ppm=kw["local_field_ppm"], swi=kw["magnitude"], mip=kw["magnitude"],
                       affine=z["affine"], b0=float(z["b0"]), **kw)


def candidate_table(model="default", *, prevalence=None) -> list[dict]:
    from cmbdetect.models.inference import detect

    dets = detect(stored_maps(), model=model, prevalence=prevalence)
    return [{"centre_vox": list(d.centre_vox), "score": d.score, "label": d.label, "diameter_mm": d.diameter_mm,
             "uncertainty": d.uncertainty, "probabilities": d.probabilities} for d in dets]


if __name__ == "__main__":
    Path(sys.argv[1]).write_bytes(gzip.compress(json.dumps({"default": candidate_table(),
                                                             "prevalence_0.01": candidate_table(prevalence=0.01)})
                                                 .encode(), mtime=0))
