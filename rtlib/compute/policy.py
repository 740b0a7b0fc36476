"""Queue policy: which of a site's queues a job runs in, and whether it fits any.

A job asks for `nodes` and `walltime_min` (the site's `policy.default`, or the
entry for its workload in `policy.workloads`). Real-time jobs (priority >=
`policy.urgent_min_priority`) try the non-preemptable (demand) queues first;
bulk/backlog jobs try the preemptable queues first. A job that names a queue
overrides the rule, but must still fit it. A job that fits no queue is refused
with the limits of every queue, before any scheduler is asked; so is a request
for more than one node (a task runs in one dask worker on one node) and one
longer than a worker job's walltime less `jobqueue.walltime_margin_s` (the
worker leaves before its batch job's walltime ends).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Queue, Site
from ..errors import RtlibError


class NoQueueFits(RtlibError):
    """A job's node or walltime request exceeds the limits of every queue it may use."""


@dataclass(frozen=True)
class Request:
    nodes: int
    walltime_min: float

    @property
    def node_hours(self) -> float:
        return self.nodes * self.walltime_min / 60


def request_for(site: Site, workload: str) -> Request:
    res = site.policy.workloads.get(workload, site.policy.default)
    return Request(nodes=res.nodes, walltime_min=res.walltime_min)


def is_urgent(site: Site, priority: int) -> bool:
    return priority >= site.policy.urgent_min_priority


def misfit(queue: Queue, request: Request, margin_s: float = 0.0) -> str | None:
    """Why `request` does not fit `queue`, or None when it does.

    `margin_s` is the end of a worker job's walltime that no task may use (the worker leaves then)."""
    problems = []
    if request.nodes > queue.max_nodes:
        problems.append(f"{request.nodes} nodes > max_nodes {queue.max_nodes}")
    if request.walltime_min > queue.max_walltime_min:
        problems.append(f"{request.walltime_min:g} min > max_walltime_min {queue.max_walltime_min:g}")
    usable_min = (queue.job_walltime_min or queue.max_walltime_min) - margin_s / 60
    if request.walltime_min <= queue.max_walltime_min and request.walltime_min > usable_min:
        what = "job walltime" if queue.job_walltime_min is not None else "job walltime (max_walltime_min)"
        problems.append(f"{request.walltime_min:g} min > the queue's worker {what} {queue.job_walltime_min or queue.max_walltime_min:g} min "
                        f"less jobqueue.walltime_margin_s {margin_s:g} s")  # fmt: skip
    return "; ".join(problems) or None


def longest_task_min(site: Site, queue: Queue) -> float:
    """The longest walltime request (policy.default or a policy.workloads entry) that `queue` may run."""
    margin_s = site.jobqueue.walltime_margin_s
    fits = [r.walltime_min for r in (site.policy.default, *site.policy.workloads.values())
            if misfit(queue, Request(nodes=1, walltime_min=r.walltime_min), margin_s) is None]  # fmt: skip
    return max(fits, default=0.0)


def _one_node(what: str, request: Request, workload: str) -> None:
    if request.nodes > 1:
        raise NoQueueFits(
            f"{what} asks for {request.nodes} nodes, but an rtlib analysis task runs in one dask worker on one node "
            f"(a queue's nodes_per_job makes batch jobs bigger, not tasks); set nodes = 1 in sites.<site>.policy.workloads.{workload}"
        )


def preference(site: Site, priority: int) -> list[Queue]:
    """The site's queues in the order a job of this priority tries them."""
    urgent = is_urgent(site, priority)
    # stable sort: within each kind the config's order stands
    return sorted(site.queues, key=lambda q: q.preemptable if urgent else not q.preemptable)


def choose_queue(site: Site, workload: str, priority: int = 0, requested: str | None = None) -> Queue:
    """The queue for a job; raises NoQueueFits (with every queue's reason) when none can take it."""
    request = request_for(site, workload)
    what = f"a {workload} job ({request.nodes} node(s), {request.walltime_min:g} min)"
    _one_node(what, request, workload)
    margin_s = site.jobqueue.walltime_margin_s if site.compute in ("slurm", "pbs") else 0.0
    if requested is not None:
        queue = site.queue(requested)
        reason = misfit(queue, request, margin_s)
        if reason:
            raise NoQueueFits(
                f"{what} does not fit queue {queue.name!r}: {reason}; choose another queue or lower the request "
                f"in sites.<site>.policy.workloads.{workload}"
            )
        return queue
    reasons = []
    for queue in preference(site, priority):
        reason = misfit(queue, request, margin_s)
        if reason is None:
            return queue
        reasons.append(f"{queue.name}: {reason}")
    raise NoQueueFits(
        f"{what} fits no queue of this site ({'; '.join(reasons)}); lower the request in "
        f"sites.<site>.policy.workloads.{workload} or add a queue with larger limits"
    )
