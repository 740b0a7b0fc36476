"""The "Python 3 (rtlib)" kernelspec: installed by `rtlib kernel install`, and a notebook of %rtlib magics
run headless on it with papermill until its saxs job is DONE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from rtlib import config as cfg
from rtlib.cli import app
from rtlib.layout import expand_output_path
from rtlib.store import JobStore

REPO = Path(__file__).resolve().parent.parent
MAGICS_NOTEBOOK = REPO / "notebooks" / "examples" / "magics.ipynb"


@pytest.fixture
def prefix(tmp_path) -> Path:
    result = CliRunner().invoke(app, ["kernel", "install", "--prefix", str(tmp_path / "prefix")])
    assert result.exit_code == 0, result.output
    return tmp_path / "prefix"


def test_install_into_a_prefix(prefix, monkeypatch):
    spec_file = prefix / "share" / "jupyter" / "kernels" / "rtlib" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    assert spec["display_name"] == "Python 3 (rtlib)" and spec["language"] == "python"
    assert spec["argv"][0] == sys.executable  # this environment's interpreter, not whatever `python` is on PATH
    assert spec["argv"][1:3] == ["-m", "ipykernel_launcher"] and "--ext=jupyter_ext" in spec["argv"]
    assert "{connection_file}" in spec["argv"]

    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    assert Path(KernelSpecManager().find_kernel_specs()["rtlib"]) == spec_file.parent


def test_install_refuses_two_locations(tmp_path):
    result = CliRunner().invoke(app, ["kernel", "install", "--user", "--prefix", str(tmp_path)])
    assert result.exit_code == 2 and "at most one" in result.output
    assert not (tmp_path / "share").exists()


def test_magics_notebook_is_stored_clean():
    nb = nbformat.read(MAGICS_NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "rtlib"
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert all(c.outputs == [] for c in nb.cells if c.cell_type == "code")
    sources = "\n".join(c.source for c in nb.cells)
    assert "%rtlib submit saxs" in sources and "%rtlib wait" in sources


@pytest.mark.slow
def test_papermill_runs_the_magics_notebook_on_the_rtlib_kernel_to_done(prefix, tmp_path):
    workspace = tmp_path / "ws"
    out = tmp_path / "magics-out.ipynb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTLIB_")}
    env["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    env["RTLIB_WORKSPACE"] = str(tmp_path / "unused-default-ws")  # the notebook's `workspace` parameter must win
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "-k", "rtlib", str(MAGICS_NOTEBOOK), str(out),
         "-p", "workspace", str(workspace), "-p", "num_q_bins", "48", "-p", "timeout_s", "240", "--cwd", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata.kernelspec.name == "rtlib"
    texts = [o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("'DONE'" in t for t in texts), texts

    settings = cfg.load(workspace=workspace)
    store = JobStore(settings.store)
    try:
        (job,) = store.list_jobs()
        assert job.state.value == "DONE" and job.workload == "saxs" and job.params["num_q_bins"] == 48
        assert job.beamline == "aps-demo"
        results = Path(settings.endpoints["aps"].root) / expand_output_path(job.output_path, job.id, job.workload)
        assert (results / "summary.json").is_file() and (results / "saxs.h5").is_file()
    finally:
        store.close()
    assert not (tmp_path / "unused-default-ws" / "rtlib.db").exists()
