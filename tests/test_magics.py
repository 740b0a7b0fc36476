"""The %rtlib magics, run in an in-process IPython shell against a temporary workspace."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from rtlib import config as cfg
from rtlib.store import JobStore

from helpers import produce


@pytest.fixture
def ip(tmp_path, monkeypatch):
    for var in ("RTLIB_CONFIG", "RTLIB_STORE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RTLIB_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_ext")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_ext")
    # the shell is a process-wide singleton: left behind, it makes later Qt code (napari) think it runs in IPython
    InteractiveShell.clear_instance()


@pytest.fixture
def scan(tmp_path):
    settings = cfg.load(workspace=tmp_path / "ws")
    cfg.ensure_workspace(settings)
    (ep, rel), = produce(settings, 1)
    return settings, f"{ep}:{rel}"


def test_help_is_printed_not_exited(ip, capsys):
    assert ip.run_line_magic("rtlib", "--help") is None
    out = capsys.readouterr().out
    assert "usage: %rtlib" in out and all(cmd in out for cmd in ("submit", "status", "wait", "cancel", "agent"))
    ip.run_line_magic("rtlib", "submit --help")
    out = capsys.readouterr().out
    assert "NAME=VALUE" in out and "--input" in out and "--beamline" in out
    ip.run_line_magic("rtlib", "wait --help")
    assert "--timeout-s" in capsys.readouterr().out


def test_bad_usage_is_a_usage_error(ip):
    with pytest.raises(UsageError, match="invalid choice"):
        ip.run_line_magic("rtlib", "frobnicate")
    with pytest.raises(UsageError, match="--input"):
        ip.run_line_magic("rtlib", "submit saxs")


def test_submit_status_cancel_and_wait(ip, scan, capsys):
    settings, location = scan
    job = ip.run_line_magic("rtlib", f"submit saxs --input {location} --beamline aps-demo --queue preemptable -p num_q_bins=64 -p dataset_path=/entry/data/data")
    assert isinstance(job, int)
    assert f"submitted job {job}" in capsys.readouterr().out
    store = JobStore(settings.store)
    try:
        row = store.get_job(job)
        assert row.params["num_q_bins"] == 64 and row.queue == "preemptable" and row.account == "rtlib::aps"
        ip.run_line_magic("rtlib", "status")
        out = capsys.readouterr().out
        assert f"{job:>5}  CREATED" in out and "CREATED: 1" in out
        assert ip.run_line_magic("rtlib", f"cancel {job}") == "CANCELLED"
        assert store.get_job(job).state.value == "CANCELLED"
        with pytest.raises(UsageError, match=f"job {job} ended CANCELLED"):
            ip.run_line_magic("rtlib", "wait")  # the last job submitted here
        ip.run_line_magic("rtlib", f"status {job}")
        out = capsys.readouterr().out
        assert "CREATED -> CANCELLED" in out.replace("  ", " ").replace("  ", " ") or "-> CANCELLED" in out
    finally:
        store.close()


def test_server_side_validation_names_the_parameter(ip, scan):
    _, location = scan
    with pytest.raises(UsageError, match="params.num_q_bins"):
        ip.run_line_magic("rtlib", f"submit saxs --input {location} -p num_q_bins=1")
    with pytest.raises(UsageError, match="unknown workload"):
        ip.run_line_magic("rtlib", f"submit saxz --input {location}")
    with pytest.raises(UsageError, match="'..' is not allowed"):
        ip.run_line_magic("rtlib", "submit saxs --input aps:../../etc/passwd")


def test_wait_times_out_with_a_hint(ip, scan):
    _, location = scan
    job = ip.run_line_magic("rtlib", f"submit noop --input {location}")
    with pytest.raises(UsageError, match=r"still CREATED after 0.3 s.*agent start"):
        ip.run_line_magic("rtlib", f"wait {job} --timeout-s 0.3 --poll-s 0.05")


def test_config_switches_workspace(ip, tmp_path, capsys):
    other = tmp_path / "other-ws"
    ip.run_line_magic("rtlib", f"config --workspace {other}")
    assert str(other) in capsys.readouterr().out
    assert (other / "endpoints" / "aps").is_dir()
