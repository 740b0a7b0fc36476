"""The workload plug-in contract and its registry.

A workload is a name, a pydantic parameter model, the extra inputs its
parameters name (beyond the job's own input files), and a ``run`` function::

    run(params, inputs, outdir, progress) -> summary

``inputs`` are local paths of the staged input files, ``outdir`` an empty
directory the results go into, ``progress(fraction, message)`` reports
progress in [0, 1], and the returned summary is a small JSON-able dict.
A facility adds its own workload with an entry point in the
``rtlib.workloads`` group pointing at a ``Workload`` instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from ..errors import ParameterError, UnknownWorkload

ProgressFn = Callable[[float, str], None]
RunFn = Callable[[BaseModel, list[Path], Path, ProgressFn], dict[str, Any]]


def _no_extra_inputs(params: BaseModel) -> list[str]:
    return []


@dataclass(frozen=True)
class Workload:
    name: str
    params_model: type[BaseModel]
    run: RunFn
    description: str = ""
    extra_inputs: Callable[[BaseModel], list[str]] = field(default=_no_extra_inputs)

    def validate(self, params: dict[str, Any]) -> BaseModel:
        return validate_params(self, params)

    def json_schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()


_loaded: dict[str, Workload] = {}


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group="rtlib.workloads")}


def workload_names() -> list[str]:
    return sorted(_entry_points())


def get_workload(name: str) -> Workload:
    """Load one plug-in by name, so a broken third-party plug-in cannot take the others down."""
    if name in _loaded:
        return _loaded[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise UnknownWorkload(f"unknown workload {name!r}; installed workloads: {', '.join(workload_names()) or 'none'}")
    try:
        wl = ep.load()
    except Exception as err:
        raise UnknownWorkload(f"workload {name!r} ({ep.value}) failed to load: {type(err).__name__}: {err}") from err
    if not isinstance(wl, Workload):
        raise UnknownWorkload(f"entry point {name!r} ({ep.value}) is not an rtlib Workload")
    _loaded[name] = wl
    return wl


def validate_params(workload: Workload, params: dict[str, Any]) -> BaseModel:
    """Validate before anything runs; every problem is named with its parameter."""
    try:
        return workload.params_model.model_validate(params)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(parameters)"
            if e["type"] == "extra_forbidden":
                allowed = ", ".join(workload.params_model.model_fields)
                problems.append(f"unknown parameter {key!r}; {workload.name} accepts: {allowed}")
            else:
                problems.append(f"parameter {key!r}: {e['msg']} (got {e.get('input')!r})")
        raise ParameterError(f"invalid parameters for workload {workload.name!r}: " + "; ".join(problems)) from None
