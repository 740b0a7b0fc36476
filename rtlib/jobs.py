"""Submitting, cancelling and retrying jobs: the operations the CLI, the REST API and the widgets share."""

from __future__ import annotations

import numbers
from typing import Any

from . import safetext as st
from .config import Settings
from .errors import ConfigError, EndpointError, IllegalTransition, RtlibError
from .states import TERMINAL, State
from .store import JobSpec, JobStore
from .workloads import get_workload
from .compute.policy import choose_queue
from .transfer.destinations import check_output_path

STORE_INT_MAX = 2**31 - 1  # priority and max_attempts are INTEGER columns (int4 on PostgreSQL)
MAX_ATTEMPTS_LIMIT = 100  # runs of one job; more is a typo, and each run may cost node-hours


def parse_location(text: str) -> tuple[str, str]:
    """`ENDPOINT:PATH` -> (endpoint, path)."""
    endpoint, sep, path = text.partition(":")
    if not sep or not endpoint or not path:
        raise EndpointError(f"{text!r} is not ENDPOINT:PATH (for example aps:raw/scan1.h5)")
    return endpoint, path


def _check_relative(endpoint: str, path: str) -> None:
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        raise EndpointError(f"{endpoint}:{path}: '..' is not allowed; give a path inside the endpoint's root")


def _check_beamline_endpoints(settings: Settings, beamline: str, *, source: str, destination: str, scratch: str, site: str) -> None:
    """Refuse a job that would move data through an endpoint its beamline (and service account) may not use."""
    allowed = settings.beamlines[beamline].allowed_endpoints or []
    for role, name in (("source", source), ("destination", destination), (f"site {site!r} scratch", scratch)):
        if name not in allowed:
            raise ConfigError(
                f"beamline {beamline!r} may not use endpoint {name!r} (the job's {role} endpoint); it may use: "
                f"{', '.join(allowed)}. Use one of those, or add {name!r} to beamlines.{beamline}.allowed_endpoints "
                "in the site config"
            )


def _text(field: str, value: Any, *, optional: bool = False) -> None:
    """A field that must be a string: a list or dict would reach dict lookups and messages as it is."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise st.FieldError(field, f"must be text (a string), got {st.shown(value)}")


def _integer(field: str, value: Any, low: int, high: int) -> int:
    """An int within [low, high]: no bool, no float (2.7 is not 2), no string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise st.FieldError(field, f"must be a whole number from {low} to {high}, got {st.shown(value)}")
    if not low <= int(value) <= high:
        raise st.FieldError(field, f"{st.shown(int(value))} is out of range: give a whole number from {low} to {high}")
    return int(value)


def _check_fields(workload, source_endpoint, inputs, params, dest_endpoint, output_path, site, queue, account, beamline) -> None:
    """Types first: every later check (and the store) may then rely on them."""
    for field, value, optional in (("workload", workload, False), ("source_endpoint", source_endpoint, False),
                                   ("dest_endpoint", dest_endpoint, True), ("output_path", output_path, False),
                                   ("site", site, False), ("queue", queue, True), ("account", account, True),
                                   ("beamline", beamline, True)):  # fmt: skip
        _text(field, value, optional=optional)
    if not isinstance(inputs, (list, tuple)):
        raise st.FieldError("inputs", f"must be a list of paths, got {st.shown(inputs)}")
    for i, path in enumerate(inputs):
        _text(f"inputs[{i}]", path)
    if params is not None and not isinstance(params, dict):
        raise st.FieldError("params", f"must be a mapping of parameter names to values, got {st.shown(params)}")


def submit(
    store: JobStore,
    settings: Settings,
    workload: str,
    *,
    source_endpoint: str,
    inputs: list[str],
    params: dict[str, Any] | None = None,
    dest_endpoint: str | None = None,
    output_path: str = "results/{workload}/job-{job_id}",
    site: str = "local",
    queue: str | None = None,
    account: str | None = None,
    beamline: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
) -> int:
    """Validate everything a person can get wrong, then record the job (state CREATED).

    The account reaches the scheduler's -A of a batch script (its project part), so it must match
    safetext.ACCOUNT even when the config lists no accounts; site, queue and beamline must be names
    the config defines (whose keys match safetext.NAME)."""
    _check_fields(workload, source_endpoint, inputs, params, dest_endpoint, output_path, site, queue, account, beamline)
    priority = _integer("priority", priority, -STORE_INT_MAX - 1, STORE_INT_MAX)
    if max_attempts is not None:
        max_attempts = _integer("max_attempts", max_attempts, 1, MAX_ATTEMPTS_LIMIT)
    wl = get_workload(workload)
    clean = wl.validate(params or {}).model_dump(mode="json")
    settings.endpoint(source_endpoint)
    dest_endpoint = dest_endpoint or source_endpoint
    settings.endpoint(dest_endpoint)
    for path in inputs:
        _check_relative(source_endpoint, path)
    _check_relative(dest_endpoint, output_path)
    check_output_path(settings, dest_endpoint, output_path)  # never into a scratch's job area, where only the agent writes
    site_cfg = settings.site(site)
    if queue is not None and queue not in {q.name for q in site_cfg.queues}:
        raise ConfigError(f"site {site!r} has no queue {st.shown(queue)}; its queues: {', '.join(q.name for q in site_cfg.queues)}")
    if beamline is not None:
        if beamline not in settings.beamlines:
            raise ConfigError(f"unknown beamline {st.shown(beamline)}; configured: {', '.join(sorted(settings.beamlines)) or 'none'}")
        account = account or settings.beamlines[beamline].account
        _check_beamline_endpoints(settings, beamline, source=source_endpoint, destination=dest_endpoint,
                                  scratch=site_cfg.scratch_endpoint, site=site)
    if account is not None and settings.accounts and account not in settings.accounts:
        raise ConfigError(f"unknown account {st.shown(account)}; configured: {', '.join(sorted(settings.accounts))}")
    for field, value, pattern in (("site", site, st.NAME), ("queue", queue, st.NAME), ("beamline", beamline, st.NAME),
                                  ("account", account, st.ACCOUNT)):  # fmt: skip
        if value is not None:  # the config's names passed this when it was loaded; an unlisted account has only this
            st.check(field, value, pattern)
    if not inputs:
        raise RtlibError("a job needs at least one input path")
    spec = JobSpec(
        workload=workload,
        params=clean,
        source_endpoint=source_endpoint,
        inputs=list(inputs),
        dest_endpoint=dest_endpoint,
        output_path=output_path,
        site=site,
        queue=choose_queue(site_cfg, workload, priority, requested=queue).name,  # policy rule unless named; must fit
        account=account,
        beamline=beamline,
        priority=priority,
        max_attempts=max_attempts or settings.agent.max_attempts,
    )
    return store.create_job(spec)


def cancel(store: JobStore, job_id: int, reason: str = "cancelled by user") -> None:
    job = store.get_job(job_id)
    if job.state in TERMINAL:
        raise IllegalTransition(f"job {job_id} is already {job.state.value}; nothing to cancel")
    if not store.transition(job_id, job.state, State.CANCELLED, reason, release=True, error=reason):
        raise RtlibError(f"job {job_id} changed state while cancelling; run the command again")


def retry(store: JobStore, job_id: int, reason: str = "retried by user") -> None:
    """Start a FAILED or CANCELLED job again from the beginning, with a fresh retry budget."""
    job = store.get_job(job_id)
    if job.state not in (State.FAILED, State.CANCELLED):
        raise IllegalTransition(f"job {job_id} is {job.state.value}; only FAILED or CANCELLED jobs can be retried")
    if not store.transition(job_id, job.state, State.CREATED, reason, release=True, attempts=0, error=None, progress=0.0):
        raise RtlibError(f"job {job_id} changed state while retrying; run the command again")
