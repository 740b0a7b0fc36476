"""The function that runs on a worker: one attempt of one job's analysis.

It writes only inside its own attempt directory; the agent alone promotes
a finished attempt to the job's output, so an orphaned or preempted
attempt can never leak partial results to the destination.

Before the analysis reads its inputs, each staged file's checksum is
compared with the one recorded when its copy was verified at stage-in:
bytes changed on scratch in between fail the attempt instead of giving a
DONE job with results of other data.

A failed attempt *returns* a `TaskFailure` instead of raising: dask logs
every raised task exception with its traceback ("Compute Failed") on the
worker; the agent records the failure once, as the job's reason.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import RtlibError, StagedInputChanged
from ..transfer.checksum import file_checksum

PROGRESS_FILE = ".progress.json"
SUMMARY_FILE = "summary.json"
STARTED_FILE = ".started"  # written first thing on the worker: the attempt began (it was not just queued)


@dataclass(frozen=True)
class TaskFailure:
    """What an attempt raised, in plain values (any exception pickles this way, whatever its constructor)."""

    type_name: str
    message: str
    rtlib_error: bool  # raised on purpose by rtlib: the message says the cause and the fix
    errno: int | None = None  # set for a file-system error (OSError)
    filename: str | None = None
    traceback: str = ""

    @classmethod
    def of(cls, err: BaseException) -> "TaskFailure":
        os_err = err if isinstance(err, OSError) else None
        return cls(
            type_name=type(err).__name__, message=str(err), rtlib_error=isinstance(err, RtlibError),
            errno=getattr(os_err, "errno", None), filename=None if os_err is None or os_err.filename is None else str(os_err.filename),
            traceback="".join(traceback.format_exception(err)),
        )  # fmt: skip

    def as_os_error(self) -> OSError | None:
        if self.errno is None:
            return None
        return OSError(self.errno, os.strerror(self.errno), self.filename)


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
    try:
        return (attempt_dir / STARTED_FILE).exists() or (attempt_dir / SUMMARY_FILE).exists()
    except OSError:  # the attempt directory cannot even be looked at: nothing of it can be trusted to have run
        return False


def verify_inputs(input_paths: Sequence[str], checksums: Sequence[str | None]) -> None:
    """Raise StagedInputChanged unless every staged input still has the checksum recorded at stage-in."""
    for path, expected in zip(input_paths, checksums):
        if expected is None:  # recorded before checksums were kept
            continue
        actual = file_checksum(path)
        if actual != expected:
            raise StagedInputChanged(
                f"staged input {path} changed after stage-in: its sha256 is now {actual[:16]}…, the copy verified at "
                f"stage-in had {expected[:16]}…; something wrote to the job's scratch folder, so the analysis would not "
                "read the data the job names. Find what writes there, then retry the job to stage its inputs again"
            )


def run_attempt(
    workload_name: str, params: dict[str, Any], input_paths: list[str], attempt_dir: str,
    input_checksums: Sequence[str | None] | None = None,
) -> dict[str, Any] | TaskFailure:  # fmt: skip
    try:
        return _run(workload_name, params, input_paths, attempt_dir, input_checksums)
    except Exception as err:
        return TaskFailure.of(err)


def _run(workload_name, params, input_paths, attempt_dir, input_checksums) -> dict[str, Any]:
    outdir = Path(attempt_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / STARTED_FILE).touch()
    from ..workloads import get_workload

    wl = get_workload(workload_name)
    model = wl.validate(params)
    if input_checksums is not None:
        verify_inputs(input_paths, input_checksums)
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
