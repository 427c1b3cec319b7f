"""Benchmark of the whole pipeline through the ``cmbdetect`` command line.

1. ``cmbdetect run`` end to end on a 256x256x128 single-echo simulated subject: wall time and peak RSS
   of the process (targets: <= 45 s, <= 4 GB).
2. A batch of 4 simulated subjects: ``cmbdetect BIDS OUT participant --nprocs 2`` against 4 sequential
   ``cmbdetect run`` calls on the same data, in the same script (target: the batch is faster).

Usage: ``python benchmarks/pipeline.py [--model default|PATH] [--shape 256 256 128]
[--batch-shape 128 128 64] [--skip-batch]``.  Without a shipped default model, a random model of the
same format is used (timings are comparable; detections are not meaningful).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")


def _write_subject(folder: Path, *, seed: int, shape) -> tuple[list[str], object]:
    """Simulate one single-echo subject; NIfTI files + the ``run`` input arguments."""
    from cmbdetect.pipeline.io.atomic import save_nifti
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    acq = simulate_subject(seed=seed, shape=tuple(shape)).acq
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(acq.mag[0], acq.affine, folder / "mag.nii.gz")
    save_nifti(acq.phase[0], acq.affine, folder / "phase.nii.gz")
    return ["--mag", str(folder / "mag.nii.gz"), "--phase", str(folder / "phase.nii.gz"), "--te",
            str(float(acq.te[0])), "--b0", str(float(acq.b0)), "--phase-units", "rad"], acq


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cmbdetect(args: list[str]) -> tuple[float, float, int]:
    """Run the console script in a child process: (wall s, peak RSS GB of the children, exit code).

    ``ru_maxrss`` of RUSAGE_CHILDREN is the maximum over all waited-for children (MultiProc workers
    included), in KiB on Linux."""
    exe = shutil.which("cmbdetect")
    cmd = [exe] if exe else [sys.executable, "-m", "cmbdetect.pipeline.cli.main"]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    return wall, peak, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or path (default: shipped, else random)")
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128))
    parser.add_argument("--batch-shape", type=int, nargs=3, default=(128, 128, 64))
    parser.add_argument("--skip-batch", action="store_true")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cmbdetect-bench-"))
    try:
        model = opts.model
        if model is None:
            from cmbdetect.models.registry import create_random_model, resolve_model_dir
            from cmbdetect.physics.errors import InputError

            try:
                resolve_model_dir("default")
                model = "default"
            except InputError:
                model = str(create_random_model(tmp / "random_model", seed=0))
                print("note: no shipped default model; using a random model of the same format")
        print(f"model: {model}; CPUs: {os.cpu_count()}")

        run_args, _ = _write_subject(tmp / "big", seed=1, shape=opts.shape)
        cpu0 = _children_cpu_s()
        wall, peak, code = _cmbdetect(["run", *run_args, "--out", str(tmp / "big_out"), "--model", model])
        cpu = _children_cpu_s() - cpu0
        print(f"load average (1 min): {os.getloadavg()[0]:.1f} (CPU time of the run {cpu:.1f} s; "
              "on a shared machine wall time exceeds it)")
        print(f"[single] cmbdetect run {'x'.join(map(str, opts.shape))}: wall {wall:.1f} s "
              f"(target <= 45 s: {'PASS' if wall <= 45 else 'FAIL'}), peak RSS {peak:.2f} GB "
              f"(target <= 4 GB: {'PASS' if peak <= 4 else 'FAIL'}), exit {code}")
        if code == 0:
            import json

            timings = json.loads((tmp / "big_out" / "provenance.json").read_text())["timings_s"]
            print("  stages (s): " + ", ".join(f"{k.removeprefix('node:cmb_wf.')} {v:.1f}"
                                               for k, v in timings.items()))
        if opts.skip_batch:
            return 0 if code == 0 else 1

        from cmbdetect.pipeline.simulate.subject import simulate_dataset

        bids = tmp / "bids"
        labels = simulate_dataset(bids, subjects=4, seed=100, echoes=1, shape=tuple(opts.batch_shape))
        subjects = [["--mag", str(next((bids / f"sub-{lab}" / "anat").glob("*part-mag*.nii*"))),
                     "--phase", str(next((bids / f"sub-{lab}" / "anat").glob("*part-phase*.nii*")))]
                    for lab in labels]  # echo time, field strength and phase units from the sidecars
        t0 = time.perf_counter()
        codes = [_cmbdetect(["run", *a, "--out", str(tmp / f"seq{n}"), "--model", model])[2]
                 for n, a in enumerate(subjects)]
        seq = time.perf_counter() - t0
        par, peak_b, code_b = _cmbdetect([str(bids), str(tmp / "deriv"), "participant", "--nprocs", "2",
                                          "--model", model])
        print(f"[batch] 4 subjects {'x'.join(map(str, opts.batch_shape))}: 4 sequential runs {seq:.1f} s "
              f"(exit {codes}); participant --nprocs 2 {par:.1f} s (exit {code_b}); "
              f"speed-up {seq / par:.2f}x (target > 1: {'PASS' if par < seq else 'FAIL'})")
        return 0 if code == 0 and code_b == 0 and not any(codes) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
