"""One job's file-system trouble, tampered staged inputs and user text in logs (issue 15, findings 3, 4, 9).

The agent runs in-process on a real dask LocalCluster with real files. The tests run as root, which
ignores permission bits, so "permission denied" is raised where the local backend meets it for a
non-root service account (listing a chmod 000 folder), with its real errno; every other fault is a
real one root cannot bypass: a regular file where a folder must be (ENOTDIR), or an injected EIO /
ENOSPC at the backend's `open`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rtlib import jobs
from rtlib.compute.base import ComputeBackend
from rtlib.runtime import Runtime
from rtlib.states import State
from rtlib.store import JobStore
from rtlib.synth.detector import write_detector_file
from rtlib.transfer import local as local_mod
from rtlib.transfer.local import LocalTransferBackend

from helpers import make_settings, produce


class LockedFolders(LocalTransferBackend):
    """The local backend as a non-root service account sees it: listing under a chmod 000 folder is refused."""

    def __init__(self, roots, locked: list[Path], **kw):
        super().__init__(roots, **kw)
        self.locked = [str(p) for p in locked]

    def list_files(self, endpoint, path):
        real = str(self.resolve(endpoint, path))
        for folder in self.locked:
            if real.startswith(folder + os.sep):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), real)  # what os.stat raises there
        return super().list_files(endpoint, path)


def _roots(settings) -> dict[str, Path]:
    return {name: Path(ep.root) for name, ep in settings.endpoints.items() if ep.root is not None}


def _job_dir(settings, job_id: int) -> Path:
    return _roots(settings)[settings.site("local").scratch_endpoint] / f"jobs/{job_id:08d}"


def test_file_system_errors_fail_only_their_job(tmp_path, compute, monkeypatch):
    settings = make_settings(tmp_path / "ws", transfer_retries=1)
    roots = _roots(settings)
    aps = roots["aps"]
    good = produce(settings, 2)
    for name in ("locked", "eio", "scratch-file", "out-file", "dest-file", "full"):
        shutil.copy(aps / good[0][1], aps / f"raw/{name}.h5")
    (aps / "raw/flat").write_bytes(b"a file where the input's folder should be")
    (aps / "raw/unreadable").mkdir()
    shutil.copy(aps / good[0][1], aps / "raw/unreadable/scan.h5")
    (aps / "raw/unreadable").chmod(0)  # what the red team did; root reads it anyway, so the backend says no (above)
    (aps / "blocked").write_bytes(b"a file where the results folder should be")

    real_open = open

    def faulty_open(path, mode="r", *a, **kw):
        name = str(path)
        if "rb" in mode and name.endswith("/raw/eio.h5"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), name)
        if "x" in mode and "/full-disk/" in name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(local_mod, "open", faulty_open, raising=False)
    transfer = LockedFolders(roots, [aps / "raw/unreadable"], retries=1, backoff_s=0.01)
    rt = Runtime(settings, JobStore(settings.store), transfer, compute)
    try:
        def submit(inp: str, **kw) -> int:
            return jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=[inp], params={"num_q_bins": 16}, **kw)

        ok = [jobs.submit(rt.store, settings, "saxs", source_endpoint=ep, inputs=[rel], params={"num_q_bins": 16}) for ep, rel in good]
        bad = {
            "source folder is a file": submit("raw/flat/scan.h5"),
            "source folder unreadable": submit("raw/unreadable/scan.h5"),
            "EIO reading the source": submit("raw/eio.h5"),
            "scratch job folder is a file": submit("raw/scratch-file.h5"),
            "scratch out folder is a file": submit("raw/out-file.h5"),
            "destination folder is a file": submit("raw/dest-file.h5", output_path="blocked/job-{job_id}"),
            "destination disk full": submit("raw/full.h5", output_path="full-disk/job-{job_id}"),
        }
        _job_dir(settings, bad["scratch job folder is a file"]).parent.mkdir(parents=True, exist_ok=True)
        _job_dir(settings, bad["scratch job folder is a file"]).write_bytes(b"not a folder")
        _job_dir(settings, bad["scratch out folder is a file"]).mkdir(parents=True)
        (_job_dir(settings, bad["scratch out folder is a file"]) / "out").write_bytes(b"not a folder")

        rt.agent("local").run(until_idle=True, max_seconds=150)  # returns: no job's error ends the agent

        for job in rt.store.list_jobs(ids=ok):
            assert job.state == State.DONE, (job.id, job.state, job.error)
        failed = {k: rt.store.get_job(v) for k, v in bad.items()}
        assert all(j.state == State.FAILED for j in failed.values()), {k: (j.state, j.error) for k, j in failed.items()}
        expect = {  # the cause (errno name) and the path, in each job's reason
            "source folder is a file": ("ENOTDIR", "raw/flat/scan.h5"),
            "source folder unreadable": ("EACCES", "raw/unreadable/scan.h5"),
            "EIO reading the source": ("EIO", "raw/eio.h5"),
            "scratch job folder is a file": ("ENOTDIR", f"jobs/{bad['scratch job folder is a file']:08d}"),
            "scratch out folder is a file": ("ENOTDIR", f"jobs/{bad['scratch out folder is a file']:08d}/out"),
            "destination folder is a file": ("ENOTDIR", "blocked"),
            "destination disk full": ("ENOSPC", "full-disk"),
        }
        for case, (code, path) in expect.items():
            error = failed[case].error
            assert f"({code})" in error and path in error, (case, error)
        assert not (aps / "blocked").is_dir() and not list(aps.glob("full-disk/**/*.h5"))
    finally:
        (aps / "raw/unreadable").chmod(0o755)
        rt.compute = None
        rt.close()


class TamperBeforeRun(ComputeBackend):
    """The real LocalCluster; just before one job's analysis is sent, someone overwrites its staged input."""

    def __init__(self, inner: ComputeBackend, victim_job: int, other_data: Path):
        self.inner, self.victim_job, self.other_data = inner, victim_job, other_data
        self.modes: dict[str, int] = {}

    @property
    def slots(self) -> int:
        return self.inner.slots

    def start(self) -> None:
        self.inner.start()

    def submit(self, fn, *args, key):
        for path in args[2]:  # run_attempt(workload, params, input_paths, attempt_dir, ...)
            self.modes[path] = stat.S_IMODE(os.stat(path).st_mode)
            if key.startswith(f"rtlib-job-{self.victim_job}-"):
                os.chmod(path, 0o644)  # as its owner could (root needs no such step)
                shutil.copyfile(self.other_data, path)
        return self.inner.submit(fn, *args, key=key)

    def is_worker_lost(self, exc):
        return self.inner.is_worker_lost(exc)

    def close(self) -> None:
        pass


def test_staged_input_changed_before_analysis_fails_the_job(tmp_path, compute):
    settings = make_settings(tmp_path / "ws")
    data = produce(settings, 2)
    brighter = tmp_path / "brighter.h5"  # a valid scan of 33x the intensity: the analysis would succeed on it
    write_detector_file(brighter, frames=4, height=64, width=64, seed=0, scale_counts=33 * 2000.0, dtype="uint32")
    store = JobStore(settings.store)
    ids = [jobs.submit(store, settings, "saxs", source_endpoint=ep, inputs=[rel], params={"num_q_bins": 16}) for ep, rel in data]
    tamper = TamperBeforeRun(compute, victim_job=ids[0], other_data=brighter)
    rt = Runtime(settings, store, LocalTransferBackend(_roots(settings)), tamper)
    try:
        rt.agent("local").run(until_idle=True, max_seconds=120)
        victim, control = store.get_job(ids[0]), store.get_job(ids[1])
        assert victim.state == State.FAILED, (victim.state, victim.error)
        assert "changed after stage-in" in victim.error and "scan-000.h5" in victim.error, victim.error
        assert control.state == State.DONE, (control.state, control.error)
        assert not (_roots(settings)[data[0][0]] / f"results/saxs/job-{ids[0]}").exists(), "nothing of the wrong data is delivered"
        assert tamper.modes and set(tamper.modes.values()) == {0o444}, tamper.modes  # staged inputs are read-only
    finally:
        rt.compute = None
        rt.close()


def test_user_text_cannot_forge_agent_log_lines_and_failures_are_logged_once(tmp_path):
    ws = tmp_path / "ws"
    settings = make_settings(ws)
    store = JobStore(settings.store)
    (ep, rel), (ep2, rel2) = produce(settings, 2)
    forged = "WARNING rtlib.agent: job 999 DONE results delivered"
    evil = jobs.submit(store, settings, "saxs", source_endpoint=ep, inputs=[rel],
                       params={"dataset_path": f"/entry/nope\n{forged}\r\x1b]0;pwned\x07\u2028{forged}"})
    root = Path(settings.endpoints[ep2].root)
    (root / "raw/truncated.h5").write_bytes((root / rel2).read_bytes()[:3000])
    truncated = jobs.submit(store, settings, "saxs", source_endpoint=ep2, inputs=["raw/truncated.h5"])
    proc = subprocess.run(
        [sys.executable, "-m", "rtlib.cli", "agent", "--workspace", str(ws), "--until-idle", "--no-progress", "--max-seconds", "150"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "RTLIB_CONFIG": ""},
    )
    log_text = proc.stderr
    assert proc.returncode == 0, log_text[-3000:]
    assert [store.get_job(i).state for i in (evil, truncated)] == [State.FAILED, State.FAILED]
    lines = log_text.splitlines()
    assert not any(line.startswith(forged) or forged in line.split("\\n")[0] for line in lines), log_text
    assert "\x1b]0;pwned" not in log_text and "\u2028" not in log_text
    evil_lines = [line for line in lines if f"job {evil} failed" in line]
    assert len(evil_lines) == 1 and f"\\n{forged}" in evil_lines[0], log_text
    # a failed analysis is told once, as the job's reason: no dask "Compute Failed" traceback per job
    assert "Compute Failed" not in log_text and "Traceback" not in log_text, log_text
    assert len([line for line in lines if f"job {truncated} failed" in line]) == 1, log_text
    assert "truncated.h5" in store.get_job(truncated).error
    store.close()
