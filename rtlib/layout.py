"""Where a job's files live on the site's scratch endpoint, as paths relative to its root.

    jobs/<id>/in/...                 staged inputs
    jobs/<id>/attempt-<n>-<token>/   one analysis attempt (written by the worker only)
    jobs/<id>/out/                   the attempt the agent promoted: what is staged out

Only the agent writes under ``jobs/`` (the job area): a copy a person asks for
may not land there (`in_job_area`), or a job would analyse other bytes than
its record names.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath

JOB_AREA = "jobs"


def job_dir(job_id: int) -> str:
    return f"{JOB_AREA}/{job_id:08d}"


def in_job_area(path: str) -> bool:
    """Whether `path`, relative to a scratch endpoint's root however it is spelled (./jobs, jobs//x, /jobs/x), is the job area or below it."""
    parts = PurePosixPath(posixpath.normpath("/" + path.replace("\\", "/"))).parts
    return len(parts) > 1 and parts[1] == JOB_AREA


def input_dir(job_id: int) -> str:
    return f"{job_dir(job_id)}/in"


def attempt_dir(job_id: int, attempt: int, token: str) -> str:
    return f"{job_dir(job_id)}/attempt-{attempt}-{token}"


def output_dir(job_id: int) -> str:
    return f"{job_dir(job_id)}/out"


def staged_input_path(job_id: int, input_path: str, file_path: str) -> str:
    """A source file's place under the job's input dir, keeping its path below the input's parent."""
    parent = PurePosixPath(input_path.strip("/")).parent
    rel = PurePosixPath(file_path.strip("/")).relative_to(parent) if str(parent) != "." else PurePosixPath(file_path.strip("/"))
    return f"{input_dir(job_id)}/{rel}"


def expand_output_path(output_path: str, job_id: int, workload: str) -> str:
    """`{job_id}` and `{workload}` in a destination path are filled in per job."""
    return output_path.replace("{job_id}", str(job_id)).replace("{workload}", workload)
