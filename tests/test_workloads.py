"""The plug-in registry and parameter validation shared by every entry point (CLI, agent, notebooks)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from rtlib.errors import ParameterError, UnknownWorkload
from rtlib.workloads import base


def test_installed_workloads_and_schema():
    assert {"saxs", "noop"} <= set(base.workload_names())
    schema = base.get_workload("saxs").json_schema()
    assert "num_q_bins" in schema["properties"] and schema["additionalProperties"] is False


def test_unknown_workload_lists_installed():
    with pytest.raises(UnknownWorkload, match=r"unknown workload 'saxz'; installed workloads: .*saxs"):
        base.get_workload("saxz")


def test_broken_plugin_does_not_hide_the_others(monkeypatch):
    real = base._entry_points()
    broken = EntryPoint(name="broken", value="rtlib_no_such_module:workload", group="rtlib.workloads")
    monkeypatch.setattr(base, "_entry_points", lambda: {**real, "broken": broken})
    monkeypatch.setattr(base, "_loaded", {})
    assert base.get_workload("noop").name == "noop"
    with pytest.raises(UnknownWorkload, match=r"workload 'broken' \(rtlib_no_such_module:workload\) failed to load: ModuleNotFoundError"):
        base.get_workload("broken")


def test_parameter_errors_name_the_parameter():
    wl = base.get_workload("noop")
    with pytest.raises(ParameterError, match=r"unknown parameter 'sleep'; noop accepts: sleep_s"):
        wl.validate({"sleep": 1})
    with pytest.raises(ParameterError, match=r"parameter 'sleep_s'.*greater than or equal to 0.*got -1"):
        wl.validate({"sleep_s": -1})
    assert wl.validate({"sleep_s": "2.5"}).sleep_s == 2.5
