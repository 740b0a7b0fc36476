"""Figures from the store: jobs by state, time spent in each stage, bytes moved."""

from __future__ import annotations

import statistics
from collections import defaultdict

from .states import State
from .store import JobStore

STAGES = {
    "stage_in": (State.STAGING_IN, State.STAGED_IN),
    "queued": (State.STAGED_IN, State.RUNNING),
    "run": (State.RUNNING, State.RUN_DONE),
    "stage_out": (State.STAGING_OUT, State.DONE),
    "end_to_end": (State.CREATED, State.DONE),
}


def stage_durations(store: JobStore, job_ids: list[int] | None = None) -> dict[str, list[float]]:
    """For each stage, the seconds each job spent in it (last entry to first exit after it)."""
    first_seen: dict[int, dict[str, float]] = defaultdict(dict)
    for ev in store.events():
        if job_ids is not None and ev.job_id not in job_ids:
            continue
        first_seen[ev.job_id].setdefault(ev.to_state, ev.timestamp)
        first_seen[ev.job_id][f"last:{ev.to_state}"] = ev.timestamp
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    for seen in first_seen.values():
        for name, (start, end) in STAGES.items():
            t0 = seen.get(f"last:{start.value}")
            t1 = seen.get(f"last:{end.value}")
            if t0 is not None and t1 is not None and t1 >= t0:
                out[name].append(t1 - t0)
    return out


def median_latencies(store: JobStore, job_ids: list[int] | None = None) -> dict[str, float | None]:
    return {k: (statistics.median(v) if v else None) for k, v in stage_durations(store, job_ids).items()}


def bytes_moved(store: JobStore, job_ids: list[int] | None = None) -> dict[str, int]:
    totals = {"in": 0, "out": 0}
    for it in store.items(state="done"):
        if job_ids is None or it.job_id in job_ids:
            totals[it.direction] += it.size_bytes
    return totals
