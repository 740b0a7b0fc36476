"""The laue notebook: its parameters cell matches the workload, and it runs headless through papermill."""

from __future__ import annotations

import ast
import json

import nbformat
import numpy as np
import papermill

from rtlib.notebooks import notebook_path, run_notebook
from rtlib.synth.laue import read_ground_truth, write_laue_scan
from rtlib.workloads import get_workload


def test_parameters_cell_matches_the_workload_model():
    model = get_workload("laue").params_model
    declared = papermill.inspect_notebook(str(notebook_path("laue")))
    assert set(declared) == {"input_path", "output_path", "peaks_to_plot", *model.model_fields}
    for name, field in model.model_fields.items():
        assert ast.literal_eval(declared[name]["default"]) == field.default, name


def test_notebook_runs_headless_and_plots_depth_profiles(tmp_path):
    scan = tmp_path / "scan.h5"
    write_laue_scan(scan, height_px=40, width_px=40, num_sources=3, seed=5)
    run = run_notebook("laue", scan, tmp_path / "out", {"depth_start_um": -10.0, "depth_end_um": 50.0},
                       progress=False, timeout_s=120)
    truth = read_ground_truth(scan)
    assert run.summary["num_peaks"] == len(truth)
    found = sorted(p["depth_um"] for p in run.summary["peaks"])
    np.testing.assert_allclose(found, sorted(s.depth_um for s in truth), atol=1.0)
    out = tmp_path / "out"
    assert (out / "laue.h5").exists() and (out / "laue_peaks.csv").exists()
    assert (out / "laue_depth_profiles.png").stat().st_size > 5000
    assert json.loads((out / "summary.json").read_text()) == run.summary
    executed = nbformat.read(run.notebook, as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{len(truth)} peaks; depth bins of 1 um" in text
    assert any("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
