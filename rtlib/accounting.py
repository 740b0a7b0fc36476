"""Allocations and suballocations: node-hour budgets, usage, and the hold decision.

An account is `project` or `project::suballocation`. Its budget is the config's
`accounts.<name>.node_hours`, unless changed at run time (`rtlib accounts --set`,
kept in the store). Usage is what the compute backend recorded: each worker's
time on the scheduler times its nodes. A job about to run reserves its request
(nodes x walltime); it is held when that would take its suballocation, or the
project above it, past the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .compute.policy import Request, request_for
from .config import Settings
from .errors import ConfigError
from .states import State
from .store import Job, JobStore


def project_of(account: str) -> str:
    return account.split("::", 1)[0]


def scheduler_account(settings: Settings, account: str | None) -> str | None:
    """The string for the scheduler's -A: configured, else the project part (suballocations are rtlib's)."""
    if account is None:
        return None
    cfg = settings.accounts.get(account)
    if cfg is not None and cfg.scheduler_account:
        return cfg.scheduler_account
    return project_of(account)


def job_request(settings: Settings, job: Job) -> Request:
    try:
        return request_for(settings.site(job.site), job.workload)
    except ConfigError:
        return Request(nodes=1, walltime_min=0)


@dataclass
class AccountStatus:
    account: str
    budget_node_hours: float
    used_node_hours: float
    reserved_node_hours: float
    running_jobs: int = 0
    held_jobs: list[int] = field(default_factory=list)

    @property
    def remaining_node_hours(self) -> float:
        return self.budget_node_hours - self.used_node_hours - self.reserved_node_hours

    def to_dict(self) -> dict:
        return {
            "account": self.account,
            "budget_node_hours": round(self.budget_node_hours, 6),
            "used_node_hours": round(self.used_node_hours, 6),
            "reserved_node_hours": round(self.reserved_node_hours, 6),
            "remaining_node_hours": round(self.remaining_node_hours, 6),
            "running_jobs": self.running_jobs,
            "held_jobs": self.held_jobs,
        }


class Ledger:
    """A snapshot of budgets, usage and reservations; `hold_reason` + `reserve` per job about to run."""

    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.taken = time.monotonic()
        overrides = store.budget_overrides()
        self.budgets = {name: overrides.get(name, acc.node_hours) for name, acc in settings.accounts.items()}
        self.budgets.update({k: v for k, v in overrides.items() if k not in self.budgets})
        self.used: dict[str, float] = {}
        for account, hours in store.used_node_hours().items():
            for name in _charged(account):
                self.used[name] = self.used.get(name, 0.0) + hours
        self.reserved: dict[str, float] = {}
        self.running: dict[str, int] = {}
        self.held: dict[str, list[int]] = {}
        for job in store.list_jobs(states=[State.RUNNING, State.HELD]):
            if job.account is None:
                continue
            if job.state == State.HELD:
                self.held.setdefault(job.account, []).append(job.id)
            else:
                self.running[job.account] = self.running.get(job.account, 0) + 1
                self.reserve(job.account, job_request(settings, job))

    def reserve(self, account: str | None, request: Request) -> None:
        if account is None:
            return
        for name in _charged(account):
            self.reserved[name] = self.reserved.get(name, 0.0) + request.node_hours

    def remaining(self, account: str) -> float | None:
        if account not in self.budgets:
            return None
        return self.budgets[account] - self.used.get(account, 0.0) - self.reserved.get(account, 0.0)

    def hold_reason(self, account: str | None, request: Request) -> str | None:
        """Why a run of `request` charged to `account` must wait, or None when the budget allows it."""
        if account is None:
            return None
        for name in _charged(account):
            left = self.remaining(name)
            if left is not None and request.node_hours > left + 1e-12:
                return (
                    f"held: the run needs {request.node_hours:.4g} node-hours ({request.nodes} node(s) x {request.walltime_min:g} min) "
                    f"but account {name} has {max(left, 0.0):.4g} of {self.budgets[name]:.4g} left "
                    f"({self.used.get(name, 0.0):.4g} used, {self.reserved.get(name, 0.0):.4g} reserved by running jobs); "
                    f"raise its budget (`rtlib accounts --set {name}=HOURS`) or wait for running jobs to finish"
                )
        return None

    def status(self) -> list[AccountStatus]:
        names = sorted(set(self.budgets) | set(self.used) | set(self.held))
        return [
            AccountStatus(
                account=n,
                budget_node_hours=self.budgets.get(n, float("inf")),
                used_node_hours=self.used.get(n, 0.0),
                reserved_node_hours=self.reserved.get(n, 0.0),
                running_jobs=self.running.get(n, 0),
                held_jobs=sorted(self.held.get(n, [])),
            )
            for n in names
        ]


def _charged(account: str) -> list[str]:
    """A suballocation's use also counts against its project."""
    project = project_of(account)
    return [account] if project == account else [account, project]


def accounts_status(settings: Settings, store: JobStore) -> list[AccountStatus]:
    return Ledger(settings, store).status()
