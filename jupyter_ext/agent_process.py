"""An `rtlib agent` run as a child process of a kernel, for `%rtlib agent start|stop`.

A child process rather than a thread: the agent starts a dask cluster and
must keep running while cells execute; a process is also stopped cleanly
(SIGINT: leases released, cluster closed) without touching the kernel.
Its output goes to ``<workspace>/agent-<pid>.log``.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rtlib.errors import RtlibError


class AgentProcess:
    def __init__(self, workspace: Path, *, config: str | None = None, workspace_arg: str | None = None, site: str = "local"):
        self.workspace = Path(workspace)
        self.config = config
        self.workspace_arg = workspace_arg
        self.site = site
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "rtlib.cli", "agent", "--site", self.site, "--no-progress"]
        if self.config:
            cmd += ["--config", str(self.config)]
        if self.workspace_arg:
            cmd += ["--workspace", str(self.workspace_arg)]
        return cmd

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> int:
        if self.running:
            return self.proc.pid
        self.workspace.mkdir(parents=True, exist_ok=True)
        log_path = self.workspace / f"agent-kernel-{os.getpid()}.log"
        with open(log_path, "ab") as log:
            # its own session: an interrupt of the kernel must not stop the agent
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.log_path = log_path
        atexit.register(self.stop)
        return self.proc.pid

    def check_alive(self) -> None:
        """RtlibError with the end of its log if the agent this kernel started has died."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            tail = self.log_tail()
            self.proc = None
            raise RtlibError(f"the agent started by `%rtlib agent start` exited with status {code}; "
                             f"the end of its log ({self.log_path}):\n{tail}\nfix the cause, then `%rtlib agent start` again")

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (the agent releases its leases and closes its cluster), then SIGKILL after timeout_s. Returns its exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        return proc.returncode
