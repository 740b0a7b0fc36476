"""HPC compute through dask-jobqueue: one PBSCluster or SLURMCluster per (queue, account).

Each batch job has the queue's `nodes_per_job` nodes, each running one dask
worker with `cores_per_node` threads (several nodes: the worker is started
once per node by `node_launcher`, srun or mpiexec). Workers follow the
backlog: a monitor thread shares each queue's `max_nodes` between the pools
(accounts) using it, asks for ceil(tasks waiting or running / cores) nodes
per pool within that share, closes workers idle for `idle_timeout_s` (down
to zero; at once when another pool of the queue waits for the nodes),
cancels and resubmits a batch job still queued after the queue's
`queued_limit_s` (at most `max_stuck_resubmits` times in a row, then the
waiting jobs fail), and turns scheduler trouble (sbatch/qsub failing or
missing) into an error on the waiting jobs instead of a hang.

A task whose worker leaves while running it (preemption, walltime, node
failure, scancel/qdel) is reported as lost: its handle raises WorkerLost at
once and the dask task is cancelled, so dask never re-runs it behind the
agent's back; the agent marks the job PREEMPTED and owns the retry budget.

Worker run time (join to leave, per node) is reported to a usage sink; the
agent records it in the store, where it is charged to the job's account.
The job scripts are plain data: `job_script(site, queue, account)` shows
exactly what would be submitted. Every value put into one is checked
against its safetext pattern as it goes in, and the finished script line by
line (`check_script`) before it is shown or submitted: dask's own jobqueue
config (~/.config/dask/jobqueue.yaml) can add to it too.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dask

from .. import safetext as st
from ..config import MAX_WALLTIME_MIN, JobqueueOptions, Queue, Site
from ..errors import RtlibError, WorkerLost
from .base import ComputeBackend

log = logging.getLogger("rtlib.compute.jobqueue")

COMMANDS = {"slurm": ("sbatch", "scancel"), "pbs": ("qsub", "qdel")}


class SchedulerCommandError(RtlibError):
    """The batch scheduler's submit command is missing or refused the worker job."""


class UnsafeJobScript(RtlibError):
    """A worker job script would hold a line or a value its template does not write: nothing is submitted."""


# -- job scripts ---------------------------------------------------------------
def _walltime(minutes: float) -> str:
    if not 0 < minutes <= MAX_WALLTIME_MIN:  # NaN and inf too (a Site built in code skips the config's bounds)
        raise UnsafeJobScript(f"a batch walltime of {minutes!r} min is not in (0, {MAX_WALLTIME_MIN}]; check the queue's "
                              "max_walltime_min and job_walltime_min")  # fmt: skip
    total = int(round(minutes * 60))
    return st.check("walltime", f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}", st.WALLTIME)


def _command(opts: JobqueueOptions, name: str) -> str:
    return str(opts.commands_dir / name) if opts.commands_dir else name


RANK = "${SLURM_PROCID:-${PMI_RANK:-${PALS_RANKID:-${OMPI_COMM_WORLD_RANK:-0}}}}"  # the node's rank under srun / mpiexec
LAUNCHERS = {"slurm": "srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1", "pbs": "mpiexec -n {nodes} --ppn 1"}


def worker_timing(site: Site, queue: Queue) -> tuple[float, float, float]:
    """(job walltime, dask --lifetime, --lifetime-stagger) of the queue's worker jobs, in seconds.

    A worker leaves by itself between walltime - 3/4 margin and walltime - 1/4 margin, before the
    scheduler kills it; the monitor stops giving it tasks at join + walltime - margin - the longest
    task the queue may get (see `drain_after_s`)."""
    walltime_s = 60 * (queue.job_walltime_min or queue.max_walltime_min)
    margin_s = site.jobqueue.walltime_margin_s
    return walltime_s, max(walltime_s - margin_s / 2, 1.0), margin_s / 4


def drain_after_s(site: Site, queue: Queue) -> float:
    """Seconds after a worker joined from which it takes no new task: the longest task still ends before the worker leaves."""
    from .policy import longest_task_min

    walltime_s, _, _ = worker_timing(site, queue)
    return walltime_s - site.jobqueue.walltime_margin_s - 60 * longest_task_min(site, queue)


def _check_values(site: Site, queue: Queue, scheduler_account: str | None) -> None:
    """Each value of the config and the job that goes into the script, against its pattern, again.

    The config was checked when loaded, but a Site can be built or changed in code, and the account
    comes from a job row (written by whichever rtlib version submitted it)."""
    opts, where = site.jobqueue, "sites.<site>.jobqueue"
    values = [("account (the scheduler's -A)", scheduler_account, st.SCHEDULER_NAME), ("queue name", queue.name, st.NAME),
              ("queues.scheduler_queue", queue.scheduler_queue, st.SCHEDULER_NAME),
              (f"{where}.filesystems", opts.filesystems, st.WORD), (f"{where}.python", opts.python, st.WORD),
              (f"{where}.interface", opts.interface, st.HOST), (f"{where}.scheduler_host", opts.scheduler_host, st.HOST),
              (f"{where}.log_directory", opts.log_directory, st.WORD), (f"{where}.commands_dir", opts.commands_dir, st.WORD),
              (f"{where}.node_launcher", opts.node_launcher, st.SHELL_LINE)]  # fmt: skip
    values += [(f"queues.extra_directives[{i}]", d, st.DIRECTIVE) for i, d in enumerate(queue.extra_directives)]
    values += [(f"{where}.prologue[{i}]", line, st.SHELL_LINE) for i, line in enumerate(opts.prologue)]
    for field, value, pattern in values:
        if value is not None:
            why = st.problem(str(value) if isinstance(value, Path) else value, pattern)
            if why:
                raise UnsafeJobScript(f"not building a worker job script for queue {st.shown(queue.name)}: {field}: {why}")


def cluster_kwargs(site: Site, queue: Queue, scheduler_account: str | None) -> dict[str, Any]:
    """The keyword arguments of the dask-jobqueue cluster/job class for one queue and account."""
    _check_values(site, queue, scheduler_account)
    opts = site.jobqueue
    nodes = queue.nodes_per_job
    walltime_s, lifetime_s, stagger_s = worker_timing(site, queue)
    kw: dict[str, Any] = dict(
        cores=opts.cores_per_node,
        processes=1,
        memory=f"{opts.memory_per_node_gb:g}GB",
        queue=queue.scheduler_queue or queue.name,
        account=scheduler_account,
        walltime=_walltime(walltime_s / 60),
        job_script_prologue=list(opts.prologue),
        python=opts.python or sys.executable,
        death_timeout=opts.death_timeout_s,
        job_name=f"rtlib-{queue.name}",
        # leave cleanly before the batch walltime; the stagger keeps workers of one batch from leaving together
        worker_extra_args=["--lifetime", f"{lifetime_s:.0f}s"] + (["--lifetime-stagger", f"{stagger_s:.0f}s"] if stagger_s >= 1 else []),
    )
    if opts.interface:
        kw["interface"] = opts.interface
    if opts.log_directory:
        kw["log_directory"] = str(opts.log_directory)
    extra: list[str] = []
    if site.compute == "pbs":
        if opts.system in ("polaris", "aurora"):
            kw["resource_spec"] = f"select={nodes}:system={opts.system}"
            extra.append("-l place=scatter")
        else:
            kw["resource_spec"] = f"select={nodes}:ncpus={opts.cores_per_node}"
        if opts.filesystems:
            extra.append(f"-l filesystems={opts.filesystems}")
        elif opts.system in ("polaris", "aurora"):
            raise RtlibError(f"{opts.system} needs `-l filesystems=`: set sites.<site>.jobqueue.filesystems (e.g. \"home:eagle\")")
        # rerunnable on preemptable queues: PBS requeues instead of failing a preempted job
        extra.append("-r y" if queue.preemptable else "-r n")
    else:
        if nodes > 1:  # one task (worker) per node instead of dask-jobqueue's single task
            kw["job_directives_skip"] = ["-n 1"]
            extra += [f"--nodes={nodes}", "--ntasks-per-node=1"]
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


def per_node_job_class(site: Site, queue: Queue, job_cls):
    """`job_cls`, or for a multi-node queue a subclass whose script starts the worker once per node.

    Each node's worker is named `<batch job name>-<rank>`, the names dask's worker groups expect."""
    nodes = queue.nodes_per_job
    if nodes == 1:
        return job_cls
    launcher = (site.jobqueue.node_launcher or LAUNCHERS[site.compute]).format(nodes=nodes)

    class PerNodeJob(job_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            command = self._command_template.replace(f"--name {self.name} ", f"--name {self.name}-{RANK} ", 1)
            if "'" in command:
                raise RtlibError(f"the worker command holds a single quote, which cannot be started per node: {command}; "
                                 f"check sites.<site>.jobqueue.python and interface")  # fmt: skip
            self._command_template = f"{launcher} /bin/sh -c 'exec {command}'"

    return PerNodeJob


DIRECTIVE_PREFIX = {"pbs": "#PBS ", "slurm": "#SBATCH "}
SHEBANG = re.compile(r"#!/[A-Za-z0-9_/.-]+( [A-Za-z0-9_/.-]+)?")


def _worker_command_problem(line: str, site: Site, queue: Queue) -> str | None:
    """Why the worker command is not a command of plain words (the node launcher's wrapper aside), or None."""
    command = line
    if queue.nodes_per_job > 1:
        launcher = (site.jobqueue.node_launcher or LAUNCHERS[site.compute]).format(nodes=queue.nodes_per_job)
        head, tail = f"{launcher} /bin/sh -c 'exec ", "'"
        if not (line.startswith(head) and line.endswith(tail)):
            return "it is not the node launcher's `/bin/sh -c 'exec ...'` wrapper"
        command = line[len(head):-len(tail)].replace(RANK, "0")
    for word in command.split(" "):
        why = st.problem(word, st.ARG)
        if why:
            return f"word {why}"
    return None


def check_script(script: str, site: Site, queue: Queue) -> str:
    """`script` when every line is one its template writes; else UnsafeJobScript naming the first other line.

    The lines: the shebang; `#PBS `/`#SBATCH ` directives of one printable line starting with '-';
    the configured prologue lines; the worker command, made of plain words. Nothing else, and no
    character but printable ASCII and newlines (no CR, NUL, tab or U+2028)."""
    prefix, prologue = DIRECTIVE_PREFIX[site.compute], set(site.jobqueue.prologue)
    lines = [ln for ln in script.split("\n") if ln.strip()]

    def refuse(line: str, why: str) -> UnsafeJobScript:
        return UnsafeJobScript(f"not submitting the worker job script for queue {st.shown(queue.name)}: its line {st.shown(line)} "
                               f"{why}; check sites.<site>.jobqueue and sites.<site>.queues, and dask's jobqueue config "
                               f"(~/.config/dask/jobqueue.yaml), which dask-jobqueue also reads")  # fmt: skip

    odd = re.search(r"[^\x20-\x7e\n]", script)
    if odd:
        raise refuse(next(ln for ln in script.split("\n") if odd.group() in ln), f"holds the character {odd.group()!r}")
    if not lines or not SHEBANG.fullmatch(lines[0]):
        raise refuse(lines[0] if lines else "", "is not a plain #! line")
    for line in lines[1:-1]:
        if line.startswith(prefix):
            why = st.problem(line[len(prefix):], st.DIRECTIVE)
            if why:
                raise refuse(line, f"is not a plain directive: {why}")
        elif line not in prologue:
            raise refuse(line, "is neither a directive nor a configured prologue line")
    why = _worker_command_problem(lines[-1], site, queue)
    if why:
        raise refuse(lines[-1], f"is not the worker command rtlib builds: {why}")
    return script


def job_script(site: Site, queue: Queue | str, scheduler_account: str | None, *, scheduler_address: str = "tcp://127.0.0.1:8786") -> str:
    """The batch script rtlib would submit for a worker of `queue`, without starting anything (checked by `check_script`)."""
    if isinstance(queue, str):
        queue = site.queue(queue)
    _, job_cls = job_classes(site.compute)
    kw = cluster_kwargs(site, queue, scheduler_account)
    job = per_node_job_class(site, queue, job_cls)(scheduler=scheduler_address, name=f"rtlib-{queue.name}-0", **kw)
    return check_script(job.job_script(), site, queue)


# -- the backend -----------------------------------------------------------------
class TaskHandle:
    """Future-like (done/result/cancel) over a dask future, which the backend can fail on its own."""

    def __init__(self, pool: "_Pool | None", key: str, future: Any = None, error: BaseException | None = None, call: tuple = ()):
        self.pool, self.key, self.future, self.error = pool, key, future, error
        self.call = call  # (fn, *args) until the monitor hands it to a worker with a free thread

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
            batch = self.pool.batch_ids.get(self.pool.job_of(worker), "?")
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
    """One dask-jobqueue cluster: the workers of one queue charged to one account.

    Bookkeeping is per batch job (dask's worker spec name, `rtlib-<queue>-<n>`); on a multi-node
    queue each node's worker is named `<batch job>-<rank>` (see `job_of`)."""

    queue: Queue
    account: str | None
    scheduler_account: str | None
    cluster: Any = None
    client: Any = None
    handles: dict[str, TaskHandle] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # keys not yet given to a worker, oldest first
    placed: dict[str, str] = field(default_factory=dict)  # key -> address of the worker it was given to
    dispatch_lock: threading.RLock = field(default_factory=threading.RLock)  # no task is handed out while the monitor decides what to close
    lost: dict[str, str] = field(default_factory=dict)  # key -> why (set on the scheduler's thread)
    cancelled: set[str] = field(default_factory=set)
    running_on: dict[str, str] = field(default_factory=dict)  # key -> worker name
    joined: dict[str, float] = field(default_factory=dict)  # worker address -> time it joined
    names: dict[str, str] = field(default_factory=dict)  # worker address -> name
    submitted: dict[str, float] = field(default_factory=dict)  # batch job name -> submit time
    batch_ids: dict[str, str] = field(default_factory=dict)  # batch job name -> scheduler's job id
    ever_connected: set[str] = field(default_factory=set)  # worker names
    idle_since: dict[str, float] = field(default_factory=dict)  # batch job name -> since when none of its workers is busy
    draining: set[str] = field(default_factory=set)  # worker names that take no new task (too little walltime left)
    failures: list[str] = field(default_factory=list)  # submission errors not yet handled
    consecutive_failures: int = 0
    stuck_cancelled: int = 0
    stuck_in_a_row: int = 0  # stuck batch jobs cancelled since a worker of this pool last joined
    jobs_submitted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job_of(self, worker: str) -> str:
        """The batch job (worker spec name) a worker belongs to."""
        return worker.rsplit("-", 1)[0] if self.queue.nodes_per_job > 1 else worker

    def occupied(self) -> set[str]:
        """Batch jobs held now: wanted, or still being closed (their nodes are not free yet)."""
        for _ in range(5):  # the cluster's event loop may change the dicts while we copy them
            try:
                return set(self.cluster.worker_spec) | set(self.cluster.workers)
            except RuntimeError:
                continue
        return set(self.cluster.worker_spec)

    def backlog(self) -> int:
        return sum(1 for h in list(self.handles.values()) if h.error is None)


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
                self.pool.stuck_in_a_row = 0

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
                batch = pool.batch_ids.get(pool.job_of(worker), "?")
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
        self._serial = itertools.count()  # worker (batch job) numbers, unique over the pools
        self.events: list[str] = []  # what the backend did on its own (stuck job cancelled ...), for status and tests

    # -- ComputeBackend -------------------------------------------------------
    @property
    def slots(self) -> int:
        return sum(q.max_nodes // q.nodes_per_job * q.nodes_per_job for q in self.site.queues) * self.opts.cores_per_node

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
        handle = TaskHandle(pool, key, call=(fn, *args))
        with pool.dispatch_lock:
            pool.handles[key] = handle  # before submitting: the plugin must know the key when it starts
            pool.pending.append(key)
        self._dispatch(pool)  # at once when a worker has a free thread (warm start)
        return handle

    def _dispatch(self, pool: _Pool) -> None:
        """Give waiting tasks to workers with a free thread, pinned there, never to a draining worker.

        Handing a task over only when a thread is free keeps dask from queueing it on a worker
        that may be draining or about to leave; so a task starts only where its walltime fits."""
        with pool.dispatch_lock:
            if not pool.pending:
                return
            now = time.time()
            limit_s = drain_after_s(self.site, pool.queue)
            with pool.lock:
                joined = list(pool.joined.items())
            in_use: dict[str, int] = {}
            for key, address in list(pool.placed.items()):
                h = pool.handles.get(key)
                if h is None or h.error is not None or (h.future is not None and h.future.done()):
                    pool.placed.pop(key, None)
                    continue
                in_use[address] = in_use.get(address, 0) + 1
            wanted = set(pool.cluster.worker_spec)
            for address, since in sorted(joined, key=lambda item: item[1]):
                name = pool.names.get(address, address)
                if pool.job_of(name) not in wanted:
                    continue  # its batch job is being closed
                if now - since >= limit_s:
                    self._mark_draining(pool, name, limit_s)
                    continue
                free = self.opts.cores_per_node - in_use.get(address, 0)
                while free > 0 and pool.pending:
                    key = pool.pending.pop(0)
                    h = pool.handles.get(key)
                    if h is None or h.error is not None or key in pool.cancelled or not h.call:
                        continue
                    fn, *args = h.call
                    h.call = ()
                    pool.placed[key] = address
                    h.future = pool.client.submit(fn, *args, key=key, pure=False, retries=0, workers=[address], allow_other_workers=False)
                    free -= 1

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
            connected = {pool.job_of(pool.names.get(a, a)) for a in list(pool.joined)}
            for name, job_id in list(pool.batch_ids.items()):
                out[job_id] = {"queue": pool.queue.name, "account": pool.account, "worker": name, "connected": name in connected,
                               "nodes": pool.queue.nodes_per_job}  # fmt: skip
        return out

    def worker_running(self, key: str) -> tuple[str, str] | None:
        """(worker name, batch job id) running task `key`, once it runs."""
        for pool in self.pools.values():
            name = pool.running_on.get(key)
            if name is not None and key in pool.handles:
                return name, pool.batch_ids.get(pool.job_of(name), "")
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
            job_script(self.site, queue, pool.scheduler_account)  # UnsafeJobScript before any scheduler is asked
            pool.cluster, pool.client = self._start_cluster(pool)
            self.pools[(queue.name, account)] = pool
            return pool

    def _start_cluster(self, pool: _Pool):
        from distributed import Client

        cluster_cls, job_cls = job_classes(self.kind)
        job_cls = per_node_job_class(self.site, pool.queue, job_cls)
        backend = self
        submit_cmd, cancel_cmd = COMMANDS[self.kind]

        class WatchedJob(job_cls):  # records each submission's outcome for the monitor
            submit_command = _command(backend.opts, job_cls.submit_command.split()[0]) + job_cls.submit_command[len(submit_cmd):]
            cancel_command = _command(backend.opts, cancel_cmd)

            async def start(self):
                try:
                    check_script(self.job_script(), backend.site, pool.queue)  # the script super().start() writes and submits
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
        # never re-use a worker name, in any pool: a replacement must not be mistaken for the worker it replaces
        serial = self._serial
        prefix = f"rtlib-{pool.queue.name}"
        cluster._new_worker_name = lambda _number: f"{prefix}-{next(serial)}"
        if pool.queue.nodes_per_job > 1:  # one worker per node, named <batch job>-<rank>
            cluster.new_spec["group"] = [f"-{rank}" for rank in range(pool.queue.nodes_per_job)]
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
                       batch_job=pool.batch_ids.get(pool.job_of(worker)), worker=worker)  # fmt: skip
        except Exception as err:  # never lose the cluster's event loop over a store hiccup
            log.error("could not record %.1f s of worker %s for %s: %s", ended - started, worker, pool.account, err)

    # -- the monitor ---------------------------------------------------------------
    def _watch_loop(self) -> None:
        while not self._stop.wait(self.monitor_s):
            self._tend_all()

    def _tend_all(self) -> None:
        by_queue: dict[str, list[_Pool]] = {}
        for pool in list(self.pools.values()):
            by_queue.setdefault(pool.queue.name, []).append(pool)
        for pools in by_queue.values():
            held = []
            try:
                for pool in pools:  # the agent's thread must not hand a task to a worker about to be closed
                    pool.dispatch_lock.acquire()
                    held.append(pool)
                self._tend_queue(pools)
            except Exception as err:  # keep watching the other queues
                log.warning("jobqueue monitor: %s: %r", pools[0].queue.name, err)
            finally:
                for pool in held:
                    pool.dispatch_lock.release()

    def _tend_queue(self, pools: list[_Pool]) -> None:
        """Repair each pool of one queue, then share the queue's max_nodes between them and scale."""
        now = time.time()
        views = [v for v in (self._tend(pool, now) for pool in pools) if v is not None]
        queue = pools[0].queue
        cap = queue.max_nodes // queue.nodes_per_job  # batch jobs the queue may hold, over all its pools
        per_job = self.opts.cores_per_node * queue.nodes_per_job
        want = {id(v.pool): min(cap, math.ceil(v.pool.backlog() / per_job)) for v in views}
        # each pool keeps the batch jobs that run its tasks; the rest goes, one at a time, to the pool lacking most
        share = {id(v.pool): min(len(v.busy_jobs), cap) for v in views}
        while sum(share.values()) < cap:
            lacking = [v for v in views if want[id(v.pool)] > share[id(v.pool)]]
            if not lacking:
                break
            v = max(lacking, key=lambda v: (want[id(v.pool)] - share[id(v.pool)], len(v.pool.occupied())))
            share[id(v.pool)] += 1
        pressed = any(want[id(v.pool)] > len(v.spec) for v in views)  # someone waits for nodes of this queue
        for v in views:
            self._shrink(v, share[id(v.pool)], now, pressed)
        free = cap - sum(len(pool.occupied()) for pool in pools)  # every pool, also one skipped this round
        for v in views:
            grow = min(share[id(v.pool)] - len(v.pool.cluster.worker_spec), free)
            if grow > 0:
                v.pool.cluster.scale(jobs=len(v.pool.cluster.worker_spec) + grow)
                free -= grow
                for n in list(v.pool.cluster.worker_spec):
                    v.pool.submitted.setdefault(n, now)
        for pool in pools:  # last: what was decided above saw every task handed out
            self._dispatch(pool)

    def _tend(self, pool: _Pool, now: float) -> "_View | None":
        """Forget finished tasks; handle submission failures, stuck and vanished batch jobs. None: nothing to scale now."""
        cluster = pool.cluster
        for key, h in list(pool.handles.items()):
            if h.error is not None or (h.future is not None and h.future.done()) or (h.future is None and key in pool.cancelled):
                pool.handles.pop(key, None)
                pool.lost.pop(key, None)
                pool.cancelled.discard(key)
                pool.placed.pop(key, None)
                pool.running_on.pop(key, None)
        # submission failures: retry a few times, then fail the jobs that wait for a worker
        with pool.lock:
            failures, pool.failures = pool.failures, []
        if failures:
            pool.consecutive_failures += len(failures)
            self._scale_down(pool, [n for n in cluster.worker_spec if n not in pool.batch_ids], "submission failed")
            self._note(f"{self.kind} submission to queue {pool.queue.name} failed: {failures[-1].splitlines()[0]}")
            if pool.consecutive_failures > self.opts.submit_retries:
                self._fail_waiting(pool, SchedulerCommandError(
                    f"the {self.kind} scheduler refused the worker job for queue {pool.queue.name!r} "
                    f"(account {pool.scheduler_account}) {pool.consecutive_failures} time(s): {_short(failures[-1])}; "
                    f"check the queue name, account and limits in sites.<site>.queues"
                ))  # fmt: skip
                pool.consecutive_failures = 0
                return None
        workers = {pool.names.get(a, a) for a in list(pool.joined)}
        connected = {pool.job_of(w) for w in workers}
        spec = list(cluster.worker_spec)
        # a batch job still queued past the limit: cancel it; the scaling submits a new one, a few times in a row at most
        stuck = [n for n in spec if n in pool.batch_ids and n not in connected and not any(pool.job_of(w) == n for w in pool.ever_connected)
                 and now - pool.submitted.get(n, now) > pool.queue.queued_limit_s]  # fmt: skip
        if stuck:
            ids = ", ".join(pool.batch_ids[n] for n in stuck)
            pool.stuck_cancelled += len(stuck)
            pool.stuck_in_a_row += len(stuck)
            self._scale_down(pool, stuck, "stuck in the queue")
            if pool.stuck_in_a_row > pool.queue.max_stuck_resubmits:
                self._note(f"batch job(s) {ids} queued in {pool.queue.name} for over {pool.queue.queued_limit_s:g} s: cancelled, "
                           f"{pool.stuck_in_a_row} in a row; the waiting jobs fail")  # fmt: skip
                self._fail_waiting(pool, SchedulerCommandError(
                    f"{pool.stuck_in_a_row} worker batch jobs in a row (the last: {ids}) stayed queued in {pool.queue.name!r} "
                    f"(account {pool.scheduler_account}) for over {pool.queue.queued_limit_s:g} s and were cancelled; the queue "
                    f"may be down, full or held: check it with squeue/qstat, or raise queued_limit_s / max_stuck_resubmits "
                    f"in sites.<site>.queues"
                ))  # fmt: skip
                pool.stuck_in_a_row = 0
                return None
            self._note(f"batch job(s) {ids} queued in {pool.queue.name} for over "
                       f"{pool.queue.queued_limit_s:g} s: cancelled and submitted again")  # fmt: skip
        # a worker that left (preempted, walltime, node failure): drop its whole batch job so a new one can come
        gone = sorted({pool.job_of(w) for w in pool.ever_connected if w not in workers} & set(cluster.worker_spec))
        if gone:
            self._scale_down(pool, gone, "a worker left")
        # busy: running a task, or given one that has not reached it yet
        busy_workers = {pool.running_on[k] for k in list(pool.handles) if k in pool.running_on}
        busy_workers |= {pool.names.get(a, a) for k, a in list(pool.placed.items()) if k in pool.handles}
        busy_jobs = {pool.job_of(w) for w in busy_workers}
        for n in connected:
            if n in busy_jobs:
                pool.idle_since.pop(n, None)
            else:
                pool.idle_since.setdefault(n, now)
        self._drain(pool, now)
        return _View(pool, list(cluster.worker_spec), connected, busy_jobs)

    def _shrink(self, v: "_View", target: int, now: float, pressed: bool) -> None:
        """Close batch jobs beyond `target`: never a busy one; queued ones first, then the longest idle.

        An idle worker waits `idle_timeout_s` before it leaves, unless tasks (of this pool or another
        pool of the queue) wait for nodes; a drained one leaves once idle."""
        pool = v.pool
        drained = {pool.job_of(w) for w in pool.draining}
        close = [n for n in v.spec if n in drained and n in v.connected and n not in v.busy_jobs]
        spec = [n for n in v.spec if n not in close]
        if target < len(spec):
            idle = []
            for n in spec:
                if n in v.busy_jobs:
                    continue
                if n not in v.connected:
                    idle.append((0.0, n))
                    continue
                since = pool.idle_since.setdefault(n, now)
                if now - since >= self.opts.idle_timeout_s or pool.backlog() > 0 or pressed:
                    idle.append((since, n))
            close += [n for _, n in sorted(idle)][: len(spec) - target]
        self._scale_down(pool, close, f"idle or drained, share {target}, pressed {pressed}")

    def _drain(self, pool: _Pool, now: float) -> None:
        """Workers whose batch walltime could end inside the longest task the queue may get take no new task."""
        limit_s = drain_after_s(self.site, pool.queue)
        with pool.lock:
            joined = list(pool.joined.items())
        for address, since in joined:
            if now - since >= limit_s:
                self._mark_draining(pool, pool.names.get(address, address), limit_s)
        # a task given to a worker that left before starting it: a lost attempt, like one that ran there
        with pool.lock:
            up = set(pool.joined)
        for key, address in list(pool.placed.items()):
            h = pool.handles.get(key)
            if address not in up and h is not None and h.error is None and key not in pool.lost and not h.done():
                name = pool.names.get(address, address)
                pool.lost[key] = (f"worker {name} (batch job {pool.batch_ids.get(pool.job_of(name), '?')} in queue "
                                  f"{pool.queue.name}) left before the task started")  # fmt: skip

    def _mark_draining(self, pool: _Pool, name: str, limit_s: float) -> None:
        if name in pool.draining:
            return
        pool.draining.add(name)
        self._note(f"worker {name} (batch job {pool.batch_ids.get(pool.job_of(name), '?')}) takes no new task: {limit_s:.0f} s "
                   f"after it joined, the longest task of queue {pool.queue.name} might outlive its batch job's walltime")  # fmt: skip

    def _fail_waiting(self, pool: _Pool, err: BaseException) -> None:
        for key, h in list(pool.handles.items()):
            if key not in pool.running_on:
                h.fail(err)

    def _scale_down(self, pool: _Pool, names: list[str], why: str) -> None:
        if not names:
            return
        log.info("closing batch job(s) %s of queue %s, account %s: %s",
                 ", ".join(f"{n} ({pool.batch_ids.get(n, 'not submitted')})" for n in names), pool.queue.name, pool.account, why)  # fmt: skip
        pool.cluster.sync(pool.cluster.scale_down, names)
        for n in names:
            pool.submitted.pop(n, None)
            pool.idle_since.pop(n, None)
        pool.draining -= {w for w in pool.draining if pool.job_of(w) in set(names)}

    def _note(self, message: str) -> None:
        log.warning(message)
        self.events.append(message)


@dataclass
class _View:
    """One pool as the monitor saw it this round."""

    pool: _Pool
    spec: list[str]  # batch jobs wanted
    connected: set[str]  # batch jobs with a worker up
    busy_jobs: set[str]  # batch jobs running a task


def _short(text: str, limit: int = 600) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("Command:", "stdout:", "stderr:"))]
    out = " | ".join(lines)
    return out if len(out) <= limit else out[:limit] + " ..."
