"""Developer entry point of training: ``cmbdetect train`` plus the options that were measured and not shipped
(``--augment``, ``--stage1-resolution-augment``, ``--domain-close``, ``--lr-schedule cosine``, the 7-way
``--ablation``), which the user CLI does not offer (docs/training.md, docs/model-lab-notes.md).

Usage: ``python benchmarks/train_dev.py --bids-dir D ... --out M --ablation no-physics-channels``.
"""
from __future__ import annotations

import argparse
import sys

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.cli import train as cli_train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_dev.py")
    cli_train.add_parser(parser.add_subparsers(), developer=True)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cli_train.run(args)
    except InputError as exc:
        print(f"train_dev: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
