"""HPC compute on a real local Slurm through dask-jobqueue: start latency and node-hour utilisation.

* Ready -> analysis start: from a job's STAGED_IN event (inputs on scratch, ready to run) to the
  moment its analysis began on a worker (RUN_DONE time minus the analysis' own run time), with
  no worker alive (cold: a batch job must be submitted, scheduled and its worker must start) and
  with an idle worker still up (warm).
* Utilisation: a backlog of jobs on one queue; node-hours charged (worker run time, as recorded
  for the accounts) against the sum of the analyses' run times, and the scheduler's own view:
  the elapsed time of rtlib's batch jobs in Slurm's job-completion records (what a facility bills,
  worker start-up included).

Reference (Balsam, at ALCF): 47.6 s median from ready to running versus 329 s for plain batch
submission.

Needs slurm-wlm + munge (tests/slurmserver.py starts a throw-away Slurm) and root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_result

sys.path.insert(0, str(ROOT / "tests"))
from slurmserver import SlurmServer  # noqa: E402

from rtlib import config as cfg  # noqa: E402
from rtlib import jobs  # noqa: E402
from rtlib.runtime import open_runtime  # noqa: E402


def settings_for(ws: Path, *, idle_timeout_s: float, max_nodes: int) -> cfg.Settings:
    raw = cfg.default_config(ws)
    raw["agent"] = {"poll_s": 0.01}
    raw["sites"]["hpc"] = {
        "compute": "slurm", "scratch_endpoint": "alcf",
        "queues": [{"name": "demand", "max_nodes": max_nodes, "max_walltime_min": 60}],
        "policy": {"default": {"nodes": 1, "walltime_min": 10}},
        "jobqueue": {"cores_per_node": 1, "memory_per_node_gb": 0.5, "scheduler_host": "127.0.0.1",
                     "idle_timeout_s": idle_timeout_s, "log_directory": str(ws / "joblogs")},
    }  # fmt: skip
    s = cfg.validate(raw)
    cfg.ensure_workspace(s)
    return s


def _input(settings: cfg.Settings, i: int) -> str:
    p = Path(settings.endpoints["aps"].root) / f"raw/in-{i}.dat"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x" * 4096)
    return f"raw/in-{i}.dat"


def ready_to_start_s(rt, job_id: int) -> float:
    events = {e.to_state: e.timestamp for e in rt.store.events(job_id)}
    job = rt.store.get_job(job_id)
    started = events["RUN_DONE"] - float(job.summary["run_s"])
    return started - events["STAGED_IN"]


def _workers_up(rt) -> bool:
    """Whether any pool still has a batch job or a worker (the compute backend starts with the first agent)."""
    pools = rt.compute.pools.values() if rt.compute is not None else ()
    return any(p.cluster.worker_spec or p.joined for p in pools)


def latency(ws: Path, reps: int, *, warm: bool) -> list[float]:
    settings = settings_for(ws, idle_timeout_s=120 if warm else 0.5, max_nodes=1)
    rt = open_runtime(settings)
    out = []
    try:
        if warm:  # bring one worker up first
            jid = jobs.submit(rt.store, settings, "noop", source_endpoint="aps", inputs=[_input(settings, 999)], site="hpc", beamline="aps-demo")
            rt.agent("hpc").run(until_idle=True, max_seconds=120)
        for i in range(reps):
            if not warm:  # wait until the idle worker has left: scaled to zero
                deadline = time.monotonic() + 30
                while _workers_up(rt) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert not _workers_up(rt), "a worker is still up: not a cold start"
            jid = jobs.submit(rt.store, settings, "noop", source_endpoint="aps", inputs=[_input(settings, i)],
                              params={"sleep_s": 0.2}, site="hpc", beamline="aps-demo")  # fmt: skip
            rt.agent("hpc").run(until_idle=True, max_seconds=120)
            assert rt.store.get_job(jid).state.value == "DONE", rt.store.get_job(jid).error
            out.append(ready_to_start_s(rt, jid))
    finally:
        rt.close()
    return out


def _elapsed_s(row: dict) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(row["EndTime"]) - datetime.fromisoformat(row["StartTime"])).total_seconds()


def utilisation(ws: Path, slurm, n: int, sleep_s: float, nodes: int, idle_timeout_s: float) -> dict:
    settings = settings_for(ws, idle_timeout_s=idle_timeout_s, max_nodes=nodes)
    rt = open_runtime(settings)
    try:
        ids = [jobs.submit(rt.store, settings, "noop", source_endpoint="aps", inputs=[_input(settings, i)],
                           params={"sleep_s": sleep_s}, site="hpc", beamline="aps-demo") for i in range(n)]  # fmt: skip
        t0 = time.perf_counter()
        rt.agent("hpc", max_leased=n).run(until_idle=True, max_seconds=600)
        wall = time.perf_counter() - t0
        time.sleep(idle_timeout_s + 1.5)  # idle workers leave and are charged
        batch_ids = {b for p in rt.compute.pools.values() for b in p.batch_ids.values()}
        rt.compute.close()
        run_s = sum(float(rt.store.get_job(j).summary["run_s"]) for j in ids)
        charged_h = sum(u["node_hours"] for u in rt.store.usage_rows())
        states = {rt.store.get_job(j).state.value for j in ids}
        assert states == {"DONE"}, states
    finally:
        rt.close()
    time.sleep(1)  # the last batch jobs reach the completion records
    ran = [r for r in slurm.completed() if r.get("JobId") in batch_ids and r.get("StartTime") not in (None, "", "Unknown")]
    sacct_s = sum(_elapsed_s(r) * int(r.get("NodeCnt", "1") or 1) for r in ran)
    return {"jobs": n, "task_s": sleep_s, "nodes": nodes, "idle_timeout_s": idle_timeout_s, "wall_s": round(wall, 1),
            "sum_task_run_s": round(run_s, 1), "charged_node_s": round(charged_h * 3600, 1),
            "utilisation_pct": round(run_s / (charged_h * 3600) * 100, 1), "batch_jobs": len(batch_ids),
            "sacct_elapsed_node_s": round(sacct_s, 1), "sacct_utilisation_pct": round(run_s / sacct_s * 100, 1) if sacct_s else None}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--task-s", type=float, default=10.0)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--idle-timeout-s", type=float, default=10.0, help="jobqueue.idle_timeout_s of the utilisation run (the default is 10)")
    args = ap.parse_args()
    with SlurmServer() as slurm, tempfile.TemporaryDirectory(prefix="rtlib-bench-hpc-") as tmp:
        cold = latency(Path(tmp) / "cold", args.reps, warm=False)
        warm = latency(Path(tmp) / "warm", args.reps, warm=True)
        util = utilisation(Path(tmp) / "util", slurm, args.jobs, args.task_s, args.nodes, args.idle_timeout_s)
    figures = {
        "cold_ready_to_start_s": [round(x, 2) for x in cold],
        "warm_ready_to_start_s": [round(x, 2) for x in warm],
        "cold_median_s": round(statistics.median(cold), 2),
        "warm_median_s": round(statistics.median(warm), 2),
        **util,
    }
    table = "\n".join([
        "| figure | value | aim |",
        "|---|---|---|",
        f"| ready -> analysis start, cold (no worker; sbatch + worker start), median of {args.reps} | {figures['cold_median_s']:.2f} s "
        f"({', '.join(f'{x:.1f}' for x in cold)}) | - (plain batch submission at ALCF: 329 s median, Balsam paper) |",
        f"| ready -> analysis start, warm (idle worker up), median of {args.reps} | {figures['warm_median_s']:.2f} s "
        f"({', '.join(f'{x:.2f}' for x in warm)}) | < 10 s (Balsam at ALCF: 47.6 s median) |",
        f"| {util['jobs']} jobs x {util['task_s']:g} s on {util['nodes']} nodes: wall time | {util['wall_s']} s | - |",
        f"| node-seconds charged (worker run time) / sum of task run times | {util['charged_node_s']} / {util['sum_task_run_s']} | - |",
        f"| utilisation (task time / charged time) | {util['utilisation_pct']} % | >= 90 % |",
        f"| scheduler's view: elapsed node-seconds of the {util['batch_jobs']} batch jobs (Slurm job-completion records) | "
        f"{util['sacct_elapsed_node_s']} | - |",
        f"| utilisation against the scheduler's elapsed time | {util['sacct_utilisation_pct']} % | - |",
    ])
    notes = ("Local single-node Slurm 22.05 (tests/slurmserver.py), `sched_interval=2`; one dask worker per batch job, "
             f"idle workers leave after `idle_timeout_s` = {args.idle_timeout_s:g} s in the utilisation run (0.5 s in the cold runs). A cold start is dominated by the worker's Python start-up "
             "on this 2-core machine shared with other work. Charged time runs from the worker joining the scheduler to it leaving.")
    command = (f"python benchmarks/hpc.py --reps {args.reps} --jobs {args.jobs} --task-s {args.task_s:g} --nodes {args.nodes} "
               f"--idle-timeout-s {args.idle_timeout_s:g}")
    write_result("hpc", "HPC compute on a local Slurm (dask-jobqueue)", figures, table, command=command, notes=notes)
    print(table)


if __name__ == "__main__":
    main()
