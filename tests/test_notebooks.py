"""The papermill runner and the pipeline notebooks, executed for real on synthetic data."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import nbformat
import numpy as np
import papermill
import pytest

import rtlib
from rtlib import notebooks
from rtlib.errors import (
    InputDataError,
    NotebookExecutionError,
    NotebookNotFound,
    ParameterError,
    UnknownWorkload,
)
from rtlib.notebooks import notebook_path, parse_cli_params, parse_cli_value, run_notebook
from rtlib.synth.detector import write_detector_file
from rtlib.workloads import get_workload

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
SAXS_CLI_PARAMS = [("num_q_bins", "64"), ("frames_per_chunk", "3"), ("beam_center_x_px", "None")]


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "scan.h5"
    write_detector_file(path, frames=7, height=96, width=112, seed=3)
    return path


@pytest.fixture(scope="module")
def saxs_run(detector_file, tmp_path_factory):
    """One real run of the saxs notebook through the runner, with parameters as the CLI gives them."""
    params = parse_cli_params(SAXS_CLI_PARAMS, "saxs")
    out = tmp_path_factory.mktemp("runs") / "saxs-out"  # does not exist yet: the runner creates it
    return run_notebook("saxs", detector_file, out, params, progress=False)


def _forbid_execution(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("a notebook was executed although the run should have been refused beforehand")

    monkeypatch.setattr(papermill, "execute_notebook", fail)


# ---------------------------------------------------------------- the saxs notebook, end to end


def test_runner_writes_results_and_executed_notebook(saxs_run, detector_file):
    out = saxs_run.output_dir
    assert saxs_run.notebook == out / "saxs.ipynb"
    assert {"saxs.h5", "saxs_iq.csv", "summary.json", "saxs.ipynb"} <= {p.name for p in out.iterdir()}

    with h5py.File(out / "saxs.h5", "r") as f:
        q = f["/saxs/q_inv_angstrom"][()]
        intensity = f["/saxs/intensity"][()]
        assert q.shape == intensity.shape == f["/saxs/intensity_err"].shape == (64,)
        assert f["/saxs/scattering_2d"].ndim == 2
    assert np.all(np.diff(q) > 0)
    assert np.isfinite(intensity).sum() > 32

    assert saxs_run.summary == json.loads((out / "summary.json").read_text())
    assert saxs_run.summary  # the workload's own summary made it back
    assert saxs_run.wall_s > 0
    assert saxs_run.parameters["num_q_bins"] == 64
    assert saxs_run.parameters["beam_center_x_px"] is None
    assert saxs_run.parameters["dataset_path"] == "/entry/data/data"  # the default, recorded explicitly


def test_executed_notebook_records_the_injected_parameters(saxs_run, detector_file):
    nb = nbformat.read(saxs_run.notebook, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    source = injected[0].source
    assert f'input_path = "{detector_file.resolve()}"' in source
    assert f'output_path = "{saxs_run.output_dir}"' in source
    assert "num_q_bins = 64" in source
    assert "frames_per_chunk = 3" in source
    assert "beam_center_x_px = None" in source
    assert nb.metadata.papermill.parameters["num_q_bins"] == 64
    assert nb.metadata.papermill.exception is None
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not any(o.output_type == "error" for c in code for o in c.outputs)


def test_plain_papermill_cli_runs_the_saxs_notebook(saxs_run, detector_file, tmp_path):
    papermill_exe = Path(sys.executable).parent / "papermill"
    assert papermill_exe.exists(), "papermill's command is installed beside the interpreter"
    out = tmp_path / "plain"
    cmd = [str(papermill_exe), str(NOTEBOOK_DIR / "saxs.ipynb"), str(tmp_path / "executed.ipynb"),
           "-p", "input_path", str(detector_file), "-p", "output_path", str(out), "--no-progress-bar"]
    for name, value in SAXS_CLI_PARAMS:
        cmd += ["-p", name, value]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert (tmp_path / "executed.ipynb").is_file()
    assert json.loads((out / "summary.json").read_text()) == saxs_run.summary
    # Same notebook, same data, same parameters: the same profile as through the runner.
    with h5py.File(out / "saxs.h5", "r") as plain, h5py.File(saxs_run.output_dir / "saxs.h5", "r") as runner:
        for name in ("q_inv_angstrom", "intensity", "intensity_err"):
            np.testing.assert_array_equal(plain["saxs"][name][()], runner["saxs"][name][()])


def test_plain_papermill_cli_fails_on_an_unknown_parameter_naming_it(detector_file, tmp_path):
    """papermill itself only warns about a name the parameters cell lacks; the notebook's next cell refuses it."""
    papermill_exe = Path(sys.executable).parent / "papermill"
    out = tmp_path / "plain"
    cmd = [str(papermill_exe), str(NOTEBOOK_DIR / "saxs.ipynb"), str(tmp_path / "executed.ipynb"),
           "-p", "input_path", str(detector_file), "-p", "output_path", str(out), "-p", "num_q_binz", "40",
           "--no-progress-bar"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "ParameterError" in proc.stderr and "unknown parameter 'num_q_binz'" in proc.stderr, proc.stderr[-3000:]
    assert "did you mean 'num_q_bins'" in proc.stderr
    assert not out.exists(), "refused before the analysis touched the output directory"
    nb = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    failed = [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert len(failed) == 1 and "check_injected_parameters" in failed[0].source


def _run_cells(*sources: str) -> dict:
    """Run cell sources one after another in one namespace, the way a kernel runs a notebook."""
    namespace: dict = {"In": [], "Out": {}}
    for source in sources:
        exec(source, namespace)
    return namespace


PARAMS_CELL = ("input_path = None\noutput_path = None\nnum_q_bins = 200\nfigure_dpi = 120\n"
               "from rtlib.notebooks import declare_parameters\ndeclare_parameters(globals())")
CHECK_CELL = "from rtlib.notebooks import check_injected_parameters\ncheck_injected_parameters(globals(), {workload!r})"


def test_injected_names_are_checked_against_the_model_and_the_parameters_cell():
    # model fields, run arguments and the notebook's own parameters may be injected
    ns = _run_cells(PARAMS_CELL, "num_q_bins = 64\nwavelength_angstrom = 1.2\ninput_path = '/x'\nfigure_dpi = 300",
                    CHECK_CELL.format(workload="saxs"))
    assert ns["num_q_bins"] == 64
    # a name neither defines fails, naming it, the closest name and what is accepted
    with pytest.raises(ParameterError) as info:
        _run_cells(PARAMS_CELL, "num_q_binz = 40\nzzz = 1", CHECK_CELL.format(workload="saxs"))
    msg = str(info.value)
    assert "unknown parameter 'num_q_binz' (did you mean 'num_q_bins'?)" in msg and "unknown parameter 'zzz'" in msg
    assert "input_path, output_path, dataset_path" in msg and "figure_dpi" not in msg.split("unknown")[0]
    # nothing injected: fine; running the check cell again after later cells defined names: no false alarm
    ns = _run_cells(PARAMS_CELL, CHECK_CELL.format(workload="saxs"), "summary = {'a': 1}", CHECK_CELL.format(workload="saxs"))
    assert ns["summary"] == {"a": 1}
    # a notebook that is no workload's pipeline: only its own parameters
    with pytest.raises(ParameterError, match=r"unknown parameter 'figure_dpj' \(did you mean 'figure_dpi'\?\)"):
        _run_cells(PARAMS_CELL, "figure_dpj = 1", CHECK_CELL.format(workload=None))


PARAMETERISED = sorted(p for p in NOTEBOOK_DIR.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.mark.parametrize("path", PARAMETERISED, ids=lambda p: p.name)
def test_every_parameters_cell_is_followed_by_the_injected_name_check(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    assert cells[index].source.rstrip().endswith("declare_parameters(namespace=globals())"), "declared last in the parameters cell"
    # papermill still reads every assignment of the cell as a parameter, each with its own literal default
    declared = papermill.inspect_notebook(str(path))
    assert "input_path" in declared or path.parent != NOTEBOOK_DIR
    for name, info in declared.items():
        ast.literal_eval(info["default"])
        assert "declare_parameters" not in info["default"], name
    check = [line for line in cells[index + 1].source.splitlines() if line.startswith("check_injected_parameters(globals()")]
    assert len(check) == 1
    workload = path.stem if path.parent == NOTEBOOK_DIR else None
    assert check[0].startswith(f"check_injected_parameters(globals(), {workload!r})".replace("'", '"') if workload
                               else "check_injected_parameters(globals())")
    before = cells[index + 1].source.split(check[0])[0]
    assert all(line.startswith(("import ", "from ", "#")) or not line.strip() for line in before.splitlines()), \
        "the check comes before anything that reads a parameter"


def test_failing_notebook_names_cell_exception_and_executed_notebook(detector_file, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NotebookExecutionError) as info:
        run_notebook("saxs", detector_file, out, {"dataset_path": "/entry/no/such/dataset"}, progress=False)
    err = info.value
    executed = out / "saxs.ipynb"
    assert err.notebook_path == executed
    assert str(executed) in str(err)
    assert err.ename and err.ename in str(err)
    assert isinstance(err.cell_index, int)
    assert executed.is_file()
    nb = nbformat.read(executed, as_version=4)
    assert nb.metadata.papermill.exception is True
    assert any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert not (out / "summary.json").exists()


# ---------------------------------------------------------------- refused before any kernel starts


@pytest.mark.parametrize(
    "params, named",
    [
        ({"num_q_binz": 50}, "num_q_binz"),  # unknown
        ({"num_q_bins": "lots"}, "num_q_bins"),  # wrong type
        ({"detector_distance_m": [1, 2]}, "detector_distance_m"),
        ({"input_path": "/x"}, "input_path"),  # a run argument passed as a parameter
    ],
)
def test_bad_parameters_are_refused_before_any_kernel(params, named, detector_file, tmp_path, monkeypatch):
    _forbid_execution(monkeypatch)
    out = tmp_path / "out"
    started = time.perf_counter()
    with pytest.raises(ParameterError, match=named):
        run_notebook("saxs", detector_file, out, params)
    assert time.perf_counter() - started < 2.0
    assert not out.exists()


def test_bad_cli_parameter_is_refused_before_any_kernel(detector_file, tmp_path, monkeypatch):
    _forbid_execution(monkeypatch)
    params = parse_cli_params([("frames_per_chunk", "3.5")], "saxs")
    with pytest.raises(ParameterError, match="frames_per_chunk"):
        run_notebook("saxs", detector_file, tmp_path / "out", params)
    assert not (tmp_path / "out").exists()


def test_missing_input_is_refused_before_any_kernel(tmp_path, monkeypatch):
    _forbid_execution(monkeypatch)
    with pytest.raises(InputDataError, match="missing.h5"):
        run_notebook("saxs", tmp_path / "missing.h5", tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_unknown_workload_is_refused(tmp_path, monkeypatch):
    _forbid_execution(monkeypatch)
    with pytest.raises(UnknownWorkload, match="nosuch"):
        run_notebook("nosuch", tmp_path, tmp_path / "out", {})


def test_output_path_that_is_a_file_is_refused(detector_file, tmp_path, monkeypatch):
    _forbid_execution(monkeypatch)
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(ParameterError, match="taken"):
        run_notebook("saxs", detector_file, taken, {})


# ---------------------------------------------------------------- kernel and custom notebooks


def _write_notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    params = nbformat.v4.new_code_cell("input_path = None\noutput_path = None\nsleep_s = 0.0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def test_kernel_is_this_interpreter_whatever_kernelspecs_say(tmp_path, monkeypatch):
    # A python3 kernelspec that cannot start, found before the real one: the runner must not use it.
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "broken", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    source = _write_notebook(
        tmp_path / "probe.ipynb",
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "Path(output_path, 'summary.json').write_text(json.dumps("
        "{'executable': sys.executable, 'cwd': os.getcwd(), 'sleep_s': sleep_s}))",
    )
    (tmp_path / "input.dat").write_bytes(b"x")
    caller_cwd = Path.cwd()
    run = run_notebook("noop", tmp_path / "input.dat", tmp_path / "out", {"sleep_s": 0.25},
                       notebook=source, progress=False)
    assert Path(run.summary["executable"]) == Path(sys.executable)
    assert run.summary["sleep_s"] == 0.25
    assert Path(run.summary["cwd"]) == run.output_dir  # the kernel works in the output directory...
    assert Path.cwd() == caller_cwd  # ...without moving the caller
    assert run.notebook == tmp_path / "out" / "noop.ipynb"


def test_custom_notebook_that_raises_names_the_executed_notebook(tmp_path):
    source = _write_notebook(tmp_path / "boom.ipynb", "raise RuntimeError('detector on fire')")
    (tmp_path / "input.dat").write_bytes(b"x")
    with pytest.raises(NotebookExecutionError) as info:
        run_notebook("noop", tmp_path / "input.dat", tmp_path / "out", {}, notebook=source, progress=False)
    message = str(info.value)
    executed = tmp_path / "out" / "noop.ipynb"
    assert str(executed) in message
    assert "RuntimeError: detector on fire" in message
    assert "In [3]" in message  # the execution count a reader finds in the executed notebook
    assert executed.is_file()


def test_notebook_that_writes_no_summary_is_an_error(tmp_path):
    source = _write_notebook(tmp_path / "quiet.ipynb", "pass")
    (tmp_path / "input.dat").write_bytes(b"x")
    with pytest.raises(NotebookExecutionError, match="summary.json"):
        run_notebook("noop", tmp_path / "input.dat", tmp_path / "out", {}, notebook=source, progress=False)


# ---------------------------------------------------------------- the notebooks as files


def test_saxs_parameters_cell_matches_the_workload_model():
    model = get_workload("saxs").params_model
    declared = papermill.inspect_notebook(str(notebook_path("saxs")))
    assert set(declared) == {"input_path", "output_path", *model.model_fields}
    for name, field in model.model_fields.items():
        assert ast.literal_eval(declared[name]["default"]) == field.default, name
    assert ast.literal_eval(declared["input_path"]["default"]) is None


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "papermill" not in nb.metadata
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs stored"
            assert "injected-parameters" not in cell.metadata.get("tags", [])
    assert get_workload(path.stem)  # every notebook belongs to an installed workload


def test_notebook_path_finds_checkout_notebooks_and_reports_missing():
    assert notebook_path("saxs") == NOTEBOOK_DIR / "saxs.ipynb"
    assert "saxs" in notebooks.available_notebooks()
    with pytest.raises(NotebookNotFound, match="nosuch.ipynb"):
        notebook_path("nosuch")


def test_notebook_path_falls_back_to_the_packaged_copy(tmp_path, monkeypatch):
    # An installed wheel: site-packages/rtlib/_notebooks, no checkout around it.
    package = tmp_path / "site-packages" / "rtlib"
    (package / "_notebooks").mkdir(parents=True)
    (package / "_notebooks" / "saxs.ipynb").write_text("{}")
    (tmp_path / "site-packages" / "notebooks").mkdir()
    (tmp_path / "site-packages" / "notebooks" / "saxs.ipynb").write_text("{}")  # someone else's
    monkeypatch.setattr(rtlib, "__file__", str(package / "__init__.py"))
    assert notebook_path("saxs") == package / "_notebooks" / "saxs.ipynb"


def test_wheel_packages_the_notebooks():
    text = (REPO / "pyproject.toml").read_text()
    assert '"notebooks" = "rtlib/_notebooks"' in text


# ---------------------------------------------------------------- command-line parameters


@pytest.mark.parametrize(
    "text, value",
    [("128", 128), ("-3", -3), ("0.5", 0.5), ("1e-10", 1e-10), ("True", True), ("false", False),
     ("None", None), ("null", None), ("~", None), ("/entry/data/data", "/entry/data/data"), ("", "")],
)
def test_parse_cli_value(text, value):
    parsed = parse_cli_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_cli_params_pairs_strings_and_text_fields():
    assert parse_cli_params([("beam_center_x_px", "128"), "num_q_bins=300", ("num_q_bins", "100")]) == {
        "beam_center_x_px": 128,
        "num_q_bins": 100,  # the last one wins, as in papermill
    }
    # A text field keeps its text even when it looks like a number; null still means None.
    assert parse_cli_params([("dataset_path", "1234"), ("num_q_bins", "7")], "saxs") == {
        "dataset_path": "1234",
        "num_q_bins": 7,
    }
    assert parse_cli_params(["dataset_path=/a=b"], "saxs") == {"dataset_path": "/a=b"}
    params = parse_cli_params([("beam_center_x_px", "128"), ("wavelength_angstrom", "1.24")], "saxs")
    validated = get_workload("saxs").validate(params)
    assert validated.beam_center_x_px == 128.0 and validated.wavelength_angstrom == 1.24
    with pytest.raises(ParameterError):
        parse_cli_params(["num_q_bins"])
    with pytest.raises(ParameterError):
        parse_cli_params([("", "1")])


def test_cell_running_past_timeout_is_an_error(tmp_path):
    source = _write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(60)")
    (tmp_path / "input.dat").write_bytes(b"x")
    started = time.perf_counter()
    with pytest.raises(NotebookExecutionError, match="timeout_s=1") as info:
        run_notebook("noop", tmp_path / "input.dat", tmp_path / "out", {}, notebook=source,
                     progress=False, timeout_s=1)
    assert time.perf_counter() - started < 30
    assert str(tmp_path / "out" / "noop.ipynb") in str(info.value)
    assert (tmp_path / "out" / "noop.ipynb").is_file()


def test_noop_notebook_runs(tmp_path):
    (tmp_path / "input.dat").write_bytes(b"12345")
    run = run_notebook("noop", tmp_path / "input.dat", tmp_path / "out", {"sleep_s": 0}, progress=False)
    assert run.summary == {"inputs": 1, "input_bytes": 5}
    assert (tmp_path / "out" / "noop.txt").is_file()
    assert run.notebook == tmp_path / "out" / "noop.ipynb"
