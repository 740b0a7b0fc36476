"""Run a workload's pipeline notebook with papermill.

Each workload ``<name>`` has a notebook ``notebooks/<name>.ipynb`` (packaged in
the wheel as ``rtlib/_notebooks/``) whose ``parameters`` cell names
``input_path``, ``output_path`` and every field of the workload's parameter
model. :func:`run_notebook` validates the parameters *before* a kernel starts,
executes the notebook on a kernel of this very interpreter, and keeps the
executed notebook beside the results as the record of the run. The notebook
writes ``summary.json`` into the output directory; the runner reads it back.

The same notebooks run under plain ``papermill`` from a beamline computer.
There papermill only warns about a ``-p`` name the parameters cell does not
define, so each notebook calls :func:`declare_parameters` at the end of its
parameters cell and :func:`check_injected_parameters` first thing in the next
code cell: a name injected in between that the workload does not take fails
the run with a ``ParameterError`` naming it. Under plain papermill that check
runs in the kernel (the first cell after the parameters); only
:func:`run_notebook` refuses bad parameters before a kernel starts.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import sys
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterable

import rtlib

from .errors import InputDataError, NotebookExecutionError, NotebookNotFound, ParameterError
from .workloads import Workload, get_workload, validate_params

SUMMARY_FILE = "summary.json"
# Parameters every pipeline notebook takes besides the workload's own.
RUN_PARAMETERS = ("input_path", "output_path")


@dataclass(frozen=True)
class NotebookRun:
    """What one notebook run produced."""

    workload: str
    notebook: Path  # the executed notebook: the record of the run
    output_dir: Path
    parameters: dict[str, Any]  # exactly what was injected into the notebook
    summary: dict[str, Any]  # read back from output_dir/summary.json
    wall_s: float


def notebook_dirs() -> list[Path]:
    """Where pipeline notebooks are looked for, first match wins."""
    package = Path(rtlib.__file__).resolve().parent
    checkout = package.parent
    dirs = []
    # Only a source checkout (editable install) has notebooks/ beside the
    # package; in site-packages a stray notebooks/ belongs to someone else.
    if (checkout / "pyproject.toml").is_file():
        dirs.append(checkout / "notebooks")
    dirs.append(package / "_notebooks")
    return dirs


def notebook_path(workload_name: str) -> Path:
    """The pipeline notebook of a workload."""
    searched = notebook_dirs()
    for directory in searched:
        candidate = directory / f"{workload_name}.ipynb"
        if candidate.is_file():
            return candidate
    raise NotebookNotFound(
        f"no notebook for workload {workload_name!r}: looked for {workload_name}.ipynb in "
        + ", ".join(str(d) for d in searched)
        + "; add one there or pass notebook=PATH"
    )


def available_notebooks() -> list[str]:
    """Workload names that have a pipeline notebook."""
    names = set()
    for directory in notebook_dirs():
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.ipynb"))
    return sorted(names)


# ---------------------------------------------------------------- parameters


_TRUE = {"True", "true"}
_FALSE = {"False", "false"}
_NULL = {"None", "none", "null", "Null", "NULL", "~"}


def parse_cli_value(text: str) -> Any:
    """One ``-p NAME VALUE`` value, read the way papermill reads it.

    Booleans, null, integers and floats become those types (accepting both the
    Python and the YAML spellings); anything else stays a string.
    """
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in _NULL:
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _wants_text(annotation: Any) -> bool:
    """Whether a field takes only text (str or a path), optionally None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
    else:
        members = [annotation]
    return bool(members) and all(isinstance(m, type) and issubclass(m, (str, PurePath)) for m in members)


def parse_cli_params(
    pairs: Iterable[str] | Iterable[tuple[str, str]],
    workload: Workload | str | None = None,
) -> dict[str, Any]:
    """Turn command-line parameters into a dict of typed values.

    ``pairs`` holds ``(NAME, VALUE)`` tuples (what ``-p NAME VALUE`` gives) or
    ``"NAME=VALUE"`` strings. Values are read by :func:`parse_cli_value`;
    when ``workload`` is given, a value for a text-only field stays text
    (``-p dataset_path 1234`` means the string ``"1234"``). A name given twice
    keeps its last value, as in papermill. Types are checked later, by the
    workload's model.
    """
    text_fields: set[str] = set()
    if workload is not None:
        wl = get_workload(workload) if isinstance(workload, str) else workload
        text_fields = {n for n, f in wl.params_model.model_fields.items() if _wants_text(f.annotation)}

    params: dict[str, Any] = {}
    for item in pairs:
        if isinstance(item, str):
            name, sep, text = item.partition("=")
            if not sep:
                raise ParameterError(f"parameter {item!r} is not NAME=VALUE")
        else:
            try:
                name, text = item
            except (TypeError, ValueError):
                raise ParameterError(f"parameter {item!r} is not a (NAME, VALUE) pair") from None
        name = name.strip()
        if not name:
            raise ParameterError(f"parameter {item!r} has no name")
        value = parse_cli_value(text)
        if name in text_fields and value is not None:
            value = text
        params[name] = value
    return params


# ------------------------------------------------- parameters in the kernel

# Where declare_parameters leaves the names the parameters cell defined (a dunder: never a parameter).
_DECLARED_KEY = "__rtlib_declared_parameters__"


# What papermill's Python translator writes: literals only.
_INJECTABLE = (type(None), bool, int, float, str, list, dict, tuple)


def _public_names(namespace: dict[str, Any]) -> set[str]:
    return {name for name in namespace if not name.startswith("_")}


def declare_parameters(namespace: dict[str, Any]) -> None:
    """Record the names a notebook's parameters cell defined; call it last in that cell with ``globals()``.

    papermill injects its ``-p`` values in a new cell right after the parameters
    cell, so every name that appears between this call and
    :func:`check_injected_parameters` was injected.
    """
    namespace[_DECLARED_KEY] = frozenset(_public_names(namespace))


def check_injected_parameters(namespace: dict[str, Any], workload: Workload | str | None = None) -> None:
    """Refuse names injected after the parameters cell that neither it nor the workload's model defines.

    Call it with ``globals()`` first thing in the cell after the parameters.
    A notebook-only name the parameters cell defines (say, which peaks to plot)
    may be injected; so may ``input_path``, ``output_path`` and every field of
    the workload's parameter model. With no workload (a notebook that is not a
    workload's pipeline), only the names the parameters cell defines may be
    injected. The record is used once: running the cell
    again interactively, after later cells defined more names, checks nothing.
    Raises ``ParameterError`` naming each unknown parameter, with the closest
    allowed name and the list of what the workload accepts.
    """
    declared = namespace.pop(_DECLARED_KEY, None)
    if declared is None:
        return
    wl = get_workload(workload) if isinstance(workload, str) else workload
    if wl is None:  # the parameters: declared names holding a value papermill could inject (not In/Out)
        accepted = sorted(n for n in declared if n not in ("In", "Out") and isinstance(namespace.get(n), _INJECTABLE))
        owner = "this notebook"
    else:
        accepted, owner = [*RUN_PARAMETERS, *wl.params_model.model_fields], f"workload {wl.name!r}"
    # Only literals can have been injected; the imports of the checking cell are modules, functions, classes.
    unknown = sorted(n for n in _public_names(namespace) - set(declared) - set(accepted)
                     if isinstance(namespace[n], _INJECTABLE))
    if not unknown:
        return
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, accepted, n=1)
        problems.append(f"unknown parameter {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    where = "" if wl is None else " (see `rtlib workloads`)"
    raise ParameterError(
        f"invalid parameters for {owner}: " + "; ".join(problems) + f"; it accepts: {', '.join(accepted)}{where}"
    )


# ---------------------------------------------------------------- kernel


@functools.cache
def current_interpreter_kernel_manager() -> type:
    """A kernel-manager class that starts ipykernel on ``sys.executable``.

    Installed kernelspecs are not consulted: a user-level ``python3``
    kernelspec pointing at some other Python cannot hijack the run, and a
    fresh ``pip install`` needs no ``ipykernel install`` step.
    """
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class CurrentInterpreterKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(
                    argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    display_name=f"Python {sys.version_info[0]}.{sys.version_info[1]} ({sys.prefix})",
                    language="python",
                )
            return self._kernel_spec

    return CurrentInterpreterKernelManager


# ---------------------------------------------------------------- running


def run_notebook(
    workload_name: str,
    input_path: str | Path,
    output_path: str | Path,
    params: dict[str, Any] | None = None,
    *,
    kernel_name: str | None = None,
    progress: bool = True,
    timeout_s: float | None = None,
    notebook: str | Path | None = None,
    log_output: bool = False,
) -> NotebookRun:
    """Execute a workload's notebook on one input, into ``output_path``.

    Everything that can be checked is checked before a kernel starts:
    the workload exists (``UnknownWorkload``), ``params`` pass its model
    (``ParameterError``), the notebook exists (``NotebookNotFound``) and the
    input exists (``InputDataError``). A failing cell, a cell running longer
    than ``timeout_s`` seconds or a dying kernel raises
    ``NotebookExecutionError`` naming the executed notebook to inspect.

    ``kernel_name`` picks an installed kernelspec; by default the kernel runs
    on this interpreter. ``notebook`` replaces the workload's own notebook.
    """
    workload = get_workload(workload_name)
    params = dict(params or {})
    for name in RUN_PARAMETERS:
        if name in params:
            raise ParameterError(f"{name} is an argument of the run, not a parameter of workload {workload_name!r}")
    validated = validate_params(workload, params)

    if notebook is None:
        source = notebook_path(workload_name)
    else:
        source = Path(notebook).expanduser()
        if not source.is_file():
            raise NotebookNotFound(f"notebook {source} does not exist")

    input_file = Path(input_path).expanduser().resolve()
    if not input_file.exists():
        raise InputDataError(f"input {input_file} does not exist")

    output_dir = Path(output_path).expanduser().resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise ParameterError(f"output path {output_dir} is a file; give a directory for the results")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary_file = output_dir / SUMMARY_FILE
    # A summary left by an earlier run into the same directory must not pass for this run's.
    summary_file.unlink(missing_ok=True)
    executed = output_dir / f"{workload_name}.ipynb"

    injected = {
        "input_path": str(input_file),
        "output_path": str(output_dir),
        **validated.model_dump(mode="json"),
    }

    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    engine_kwargs: dict[str, Any] = {
        # The kernel's working directory; unlike papermill's cwd= this does
        # not chdir the calling process, which may be running other jobs.
        "resources": {"metadata": {"path": str(output_dir)}},
    }
    if kernel_name is None:
        engine_kwargs["kernel_manager_class"] = current_interpreter_kernel_manager()
    if timeout_s is not None:
        engine_kwargs["execution_timeout"] = max(1, math.ceil(timeout_s))  # nbclient takes whole seconds

    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(executed),
            parameters=injected,
            kernel_name=kernel_name,
            progress_bar=progress,
            log_output=log_output,
            **engine_kwargs,
        )
    except PapermillExecutionError as err:
        raise NotebookExecutionError(
            f"notebook {source.name} failed at In [{err.exec_count}] with {err.ename}: {err.evalue}\n"
            f"the executed notebook, with the full traceback: {executed}",
            notebook_path=executed,
            cell_index=err.cell_index,
            ename=err.ename,
            evalue=err.evalue,
        ) from err
    except CellTimeoutError as err:
        raise NotebookExecutionError(
            f"notebook {source.name}: a cell ran longer than timeout_s={timeout_s}; "
            f"the notebook executed so far is {executed}",
            notebook_path=executed,
            ename="CellTimeoutError",
            evalue=str(err),
        ) from err
    except DeadKernelError as err:
        raise NotebookExecutionError(
            f"notebook {source.name}: the kernel died ({err}), often from running out of memory; "
            f"the notebook executed so far is {executed}",
            notebook_path=executed,
            ename="DeadKernelError",
            evalue=str(err),
        ) from err
    wall_s = time.perf_counter() - started

    try:
        summary = json.loads(summary_file.read_text())
    except FileNotFoundError:
        raise NotebookExecutionError(
            f"notebook {source.name} finished without writing {summary_file}; see {executed}",
            notebook_path=executed,
        ) from None
    except json.JSONDecodeError as err:
        raise NotebookExecutionError(
            f"notebook {source.name} wrote an unreadable {summary_file} ({err}); see {executed}",
            notebook_path=executed,
        ) from None

    return NotebookRun(
        workload=workload_name,
        notebook=executed,
        output_dir=output_dir,
        parameters=injected,
        summary=summary,
        wall_s=wall_s,
    )
