"""HPC compute through dask-jobqueue: one PBSCluster or SLURMCluster per (queue, account).

Each batch job is one node running one dask worker with `cores_per_node`
threads. Workers follow the backlog: a monitor thread asks for
min(max_nodes, ceil(tasks waiting or running / cores)) batch jobs per queue,
closes workers idle for `idle_timeout_s` (down to zero), cancels and
resubmits a batch job still queued after the queue's `queued_limit_s`, and
turns scheduler trouble (sbatch/qsub failing or missing) into an error on
the waiting jobs instead of a hang.

A task whose worker leaves while running it (preemption, walltime, node
failure, scancel/qdel) is reported as lost: its handle raises WorkerLost at
once and the dask task is cancelled, so dask never re-runs it behind the
agent's back; the agent marks the job PREEMPTED and owns the retry budget.

Worker run time (join to leave, per node) is reported to a usage sink; the
agent records it in the store, where it is charged to the job's account.
The job scripts are plain data: `job_script(site, queue, account)` shows
exactly what would be submitted.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dask

from ..config import JobqueueOptions, Queue, Site
from ..errors import RtlibError, WorkerLost
from .base import ComputeBackend

log = logging.getLogger("rtlib.compute.jobqueue")

COMMANDS = {"slurm": ("sbatch", "scancel"), "pbs": ("qsub", "qdel")}


class SchedulerCommandError(RtlibError):
    """The batch scheduler's submit command is missing or refused the worker job."""


# -- job scripts ---------------------------------------------------------------
def _walltime(minutes: float) -> str:
    total = int(round(minutes * 60))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _command(opts: JobqueueOptions, name: str) -> str:
    return str(opts.commands_dir / name) if opts.commands_dir else name


def cluster_kwargs(site: Site, queue: Queue, scheduler_account: str | None) -> dict[str, Any]:
    """The keyword arguments of the dask-jobqueue cluster/job class for one queue and account."""
    opts = site.jobqueue
    kw: dict[str, Any] = dict(
        cores=opts.cores_per_node,
        processes=1,
        memory=f"{opts.memory_per_node_gb:g}GB",
        queue=queue.scheduler_queue or queue.name,
        account=scheduler_account,
        walltime=_walltime(queue.job_walltime_min or queue.max_walltime_min),
        job_script_prologue=list(opts.prologue),
        python=opts.python or sys.executable,
        death_timeout=opts.death_timeout_s,
        job_name=f"rtlib-{queue.name}",
    )
    if opts.interface:
        kw["interface"] = opts.interface
    if opts.log_directory:
        kw["log_directory"] = str(opts.log_directory)
    extra: list[str] = []
    if site.compute == "pbs":
        if opts.system in ("polaris", "aurora"):
            kw["resource_spec"] = f"select=1:system={opts.system}"
            extra.append("-l place=scatter")
        else:
            kw["resource_spec"] = f"select=1:ncpus={opts.cores_per_node}"
        if opts.filesystems:
            extra.append(f"-l filesystems={opts.filesystems}")
        elif opts.system in ("polaris", "aurora"):
            raise RtlibError(f"{opts.system} needs `-l filesystems=`: set sites.<site>.jobqueue.filesystems (e.g. \"home:eagle\")")
        # rerunnable on preemptable queues: PBS requeues instead of failing a preempted job
        extra.append("-r y" if queue.preemptable else "-r n")
    else:
        # rtlib replaces a lost worker itself; a requeued worker job would return under a name dask re-used
        extra.append("--no-requeue")
    extra += queue.extra_directives
    kw["job_extra_directives"] = extra
    return kw


def job_classes(kind: str):
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster
        from dask_jobqueue.slurm import SLURMJob

        return SLURMCluster, SLURMJob
    from dask_jobqueue import PBSCluster
    from dask_jobqueue.pbs import PBSJob

    return PBSCluster, PBSJob


def job_script(site: Site, queue: Queue | str, scheduler_account: str | None, *, scheduler_address: str = "tcp://127.0.0.1:8786") -> str:
    """The batch script rtlib would submit for a worker of `queue`, without starting anything."""
    if isinstance(queue, str):
        queue = site.queue(queue)
    _, job_cls = job_classes(site.compute)
    kw = cluster_kwargs(site, queue, scheduler_account)
    return job_cls(scheduler=scheduler_address, name=f"rtlib-{queue.name}-0", **kw).job_script()


# -- the backend -----------------------------------------------------------------
class TaskHandle:
    """Future-like (done/result/cancel) over a dask future, which the backend can fail on its own."""

    def __init__(self, pool: "_Pool | None", key: str, future: Any = None, error: BaseException | None = None):
        self.pool, self.key, self.future, self.error = pool, key, future, error

    def done(self) -> bool:
        if self.error is None and self.pool is not None:
            lost = self.pool.lost.get(self.key)
            if lost is not None:
                self.fail(WorkerLost(lost))
        return self.error is not None or (self.future is not None and self.future.done())

    def result(self) -> Any:
        if not self.done():
            raise RuntimeError("result() of a task that is not done")
        if self.error is not None:
            raise self.error
        try:
            return self.future.result()
        except Exception as err:
            if type(err).__name__ != "KilledWorker" or self.pool is None:
                raise
            # the worker died abruptly: say which batch job it was, as for a worker that left
            worker = self.pool.running_on.get(self.key, "?")
            batch = self.pool.batch_ids.get(worker, "?")
            raise WorkerLost(f"worker {worker} (batch job {batch} in queue {self.pool.queue.name}) died while running the task") from err

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.cancel()

    def cancel(self) -> None:
        if self.pool is not None:
            self.pool.cancelled.add(self.key)
        if self.future is not None:
            try:
                self.future.cancel()
            except Exception:  # the cluster may be closing
                pass


@dataclass
class _Pool:
    """One dask-jobqueue cluster: the workers of one queue charged to one account."""

    queue: Queue
    account: str | None
    scheduler_account: str | None
    cluster: Any = None
    client: Any = None
    handles: dict[str, TaskHandle] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # key -> why (set on the scheduler's thread)
    cancelled: set[str] = field(default_factory=set)
    running_on: dict[str, str] = field(default_factory=dict)  # key -> worker name
    joined: dict[str, float] = field(default_factory=dict)  # worker address -> time it joined
    names: dict[str, str] = field(default_factory=dict)  # worker address -> name
    submitted: dict[str, float] = field(default_factory=dict)  # worker name -> batch job submit time
    batch_ids: dict[str, str] = field(default_factory=dict)  # worker name -> batch job id
    ever_connected: set[str] = field(default_factory=set)
    idle_since: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # submission errors not yet handled
    consecutive_failures: int = 0
    stuck_cancelled: int = 0
    jobs_submitted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _watch_plugin(backend: "JobqueueBackend", pool: _Pool):
    from distributed.diagnostics.plugin import SchedulerPlugin

    class _Watch(SchedulerPlugin):
        """Runs on the cluster's event loop: worker join/leave (for charging) and tasks a leaving worker took back."""

        def __init__(self):
            self.backend, self.pool = backend, pool

        def add_worker(self, scheduler=None, worker=None, **kwargs) -> None:
            ws = scheduler.workers.get(worker)
            name = str(ws.name) if ws is not None else worker
            with self.pool.lock:
                self.pool.joined[worker] = time.time()
                self.pool.names[worker] = name
                self.pool.ever_connected.add(name)

        def remove_worker(self, scheduler=None, worker=None, **kwargs) -> None:
            with self.pool.lock:
                started = self.pool.joined.pop(worker, None)
                name = self.pool.names.get(worker, worker)
            if started is not None:
                self.backend._charge(self.pool, name, started, time.time())

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            key = str(key)
            pool = self.pool
            if key not in pool.handles:
                return
            if finish == "processing":
                ts = self.backend._scheduler_task(pool, key)
                if ts is not None and ts.processing_on is not None:
                    pool.running_on[key] = str(ts.processing_on.name)
            elif start == "processing" and finish not in ("memory", "erred") and key not in pool.cancelled:
                # only a worker leaving takes a running task back (work stealing is off)
                worker = pool.running_on.get(key, "?")
                batch = pool.batch_ids.get(worker, "?")
                pool.lost[key] = f"worker {worker} (batch job {batch} in queue {pool.queue.name}) left while running the task"

    return _Watch()


class JobqueueBackend(ComputeBackend):
    def __init__(self, site: Site, *, monitor_s: float = 0.25):
        if site.compute not in COMMANDS:
            raise RtlibError(f"the jobqueue backend needs compute = \"slurm\" or \"pbs\", not {site.compute!r}")
        self.site = site
        self.opts = site.jobqueue
        self.kind = site.compute
        self.monitor_s = monitor_s
        self.pools: dict[tuple[str, str | None], _Pool] = {}
        self._sink: Callable[..., None] | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._logdir: Path | None = None
        self.events: list[str] = []  # what the backend did on its own (stuck job cancelled ...), for status and tests

    # -- ComputeBackend -------------------------------------------------------
    @property
    def slots(self) -> int:
        return sum(q.max_nodes for q in self.site.queues) * self.opts.cores_per_node

    def start(self) -> None:
        dask.config.set({
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.work-stealing": False,
            "distributed.deploy.lost-worker-timeout": f"{self.opts.lost_worker_timeout_s}s",
        })  # fmt: skip
        if self._monitor is None:
            self._stop.clear()
            self._monitor = threading.Thread(target=self._watch_loop, name="rtlib-jobqueue", daemon=True)
            self._monitor.start()

    def set_usage_sink(self, sink: Callable[..., None] | None) -> None:
        self._sink = sink

    def submit(self, fn: Callable[..., Any], *args: Any, key: str) -> Any:
        return self.submit_job(fn, *args, key=key)

    def submit_job(self, fn, *args, key: str, queue: str | None = None, account: str | None = None, scheduler_account: str | None = None):
        if self._monitor is None:
            self.start()
        try:
            q = self.site.queue(queue) if queue else self.site.queues[0]
            pool = self._pool(q, account, scheduler_account)
        except RtlibError as err:
            return TaskHandle(None, key, error=err)
        handle = TaskHandle(pool, key)
        pool.handles[key] = handle  # before submitting: the plugin must know the key when it starts
        handle.future = pool.client.submit(fn, *args, key=key, pure=False, retries=0)
        return handle

    def is_worker_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, WorkerLost) or type(exc).__name__ in {"KilledWorker", "CommClosedError", "FutureCancelledError"}

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(10)
            self._monitor = None
        for pool in list(self.pools.values()):
            self._close_pool(pool)
        self.pools.clear()

    # -- for status and tests -------------------------------------------------------
    def batch_jobs(self) -> dict[str, dict[str, Any]]:
        """Batch job id -> {queue, account, worker, connected} of every worker job rtlib holds."""
        out = {}
        for pool in self.pools.values():
            connected = set(pool.names.get(a) for a in pool.joined)
            for name, job_id in list(pool.batch_ids.items()):
                out[job_id] = {"queue": pool.queue.name, "account": pool.account, "worker": name, "connected": name in connected}
        return out

    def worker_running(self, key: str) -> tuple[str, str] | None:
        """(worker name, batch job id) running task `key`, once it runs."""
        for pool in self.pools.values():
            name = pool.running_on.get(key)
            if name is not None and key in pool.handles:
                return name, pool.batch_ids.get(name, "")
        return None

    # -- pools ------------------------------------------------------------------
    def _pool(self, queue: Queue, account: str | None, scheduler_account: str | None) -> _Pool:
        with self._lock:
            pool = self.pools.get((queue.name, account))
            if pool is not None:
                return pool
            submit_cmd, cancel_cmd = COMMANDS[self.kind]
            for cmd in (submit_cmd, cancel_cmd):
                path = _command(self.opts, cmd)
                if not (shutil.which(path) if os.sep not in path else os.access(path, os.X_OK)):
                    where = f"in {self.opts.commands_dir}" if self.opts.commands_dir else "on PATH"
                    raise SchedulerCommandError(
                        f"the {self.kind} command `{cmd}` was not found {where}; load the scheduler's module or set "
                        f"sites.<site>.jobqueue.commands_dir to the directory holding it"
                    )
            pool = _Pool(queue=queue, account=account, scheduler_account=scheduler_account or account)
            pool.cluster, pool.client = self._start_cluster(pool)
            self.pools[(queue.name, account)] = pool
            return pool

    def _start_cluster(self, pool: _Pool):
        from distributed import Client

        cluster_cls, job_cls = job_classes(self.kind)
        backend = self
        submit_cmd, cancel_cmd = COMMANDS[self.kind]

        class WatchedJob(job_cls):  # records each submission's outcome for the monitor
            submit_command = _command(backend.opts, job_cls.submit_command.split()[0]) + job_cls.submit_command[len(submit_cmd):]
            cancel_command = _command(backend.opts, cancel_cmd)

            async def start(self):
                try:
                    await super().start()
                except Exception as err:
                    with pool.lock:
                        pool.failures.append(f"{type(err).__name__}: {str(err).strip()}")
                    raise
                with pool.lock:
                    pool.batch_ids[self.name] = str(self.job_id)
                    pool.jobs_submitted += 1
                    pool.consecutive_failures = 0

        kw = cluster_kwargs(self.site, pool.queue, pool.scheduler_account)
        if not self.opts.log_directory:
            if self._logdir is None:
                self._logdir = Path(tempfile.mkdtemp(prefix="rtlib-jobqueue-"))
            kw["log_directory"] = str(self._logdir)
        Path(kw["log_directory"]).mkdir(parents=True, exist_ok=True)
        scheduler_options: dict[str, Any] = {"dashboard_address": None}
        if self.opts.scheduler_host:
            scheduler_options["host"] = self.opts.scheduler_host
        cluster = cluster_cls(job_cls=WatchedJob, scheduler_options=scheduler_options, **kw)
        # never re-use a worker name: a replacement must not be mistaken for the worker it replaces
        serial = itertools.count()
        prefix = f"rtlib-{pool.queue.name}"
        cluster._new_worker_name = lambda _number: f"{prefix}-{next(serial)}"
        cluster.scheduler.add_plugin(_watch_plugin(self, pool), name=f"rtlib-watch-{id(pool)}")
        client = Client(cluster, set_as_default=False)
        log.info("started a %s pool for queue %s, account %s: %s", self.kind, pool.queue.name, pool.account, cluster.scheduler_address)
        return cluster, client

    def _close_pool(self, pool: _Pool) -> None:
        try:
            if pool.client is not None:
                pool.client.close()
            if pool.cluster is not None:
                pool.cluster.close()  # cancels every batch job it still holds
        except Exception as err:  # closing must not hide the caller's own error
            log.warning("closing the %s pool failed: %s", pool.queue.name, err)
        now = time.time()
        with pool.lock:
            left = [(pool.names.get(a, a), t) for a, t in pool.joined.items()]
            pool.joined.clear()
        for name, started in left:
            self._charge(pool, name, started, now)

    @staticmethod
    def _scheduler_task(pool: _Pool, key: str):
        try:
            return pool.cluster.scheduler.tasks.get(key)
        except AttributeError:
            return None

    def _charge(self, pool: _Pool, worker: str, started: float, ended: float) -> None:
        if self._sink is None or pool.account is None:
            return
        try:
            self._sink(account=pool.account, queue=pool.queue.name, started_at=started, ended_at=ended, nodes=1,
                       batch_job=pool.batch_ids.get(worker), worker=worker)  # fmt: skip
        except Exception as err:  # never lose the cluster's event loop over a store hiccup
            log.error("could not record %.1f s of worker %s for %s: %s", ended - started, worker, pool.account, err)

    # -- the monitor ---------------------------------------------------------------
    def _watch_loop(self) -> None:
        while not self._stop.wait(self.monitor_s):
            for pool in list(self.pools.values()):
                try:
                    self._tend(pool)
                except Exception as err:  # keep watching the other pools
                    log.warning("jobqueue monitor: %s: %r", pool.queue.name, err)

    def _tend(self, pool: _Pool) -> None:
        now = time.time()
        cluster = pool.cluster
        # forget finished tasks
        for key, h in list(pool.handles.items()):
            if h.error is not None or (h.future is not None and h.future.done()):
                pool.handles.pop(key, None)
                pool.lost.pop(key, None)
                pool.cancelled.discard(key)
        # submission failures: retry a few times, then fail the jobs that wait for a worker
        with pool.lock:
            failures, pool.failures = pool.failures, []
        if failures:
            pool.consecutive_failures += len(failures)
            self._scale_down(pool, [n for n in cluster.worker_spec if n not in pool.batch_ids])
            self._note(f"{self.kind} submission to queue {pool.queue.name} failed: {failures[-1].splitlines()[0]}")
            if pool.consecutive_failures > self.opts.submit_retries:
                err = SchedulerCommandError(
                    f"the {self.kind} scheduler refused the worker job for queue {pool.queue.name!r} "
                    f"(account {pool.scheduler_account}) {pool.consecutive_failures} time(s): {_short(failures[-1])}; "
                    f"check the queue name, account and limits in sites.<site>.queues"
                )
                waiting = [h for k, h in pool.handles.items() if k not in pool.running_on]
                for h in waiting:
                    h.fail(err)
                pool.consecutive_failures = 0
                return
        connected = {pool.names.get(a) for a in list(pool.joined)}
        spec = list(cluster.worker_spec)
        # a batch job still queued past the limit: cancel it; the scaling below submits a new one
        stuck = [n for n in spec if n in pool.batch_ids and n not in pool.ever_connected
                 and now - pool.submitted.get(n, now) > pool.queue.queued_limit_s]  # fmt: skip
        if stuck:
            pool.stuck_cancelled += len(stuck)
            self._note(f"batch job(s) {', '.join(pool.batch_ids[n] for n in stuck)} queued in {pool.queue.name} for over "
                       f"{pool.queue.queued_limit_s:g} s: cancelled and submitted again")  # fmt: skip
            self._scale_down(pool, stuck)
        # a worker that left (preempted, walltime, node failure): drop its batch job so a new one can come
        gone = [n for n in spec if n in pool.ever_connected and n not in connected]
        if gone:
            self._scale_down(pool, gone)
        spec = list(cluster.worker_spec)
        # scale with the backlog, within the queue's node limit
        backlog = sum(1 for h in pool.handles.values() if h.error is None)
        target = min(pool.queue.max_nodes, math.ceil(backlog / self.opts.cores_per_node))
        busy = {pool.running_on[k] for k in pool.handles if k in pool.running_on}
        for n in connected:
            if n in busy:
                pool.idle_since.pop(n, None)
            else:
                pool.idle_since.setdefault(n, now)
        if target > len(spec):
            cluster.scale(jobs=target)
            for n in cluster.worker_spec:
                pool.submitted.setdefault(n, now)
        elif target < len(spec):
            # never close a busy worker; queued batch jobs go first, then the idle-longest workers
            idle = []
            for n in spec:
                if n in busy:
                    pool.idle_since.pop(n, None)
                    continue
                if n not in connected:
                    idle.append((0.0, n))
                    continue
                since = pool.idle_since.setdefault(n, now)
                if now - since >= self.opts.idle_timeout_s or backlog > 0:
                    idle.append((since, n))
            close = [n for _, n in sorted(idle)][: len(spec) - target]
            if close:
                self._scale_down(pool, close)

    def _scale_down(self, pool: _Pool, names: list[str]) -> None:
        if not names:
            return
        pool.cluster.sync(pool.cluster.scale_down, names)
        for n in names:
            pool.submitted.pop(n, None)
            pool.idle_since.pop(n, None)

    def _note(self, message: str) -> None:
        log.warning(message)
        self.events.append(message)


def _short(text: str, limit: int = 600) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("Command:", "stdout:", "stderr:"))]
    out = " | ".join(lines)
    return out if len(out) <= limit else out[:limit] + " ..."
