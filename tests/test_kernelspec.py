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


@pytest.mark.parametrize("data_dir_env", [True, False], ids=["JUPYTER_DATA_DIR", "HOME"])
def test_install_for_the_user(tmp_path, monkeypatch, data_dir_env):
    """`--user` writes the spec into the user's Jupyter data directory and nowhere else."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("JUPYTER_DATA_DIR", "JUPYTER_PATH", "XDG_DATA_HOME", "JUPYTER_PLATFORM_DIRS", "JUPYTER_PREFER_ENV_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    if data_dir_env:
        monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jdata"))
        expected = tmp_path / "jdata" / "kernels" / "rtlib"
    else:
        expected = home / ".local" / "share" / "jupyter" / "kernels" / "rtlib"
    result = CliRunner().invoke(app, ["kernel", "install", "--user"])
    assert result.exit_code == 0, result.output
    assert str(expected) in result.output.replace("\n", "")
    spec = json.loads((expected / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (rtlib)" and spec["language"] == "python"
    assert spec["argv"] == [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--ext=jupyter_ext"]
    written = sorted(p for p in tmp_path.rglob("kernel.json"))
    assert written == [expected / "kernel.json"], written

    from jupyter_client.kernelspec import KernelSpecManager

    assert Path(KernelSpecManager().find_kernel_specs()["rtlib"]) == expected


def test_install_into_this_environment(tmp_path, monkeypatch):
    """`--sys-prefix` writes under sys.prefix/share/jupyter (a venv, conda env, Binder)."""
    env = tmp_path / "venv"
    monkeypatch.setattr(sys, "prefix", str(env))
    result = CliRunner().invoke(app, ["kernel", "install", "--sys-prefix"])
    assert result.exit_code == 0, result.output
    spec = json.loads((env / "share" / "jupyter" / "kernels" / "rtlib" / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (rtlib)" and "--ext=jupyter_ext" in spec["argv"]


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


def without_load_ext(source: Path, target: Path) -> Path:
    """The notebook without any `%load_ext jupyter_ext` line (it has one for other kernels): only the kernelspec
    can load the magics then."""
    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = "\n".join(line for line in cell.source.splitlines() if line.strip() != "%load_ext jupyter_ext")
    assert "load_ext" not in "\n".join(c.source for c in nb.cells)
    nbformat.write(nb, target)
    return target


def _papermill(kernel: str, notebook: Path, out: Path, workspace: Path, prefix: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTLIB_", "JUPYTER", "IPYTHON"))}
    env["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    env["IPYTHONDIR"] = str(tmp_path / "ipython")  # no profile of this machine loads the extension either
    env["RTLIB_WORKSPACE"] = str(tmp_path / "unused-default-ws")  # the notebook's `workspace` parameter must win
    return subprocess.run(
        [sys.executable, "-m", "papermill", "-k", kernel, str(notebook), str(out),
         "-p", "workspace", str(workspace), "-p", "num_q_bins", "48", "-p", "timeout_s", "240", "--cwd", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=420,
    )


@pytest.mark.slow
def test_papermill_runs_the_magics_notebook_on_the_rtlib_kernel_to_done(prefix, tmp_path):
    workspace = tmp_path / "ws"
    out = tmp_path / "magics-out.ipynb"
    notebook = without_load_ext(MAGICS_NOTEBOOK, tmp_path / "magics-no-load-ext.ipynb")
    # the control: on the plain python3 kernel the same notebook has no %rtlib
    plain = _papermill("python3", notebook, tmp_path / "plain-out.ipynb", tmp_path / "plain-ws", prefix, tmp_path)
    assert plain.returncode != 0, plain.stderr[-4000:]
    failed = nbformat.read(tmp_path / "plain-out.ipynb", as_version=4)
    said = "".join(o.get("text", "") + o.get("evalue", "") for c in failed.cells if c.cell_type == "code" for o in c.outputs)
    assert "Line magic function `%rtlib` not found" in said, said

    proc = _papermill("rtlib", notebook, out, workspace, prefix, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata.kernelspec.name == "rtlib"
    assert "load_ext" not in "\n".join(c.source for c in nb.cells)
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
