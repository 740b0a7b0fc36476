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


def _worker_line(queue: str, cores: int, memory: str, lifetime: str, name_suffix: str = "") -> str:
    return (f"{sys.executable} -m distributed.cli.dask_worker tcp://10.1.2.3:8786 --name rtlib-{queue}-0{name_suffix} "
            f"--nthreads {cores} --memory-limit {memory} --nanny --death-timeout 60 {lifetime}")  # fmt: skip


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
        _worker_line("preemptable", 32, "476.84GiB", "--lifetime 7170s --lifetime-stagger 15s"),  # 2 h less half the 60 s margin
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
        _worker_line("demand", 8, "14.90GiB", "--lifetime 3570s --lifetime-stagger 15s"),
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
        _worker_line("preemptable", 4, "7.45GiB", "--lifetime 7170s --lifetime-stagger 15s"),
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


def _multi_node_site(tmp_path, compute: str, **jobqueue) -> cfg.Site:
    raw = cfg.default_config(tmp_path / "ws")
    queues = [{"name": "preemptable", "max_nodes": 8, "nodes_per_job": 4, "max_walltime_min": 60, "preemptable": True}]
    raw["sites"]["hpc"] = {"compute": compute, "scratch_endpoint": "alcf", "queues": queues, "jobqueue": jobqueue}
    return cfg.validate(raw).sites["hpc"]


RANK = "${SLURM_PROCID:-${PMI_RANK:-${PALS_RANKID:-${OMPI_COMM_WORLD_RANK:-0}}}}"


def test_polaris_multi_node_job_selects_n_nodes_and_starts_a_worker_on_each(tmp_path):
    site = _multi_node_site(tmp_path, "pbs", system="polaris", filesystems="home:eagle", cores_per_node=32, memory_per_node_gb=512)
    script = job_script(site, "preemptable", "APSDataAnalysis", scheduler_address="tcp://10.1.2.3:8786")
    worker = _worker_line("preemptable", 32, "476.84GiB", "--lifetime 3570s --lifetime-stagger 15s", name_suffix=f"-{RANK}")
    assert _lines(script) == [
        "#!/usr/bin/env bash",
        "#PBS -N rtlib-preemptable",
        "#PBS -q preemptable",
        "#PBS -A APSDataAnalysis",
        "#PBS -l select=4:system=polaris",  # nodes_per_job
        "#PBS -l walltime=01:00:00",
        "#PBS -l place=scatter",
        "#PBS -l filesystems=home:eagle",
        "#PBS -r y",
        f"mpiexec -n 4 --ppn 1 /bin/sh -c 'exec {worker}'",  # one worker per node, named by its rank
    ]


def test_slurm_multi_node_job_asks_nodes_and_sruns_one_worker_per_node(tmp_path):
    site = _multi_node_site(tmp_path, "slurm", cores_per_node=4, memory_per_node_gb=8)
    script = job_script(site, "preemptable", "m1234", scheduler_address="tcp://10.1.2.3:8786")
    worker = _worker_line("preemptable", 4, "7.45GiB", "--lifetime 3570s --lifetime-stagger 15s", name_suffix=f"-{RANK}")
    assert _lines(script) == [
        "#!/usr/bin/env bash",
        "#SBATCH -J rtlib-preemptable",
        "#SBATCH -p preemptable",
        "#SBATCH -A m1234",
        # no "-n 1": one task per node
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH -t 01:00:00",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --no-requeue",
        f"srun --nodes=4 --ntasks=4 --ntasks-per-node=1 /bin/sh -c 'exec {worker}'",
    ]


def test_the_per_node_launch_line_runs_and_names_each_node_by_rank(tmp_path):
    """Run the generated launch line with a stand-in launcher (3 ranks) and python (prints its argv)."""
    import os
    import subprocess

    launcher = tmp_path / "fake-mpiexec"
    launcher.write_text('#!/bin/sh\nshift 4\nfor r in 0 1 2; do PMI_RANK=$r "$@"; done\n')  # drops "-n 3 --ppn 1"
    python = tmp_path / "fake-python"
    python.write_text('#!/bin/sh\necho "$@"\n')
    for f in (launcher, python):
        f.chmod(0o755)
    raw = cfg.default_config(tmp_path / "ws")
    raw["sites"]["hpc"] = {"compute": "pbs", "scratch_endpoint": "alcf",
                           "queues": [{"name": "demand", "max_nodes": 3, "nodes_per_job": 3}],
                           "jobqueue": {"python": str(python), "node_launcher": f"{launcher} -n {{nodes}} --ppn 1"}}  # fmt: skip
    line = _lines(job_script(cfg.validate(raw).sites["hpc"], "demand", None))[-1]
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_PROCID", "PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK")}
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, env=env, timeout=30).stdout.splitlines()
    assert [ln.split("--name ")[1].split()[0] for ln in out] == ["rtlib-demand-0-0", "rtlib-demand-0-1", "rtlib-demand-0-2"]


def test_nodes_per_job_larger_than_max_nodes_is_a_config_error(tmp_path):
    raw = cfg.default_config(tmp_path / "ws")
    raw["sites"]["hpc"] = {"compute": "slurm", "scratch_endpoint": "alcf", "queues": [{"name": "demand", "max_nodes": 2, "nodes_per_job": 4}]}
    with pytest.raises(cfg.ConfigError, match="nodes_per_job 4 exceeds max_nodes 2 of queue 'demand'"):
        cfg.validate(raw)


def test_workers_leave_before_the_walltime_and_drain_for_the_longest_task(tmp_path):
    from rtlib.compute.jobqueue import drain_after_s, worker_timing

    raw = cfg.default_config(tmp_path / "ws")
    raw["sites"]["hpc"] = {"compute": "slurm", "scratch_endpoint": "alcf",
                           "queues": [{"name": "demand", "max_walltime_min": 60, "job_walltime_min": 30}],
                           "policy": {"default": {"walltime_min": 5}, "workloads": {"xpcs": {"walltime_min": 20}, "laue": {"walltime_min": 45}}},
                           "jobqueue": {"walltime_margin_s": 120}}  # fmt: skip
    site = cfg.validate(raw).sites["hpc"]
    lines = _lines(job_script(site, "demand", None))
    assert "#SBATCH -t 00:30:00" in lines
    assert lines[-1].endswith(" --lifetime 1740s --lifetime-stagger 30s")  # 30 min - 60 s, +/- 30 s: gone by 30 min - 30 s
    assert worker_timing(site, site.queues[0]) == (1800, 1740, 30)
    # the longest task this queue takes is xpcs (20 min; laue's 45 min does not fit 30 min less the margin):
    # no task starts later than 30 min - 2 min - 20 min after the worker joined
    assert drain_after_s(site, site.queues[0]) == 1800 - 120 - 1200
