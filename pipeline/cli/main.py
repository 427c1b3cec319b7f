"""``cmbdetect`` command line: subcommands and the BIDS-App form.

Subcommands live in ``pipeline/cli/<name>.py`` modules, each with ``add_parser(subparsers)`` and
``run(args) -> int``; they are imported only when needed, and a broken or missing one does not break
the others.  ``cmbdetect BIDS_DIR OUT_DIR participant|group`` (first argument not a subcommand) is the
BIDS-App form (``pipeline/cli/bids.py``).

Errors: :class:`InputError` -> ``cmbdetect: error: <message>`` (one line) on stderr, exit 2; any other
exception -> one line, exit 1 (with the traceback only under ``-v``).  Nothing ever prompts.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

os.environ.setdefault("NIPYPE_NO_ET", "1")

from cmbdetect.physics.errors import InputError  # noqa: E402

#: Subcommands, in help order; each is ``cmbdetect.pipeline.cli.<name>``.
SUBCOMMANDS: tuple[str, ...] = ("run", "qsm", "demo", "simulate", "train", "rank", "review", "evaluate")

_EPILOG = ("BIDS-App form: cmbdetect BIDS_DIR OUT_DIR participant [--participant-label 01 02 ...] | "
           "cmbdetect BIDS_DIR OUT_DIR group (see 'cmbdetect BIDS_DIR OUT_DIR participant --help')")


def _version() -> str:
    from cmbdetect.pipeline.io.provenance import cmbdetect_version

    return cmbdetect_version()


def _unavailable(name: str, reason: str):
    def run(args) -> int:
        raise RuntimeError(f"subcommand {name!r} is unavailable in this installation ({reason})")
    return run


def build_parser(subcommands: tuple[str, ...] | list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with the given subcommands (default: all of :data:`SUBCOMMANDS`).

    Each parsed namespace carries ``_run`` (the subcommand's ``run``).  A subcommand module that cannot
    be imported still appears, and fails with a one-line message when used.
    """
    parser = argparse.ArgumentParser(
        prog="cmbdetect", epilog=_EPILOG,
        description="Find cerebral microbleeds on SWI/GRE magnitude + phase (QSM physics + 3D CNN).")
    parser.add_argument("--version", action="version", version=f"cmbdetect {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in subcommands or SUBCOMMANDS:
        try:
            module = importlib.import_module(f"cmbdetect.pipeline.cli.{name}")
            sp = module.add_parser(sub)
            sp.set_defaults(_run=module.run)
        except Exception as exc:  # a broken subcommand must not break the others
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            sp = sub.add_parser(name, help=f"(unavailable: {reason})", add_help=False)
            sp.add_argument("rest", nargs=argparse.REMAINDER)
            sp.set_defaults(_run=_unavailable(name, reason))
    return parser


def _is_verbose(argv: list[str]) -> bool:
    return any(a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)


def _configure_nipype(verbose: bool) -> None:
    """Process-wide Nipype settings of the command-line program (the entry point owns the process):
    Nipype's own log lines only with ``-v`` (our progress lines go to stderr regardless), and a
    0.5 s scheduler poll instead of 2 s (each level of a parallel workflow waited up to one poll)."""
    import nipype  # nipype sets its loggers' levels when first imported: import it first

    from cmbdetect.workflows.plugins import NIPYPE_LOGGERS, prepare_worker_processes

    nipype.config.set("execution", "poll_sleep_duration", "0.5")
    level = logging.INFO if verbose else logging.CRITICAL
    for name in NIPYPE_LOGGERS:
        logging.getLogger(name).setLevel(level)
    prepare_worker_processes(verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cmbdetect`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = _is_verbose(argv)
    try:
        if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
            if len(argv) < 3 or argv[2] not in ("participant", "group"):
                print(f"cmbdetect: error: unknown command {argv[0]!r}: choose one of "
                      f"{', '.join(SUBCOMMANDS)}, or BIDS_DIR OUT_DIR participant|group", file=sys.stderr)
                return 2
            from cmbdetect.pipeline.cli import bids as cli_bids

            args = cli_bids.build_bids_parser().parse_args(argv)
            runner = cli_bids.run
        else:
            wanted = [argv[0]] if argv and argv[0] in SUBCOMMANDS else None
            parser = build_parser(wanted)
            args = parser.parse_args(argv)
            runner = getattr(args, "_run", None)
            if runner is None:
                parser.print_usage(sys.stderr)
                print("cmbdetect: error: a COMMAND or BIDS_DIR OUT_DIR {participant,group} is required",
                      file=sys.stderr)
                return 2
        args._argv = argv
        _configure_nipype(verbose)
        return int(runner(args) or 0)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except InputError as exc:
        print(f"cmbdetect: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from cmbdetect.workflows.plugins import stop_worker_processes

        stop_worker_processes()
        print("cmbdetect: interrupted (Ctrl-C): stopped, work folders removed, no partial output left", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        print(f"cmbdetect: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
