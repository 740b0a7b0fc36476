"""The site agent: advances the jobs of one site, one recorded step at a time.

Every step is committed to the store (a compare-and-set on the job's state
and lease) *before* the agent acts on it, and every action is idempotent,
so an agent killed at any instant restarts where it stopped:

* transfer items are marked done only after the verified copy is in place
  under its final name; a restarted agent re-sends what is still pending;
* an analysis attempt writes only into its own attempt directory; the agent
  promotes it to ``out/`` and records RUN_DONE; a restarted agent that
  finds ``out/`` complete records RUN_DONE instead of running again, and
  one that finds a RUNNING job with no result counts the attempt as lost
  (PREEMPTED) and queues it again while the retry budget lasts.

Before a run is sent to the compute backend the queue policy picks (or
checks) its queue, and the job's suballocation must have the node-hours it
asks for; otherwise the job is FAILED (fits no queue) or HELD (over budget,
re-checked every second and released when the budget allows).

Transfers go in batches of up to ``batch_bytes`` with a bounded number in
flight on a thread pool, while analyses run on the compute backend, so
stage-in of the next jobs overlaps analysis of the current ones.

One job's trouble stays that job's: a file-system error (permission, full
disk, I/O) while handling it fails that job with the cause, a transfer
batch that crashes fails its items, and the agent goes on. Staged inputs
are made read-only as they land and their checksums are checked again on
the worker before the analysis reads them. The agent stops (with an error)
when its store file vanishes or is replaced, and never delivers into a
results folder marked as another store's (see `results_claim`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from sqlalchemy import exc as sa_exc

from . import accounting, fserrors, layout, logsafe, results_claim
from .compute.base import ComputeBackend
from .compute.policy import NoQueueFits, choose_queue, request_for
from .compute.task import SUMMARY_FILE, TaskFailure, attempt_started, read_progress, run_attempt
from .config import Settings
from .errors import EndpointError, PathOutsideRoot, ResultsRootClaimed, RtlibError, StoreError
from .states import ACTIVE, TERMINAL, State
from .store import Job, JobStore, TransferItem
from .transfer.base import TransferBackend, TransferOutcome, TransferRequest
from .transfer.checksum import file_checksum
from .workloads import get_workload

log = logging.getLogger("rtlib.agent")
logsafe.protect(log)  # reasons and paths carry user text: one record stays one line
S = State
STAGED_INPUT_MODE = 0o444  # staged inputs are read-only: only a new stage-in replaces them


@dataclass
class AgentStats:
    started: float = field(default_factory=time.time)
    bytes_in: int = 0
    bytes_out: int = 0
    files_in: int = 0
    files_out: int = 0
    transfer_failures: int = 0
    runs_started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_bytes(self, direction: str, n: int) -> None:
        with self.lock:
            if direction == "in":
                self.bytes_in += n
            else:
                self.bytes_out += n


@dataclass
class _Run:
    future: Any
    attempt_dir: str  # relative to the scratch endpoint
    attempt: int
    last_progress_check: float = 0.0


class Agent:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        transfer: TransferBackend,
        compute: ComputeBackend,
        *,
        site: str = "local",
        agent_id: str | None = None,
        max_leased: int = 256,
    ):
        self.settings = settings
        self.store = store
        self.transfer = transfer
        self.compute = compute
        self.site_name = site
        self.site = settings.site(site)
        self.scratch = self.site.scratch_endpoint
        self.opts = settings.agent
        self.agent_id = agent_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.max_leased = max_leased
        self.stats = AgentStats()

        self.jobs: dict[int, Job] = {}
        self.pending: dict[int, deque[TransferItem]] = {}  # job -> items not yet sent
        self.remaining: dict[int, int] = {}  # job -> items of the current stage not yet done
        self.item_job: dict[int, int] = {}  # transfer item -> job, while in flight
        self.ready: deque[int] = deque()  # STAGED_IN jobs waiting for a compute slot
        self.runs: dict[int, _Run] = {}
        # analyses still running on the cluster when a store error made the agent forget its jobs: re-attached
        # when the job is re-adopted in the same attempt (a store restart costs no compute), else cancelled
        self.detached: dict[int, tuple[_Run, float]] = {}
        self.unstarted_losses: dict[int, int] = {}  # job -> attempts lost before they started (not charged)
        self.batches: dict[Future, tuple[str, list[int]]] = {}  # transfer batch -> its direction and item ids
        self.outcomes: queue.Queue[tuple[str, TransferOutcome, int]] = queue.Queue()
        self.pool = ThreadPoolExecutor(max_workers=self.opts.transfers_in_flight, thread_name_prefix="rtlib-transfer")
        self._supports_on_outcome = "on_outcome" in inspect.signature(transfer.transfer_batch).parameters
        self._lists_by_beamline = "beamline" in inspect.signature(transfer.list_files).parameters
        self._last_heartbeat = 0.0
        self._last_claim = 0.0
        self._last_sync = 0.0
        self._stop = threading.Event()
        self.held: set[int] = set()
        self._ledger: accounting.Ledger | None = None
        self._last_hold_check = 0.0
        self._unmarked_endpoints: set[str] = set()  # destinations whose results root cannot be marked from here
        store.require_writable()  # a read-only store is an error now, not an endless "unreachable" later
        set_sink = getattr(compute, "set_usage_sink", None)
        if set_sink is not None:  # worker run time, charged to the accounts (jobqueue backends)
            set_sink(lambda **usage: self.store.record_usage(site=self.site_name, **usage))
        self._break_dead_local_leases()

    # -- public ------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(
        self,
        *,
        until_idle: bool = False,
        max_seconds: float | None = None,
        on_tick: Callable[["Agent"], None] | None = None,
        tick_s: float = 0.25,
    ) -> None:
        """Advance jobs until stopped, until `max_seconds`, or (until_idle) until no active job is left."""
        deadline = time.monotonic() + max_seconds if max_seconds else None
        last_tick = 0.0
        store_backoff_s = 0.5
        logsafe.protect_root_handlers()
        try:
            while not self._stop.is_set():
                try:
                    busy = self.step()
                    store_backoff_s = 0.5
                except sa_exc.DBAPIError as err:  # the store restarted or the network dropped
                    log.warning("job store unreachable (%s); retrying in %.1f s", type(err.orig or err).__name__, store_backoff_s)
                    self._reset()
                    if deadline and time.monotonic() + store_backoff_s > deadline:
                        break  # --max-seconds holds while the store is away too
                    time.sleep(store_backoff_s)
                    store_backoff_s = min(store_backoff_s * 2, 10.0)
                    continue
                now = time.monotonic()
                if on_tick and now - last_tick >= tick_s:
                    on_tick(self)
                    last_tick = now
                if deadline and now > deadline:
                    break
                if until_idle and not self.jobs and not self.batches and self._site_idle():
                    break
                if not busy:
                    time.sleep(self.opts.poll_s)
        finally:
            if on_tick:
                on_tick(self)
            self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.store.check_alive()  # never write into a store that is not the one opened
            self.store.release(self.agent_id)
        except (sa_exc.DBAPIError, StoreError) as err:
            log.warning("could not release leases (%s); they expire after %s s", type(err).__name__, self.opts.lease_s)

    def _reset(self) -> None:
        """Forget every job after a store error: the store is the truth, and the next claim re-adopts them.

        Running analyses go on on the cluster: a job re-adopted in the same attempt picks its analysis up
        again (see `_recover_running`). Copies in flight finish and their outcomes are recorded, but no job
        advances on them until it is re-adopted.
        """
        now = time.monotonic()
        for job_id, run in self.runs.items():
            self.detached[job_id] = (run, now)
        self.runs.clear()
        for job_id in list(self.jobs):
            self._forget(job_id)
        self.item_job.clear()
        self._last_claim = 0.0

    def _break_dead_local_leases(self) -> None:
        """Free at once the jobs of an agent on this host whose process is gone (kill -9, reboot)."""
        host = socket.gethostname()
        try:
            for owner in self.store.lease_owners(site=self.site_name):
                parts = owner.split(":")
                if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                    log.info("releasing the leases of dead agent %s", owner)
                    self.store.release(owner)
        except sa_exc.DBAPIError:
            pass  # the store is restarting: those leases simply expire after lease_s

    # -- the loop ----------------------------------------------------------
    def step(self) -> bool:
        now = time.time()
        busy = False
        self.store.check_alive()  # a deleted or replaced store file: StoreLost ends the run
        if now - self._last_heartbeat > self.opts.lease_s / 3:
            self.store.verify_identity()
            self.store.heartbeat(self.agent_id, self.opts.lease_s)
            self._last_heartbeat = now
        if now - self._last_sync > 1.0:
            self._sync_external_changes()
            self._last_sync = now
        if len(self.jobs) < self.max_leased and now - self._last_claim > 0.5:
            self._last_claim = now
            for job in self.store.claim(
                self.agent_id, site=self.site_name, lease_s=self.opts.lease_s, limit=self.max_leased - len(self.jobs),
                reclaim_own=not self.jobs,  # holding nothing in memory: any job leased to us is ours to resume
            ):
                self._adopt(job)
                busy = True
        if self.detached:
            self._drop_detached()
        busy |= self._collect_transfers()
        busy |= self._dispatch_transfers()
        tend = getattr(self.compute, "tend", None)
        if self.runs and tend is not None:
            tend()  # e.g. a LocalCluster whose nanny gave up is replaced; its tasks count as lost
        busy |= self._collect_runs()
        busy |= self._start_runs()
        if self.held and now - self._last_hold_check > 1.0:
            self._last_hold_check = now
            busy |= self._release_held()
        return busy

    def _drop_detached(self) -> None:
        """Cancel the detached analyses of jobs not re-adopted within a lease (another agent has them now)."""
        stale_before = time.monotonic() - self.opts.lease_s
        for job_id, (run, since) in list(self.detached.items()):
            if since < stale_before:
                del self.detached[job_id]
                run.future.cancel()

    def _site_idle(self) -> bool:
        counts = self.store.count_by_state(site=self.site_name)
        return not any(counts.get(s.value, 0) for s in ACTIVE)

    def _sync_external_changes(self) -> None:
        """Drop jobs that someone else moved (a cancel from the CLI or the API)."""
        if not self.jobs:
            return
        current = {j.id: j for j in self.store.list_jobs(ids=list(self.jobs))}
        for job_id, mine in list(self.jobs.items()):
            theirs = current.get(job_id)
            if theirs is None or theirs.state != mine.state or theirs.lease_owner != self.agent_id:
                self._forget(job_id)

    def _forget(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)
        self.pending.pop(job_id, None)
        self.remaining.pop(job_id, None)
        self.held.discard(job_id)
        run = self.runs.pop(job_id, None)
        if run is not None:
            run.future.cancel()
        try:
            self.ready.remove(job_id)
        except ValueError:
            pass

    def _move(self, job: Job, to: State, reason: str, **fields: Any) -> Job | None:
        """Record a step. Returns the updated job, or None when another actor moved it first."""
        done = to in TERMINAL
        if not self.store.transition(job.id, job.state, to, reason, owner=self.agent_id, release=done, **fields):
            log.info("job %s moved by someone else; dropping it", job.id)
            self._forget(job.id)
            return None
        if done:
            self._forget(job.id)
            self.unstarted_losses.pop(job.id, None)
            return None
        job = self.store.get_job(job.id)
        self.jobs[job.id] = job
        return job

    def _fail(self, job: Job, reason: str) -> None:
        log.warning("job %s failed: %s", job.id, reason)
        self._move(job, S.FAILED, reason, error=reason)

    @contextlib.contextmanager
    def _job_files(self, job_id: int):
        """Turn a file-system error met while handling one job into that job's failure, with its cause."""
        try:
            yield
        except OSError as err:
            if not fserrors.is_fs_error(err):
                raise  # not a file-system error (a closed connection to the scheduler): not this job's doing
            job = self.jobs.get(job_id)
            if job is None:  # already finished or dropped: nothing left to fail
                log.warning("job %s: file-system error after it was dropped: %s", job_id, fserrors.describe(err))
                return
            self._fail(job, f"file-system error while {job.state.value}: {fserrors.describe(err)}; {fserrors.fix_hint(err)}, "
                            f"then retry the job")

    # -- adopting a job in whatever state the store says -------------------
    def _adopt(self, job: Job) -> None:
        self.jobs[job.id] = job
        with self._job_files(job.id):
            self._dispatch_adopted(job)

    def _dispatch_adopted(self, job: Job) -> None:
        handler = {
            S.CREATED: self._plan_stage_in,
            S.STAGING_IN: self._resume_staging,
            S.STAGED_IN: self._queue_for_run,
            S.RUNNING: self._recover_running,
            S.RUN_DONE: self._plan_stage_out,
            S.STAGING_OUT: self._resume_staging,
            S.PREEMPTED: self._requeue_preempted,
            S.HELD: lambda held: self.held.add(held.id),  # re-checked against the budget every second
        }[job.state]
        handler(job)

    def _plan_stage_in(self, job: Job) -> None:
        try:
            workload = get_workload(job.workload)
            params = workload.validate(job.params)
            sources = list(job.inputs) + workload.extra_inputs(params)
            items = []
            for src in sources:
                by = {"beamline": job.beamline} if self._lists_by_beamline and job.beamline else {}
                for path, size in self.transfer.list_files(job.source_endpoint, src, **by):
                    dst = layout.staged_input_path(job.id, src, path)
                    items.append(dict(src_endpoint=job.source_endpoint, src_path=path, dst_endpoint=self.scratch, dst_path=dst, size_bytes=size))
            if not items:
                raise RtlibError(f"no input files found at {job.source_endpoint}:{', '.join(job.inputs)}")
            self._check_results_root(job, claim=False)  # fail now, not after the analysis
        except RtlibError as err:
            self._fail(job, str(err))
            return
        self.store.add_items(job.id, "in", items)
        job = self._move(job, S.STAGING_IN, f"staging {len(items)} file(s), {sum(i['size_bytes'] for i in items)} bytes")
        if job:
            self._resume_staging(job)

    def _resume_staging(self, job: Job) -> None:
        direction = "in" if job.state == S.STAGING_IN else "out"
        items = self.store.items(job.id, direction)
        failed = [i for i in items if i.state == "failed"]
        if failed:
            self._fail(job, f"could not stage {direction} {failed[0].src_endpoint}:{failed[0].src_path}: {failed[0].error}")
            return
        todo = [i for i in items if i.state == "pending"]
        cleaner = getattr(self.transfer, "clean_temporaries", None)
        if cleaner and todo:  # a killed agent may have left hidden partial copies behind
            for d in {str(PurePosixPath(i.dst_path).parent) for i in todo}:
                try:
                    cleaner(todo[0].dst_endpoint, d)
                except (RtlibError, OSError):  # only tidying: a real problem with that folder fails the copy itself
                    pass
        self.pending[job.id] = deque(todo)
        self.remaining[job.id] = len(todo)
        if not todo:
            self._finish_stage(job)

    def _finish_stage(self, job: Job) -> None:
        self.pending.pop(job.id, None)
        self.remaining.pop(job.id, None)
        if job.state == S.STAGING_IN:
            job = self._move(job, S.STAGED_IN, "inputs staged and verified")
            if job:
                self._queue_for_run(job)
        elif job.state == S.STAGING_OUT:
            self._move(job, S.DONE, "results delivered and verified", progress=1.0)

    def _queue_for_run(self, job: Job) -> None:
        if job.id not in self.ready:
            self.ready.append(job.id)

    def _recover_running(self, job: Job) -> None:
        run, _ = self.detached.pop(job.id, (None, 0.0))
        if run is not None:
            if run.attempt == job.attempts:  # forgotten after a store error, still ours and still on the cluster
                log.info("job %s: attempt %s picked up again after the store came back", job.id, run.attempt)
                self.runs[job.id] = run
                return
            run.future.cancel()
        out = self._local(layout.output_dir(job.id))
        if (out / SUMMARY_FILE).exists():
            self._record_run_done(job, out, "analysis had finished before the agent restarted")
        else:
            self._preempted(job, f"attempt {job.attempts} was lost with its agent (restart)")

    def _lost_before_start(self, job: Job, run: _Run, reason: str) -> None:
        """An attempt its worker never started (queued there when the worker died) is not charged to the job's
        retries, up to max_attempts such losses per job in one agent life (a bound on a pathological loop)."""
        lost = self.unstarted_losses.get(job.id, 0)
        if lost >= job.max_attempts:
            self._preempted(job, reason)
            return
        self.unstarted_losses[job.id] = lost + 1
        self._preempted(job, f"{reason}; it had not started, so it is not counted", attempts=run.attempt - 1)

    def _requeue_preempted(self, job: Job) -> None:
        if job.attempts >= job.max_attempts:
            self._fail(job, f"preempted and out of retries ({job.attempts}/{job.max_attempts} attempts used)")
        else:
            job = self._move(job, S.STAGED_IN, f"re-queued after preemption (attempt {job.attempts + 1} of {job.max_attempts} next)")
            if job:
                self._queue_for_run(job)

    def _preempted(self, job: Job, reason: str, **fields: Any) -> None:
        job = self._move(job, S.PREEMPTED, reason, **fields)
        if job:
            self._requeue_preempted(job)

    def _check_results_root(self, job: Job, *, claim: bool) -> None:
        """ResultsRootClaimed when the job's destination lies in a results folder of another job store."""
        dest = layout.expand_output_path(job.output_path, job.id, job.workload).strip("/")
        try:
            results_claim.check(self.transfer, job.dest_endpoint, dest, self.store.store_id, claim=claim)
        except PathOutsideRoot:
            raise
        except (NotImplementedError, EndpointError):  # reached only through Globus: its folder cannot be read here
            if job.dest_endpoint not in self._unmarked_endpoints:
                self._unmarked_endpoints.add(job.dest_endpoint)
                log.warning("endpoint %s has no local root here: its results folders are not checked for another store's "
                            "results (give it a `root` where this machine mounts it)", job.dest_endpoint)

    def _plan_stage_out(self, job: Job) -> None:
        out_rel = layout.output_dir(job.id)
        dest = layout.expand_output_path(job.output_path, job.id, job.workload).strip("/")
        try:
            self._check_results_root(job, claim=True)
        except ResultsRootClaimed as err:
            self._fail(job, f"results not delivered: {err}")
            return
        try:
            files = self.transfer.list_files(self.scratch, out_rel)
        except RtlibError as err:
            self._fail(job, f"results missing on scratch: {err}")
            return
        items = [
            dict(
                src_endpoint=self.scratch,
                src_path=path,
                dst_endpoint=job.dest_endpoint,
                dst_path=str(PurePosixPath(dest) / PurePosixPath(path).relative_to(out_rel)),
                size_bytes=size,
            )
            for path, size in files
        ]
        self.store.add_items(job.id, "out", items)
        job = self._move(job, S.STAGING_OUT, f"returning {len(items)} result file(s) to {job.dest_endpoint}:{dest}")
        if job:
            self._resume_staging(job)

    # -- transfers ---------------------------------------------------------
    def _dispatch_transfers(self) -> bool:
        sent = False
        while len(self.batches) < self.opts.transfers_in_flight:
            batch = self._next_batch()
            if not batch:
                break
            direction = "out" if self.jobs[self.item_job[batch[0].item_id]].state == S.STAGING_OUT else "in"
            fut = self.pool.submit(self._transfer_batch, batch, direction)
            self.batches[fut] = (direction, [r.item_id for r in batch])
            sent = True
        return sent

    def _next_batch(self) -> list[TransferRequest]:
        """Items in order: results going home first (they finish jobs), then inputs by job priority."""
        order = sorted(self.pending, key=lambda j: (self.jobs[j].state != S.STAGING_OUT, -self.jobs[j].priority, j))
        # Spread what is pending over the free slots (so a small backlog still moves in parallel),
        # but never past batch_bytes / batch_max_items (one Globus task's worth).
        free = max(1, self.opts.transfers_in_flight - len(self.batches))
        backlog = sum(it.size_bytes for q in self.pending.values() for it in q)
        limit_bytes = min(self.opts.batch_bytes, max(1, backlog // free))
        batch: list[TransferRequest] = []
        total = 0
        for job_id in order:
            q = self.pending[job_id]
            while q:
                it = q[0]
                if batch and (total + it.size_bytes > limit_bytes or len(batch) >= self.opts.batch_max_items):
                    return batch
                q.popleft()
                self.item_job[it.id] = job_id
                batch.append(TransferRequest(it.id, it.src_endpoint, it.src_path, it.dst_endpoint, it.dst_path, it.size_bytes,
                                             self.jobs[job_id].beamline))
                total += it.size_bytes
            if batch and self.jobs[job_id].state == S.STAGING_OUT:
                return batch  # keep result batches per job so each job finishes as soon as it can
        return batch

    def _transfer_batch(self, batch: list[TransferRequest], direction: str) -> None:
        requests = {r.item_id: r for r in batch}

        def progress(n: int) -> None:
            self.stats.add_bytes(direction, n)

        def report(outcome: TransferOutcome) -> None:
            if direction == "in" and outcome.ok:
                outcome = self._seal_staged(outcome, requests[outcome.item_id])
            self.outcomes.put((direction, outcome, 0))

        if self._supports_on_outcome:
            self.transfer.transfer_batch(batch, progress, on_outcome=report)
        else:
            for outcome in self.transfer.transfer_batch(batch, progress):
                report(outcome)

    def _seal_staged(self, outcome: TransferOutcome, req: TransferRequest) -> TransferOutcome:
        """Make a staged input read-only and make sure its checksum is recorded (the worker checks it again)."""
        try:
            path = self._local(req.dst_path)
            checksum = outcome.checksum or file_checksum(path)  # Globus verifies but reports no digest
            os.chmod(path, STAGED_INPUT_MODE)
        except OSError as err:
            return dataclasses.replace(outcome, ok=False, error=f"sealing the staged copy failed: {fserrors.describe(err)}")
        except RtlibError as err:
            return dataclasses.replace(outcome, ok=False, permanent=True, error=f"sealing the staged copy failed: {err}")
        return dataclasses.replace(outcome, checksum=checksum)

    def _collect_transfers(self) -> bool:
        changed = False
        for fut in [f for f in self.batches if f.done()]:
            direction, item_ids = self.batches.pop(fut)
            exc = fut.exception()
            if exc is not None:  # the backend broke on this batch: its items fail, the agent goes on
                log.error("transfer batch crashed: %r", exc)
                why = fserrors.describe(exc) if fserrors.is_fs_error(exc) else f"{type(exc).__name__}: {exc}"
                for item_id in item_ids:
                    if item_id in self.item_job:  # not reported before the crash
                        self.outcomes.put((direction, TransferOutcome(item_id, False, error=f"the transfer backend crashed: {why}"), 0))
            changed = True
        while True:
            try:
                direction, outcome, _ = self.outcomes.get_nowait()
            except queue.Empty:
                break
            changed = True
            job_id = self.item_job.pop(outcome.item_id, None)
            now = time.time()
            if outcome.ok:
                self.store.update_item(outcome.item_id, state="done", checksum=outcome.checksum, attempts=outcome.attempts, finished_at=now, error=None)
                with self.stats.lock:
                    if direction == "in":
                        self.stats.files_in += 1
                    else:
                        self.stats.files_out += 1
            else:
                self.store.update_item(outcome.item_id, state="failed", attempts=outcome.attempts, finished_at=now, error=outcome.error)
                with self.stats.lock:
                    self.stats.transfer_failures += 1
            job = self.jobs.get(job_id) if job_id is not None else None
            if job is None or job.id not in self.remaining:
                continue  # cancelled or already failed meanwhile
            if not outcome.ok:
                kind = "permanently" if outcome.permanent else f"after {outcome.attempts} attempts"
                self.pending.pop(job.id, None)
                self.remaining.pop(job.id, None)
                self._fail(job, f"transfer for stage-{direction} failed {kind}: {outcome.error}")
                continue
            self.remaining[job.id] -= 1
            if self.remaining[job.id] <= 0:
                with self._job_files(job.id):
                    self._finish_stage(job)
        return changed

    # -- analysis ----------------------------------------------------------
    def _start_runs(self) -> bool:
        started = False
        # one spare task per worker keeps workers busy between tasks
        while self.ready and len(self.runs) < self.compute.slots + 1:
            job_id = self.ready.popleft()
            job = self.jobs.get(job_id)
            if job is None or job.state != S.STAGED_IN:
                continue
            with self._job_files(job_id):
                started |= self._start_run(job)
        return started

    def _start_run(self, job: Job) -> bool:
        queue = self._admit(job)
        if queue is None:
            return False
        attempt = job.attempts + 1
        token = uuid.uuid4().hex[:8]
        rel = layout.attempt_dir(job.id, attempt, token)
        job = self._move(job, S.RUNNING, f"attempt {attempt} of {job.max_attempts} started in queue {queue}", attempts=attempt, progress=0.0, queue=queue)
        if job is None:
            return False
        staged = self.store.items(job.id, "in")
        inputs = [str(self._local(i.dst_path)) for i in staged]
        # the worker checks each input against the checksum verified at stage-in before reading it
        args = (run_attempt, job.workload, job.params, inputs, str(self._local(rel)), [i.checksum for i in staged])
        key = f"rtlib-job-{job.id}-{attempt}-{token}"
        submit_job = getattr(self.compute, "submit_job", None)
        if submit_job is None:
            fut = self.compute.submit(*args, key=key)
        else:
            fut = submit_job(*args, key=key, queue=queue, account=job.account,
                             scheduler_account=accounting.scheduler_account(self.settings, job.account))  # fmt: skip
        self.runs[job.id] = _Run(fut, rel, attempt)
        self.stats.runs_started += 1
        return True

    def _admit(self, job: Job) -> str | None:
        """The queue a STAGED_IN job runs in, or None after failing it (fits no queue) or holding it (over budget)."""
        try:
            queue = choose_queue(self.site, job.workload, job.priority, requested=job.queue).name
        except (NoQueueFits, RtlibError) as err:
            self._fail(job, f"not submitted: {err}")
            return None
        request = request_for(self.site, job.workload)
        ledger = self._current_ledger()
        reason = ledger.hold_reason(job.account, request)
        if reason is not None:
            log.info("job %s %s", job.id, reason)
            if self._move(job, S.HELD, reason, error=reason) is not None:
                self.held.add(job.id)
            return None
        ledger.reserve(job.account, request)
        return queue

    def _current_ledger(self) -> accounting.Ledger:
        # one snapshot per second: budgets and usage change slowly; this agent's own starts reserve into it
        if self._ledger is None or time.monotonic() - self._ledger.taken > 1.0:
            self._ledger = accounting.Ledger(self.settings, self.store)
        return self._ledger

    def _release_held(self) -> bool:
        """Send held jobs back to STAGED_IN once their suballocation can pay for them (oldest first)."""
        ledger = accounting.Ledger(self.settings, self.store)  # fresh, and private: _start_runs re-checks with its own
        self._ledger = None
        released = False
        for job_id in sorted(self.held):
            job = self.jobs.get(job_id)
            if job is None or job.state != S.HELD:
                self.held.discard(job_id)
                continue
            request = request_for(self.site, job.workload)
            if ledger.hold_reason(job.account, request) is not None:
                continue
            self.held.discard(job_id)
            job = self._move(job, S.STAGED_IN, f"released: account {job.account} can now pay {request.node_hours:.4g} node-hours", error=None)
            if job:
                ledger.reserve(job.account, request)  # keep later held jobs from all being released on one budget
                self._queue_for_run(job)
                released = True
        return released

    def _collect_runs(self) -> bool:
        changed = False
        now = time.time()
        for job_id, run in list(self.runs.items()):
            job = self.jobs.get(job_id)
            if job is None:
                self.runs.pop(job_id, None)
                continue
            if not run.future.done():
                if now - run.last_progress_check > 1.0:
                    run.last_progress_check = now
                    p = read_progress(self._local(run.attempt_dir))
                    if p and p["fraction"] != job.progress:
                        self.store.update_job(job.id, owner=self.agent_id, progress=p["fraction"])
                        self.jobs[job.id] = job = self.store.get_job(job.id)
                continue
            changed = True
            self.runs.pop(job_id)
            with self._job_files(job_id):
                try:
                    result = run.future.result()
                except BaseException as exc:  # the worker's exception, re-raised here (a lost worker)
                    self._run_failed(job, run, exc)
                    continue
                if isinstance(result, TaskFailure):
                    self._attempt_failed(job, run, result)
                    continue
                self._promote(job, run)
        return changed

    def _attempt_failed(self, job: Job, run: _Run, failure: TaskFailure) -> None:
        """The analysis itself failed (it returned its exception): recorded once, as the job's reason."""
        shutil.rmtree(self._local(run.attempt_dir), ignore_errors=True)
        log.debug("job %s attempt %s failed on its worker:\n%s", job.id, run.attempt, failure.traceback)
        os_err = failure.as_os_error()
        if os_err is not None and fserrors.is_transient(os_err):  # a full scratch, a flaky mount: worth another attempt
            self._preempted(job, f"attempt {run.attempt}: {fserrors.describe(os_err)}; {fserrors.fix_hint(os_err)}")
        elif os_err is not None:
            self._fail(job, f"the {job.workload} analysis met a file-system error: {fserrors.describe(os_err)}; "
                            f"{fserrors.fix_hint(os_err)}, then retry the job")
        elif failure.rtlib_error:
            self._fail(job, f"{failure.type_name}: {failure.message}")
        else:
            self._fail(job, f"the {job.workload} analysis raised {failure.type_name}: {failure.message}")

    def _run_failed(self, job: Job, run: _Run, exc: BaseException) -> None:
        started = attempt_started(self._local(run.attempt_dir))
        shutil.rmtree(self._local(run.attempt_dir), ignore_errors=True)
        if self.compute.is_worker_lost(exc):
            reason = f"attempt {run.attempt}: worker lost ({type(exc).__name__}: {exc})"
            if started:
                self._preempted(job, reason)
            else:
                self._lost_before_start(job, run, reason)
        elif isinstance(exc, RtlibError):
            self._fail(job, f"{type(exc).__name__}: {exc}")
        else:
            self._fail(job, f"the {job.workload} analysis raised {type(exc).__name__}: {exc}")

    def _promote(self, job: Job, run: _Run) -> None:
        src = self._local(run.attempt_dir)
        out = self._local(layout.output_dir(job.id))
        if out.exists():  # a half-promoted earlier attempt: ours is complete, replace it
            shutil.rmtree(out)
        os.replace(src, out)
        self._record_run_done(job, out, f"attempt {run.attempt} finished")

    def _record_run_done(self, job: Job, out: Path, reason: str) -> None:
        import json

        try:
            summary = json.loads((out / SUMMARY_FILE).read_text())
        except ValueError as err:  # damaged on scratch: this job's results cannot be trusted, the agent goes on
            self._fail(job, f"the analysis summary {out / SUMMARY_FILE} is damaged ({err}); retry the job")
            return
        job = self._move(job, S.RUN_DONE, reason, summary=summary, progress=1.0)
        if job:
            self._plan_stage_out(job)

    def _local(self, rel: str) -> Path:
        return self.transfer.local_path(self.scratch, rel)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
