"""``run``, ``demo`` and the BIDS participant level build their subject workflow in one place
(``cli.run.subject_workflow``) from the options' one physics-settings object."""
from __future__ import annotations

import inspect

import pytest

from cmbdetect.pipeline.cli import bids, run
from cmbdetect.pipeline.cli.run import PipelineOptions, subject_workflow


def test_options_physics_reach_the_maps_node(tmp_path):
    options = PipelineOptions(model="m", background="pdf", inversion="tkd")
    wf = subject_workflow(options, output_dir=tmp_path, model_sha256="0" * 64, mem_gb=1.0, omp_nthreads=2,
                          settings={}, label="sub-01")
    node = wf.get_node("qsm_wf.compute_maps")
    assert (node.inputs.unwrap, node.inputs.background, node.inputs.inversion) == ("laplacian", "pdf", "tkd")
    assert wf.get_node("detect_wf.detect").inputs.model_sha256 == "0" * 64
    with pytest.raises(ValueError, match="inversion 'nope'"):
        PipelineOptions(inversion="nope").physics


def test_drivers_do_not_build_the_workflow_themselves():
    for module in (run, bids):
        source = inspect.getsource(module)
        assert source.count("init_cmb_wf(") == (1 if module is run else 0), module.__name__
