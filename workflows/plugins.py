"""Execution back-ends: Nipype plugin name + arguments from typed options, running a workflow and
turning a failed run into one clear message (from the failing node's ``cmbdetect_error.json``)."""
from __future__ import annotations

import getpass
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cmbdetect.physics.errors import InputError
from cmbdetect.workflows.interfaces import ERROR_FILE

#: Accepted ``--plugin`` values -> Nipype plugin names.
PLUGINS = {"linear": "Linear", "multiproc": "MultiProc", "slurm": "SLURM", "slurmgraph": "SLURMGraph",
           "sge": "SGE", "sgegraph": "SGEGraph", "pbs": "PBS", "pbsgraph": "PBSGraph", "lsf": "LSF"}

#: Cluster plugins and the plugin argument holding the scheduler's submit options.
_SUBMIT_ARGS = {"SLURM": "sbatch_args", "SLURMGraph": "sbatch_args", "SGE": "qsub_args",
                "SGEGraph": "qsub_args", "PBS": "qsub_args", "PBSGraph": "qsub_args", "LSF": "bsub_args"}


def plugin_settings(*, plugin: str | None = None, nprocs: int = 1, mem_gb: float | None = None,
                    plugin_args: dict | None = None) -> tuple[str, dict]:
    """``(plugin_name, plugin_args)`` for ``Workflow.run``.

    ``plugin`` is one of :data:`PLUGINS` (case-insensitive); ``None`` means ``MultiProc`` when
    ``nprocs > 1`` else ``Linear``.  ``nprocs`` and ``mem_gb`` (GB) bound MultiProc's scheduler;
    ``plugin_args`` are passed through (e.g. ``{"sbatch_args": "--mem=8G -p short"}`` for SLURM).
    Invalid values raise :class:`InputError`.
    """
    if nprocs is None or int(nprocs) < 1:
        raise InputError(f"--nprocs must be at least 1, got {nprocs}")
    if mem_gb is not None and not float(mem_gb) > 0:
        raise InputError(f"--mem-gb must be positive, got {mem_gb}")
    args = dict(plugin_args or {})
    if plugin is None:
        name = "MultiProc" if int(nprocs) > 1 else "Linear"
    else:
        name = PLUGINS.get(str(plugin).lower())
        if name is None:
            raise InputError(f"unknown --plugin {plugin!r}; choose one of {', '.join(PLUGINS)}")
    if name == "MultiProc":
        args.setdefault("n_procs", int(nprocs))
        if mem_gb is not None:
            args.setdefault("memory_gb", float(mem_gb))
        args.setdefault("raise_insufficient", False)
        # workers must not be forked from a process whose OpenMP/torch thread pools are running
        # (a forked child can hang on them): fork them from a clean server process instead
        args.setdefault("mp_context", "forkserver")
    elif name in _SUBMIT_ARGS:
        key = _SUBMIT_ARGS[name]
        if key in args and not isinstance(args[key], str):
            raise InputError(f"--plugin-args {key} must be a string of scheduler options")
    return name, args


def parse_plugin_args(text: str | None) -> dict:
    """``--plugin-args`` JSON object -> dict (InputError when it is not a JSON object)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--plugin-args is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InputError("--plugin-args must be a JSON object, e.g. '{\"sbatch_args\": \"--mem=8G\"}'")
    return value


@dataclass
class NodeFailure:
    """A node that crashed: its full name, working folder, error type and one-line message."""

    node: str
    workdir: str
    kind: str
    message: str
    crashfile: str


def collect_failures(crash_dir: str | Path) -> list[NodeFailure]:
    """Failures recorded as text crash files in ``crash_dir`` (one per crashed node)."""
    failures = []
    for crash in sorted(Path(crash_dir).glob("crash-*.txt")):
        text = crash.read_text(errors="replace")
        node = re.search(r"^Node: (.*)$", text, re.M)
        wd = re.search(r"^Working directory: (.*)$", text, re.M)
        kind, message = "Error", ""
        err = Path(wd.group(1).strip(), ERROR_FILE) if wd else None
        if err is not None and err.is_file():
            record = json.loads(err.read_text())
            kind, message = record["type"], record["message"]
        else:  # the last line of the traceback
            lines = [ln for ln in text.splitlines() if ln.strip()]
            message = lines[-1].strip() if lines else "unknown error"
        failures.append(NodeFailure(node=node.group(1).strip() if node else "?",
                                    workdir=wd.group(1).strip() if wd else "", kind=kind,
                                    message=message, crashfile=str(crash)))
    return failures


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cmbdetect"


@dataclass
class RunOutcome:
    """What a workflow run left: node failures (empty on success) and seconds per executed node
    (full node name -> duration; cached nodes report the duration of the run that produced them)."""

    failures: list[NodeFailure]
    node_seconds: dict[str, float]
    node_outputs: dict[str, dict] = None  # full node name -> its outputs (paths, values)


def run_workflow(wf, *, plugin_name: str, plugin_args: dict, crash_dir: str | Path) -> RunOutcome:
    """Run ``wf`` with the given plugin; ``crash_dir`` must be the workflow's configured crash folder
    and should be fresh for this run."""
    if plugin_name.startswith("SLURM") and "LOGNAME" not in os.environ:
        os.environ["LOGNAME"] = _user_name()  # Nipype's SLURM plugin names jobs after $LOGNAME
    try:
        graph = wf.run(plugin=plugin_name, plugin_args=plugin_args)
    except RuntimeError:
        failures = collect_failures(crash_dir)
        if not failures:
            raise
        if any(f.kind == "KeyboardInterrupt" or "KeyboardInterrupt" in f.message for f in failures):
            raise KeyboardInterrupt from None  # Ctrl-C inside a node: Nipype reports it as a node crash
        return RunOutcome(failures, {}, _results_on_disk(wf))
    seconds, outputs = _node_results(graph)
    return RunOutcome(collect_failures(crash_dir), seconds, outputs)


def _results_on_disk(wf) -> dict[str, dict]:
    """Outputs of the nodes that finished, read from their result files, after a run that raised (Nipype
    returns no graph then): full node name -> outputs.  The nodes of the subjects that succeeded are needed
    for their provenance (the physics chain's record) even when another subject failed."""
    from nipype.pipeline.engine.utils import load_resultfile

    base = Path(wf.base_dir or ".")
    outputs = {}
    for result_file in base.glob(f"{wf.name}/**/result_*.pklz"):
        try:
            result = load_resultfile(result_file)
            if result.outputs is not None:
                rel = result_file.parent.relative_to(base)
                outputs[".".join(rel.parts)] = result.outputs.get()
        except Exception:  # a partial or unreadable result file: that node's outputs are not known
            continue
    return outputs


def _node_results(graph) -> tuple[dict[str, float], dict[str, dict]]:
    seconds, outputs = {}, {}
    for node in getattr(graph, "nodes", lambda: [])():
        if node.name.startswith(("inputnode", "outputnode")):
            continue
        try:
            result = node.result
            runtime = result.runtime[0] if isinstance(result.runtime, list) else result.runtime
            if getattr(runtime, "duration", None):
                seconds[node.fullname] = round(float(runtime.duration), 3)
            if result.outputs is not None:
                outputs[node.fullname] = result.outputs.get()
        except Exception:  # a node without a readable result (e.g. on a cluster file system lag)
            continue
    return seconds, outputs


#: Environment variable that tells MultiProc worker processes to show Nipype's log lines (``-v``).
VERBOSE_WORKERS_ENV = "CMBDETECT_NIPYPE_VERBOSE"

#: Nipype's loggers, quiet unless ``-v``.
NIPYPE_LOGGERS = ("nipype.workflow", "nipype.interface", "nipype.utils")


def prepare_worker_processes(*, verbose: bool) -> None:
    """Make the MultiProc workers started later by this process quiet and deaf to Ctrl-C.

    Workers are forked from a forkserver (:func:`plugin_settings`), which first imports
    :mod:`cmbdetect.workflows.worker_setup`: it ignores SIGINT (the main process handles Ctrl-C and stops the
    workers, so no worker prints a traceback) and sets Nipype's log level from :data:`VERBOSE_WORKERS_ENV`.
    Call once, from the command-line entry point, before any workflow runs."""
    import multiprocessing

    os.environ[VERBOSE_WORKERS_ENV] = "1" if verbose else "0"
    multiprocessing.get_context("forkserver").set_forkserver_preload(["cmbdetect.workflows.worker_setup"])


def stop_worker_processes() -> None:
    """Terminate the worker processes this process started (after Ctrl-C: their results are not wanted)."""
    import logging
    import multiprocessing

    # the pool notices its workers' end and reports each pending job to Nipype's callbacks, which fail
    # (BrokenProcessPool) and are logged with a traceback: those jobs were abandoned on purpose
    logging.getLogger("concurrent.futures").disabled = True
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)


def raise_for_failures(failures: list[NodeFailure]) -> None:
    """Raise :class:`InputError` for a user-input failure, else ``RuntimeError`` naming the node and
    its crash file; nothing when ``failures`` is empty."""
    if not failures:
        return
    first = next((f for f in failures if f.kind == "InputError"), failures[0])
    if first.kind == "InputError":
        raise InputError(first.message)
    raise RuntimeError(f"step {first.node} failed: {first.kind}: {first.message} "
                       f"(details: {first.crashfile})")
