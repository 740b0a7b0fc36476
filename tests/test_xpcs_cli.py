"""`rtlib xpcs analyze`, `rtlib synth xpcs` and the xpcs notebook, run for real."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rtlib.cli_xpcs import synth_xpcs, xpcs_app
from rtlib.errors import ParameterError
from rtlib.notebooks import run_notebook
from rtlib.synth.xpcs import write_xpcs_file

# The same wiring as rtlib/cli.py gives them.
app = typer.Typer()
synth = typer.Typer()
app.add_typer(xpcs_app, name="xpcs")
app.add_typer(synth, name="synth")
synth.command("xpcs")(synth_xpcs)
synth.command("detector")(lambda: None)  # a group needs two commands to keep its names


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    result = CliRunner().invoke(app, ["synth", "xpcs", str(d / "raw.h5"), "--frames", "400", "--height-px", "48",
                                      "--width-px", "48", "--num-q-rings", "3", "--qmap", str(d / "qmap.h5")])
    assert result.exit_code == 0, result.output
    return d


def test_synth_writes_the_file_and_its_truth(data):
    with h5py.File(data / "raw.h5", "r") as f:
        assert f["/entry/data/data"].shape == (400, 48, 48)
        assert f["/entry/instrument/detector/frame_time"][()] == pytest.approx(1e-3)
    with h5py.File(data / "qmap.h5", "r") as f:
        assert sorted(np.unique(f["/data/dynamicMap"][()])) == [0, 1, 2, 3]


def test_analyze_writes_the_result_file(data):
    out = data / "res" / "result.h5"
    result = CliRunner().invoke(app, ["xpcs", "analyze", str(data / "raw.h5"), "--qmap", str(data / "qmap.h5"),
                                      "-o", str(out), "--mode", "both", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["output"] == str(out) and summary["dynamic_rois"] == 3 and summary["mode"] == "both"
    with h5py.File(out, "r") as f:
        assert f["/xpcs/multitau/normalized_g2"].shape[1] == 3
        assert "c2_00003" in f["/xpcs/twotime/correlation_map"]
    assert [p.name for p in out.parent.iterdir()] == ["result.h5"]  # no scratch left behind


def test_analyze_refuses_a_bad_mode(data, tmp_path):
    result = CliRunner().invoke(app, ["xpcs", "analyze", str(data / "raw.h5"), "-o", str(tmp_path / "r.h5"),
                                      "--mode", "threetime"])
    assert isinstance(result.exception, ParameterError) and "mode" in str(result.exception)
    assert not (tmp_path / "r.h5").exists()


def test_notebook_runs_headless(data, tmp_path):
    run = run_notebook("xpcs", data / "raw.h5", tmp_path / "nb",
                       {"mode": "both", "qmap_file": str(data / "qmap.h5"), "twotime_rois": [1]}, progress=False)
    names = {p.name for p in run.output_dir.iterdir()}
    assert {"xpcs.h5", "summary.json", "xpcs.ipynb", "xpcs_g2.png", "xpcs_tau.png", "xpcs_twotime.png"} <= names
    assert run.summary["dynamic_rois"] == 3 and run.summary["twotime_rois"] == [1]
    assert all(t is not None for t in run.summary["tau_s"])
