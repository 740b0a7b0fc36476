"""The `rtlib` command end to end, as a person types it (subprocesses of this interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RTLIB = [sys.executable, "-m", "rtlib.cli"]


def rtlib(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "RTLIB_CONFIG": "", "COLUMNS": "200", **(env or {})}
    return subprocess.run([*RTLIB, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def test_demo_saxs(tmp_path):
    r = rtlib("demo", "--workload", "saxs", "--jobs", "3", "--size-mb", "1", "--link-mbps", "0", "--workspace", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert len(list((tmp_path / "demo/endpoints").glob("*/results/saxs/job-*/saxs.h5"))) == 3


def test_demo_runs_to_completion(tmp_path):
    r = rtlib("demo", "--jobs", "6", "--size-mb", "1", "--link-mbps", "400", "--workspace", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "jobs DONE" in r.stdout and "│ 6 " in r.stdout.split("jobs DONE")[1][:30]
    assert "results verified at the beamlines" in r.stdout
    for ep in ("aps", "als", "nsls2"):
        assert list((tmp_path / "demo/endpoints" / ep / "results/xpcs").glob("job-*/xpcs.h5")), ep


def test_submit_agent_status_and_failure_reason(tmp_path):
    ws = str(tmp_path / "ws")
    assert rtlib("synth", "detector", str(tmp_path / "ws/endpoints/aps/raw/a.h5"), "--size-mb", "0.5").returncode == 0
    (tmp_path / "ws/endpoints/aps/raw/bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    ok = rtlib("submit", "saxs", "-i", "aps:raw/a.h5", "-p", "num_q_bins", "50", "-w", ws)
    assert ok.returncode == 0 and "submitted job 1" in ok.stdout, ok.stderr
    assert rtlib("submit", "saxs", "-i", "aps:raw/bad.h5", "-w", ws).returncode == 0
    bad_param = rtlib("submit", "saxs", "-i", "aps:raw/a.h5", "-p", "num_qbins", "50", "-w", ws)
    assert bad_param.returncode == 2 and "unknown parameter 'num_qbins'" in bad_param.stderr
    assert rtlib("agent", "--until-idle", "-w", ws).returncode == 0
    st = rtlib("status", "--json", "-w", ws)
    rows = {j["id"]: j for j in json.loads(st.stdout)}
    assert rows[1]["state"] == "DONE" and rows[2]["state"] == "FAILED"
    assert "bad.h5" in rows[2]["error"]
    table = rtlib("status", "-w", ws)
    assert "FAILED" in table.stdout and "bad.h5" in table.stdout
    one = rtlib("status", "2", "-w", ws)
    assert "CREATED" in one.stdout and "FAILED" in one.stdout
    assert rtlib("retry", "2", "-w", ws).returncode == 0
    assert json.loads(rtlib("status", "2", "--json", "-w", ws).stdout)["job"]["state"] == "CREATED"
    assert rtlib("cancel", "2", "-w", ws).returncode == 0
    again = rtlib("cancel", "2", "-w", ws)
    assert again.returncode == 2 and "already CANCELLED" in again.stderr


def test_config_show_redacts_secrets(tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text(f"""
workspace = "{tmp_path / 'ws'}"
store_url = "postgresql+psycopg://rtlib:hunter2@127.0.0.1:5432/rtlib"
[endpoints.aps]
root = "{tmp_path / 'aps'}"
[beamlines.bl]
facility = "aps"
endpoint = "aps"
service_account = {{ client_id = "abc", client_secret = "s3cr3t-value" }}
[sites.local]
scratch_endpoint = "aps"
""")
    r = rtlib("config", "show", "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "s3cr3t-value" not in r.stdout and "hunter2" not in r.stdout
    data = json.loads(r.stdout)
    assert data["beamlines"]["bl"]["service_account"]["client_secret"] == "***"


def test_invalid_config_names_file_key_and_allowed(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[endpoints.aps]\nkind = "ftp"\nroot = "/x"\n[sites.local]\nscratch_endpoint = "aps"\n')
    r = rtlib("config", "show", "--config", str(cfg))
    assert r.returncode == 2
    assert str(cfg) in r.stderr and "endpoints.aps.kind" in r.stderr and "'local'" in r.stderr and "'globus'" in r.stderr


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["agent", "--help"], ["synth", "detector", "--help"]])
def test_help(args):
    r = rtlib(*args)
    assert r.returncode == 0 and "Usage" in r.stdout


def test_run_notebook_headless(tmp_path):
    data = tmp_path / "scan.h5"
    assert rtlib("synth", "detector", str(data), "--size-mb", "0.5").returncode == 0
    r = rtlib("run", "saxs", "-p", "input_path", str(data), "-p", "output_path", str(tmp_path / "out"), "-p", "num_q_bins", "40")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out/saxs.ipynb").exists() and (tmp_path / "out/saxs.h5").exists()
    assert (tmp_path / "out/saxs_iq.png").stat().st_size > 1000, "the notebook's I(q) plot"
    bad = rtlib("run", "saxs", "-p", "input_path", str(data), "-p", "output_path", str(tmp_path / "out2"), "-p", "num_q_binz", "40")
    assert bad.returncode == 2 and "num_q_binz" in bad.stderr and not (tmp_path / "out2").exists()
