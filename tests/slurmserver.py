"""A real, throw-away single-node Slurm (with its own munged) for tests and benchmarks.

    with SlurmServer() as slurm:
        env = slurm.env                 # SLURM_CONF (and PATH) for sbatch, squeue, qsub ...
        slurm.squeue()                  # [{"id": "12", "state": "RUNNING", "partition": "demand", ...}]

Everything lives in a fresh temporary directory: a munge key and socket,
slurm.conf, the state save and spool directories, logs. slurmctld and slurmd
listen on free loopback ports. Two partitions stand for a facility's queues:
``demand`` (high PriorityTier) and ``preemptable`` (low tier, requeued when
demand needs its cores). Daemons run in the foreground as children of this
process and are stopped by PID on exit; nothing is installed or started
system-wide and no systemd is needed.

``SLURM_CONF`` is exported to ``os.environ`` while the server runs, so every
sbatch/squeue/scancel (and the slurm-wlm-torque qsub/qstat/qdel wrappers,
which call them) started by this process talks to this Slurm.

No pytest import here: benchmarks use this module too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import free_port

INSTALL_HINT = (
    "install Slurm and munge (Debian/Ubuntu: `sudo apt-get install slurm-wlm slurm-wlm-torque munge`; "
    "`.ci/run` does this)"
)
NODE = "rtlibnode"
PARTITIONS = ("demand", "preemptable")


class SlurmUnavailable(RuntimeError):
    """The Slurm or munge binaries are missing, or the daemons would not start."""


def _need(binary: str) -> str:
    path = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.path.exists(p)), None)
    if path is None:
        raise SlurmUnavailable(f"`{binary}` not found on PATH or in /usr/sbin; {INSTALL_HINT}")
    return path


class SlurmServer:
    """A context manager running munged + slurmctld + slurmd; see the module docstring.

    `cpus`/`memory_mb` are what the node advertises (more than the machine has is fine for
    sleeping test tasks: `config_overrides` makes slurmd accept it).
    """

    def __init__(self, *, cpus: int = 8, memory_mb: int = 16000, base_dir: str | None = None):
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.base_dir = base_dir
        self.tmpdir: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self._old_conf: str | None = None
        self.ctld_port = self.slurmd_port = 0

    # -- paths ---------------------------------------------------------------
    @property
    def conf(self) -> Path:
        assert self.tmpdir is not None, "server not started"
        return self.tmpdir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "SlurmServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 60) -> None:
        binaries = {b: _need(b) for b in ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "scontrol")}
        if os.geteuid() != 0:
            raise SlurmUnavailable("the test Slurm runs its daemons as root (slurmd must start jobs as the submitting user); run the Slurm tests as root")
        self.tmpdir = Path(tempfile.mkdtemp(prefix="rtlib-slurm-", dir=self.base_dir))
        os.chmod(self.tmpdir, 0o755)
        try:
            self._start_munge(binaries["munged"])
            self._write_conf()
            self._old_conf = os.environ.get("SLURM_CONF")
            os.environ["SLURM_CONF"] = str(self.conf)
            self._spawn("slurmctld", [binaries["slurmctld"], "-D", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", [binaries["slurmd"], "-D", "-N", NODE, "-f", str(self.conf)])
            self._wait_idle(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel every job, stop the daemons by PID, delete the directory. Safe to call twice."""
        if self.tmpdir is None:
            return
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "-u", pwd.getpwuid(os.getuid()).pw_name], env=self.env, capture_output=True, timeout=30)
            time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        # job steps started by slurmd outlive it: stop the ones of this cluster (found by our conf path)
        self._kill_leftover_steps()
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    # -- queries -------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout_s: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and proc.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def squeue(self) -> list[dict[str, str]]:
        """Jobs the controller knows (pending, running, requeued), as dicts."""
        out = self.run("squeue", "-h", "-o", "%i|%T|%P|%a|%j|%r").stdout
        rows = []
        for line in out.splitlines():
            job_id, state, partition, account, name, reason = line.split("|", 5)
            rows.append({"id": job_id, "state": state, "partition": partition, "account": account, "name": name, "reason": reason})
        return rows

    def completed(self) -> list[dict[str, str]]:
        """Finished jobs from the job-completion file (no slurmdbd needed)."""
        path = self.tmpdir / "jobcomp.txt" if self.tmpdir else None
        rows = []
        if path is None or not path.exists():
            return rows
        for line in path.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            rows.append(fields)
        return rows

    def log_tail(self, name: str = "slurmctld", n: int = 40) -> str:
        try:
            return "\n".join((self.tmpdir / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
        except (OSError, TypeError):
            return f"(no {name} log)"

    # -- internals -----------------------------------------------------------
    def _start_munge(self, munged: str) -> None:
        assert self.tmpdir is not None
        mdir = self.tmpdir / "munge"
        mdir.mkdir(mode=0o700)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        run_as: list[str] = []
        try:
            pw = pwd.getpwnam("munge")
        except KeyError:
            pw = None  # no munge user: run it as root (`--force` accepts that)
        if pw is not None and shutil.which("runuser"):
            for p in (mdir, key):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            run_as = ["runuser", "-u", "munge", "--"]
        self.munge_socket = mdir / "munge.socket"
        self._spawn("munged", [
            *run_as, munged, "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={mdir / 'munged.pid'}", f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'munged.seed'}",
        ], log=self.tmpdir / "munged.out")  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.monotonic() > deadline:
                log = (mdir / "munged.log").read_text(errors="replace") if (mdir / "munged.log").exists() else ""
                raise SlurmUnavailable(f"munged did not start: {log[-2000:]}{(self.tmpdir / 'munged.out').read_text()[-2000:]}")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        assert self.tmpdir is not None
        user = pwd.getpwuid(os.getuid()).pw_name
        for d in ("state", "spool"):
            (self.tmpdir / d).mkdir()
        for _ in range(5):
            self.ctld_port, self.slurmd_port = free_port(), free_port()
            if self.ctld_port != self.slurmd_port:
                break
        t = self.tmpdir
        mem_per_cpu = max(1, self.memory_mb // self.cpus)
        lines = [
            "ClusterName=rtlibtest",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: without it a requeued job waits ~121 s before it may start again
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={t / 'state'}",
            f"SlurmdSpoolDir={t / 'spool'}",
            f"SlurmctldPidFile={t / 'slurmctld.pid'}",
            f"SlurmdPidFile={t / 'slurmd.pid'}",
            f"SlurmctldLogFile={t / 'slurmctld.log'}",
            f"SlurmdLogFile={t / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            f"DefMemPerCPU={mem_per_cpu}",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,bf_interval=1",
            "PreemptType=preempt/partition_prio",
            "PreemptMode=REQUEUE",
            "JobRequeue=1",
            "KillWait=2",
            "MinJobAge=300",
            "InactiveLimit=0",
            "MpiDefault=none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={t / 'jobcomp.txt'}",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={socket.gethostname()} CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=demand Nodes={NODE} Default=YES MaxTime=60 PriorityTier=10 PreemptMode=OFF State=UP",
            f"PartitionName=preemptable Nodes={NODE} MaxTime=1440 PriorityTier=1 PreemptMode=REQUEUE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: list[str], log: Path | None = None) -> None:
        assert self.tmpdir is not None
        out = open(log or self.tmpdir / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmpdir, env={**os.environ, "SLURM_CONF": str(self.conf)})
        except OSError as err:
            raise SlurmUnavailable(f"could not start {name} ({' '.join(cmd)}): {err}; {INSTALL_HINT}") from None
        finally:
            out.close()

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with code {proc.returncode} while starting:\n{self.log_tail(name)}\n{self._out_tail(name)}")
            proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True, timeout=30)
            state = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else proc.stderr.strip()
            if proc.returncode == 0 and state.startswith("idle"):
                return
            time.sleep(0.2)
        raise SlurmUnavailable(
            f"the test Slurm node is not idle after {timeout_s:g} s (last sinfo: {state!r})\n"
            f"--- slurmctld ---\n{self.log_tail('slurmctld')}\n--- slurmd ---\n{self.log_tail('slurmd')}"
        )

    def _out_tail(self, name: str) -> str:
        try:
            return (self.tmpdir / f"{name}.out").read_text(errors="replace")[-2000:]
        except (OSError, TypeError):
            return ""

    def _kill_leftover_steps(self) -> None:
        """slurmstepd processes of this cluster (their environment names our SLURM_CONF), by PID."""
        if self.tmpdir is None:
            return
        marker = str(self.conf).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if b"slurmstepd" not in (entry / "cmdline").read_bytes():
                    continue
                if marker not in (entry / "environ").read_bytes():
                    continue
                os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue


if __name__ == "__main__":  # a quick manual check: python tests/slurmserver.py
    with SlurmServer() as slurm:
        print("started; conf", slurm.conf)
        print(slurm.run("sinfo").stdout)
        print(slurm.run("sbatch", "-p", "demand", "--wrap", "sleep 1").stdout)
        time.sleep(2)
        print(slurm.squeue())
