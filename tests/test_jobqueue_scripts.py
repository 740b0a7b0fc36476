"""The worker batch scripts rtlib submits, read line by line (no scheduler needed)."""

from __future__ import annotations

import sys

import pytest

from rtlib import config as cfg
from rtlib.compute.jobqueue import job_script
from rtlib.errors import RtlibError

QUEUES = [
    {"name": "demand", "max_nodes": 8, "max_walltime_min": 60},
    {"name": "preemptable", "max_nodes": 20, "max_walltime_min": 4320, "preemptable": True, "job_walltime_min": 120},
]


def _site(tmp_path, compute: str, **jobqueue) -> cfg.Site:
    raw = cfg.default_config(tmp_path / "ws")
    raw["sites"]["hpc"] = {"compute": compute, "scratch_endpoint": "alcf", "queues": QUEUES, "jobqueue": jobqueue}
    return cfg.validate(raw).sites["hpc"]


def _lines(script: str) -> list[str]:
    return [ln for ln in script.splitlines() if ln.strip()]


def _worker_line(queue: str, cores: int, memory: str) -> str:
    return (f"{sys.executable} -m distributed.cli.dask_worker tcp://10.1.2.3:8786 --name rtlib-{queue}-0 "
            f"--nthreads {cores} --memory-limit {memory} --nanny --death-timeout 60")  # fmt: skip


def test_polaris_preemptable_script(tmp_path):
    site = _site(tmp_path, "pbs", system="polaris", filesystems="home:eagle", cores_per_node=32, memory_per_node_gb=512,
                 prologue=["module use /soft/modulefiles", "module load conda", "export OMP_NUM_THREADS=1"])  # fmt: skip
    script = job_script(site, "preemptable", "APSDataAnalysis", scheduler_address="tcp://10.1.2.3:8786")
    assert _lines(script) == [
        "#!/usr/bin/env bash",
        "#PBS -N rtlib-preemptable",
        "#PBS -q preemptable",
        "#PBS -A APSDataAnalysis",
        "#PBS -l select=1:system=polaris",
        "#PBS -l walltime=02:00:00",  # the queue's job_walltime_min, not its 72 h limit
        "#PBS -l place=scatter",
        "#PBS -l filesystems=home:eagle",
        "#PBS -r y",  # rerunnable on the preemptable queue
        "module use /soft/modulefiles",
        "module load conda",
        "export OMP_NUM_THREADS=1",
        _worker_line("preemptable", 32, "476.84GiB"),
    ]


def test_aurora_demand_script(tmp_path):
    site = _site(tmp_path, "pbs", system="aurora", filesystems="home:flare", cores_per_node=8, memory_per_node_gb=16,
                 prologue=["module load frameworks"])  # fmt: skip
    script = job_script(site, "demand", "APSDataAnalysis", scheduler_address="tcp://10.1.2.3:8786")
    assert _lines(script) == [
        "#!/usr/bin/env bash",
        "#PBS -N rtlib-demand",
        "#PBS -q demand",
        "#PBS -A APSDataAnalysis",
        "#PBS -l select=1:system=aurora",
        "#PBS -l walltime=01:00:00",
        "#PBS -l place=scatter",
        "#PBS -l filesystems=home:flare",
        "#PBS -r n",  # demand jobs are not rerun behind rtlib's back
        "module load frameworks",
        _worker_line("demand", 8, "14.90GiB"),
    ]


def test_slurm_script_uses_partition_account_and_no_requeue(tmp_path):
    site = _site(tmp_path, "slurm", cores_per_node=4, memory_per_node_gb=8, prologue=["source /opt/env.sh"])
    site.queues[1].extra_directives.append("--qos=standby")
    script = job_script(site, "preemptable", "m1234", scheduler_address="tcp://10.1.2.3:8786")
    assert _lines(script) == [
        "#!/usr/bin/env bash",
        "#SBATCH -J rtlib-preemptable",
        "#SBATCH -p preemptable",
        "#SBATCH -A m1234",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH -t 02:00:00",
        "#SBATCH --no-requeue",
        "#SBATCH --qos=standby",
        "source /opt/env.sh",
        _worker_line("preemptable", 4, "7.45GiB"),
    ]


def test_scheduler_queue_name_can_differ_from_rtlib_name(tmp_path):
    raw = cfg.default_config(tmp_path / "ws")
    raw["sites"]["hpc"] = {"compute": "pbs", "scratch_endpoint": "alcf",
                           "queues": [{"name": "urgent", "scheduler_queue": "demand", "max_walltime_min": 30}]}  # fmt: skip
    script = job_script(cfg.validate(raw).sites["hpc"], "urgent", None)
    assert "#PBS -q demand" in _lines(script) and "#PBS -l walltime=00:30:00" in _lines(script)
    assert not any(ln.startswith("#PBS -A") for ln in _lines(script))


def test_polaris_without_filesystems_is_refused_with_the_fix(tmp_path):
    site = _site(tmp_path, "pbs", system="polaris")
    with pytest.raises(RtlibError, match="jobqueue.filesystems"):
        job_script(site, "demand", "proj")


def test_job_walltime_longer_than_queue_limit_is_a_config_error(tmp_path):
    raw = cfg.default_config(tmp_path / "ws")
    raw["sites"]["hpc"] = {"compute": "slurm", "scratch_endpoint": "alcf",
                           "queues": [{"name": "demand", "max_walltime_min": 60, "job_walltime_min": 90}]}  # fmt: skip
    with pytest.raises(cfg.ConfigError, match="job_walltime_min 90 exceeds max_walltime_min 60"):
        cfg.validate(raw)
