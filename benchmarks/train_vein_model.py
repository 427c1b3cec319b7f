"""Fit the vein model of a model folder on simulated cohorts (``models.vein_model_train.train_vein_model``).

Usage::

    python benchmarks/train_vein_model.py --model-dir DIR --bids-dir D1 [D2 ...] --cache-dir C [--gate veto|none]

Writes the ``"vein_model"`` section into ``DIR/metadata.json`` and prints it.  Leave the held-out vein family
(``tortuous``) out of the cohorts; validate with ``benchmarks/vein_generalisation.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--bids-dir", nargs="+", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gate", choices=("veto", "none"), default="veto")
    ap.add_argument("--cached-only", action="store_true", help="fit on the subjects whose candidate rows are cached")
    a = ap.parse_args(argv)
    from cmbdetect.models.vein_model_train import train_vein_model

    sec = train_vein_model(model_dir=Path(a.model_dir), bids_dirs=[Path(d) for d in a.bids_dir],
                           cache_dir=Path(a.cache_dir), seed=a.seed, threads=a.threads, gate=a.gate,
                           cached_only=a.cached_only)
    print(json.dumps(sec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
