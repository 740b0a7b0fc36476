"""Issue 15, finding 1 (and the job-field part of 7): nothing a job or a config carries adds a line or an
option to the batch script handed to qsub/sbatch. Values are refused at submit, at config load, and
again where the script is built; job fields of the wrong type are refused naming the field."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import dask
import pytest

from rtlib import config as cfg
from rtlib import jobs
from rtlib.compute.jobqueue import JobqueueBackend, job_script
from rtlib.errors import ConfigError, RtlibError
from rtlib.store import JobStore

INJECTED = "proj\n#PBS -l select=999\ntouch ~/pwned"
HOSTILE_ACCOUNTS = [
    INJECTED,
    "proj\n#SBATCH --uid=0\ntouch ~/pwned",
    "proj\r#PBS -l select=999",
    "proj\u2028touch ~/pwned",  # a line separator to str.splitlines, not to bash
    "proj\u0085x",
    "proj\x00x",
    "-A -x",  # a second option on the directive line
    "proj -o /home/other/.bashrc",
    "proj;touch ~/pwned",
    "$(touch ~/pwned)",
    "`touch ~/pwned`",
    "proj::sub\n#PBS -l select=999",
    "proj::-x",
    "p" * 5000,
]
QUEUES = [{"name": "demand", "max_nodes": 8, "max_walltime_min": 60},
          {"name": "preemptable", "max_nodes": 8, "nodes_per_job": 4, "max_walltime_min": 240, "preemptable": True}]  # fmt: skip


def _raw_without_accounts(workspace: Path) -> dict:
    """The embedded default with no [accounts] table: any account text used to pass submit."""
    raw = cfg.default_config(workspace)
    raw["accounts"] = {}
    for bl in raw["beamlines"].values():
        bl.pop("account")
    raw["sites"]["pbs"] = {"compute": "pbs", "scratch_endpoint": "alcf", "queues": copy.deepcopy(QUEUES),
                           "jobqueue": {"system": "polaris", "filesystems": "home:eagle", "prologue": ["module load conda"]}}  # fmt: skip
    raw["sites"]["slurm"] = {"compute": "slurm", "scratch_endpoint": "alcf", "queues": copy.deepcopy(QUEUES),
                             "jobqueue": {"prologue": ["source /opt/env.sh"]}}  # fmt: skip
    return raw


@pytest.fixture
def open_settings(tmp_path):
    settings = cfg.validate(_raw_without_accounts(tmp_path / "ws"))
    cfg.ensure_workspace(settings)
    return settings


@pytest.fixture
def job_store(open_settings):
    store = JobStore(open_settings.store)
    yield store
    store.close()


def _submit(store, settings, **fields):
    fields = {"source_endpoint": "aps", "inputs": ["raw/scan.h5"], **fields}
    return jobs.submit(store, settings, "noop", **fields)


@pytest.mark.parametrize("account", HOSTILE_ACCOUNTS, ids=range(len(HOSTILE_ACCOUNTS)))
def test_hostile_account_is_refused_at_submit_without_an_accounts_table(open_settings, job_store, account):
    with pytest.raises(RtlibError) as err:
        _submit(job_store, open_settings, account=account)
    msg = str(err.value)
    assert msg.startswith("account") and "project::suballocation" in msg, msg
    assert "\n" not in msg and "\r" not in msg and "\u2028" not in msg and len(msg) < 800, msg  # shown escaped and cut
    assert job_store.list_jobs() == []
    job_id = _submit(job_store, open_settings, account="APS_Data-1.x::8-id-i")  # a good one still passes
    assert job_store.get_job(job_id).account == "APS_Data-1.x::8-id-i"


def test_cli_submit_refuses_the_injected_account(tmp_path):
    ws = tmp_path / "ws"
    conf = tmp_path / "site.toml"
    conf.write_text(f'workspace = "{ws}"\n[endpoints.aps]\nroot = "{ws}/aps"\n[endpoints.alcf]\nroot = "{ws}/alcf"\n'
                    '[sites.local]\nscratch_endpoint = "alcf"\n')  # no [accounts]
    env = {**os.environ, "RTLIB_CONFIG": "", "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "rtlib.cli", "submit", "noop", "-i", "aps:raw/scan.h5", "--account", INJECTED,
                          "--config", str(conf)], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "account" in run.stderr and "project::suballocation" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert "submitted job" not in run.stdout
    status = subprocess.run([sys.executable, "-m", "rtlib.cli", "status", "--json", "--config", str(conf)],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert "pwned" not in status.stdout, status.stdout


BAD_FIELDS = [
    ("site", ["local"]), ("site", {"local": 1}), ("site", 3),
    ("queue", ["demand"]), ("queue", {"q": 1}),
    ("account", ["proj"]), ("account", {"proj": 1}), ("account", 5),
    ("beamline", ["aps-demo"]), ("beamline", {"b": 1}), ("beamline", 7),
    ("priority", "5"), ("priority", [1]), ("priority", 1e300), ("priority", math.inf), ("priority", -math.inf),
    ("priority", math.nan), ("priority", 2.7), ("priority", 2.0), ("priority", True), ("priority", 2**63), ("priority", None),
]  # fmt: skip


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v in BAD_FIELDS])
def test_job_fields_of_the_wrong_type_are_refused_naming_the_field(open_settings, job_store, field, value):
    with pytest.raises(RtlibError) as err:
        _submit(job_store, open_settings, **{field: value})
    assert str(err.value).startswith(f"{field}:"), str(err.value)
    assert getattr(err.value, "field", None) == field
    assert job_store.list_jobs() == []  # 2.7 is not stored as 2


@pytest.mark.parametrize("compute", ["pbs", "slurm"])
@pytest.mark.parametrize("queue", ["demand", "preemptable"])  # one node; four nodes (launcher line)
def test_a_script_is_never_built_with_a_crafted_account_and_holds_only_template_lines(open_settings, compute, queue):
    site = open_settings.sites[compute]
    for account in HOSTILE_ACCOUNTS:
        with pytest.raises(RtlibError, match="account") as err:
            job_script(site, queue, account, scheduler_address="tcp://10.1.2.3:8786")
        assert "\n" not in str(err.value)
    script = job_script(site, queue, "APSDataAnalysis", scheduler_address="tcp://10.1.2.3:8786")
    prefix = {"pbs": "#PBS", "slurm": "#SBATCH"}[compute]
    nodes = site.queue(queue).nodes_per_job
    expected = {
        "pbs": {"-N rtlib-" + queue, "-q " + queue, "-A APSDataAnalysis", f"-l select={nodes}:system=polaris",
                f"-l walltime={site.queue(queue).max_walltime_min // 60:02.0f}:00:00", "-l place=scatter",
                "-l filesystems=home:eagle", "-r y" if queue == "preemptable" else "-r n"},
        "slurm": {"-J rtlib-" + queue, "-p " + queue, "-A APSDataAnalysis", "-n 1", "--cpus-per-task=1", "--mem=954M",
                  f"-t {site.queue(queue).max_walltime_min // 60:02.0f}:00:00", "--no-requeue", f"--nodes={nodes}",
                  "--ntasks-per-node=1"},
    }[compute]  # fmt: skip
    lines = [ln for ln in script.split("\n") if ln.strip()]
    directives = [ln for ln in lines if ln.startswith("#") and not ln.startswith("#!")]
    assert all(ln.startswith(prefix + " ") and ln[len(prefix) + 1:] in expected for ln in directives), directives
    body = [ln for ln in lines[1:] if ln not in directives]
    assert body[:-1] == list(site.jobqueue.prologue) and "distributed.cli.dask_worker" in body[-1], body


CONFIG_INJECTIONS = [
    ("queues", lambda q, jq: q[0].update(name="demand\n#PBS -l select=999"), "sites.pbs.queues.0.name"),
    ("queues", lambda q, jq: q[0].update(scheduler_queue="demand -W x"), "sites.pbs.queues.0.scheduler_queue"),
    ("queues", lambda q, jq: q[0].update(extra_directives=["--qos=x\ntouch ~/pwned"]), "sites.pbs.queues.0.extra_directives.0"),
    ("queues", lambda q, jq: q[0].update(extra_directives=["-l x\r#PBS -l select=999"]), "extra_directives.0"),
    ("queues", lambda q, jq: q[0].update(max_walltime_min=math.inf), "sites.pbs.queues.0.max_walltime_min"),
    ("jobqueue", lambda q, jq: jq.update(prologue=["module load conda\ntouch ~/pwned"]), "sites.pbs.jobqueue.prologue.0"),
    ("jobqueue", lambda q, jq: jq.update(prologue=["module load conda\u2028touch ~/pwned"]), "sites.pbs.jobqueue.prologue.0"),
    ("jobqueue", lambda q, jq: jq.update(filesystems="home:eagle -o /etc/x"), "sites.pbs.jobqueue.filesystems"),
    ("jobqueue", lambda q, jq: jq.update(python="$(touch ~/pwned)"), "sites.pbs.jobqueue.python"),
    ("jobqueue", lambda q, jq: jq.update(interface="hsn0;touch"), "sites.pbs.jobqueue.interface"),
    ("jobqueue", lambda q, jq: jq.update(log_directory="/tmp/logs\n#PBS -l select=999"), "sites.pbs.jobqueue.log_directory"),
    ("jobqueue", lambda q, jq: jq.update(node_launcher="mpiexec -n {nodes}\ntouch ~/pwned"), "sites.pbs.jobqueue.node_launcher"),
    ("jobqueue", lambda q, jq: jq.update(memory_per_node_gb=math.inf), "sites.pbs.jobqueue.memory_per_node_gb"),
    ("accounts", None, "accounts"),
]


@pytest.mark.parametrize("case", range(len(CONFIG_INJECTIONS)))
def test_config_values_that_reach_a_script_are_checked_when_the_config_loads(tmp_path, case):
    _, change, key = CONFIG_INJECTIONS[case]
    raw = _raw_without_accounts(tmp_path / "ws")
    if change is None:
        raw["accounts"] = {"proj\n": {"node_hours": 1}}  # `re.match(...$)` took a trailing newline
    else:
        change(raw["sites"]["pbs"]["queues"], raw["sites"]["pbs"]["jobqueue"])
    with pytest.raises(ConfigError) as err:
        cfg.validate(raw, "site.toml")
    msg = str(err.value)
    assert key in msg, msg
    assert all("select=999" not in ln or "'" in ln for ln in msg.splitlines()), msg  # the value only ever shown repr'd


def test_a_site_changed_in_code_cannot_smuggle_a_line_into_the_script(open_settings):
    """The config models are checked at load; the script builder checks again (a Site built or changed in code)."""
    site = open_settings.sites["slurm"]
    site.queues[0].extra_directives.append("--qos=standby\ntouch ~/pwned")
    with pytest.raises(RtlibError, match="extra_directives"):
        job_script(site, "demand", "proj")
    site.queues[0].extra_directives.clear()
    site.jobqueue.prologue.append("echo ok\rtouch ~/pwned")
    with pytest.raises(RtlibError, match="prologue"):
        job_script(site, "demand", "proj")
    site.jobqueue.prologue.clear()
    site.queues[0].max_walltime_min = math.inf  # int(round(inf)) was an OverflowError traceback
    with pytest.raises(RtlibError, match="walltime"):
        job_script(site, "demand", "proj")


@pytest.mark.parametrize("key, value", [
    ("jobqueue.pbs.shebang", "#!/usr/bin/env bash\ntouch ~/pwned"),
    ("jobqueue.pbs.local-directory", "$(touch ~/pwned)"),
    ("jobqueue.pbs.job-extra-directives", ["-l x\ntouch ~/pwned"]),
])  # fmt: skip
def test_dask_jobqueue_config_cannot_add_lines_either(open_settings, key, value):
    """dask-jobqueue also reads ~/.config/dask/jobqueue.yaml: the finished script is checked line by line."""
    site = open_settings.sites["pbs"]
    if key.endswith("job-extra-directives"):  # rtlib passes its own directives; a Site changed in code may not
        site.queues[0].extra_directives.append(value[0])
    with dask.config.set({key: value}):
        with pytest.raises(RtlibError) as err:
            job_script(site, "demand", "proj")
    assert "touch" in str(err.value) and "\n" not in str(err.value)


def test_the_backend_fails_a_job_with_a_crafted_account_before_any_scheduler_is_asked(open_settings, tmp_path):
    """A job row written by older code (or by hand) with a crafted account: that task fails; qsub never runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("qsub", "qdel"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\ncat \"$1\" >> {calls}\necho 1.pbs\n")
        (bin_dir / name).chmod(0o755)
    site = open_settings.sites["pbs"].model_copy(deep=True)
    site.jobqueue.commands_dir = bin_dir
    backend = JobqueueBackend(site)
    try:
        handle = backend.submit_job(print, "x", key="rtlib-job-1-1-abc", queue="demand", account=INJECTED, scheduler_account="proj\n#PBS -l select=999")
        assert handle.done()
        with pytest.raises(RtlibError, match="account"):
            handle.result()
        assert not backend.pools
    finally:
        backend.close()
    assert not calls.exists(), calls.read_text()


@pytest.mark.parametrize("hours", ["nan", "inf"])
def test_cli_accounts_set_refuses_a_budget_that_is_not_a_finite_number(tmp_path, hours):
    """A NaN budget compares false with every request: its account would never be held."""
    env = {**os.environ, "RTLIB_CONFIG": "", "RTLIB_WORKSPACE": str(tmp_path / "ws"), "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "rtlib.cli", "accounts", "--set", f"rtlib::aps={hours}", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "NODE_HOURS" in run.stderr, (run.stdout, run.stderr)
