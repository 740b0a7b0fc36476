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


def _demo_table(stdout: str) -> dict[str, str]:
    """The demo's summary table as {figure: value}."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def test_demo_saxs_and_its_exit_status_covers_this_run_only(tmp_path):
    ws = str(tmp_path / "demo")
    args = ("demo", "--workload", "saxs", "--jobs", "3", "--size-mb", "0.5", "--link-mbps", "0", "--workspace", ws)
    r = rtlib(*args)
    assert r.returncode == 0, r.stderr + r.stdout
    assert len(list((tmp_path / "demo/endpoints").glob("*/results/saxs/job-*/saxs.h5"))) == 3
    # a second run with one truncated dataset: non-zero, naming that job (6) and its file, and only it
    bad = rtlib(*args, "--bad-inputs", "1")
    assert bad.returncode == 1, bad.stderr + bad.stdout
    assert "job 6:" in bad.stderr and "scan-0005.h5" in bad.stderr and "1 job(s) did not finish" in bad.stderr
    assert not any(f"job {j}:" in bad.stderr for j in (1, 2, 3, 4, 5)), bad.stderr
    figures = _demo_table(bad.stdout)
    per_job = len(list((tmp_path / "demo/endpoints/aps/results/saxs/job-1").iterdir()))  # saxs.h5, I(q) csv, summary
    assert per_job >= 2
    assert figures["jobs DONE"] == "2" and figures["jobs FAILED"] == "1"
    assert figures["results verified at the beamlines"] == str(2 * per_job)
    # a third run in the same workspace, which now holds 5 DONE jobs and a FAILED one: exits 0, counts its own 3
    again = rtlib(*args)
    assert again.returncode == 0, again.stderr + again.stdout
    figures = _demo_table(again.stdout)
    assert figures["jobs DONE"] == "3" and "jobs FAILED" not in figures, again.stdout
    assert figures["results verified at the beamlines"] == str(3 * per_job)
    assert len(list((tmp_path / "demo/endpoints").glob("*/raw/scan-*.h5"))) == 9, "earlier runs' inputs are kept"


def test_demo_runs_to_completion(tmp_path):
    r = rtlib("demo", "--jobs", "6", "--size-mb", "1", "--link-mbps", "400", "--workspace", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "jobs DONE" in r.stdout and "│ 6 " in r.stdout.split("jobs DONE")[1][:30]
    assert "results verified at the beamlines" in r.stdout
    for ep in ("aps", "als", "nsls2"):
        assert list((tmp_path / "demo/endpoints" / ep / "results/xpcs").glob("job-*/xpcs.h5")), ep


def test_submit_agent_status_and_failure_reason(tmp_path):
    ws = str(tmp_path / "ws")
    aps = tmp_path / "ws/endpoints/aps"
    assert rtlib("synth", "detector", str(aps / "raw/a.h5"), "--size-mb", "0.5").returncode == 0
    (aps / "raw/bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (tmp_path / "private.h5").write_bytes(b"not for you")
    os.symlink(tmp_path / "private.h5", aps / "raw/escape.h5")  # inside the endpoint, resolving outside its root
    ok = rtlib("submit", "saxs", "-i", "aps:raw/a.h5", "-p", "num_q_bins", "50", "-w", ws)
    assert ok.returncode == 0 and "submitted job 1" in ok.stdout, ok.stderr
    assert rtlib("submit", "saxs", "-i", "aps:raw/bad.h5", "-w", ws).returncode == 0  # 2: truncated HDF5
    assert rtlib("submit", "saxs", "-i", "aps:raw/a.h5", "-p", "dataset_path", "/entry/nope", "-w", ws).returncode == 0  # 3
    assert rtlib("submit", "saxs", "-i", "aps:raw/escape.h5", "-w", ws).returncode == 0  # 4: path escape
    bad_param = rtlib("submit", "saxs", "-i", "aps:raw/a.h5", "-p", "num_qbins", "50", "-w", ws)
    assert bad_param.returncode == 2 and "unknown parameter 'num_qbins'" in bad_param.stderr
    # 5: a client that skipped validation recorded an unknown parameter; the agent refuses it
    from rtlib import config as cfg
    from rtlib.store import JobSpec, JobStore

    store = JobStore(cfg.load(workspace=Path(ws)).store)
    store.create_job(JobSpec(workload="saxs", source_endpoint="aps", inputs=["raw/a.h5"], dest_endpoint="aps",
                             output_path="results/x", params={"beam_centre": 3}))
    store.close()
    assert rtlib("agent", "--until-idle", "-w", ws).returncode == 0
    st = rtlib("status", "--json", "-w", ws)
    rows = {j["id"]: j for j in json.loads(st.stdout)}
    assert rows[1]["state"] == "DONE"
    reasons = {2: "bad.h5", 3: "/entry/nope", 4: "outside", 5: "unknown parameter 'beam_centre'"}
    for jid, reason in reasons.items():
        assert rows[jid]["state"] == "FAILED" and reason in rows[jid]["error"], rows[jid]
        shown = rtlib("status", str(jid), "-w", ws).stdout
        assert "FAILED" in shown and reason in " ".join(shown.split()), shown
    table = rtlib("status", "-w", ws, env={"COLUMNS": "400"})
    failed_rows = [ln for ln in table.stdout.splitlines() if "│ FAILED" in ln]
    assert len(failed_rows) == 4, table.stdout
    for jid, reason in reasons.items():
        assert any(ln.lstrip("│ ").startswith(f"{jid} ") and reason in ln for ln in failed_rows), (jid, table.stdout)
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


@pytest.mark.parametrize("command", ["submit", "run"])
def test_help_shows_how_to_give_workload_parameters(command):
    r = rtlib(command, "--help")
    assert r.returncode == 0 and "-p NAME VALUE" in r.stdout and "rtlib workloads" in r.stdout


def test_run_notebook_headless(tmp_path):
    data = tmp_path / "scan.h5"
    assert rtlib("synth", "detector", str(data), "--size-mb", "0.5").returncode == 0
    r = rtlib("run", "saxs", "-p", "input_path", str(data), "-p", "output_path", str(tmp_path / "out"), "-p", "num_q_bins", "40")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out/saxs.ipynb").exists() and (tmp_path / "out/saxs.h5").exists()
    assert (tmp_path / "out/saxs_iq.png").stat().st_size > 1000, "the notebook's I(q) plot"
    bad = rtlib("run", "saxs", "-p", "input_path", str(data), "-p", "output_path", str(tmp_path / "out2"), "-p", "num_q_binz", "40")
    assert bad.returncode == 2 and "num_q_binz" in bad.stderr and not (tmp_path / "out2").exists()
