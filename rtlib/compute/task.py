"""The function that runs on a worker: one attempt of one job's analysis.

It writes only inside its own attempt directory; the agent alone promotes
a finished attempt to the job's output, so an orphaned or preempted
attempt can never leak partial results to the destination.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

PROGRESS_FILE = ".progress.json"
SUMMARY_FILE = "summary.json"
STARTED_FILE = ".started"  # written first thing on the worker: the attempt began (it was not just queued)


def write_progress(attempt_dir: Path, fraction: float, message: str) -> None:
    tmp = attempt_dir / (PROGRESS_FILE + ".tmp")
    tmp.write_text(json.dumps({"fraction": max(0.0, min(1.0, float(fraction))), "message": message, "time": time.time()}))
    os.replace(tmp, attempt_dir / PROGRESS_FILE)


def read_progress(attempt_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((attempt_dir / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def attempt_started(attempt_dir: Path) -> bool:
    """Whether a worker began this attempt (a task lost while still queued on a worker did not)."""
    return (attempt_dir / STARTED_FILE).exists() or (attempt_dir / SUMMARY_FILE).exists()


def run_attempt(workload_name: str, params: dict[str, Any], input_paths: list[str], attempt_dir: str) -> dict[str, Any]:
    outdir = Path(attempt_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / STARTED_FILE).touch()
    from ..workloads import get_workload

    wl = get_workload(workload_name)
    model = wl.validate(params)
    started = time.time()
    summary = wl.run(model, [Path(p) for p in input_paths], outdir, lambda f, m="": write_progress(outdir, f, m))
    summary = dict(summary or {})
    summary.setdefault("run_s", round(time.time() - started, 4))
    (outdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    for marker in (PROGRESS_FILE, STARTED_FILE):  # bookkeeping, not results: the summary now says it began
        try:
            (outdir / marker).unlink()
        except FileNotFoundError:
            pass
    return summary
