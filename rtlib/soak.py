"""A compressed multi-day campaign under faults, and its verdict.

Three beamline endpoints produce datasets on a schedule while an agent
process analyses them over a shaped link; a fault injector meanwhile fails
and corrupts copies, kills the agent with SIGKILL (and starts it again, as a
node reboot and a supervisor would), kills dask workers under running
analyses (preemption), restarts the job store (when a restart function is
given, e.g. a PostgreSQL server), and writes malformed input files. The
verdict checks that every dataset was analysed exactly once with its
results home and verified, or failed with a reason naming its file (the
malformed ones only), that nothing is stuck, and that the agent's memory and
open file descriptors stay flat.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import tomli_w

from . import jobs, report
from .config import DEFAULT_BEAMLINE_ENDPOINTS, Settings, ensure_workspace, validate
from .states import TERMINAL, State
from .store import JobStore
from .transfer.checksum import file_checksum

GLOBUS_ENDPOINTS = ("als", "alcf")  # with token faults: these two are Globus collections on the loopback emulator
GLOBUS_BEAMLINE = "als-demo"
SECRET_ENV = "RTLIB_SOAK_GLOBUS_SECRET"

# scaled-down stand-ins for the campaign's mix: (workload, share, size in MB; laue and connectomics have a fixed
# small shape: a 32 x 32 px wire scan, a 4-section EM volume of 2 x 2 tiles, a directory)
DEFAULT_MIX = (("xpcs", 0.35, 3.0), ("saxs", 0.3, 2.0), ("laue", 0.1, 0.0), ("connectomics", 0.05, 0.0), ("noop", 0.2, 0.5))

# an agent life is judged for leaks past its start-up (imports, cluster start), if it lasted long enough
SETTLE_S = 30.0
MIN_JUDGED_S = 45.0
RSS_GROWTH_LIMIT_MB = 64.0  # growth of the agent's resident memory over one settled life
FD_GROWTH_LIMIT = 32  # growth of its open file descriptors (copies in flight hold a few each)
# what the agent's log says for each injected transfer fault (rtlib/transfer/local.py logs every retried attempt)
TRANSFER_FAULT_MARKS = {"transfer_failures": b"injected link failure", "corrupted_copies": b"was corrupted on the way"}


@dataclass
class SoakPlan:
    duration_s: float = 60.0  # producing time; draining follows
    dataset_interval_s: float = 1.0  # per endpoint
    link_mbps: float | None = 276.0
    transfer_fail_rate: float = 0.05
    transfer_corrupt_rate: float = 0.05
    agent_kill_every_s: float | None = 20.0  # mean interval (exponential)
    preempt_every_s: float | None = 15.0
    store_restart_every_s: float | None = None  # only with a store_restart function
    globus: bool = False  # als and alcf become Globus collections on a loopback emulator (real globus-sdk client)
    token_expire_every_s: float | None = None  # revoke the service account's tokens (needs globus=True)
    min_token_age_s: float = 10.0  # only tokens at least this old are revoked (a real one dies at the end of its life)
    malformed_fraction: float = 0.05
    stuck_bound_s: float = 180.0  # a job not terminal this long after production stops is stuck
    agent_steady_s: float = 0.0  # no agent SIGKILL in the last this many seconds of production: one life long enough to judge leaks
    max_datasets: int | None = None  # stop producing after this many datasets (or at duration_s, whichever comes first)
    seed: int = 0
    mix: tuple = DEFAULT_MIX

    @property
    def faults(self) -> str:
        return f"fail={self.transfer_fail_rate},corrupt={self.transfer_corrupt_rate},seed={self.seed}"

    def without_faults(self) -> "SoakPlan":
        return SoakPlan(**{**asdict(self), "transfer_fail_rate": 0.0, "transfer_corrupt_rate": 0.0, "agent_kill_every_s": None,
                           "preempt_every_s": None, "store_restart_every_s": None, "malformed_fraction": 0.0,
                           "token_expire_every_s": None})


@dataclass
class Verdict:
    datasets: int = 0
    done: int = 0
    failed_as_expected: int = 0
    unexpected_failures: dict[int, str] = field(default_factory=dict)
    malformed_not_failed: list[int] = field(default_factory=list)
    stuck: list[int] = field(default_factory=list)
    duplicated_steps: list[str] = field(default_factory=list)
    bad_results: list[str] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    agent_rss_mb: list[float] = field(default_factory=list)  # first and last sample of the longest agent life
    agent_fds: list[int] = field(default_factory=list)
    agent_memory: list[tuple[float, float, int, int]] = field(default_factory=list)  # (s since start, RSS MB, fds, agent life)
    wall_s: float = 0.0
    input_mbps: float = 0.0
    not_exercised: list[str] = field(default_factory=list)
    copies_retried: int = 0  # transfer items that needed more than one copy (injected failures and corruptions)
    globus: dict[str, int] = field(default_factory=dict)  # the emulator's counters, when Globus was in the loop
    secret_leaks: list[str] = field(default_factory=list)  # places the service account's secret was found
    agent_exit_logs: list[str] = field(default_factory=list)  # the last lines an agent wrote before exiting by itself
    judged_life_s: float = 0.0  # length of the longest agent life judged for leaks (0: none lasted MIN_JUDGED_S)
    rss_growth_mb: float | None = None  # its settled resident-memory growth (median of the last vs the first quarter)
    fd_growth: int | None = None  # the same for its open file descriptors
    rss_slope_mb_per_h: float | None = None  # least-squares slope of its settled resident memory

    @property
    def memory_flat(self) -> bool | None:
        """None when no agent life was long enough to judge."""
        if self.rss_growth_mb is None or self.fd_growth is None:
            return None
        return self.rss_growth_mb <= RSS_GROWTH_LIMIT_MB and self.fd_growth <= FD_GROWTH_LIMIT

    @property
    def ok(self) -> bool:
        return not (self.unexpected_failures or self.malformed_not_failed or self.stuck or self.duplicated_steps or self.bad_results
                    or self.secret_leaks or self.memory_flat is False)

    def summary(self) -> str:
        """The one line a person reads first."""
        lost = len(self.stuck) + len(self.unexpected_failures) + len(self.malformed_not_failed)
        checks = "all checksums match" if not self.bad_results else f"{len(self.bad_results)} result(s) with a bad checksum"
        flat = {None: "memory not judged", True: "memory flat", False: "memory NOT flat"}[self.memory_flat]
        return f"{lost} lost, {len(self.duplicated_steps)} duplicated, {checks}, {flat}"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok, "memory_flat": self.memory_flat, "summary": self.summary()}, indent=2)


def _proc_sample(pid: int) -> tuple[float, int] | None:
    try:
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
        return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def _session_workers(pid: int) -> list[int]:
    """The dask worker processes in the agent's session: spawned children, not the agent itself and not
    multiprocessing's resource tracker (a preemption takes a node's workers, not the tracker's bookkeeping)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                if os.getsid(int(entry)) != pid:
                    continue
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline or b"forkserver" in cmdline:
                out.append(int(entry))
    return out


class _Supervisor:
    """Starts the agent process, kills it on schedule, starts it again, and samples it."""

    def __init__(self, args: list[str], env: dict, log_dir: Path):
        self.args, self.env, self.log_dir = args, env, log_dir
        self.proc: subprocess.Popen | None = None
        self.lives: list[list[tuple[float, int]]] = []  # per life: (RSS MB, open fds) samples
        self.life_times: list[list[float]] = []  # per life: monotonic time of each sample

    def start(self) -> None:
        log = self.log_dir / f"agent-{len(self.lives):03d}.log"
        with open(log, "wb") as err:  # each life's stderr, kept for the person reading the verdict
            self.proc = subprocess.Popen(self.args, env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
        self.lives.append([])
        self.life_times.append([])

    def last_log_tail(self, lines: int = 30) -> str:
        """The exit code and the end of the current life's stderr."""
        log = self.log_dir / f"agent-{len(self.lives) - 1:03d}.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        code = self.proc.returncode if self.proc is not None else None
        return f"{log.name} (exit code {code}):\n" + "\n".join(tail)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def sample(self) -> tuple[float, int] | None:
        if self.alive():
            s = _proc_sample(self.proc.pid)
            if s:
                self.lives[-1].append(s)
                self.life_times[-1].append(time.monotonic())
            return s
        return None

    def preempt_one_worker(self, rng: random.Random) -> bool:
        if not self.alive():
            return False
        workers = _session_workers(self.proc.pid)
        if not workers:
            return False
        try:
            os.kill(rng.choice(workers), signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


def _write_dataset(kind: str, path: Path, size_mb: float, seed: int, malformed: bool) -> None:
    from .synth.detector import frames_for_size, write_detector_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "connectomics":  # a directory of EM tiles; a malformed one has a tile cut short in transfer
        from .synth.em import write_em_dataset

        write_em_dataset(path, (4, 128, 128), num_neurites=10, seed=seed % 1000)
        if malformed:
            tile = path / "sections" / "0001" / "tile_00_01.png"
            tile.write_bytes(tile.read_bytes()[:200])
        return
    if kind == "laue":
        from .synth.laue import write_laue_scan

        write_laue_scan(path, height_px=32, width_px=32, num_sources=2, seed=seed % 1000, depth_end_um=20.0)
    elif kind == "xpcs":
        from .synth.xpcs import write_xpcs_file

        write_xpcs_file(path, frames=max(64, frames_for_size(int(size_mb * 1e6), 64, 64, "uint16")), height=64, width=64, seed=seed)
    elif kind == "saxs":
        write_detector_file(path, frames=max(2, frames_for_size(int(size_mb * 1e6), 128, 128, "uint16")), height=128, width=128, seed=seed)
    else:
        path.write_bytes(os.urandom(int(size_mb * 1e6)))
    if malformed:  # a detector that died mid-write
        data = path.read_bytes()
        path.write_bytes(data[: max(64, len(data) // 3)])


def run_soak(
    settings: Settings,
    plan: SoakPlan,
    *,
    store_restart: Callable[[], None] | None = None,
    on_tick: Callable[[dict], None] | None = None,
    agent_args: list[str] | None = None,
) -> Verdict:
    """Run one campaign against `settings` (its workspace and store) and return the verdict.

    The agent process gets `settings` as a config file. With `plan.globus`, the `als`
    and `alcf` endpoints become Globus collections served by a loopback emulator
    (rtlib/transfer/globus_emulator.py), so their copies go through the real globus-sdk
    as the `als-demo` service account, whose tokens `token_expire_every_s` revokes.
    """
    from .transfer.globus_emulator import GlobusEmulator, use_emulated_globus

    emulator: GlobusEmulator | None = None
    secret: str | None = None
    raw = settings.model_dump(mode="json", exclude_none=True)
    if plan.token_expire_every_s and not plan.globus:
        raise ValueError("token_expire_every_s needs globus=True: only Globus endpoints have tokens")
    if plan.globus:
        client_id = "6f1d4a52-5a0e-4d7e-9b8a-000000005041"
        collections = use_emulated_globus(raw, GLOBUS_ENDPOINTS, beamline=GLOBUS_BEAMLINE, client_id=client_id, secret_env=SECRET_ENV)
        settings = validate(raw, "the soak's config")
        secret = secrets.token_urlsafe(24)
        emulator = GlobusEmulator(collections, {client_id: secret}).start()
    ensure_workspace(settings)
    if any(kind == "xpcs" for kind, _, _ in plan.mix):
        # Built and cached on disk before the clock starts: a fresh installation compiles the XPCS kernels on its
        # first run, and a worker preempted every few seconds must not be the one that compiles them.
        from .workloads.xpcs import warm_up

        warm_up()
    config_file = settings.workspace / "soak-config.toml"
    config_file.write_text(tomli_w.dumps(raw))
    rng = random.Random(plan.seed)
    store = JobStore(settings.store)
    verdict = Verdict()
    injected: Counter[str] = Counter()
    cmd = [sys.executable, "-m", "rtlib.cli", "agent", "--no-progress", "--config", str(config_file), *(agent_args or [])]
    if plan.link_mbps:
        cmd += ["--link-mbps", str(plan.link_mbps)]
    if plan.transfer_fail_rate or plan.transfer_corrupt_rate:
        cmd += ["--faults", plan.faults]
    env = {**os.environ, "RTLIB_CONFIG": ""}
    env.pop("RTLIB_STORE_URL", None)  # the config file names the store
    if emulator is not None:
        env.update(emulator.sdk_environment())
        env[SECRET_ENV] = secret
    log_dir = settings.workspace / "soak-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sup = _Supervisor(cmd, env, log_dir)
    kinds = [k for k, _, _ in plan.mix]
    shares = [w for _, w, _ in plan.mix]
    sizes = {k: mb for k, _, mb in plan.mix}

    def next_at(mean: float | None) -> float:
        return time.monotonic() + rng.expovariate(1 / mean) if mean else float("inf")

    ids: dict[int, tuple[str, str, bool]] = {}
    t0 = time.monotonic()
    next_data, next_kill = t0, next_at(plan.agent_kill_every_s)
    next_preempt = next_at(plan.preempt_every_s)
    next_restart = next_at(plan.store_restart_every_s) if store_restart else float("inf")
    next_expire = next_at(plan.token_expire_every_s)
    if plan.store_restart_every_s and not store_restart:
        verdict.not_exercised.append("store restart (needs a store_restart function, e.g. a PostgreSQL server)")
    if emulator is None:
        verdict.not_exercised.append("expired token (set globus=True and token_expire_every_s: only Globus endpoints have tokens)")
    elif not plan.token_expire_every_s:
        verdict.not_exercised.append("expired token (token_expire_every_s not set)")
    sup.start()
    produce_until = t0 + plan.duration_s
    drain_deadline = produce_until + plan.stuck_bound_s
    n = 0
    last_series = 0.0
    try:
        while True:
            now = time.monotonic()
            if plan.max_datasets is not None and len(ids) >= plan.max_datasets and now < produce_until:
                produce_until = now  # the job count is reached: stop producing, drain
                drain_deadline = produce_until + plan.stuck_bound_s
            if now < produce_until and now >= next_data:
                for ep in DEFAULT_BEAMLINE_ENDPOINTS:
                    if plan.max_datasets is not None and n >= plan.max_datasets:
                        break
                    kind = rng.choices(kinds, shares)[0]
                    malformed = kind != "noop" and rng.random() < plan.malformed_fraction
                    rel = f"raw/soak-{n:05d}" + ("" if kind == "connectomics" else ".h5")
                    _write_dataset(kind, Path(settings.endpoint(ep).root) / rel, sizes[kind], plan.seed + n, malformed)
                    jid = jobs.submit(store, settings, kind, source_endpoint=ep, inputs=[rel], beamline=f"{ep}-demo")
                    ids[jid] = (ep, rel, malformed)
                    injected["malformed_inputs"] += malformed
                    n += 1
                next_data = now + plan.dataset_interval_s
            if now >= next_kill and now < produce_until - plan.agent_steady_s:
                sup.kill()
                injected["agent_sigkills"] += 1
                sup.start()
                next_kill = next_at(plan.agent_kill_every_s)
            if now >= next_preempt and now < produce_until and sup.preempt_one_worker(rng):
                # an agent still starting has no worker to kill yet: the fault waits for one
                injected["worker_preemptions"] += 1
                next_preempt = next_at(plan.preempt_every_s)
            if now >= next_restart and now < produce_until:
                store_restart()
                injected["store_restarts"] += 1
                next_restart = next_at(plan.store_restart_every_s)
            # also while draining; only tokens at least min_token_age_s old: a token revoked while the client is
            # still renewing the last one fails that call by design (one re-authentication, then a clear failure)
            if emulator is not None and now >= next_expire and emulator.live_tokens(min_age_s=plan.min_token_age_s):
                emulator.expire_tokens(min_age_s=plan.min_token_age_s)
                injected["expired_tokens"] += 1
                next_expire = next_at(plan.token_expire_every_s)
            if not sup.alive():  # crashed by itself: a real finding, counted, kept, and restarted like a supervisor would
                injected["agent_exits_unprompted"] += 1
                verdict.agent_exit_logs.append(sup.last_log_tail())
                sup.start()
            sample = sup.sample()
            if sample and now - last_series >= 5.0:
                verdict.agent_memory.append((round(now - t0, 1), round(sample[0], 1), sample[1], len(sup.lives) - 1))
                last_series = now
            if now >= produce_until:
                try:
                    active = [j for j in store.list_jobs(ids=list(ids)) if j.state not in TERMINAL]
                except Exception:  # the store may be restarting
                    active = ids
                if not active or now > drain_deadline:
                    break
            if on_tick:
                on_tick({"elapsed_s": now - t0, "datasets": len(ids), **store.count_by_state()})
            time.sleep(0.2)
    finally:
        sup.kill()
        if emulator is not None:
            emulator.stop()
            verdict.globus = dict(emulator.counts)
    verdict.wall_s = time.monotonic() - t0
    verdict.injected = dict(injected)
    _judge(settings, store, ids, verdict, sup)
    if secret is not None:
        verdict.secret_leaks = _secret_leaks(secret, settings, store, log_dir)
    store.close()
    return verdict


def _secret_leaks(secret: str, settings: Settings, store: JobStore, log_dir: Path) -> list[str]:
    """Where the service account's secret appears: agent logs, job rows, events, the SQLite files, the workspace."""
    found = [f"agent log {p.name}" for p in sorted(log_dir.glob("*.log")) if secret.encode() in p.read_bytes()]
    found += [f"job {j.id} row" for j in store.list_jobs() if secret in json.dumps(j.to_dict(), default=str)]
    found += [f"event {e.id}" for e in store.events() if secret in (e.reason or "")]
    for p in settings.workspace.rglob("*"):
        if p.is_file() and p.suffix in (".db", ".json", ".toml", ".log", ".db-wal") and p.stat().st_size < 256 * 2**20:
            if secret.encode() in p.read_bytes():
                found.append(f"file {p}")
    return sorted(set(found))


def _losses(store: JobStore, job) -> str:
    """The job's lost attempts, for the person reading a verdict: when (s after it was created) and why."""
    events = store.events(job.id)
    lost = [f"{e.timestamp - events[0].timestamp:.0f} s {e.reason[:90]}" for e in events if e.to_state == State.PREEMPTED.value]
    return f" ({job.workload}; lost attempts: " + " | ".join(lost) + ")" if lost else f" ({job.workload})"


def _judge(settings: Settings, store: JobStore, ids: dict[int, tuple[str, str, bool]], verdict: Verdict, sup: _Supervisor) -> None:
    verdict.datasets = len(ids)
    for job in store.list_jobs(ids=list(ids)):
        ep, rel, malformed = ids[job.id]
        if job.state == State.DONE:
            verdict.done += 1
            if malformed:
                verdict.malformed_not_failed.append(job.id)
        elif job.state == State.FAILED and malformed and rel.split("/")[-1] in (job.error or ""):
            verdict.failed_as_expected += 1
        elif job.state in TERMINAL:
            verdict.unexpected_failures[job.id] = f"{job.state.value}: {job.error}" + _losses(store, job)
        else:
            verdict.stuck.append(job.id)
    steps = Counter((e.job_id, e.to_state) for e in store.events() if e.job_id in ids and e.to_state in ("RUN_DONE", "DONE"))
    verdict.duplicated_steps = [f"job {j} reached {s} {n} times" for (j, s), n in steps.items() if n > 1]
    verdict.copies_retried = sum(1 for it in store.items() if it.job_id in ids and it.attempts > 1)
    for it in store.items(direction="out", state="done"):
        if it.job_id in ids:
            dst = Path(settings.endpoint(it.dst_endpoint).root) / it.dst_path
            src = Path(settings.endpoint(it.src_endpoint).root) / it.src_path
            # the local backend records the digest of the copy it verified; Globus verifies its own and records none
            expected = {it.checksum} if it.checksum else set()
            if src.exists():
                expected.add(file_checksum(src))
            if not dst.exists() or len(expected) != 1 or file_checksum(dst) not in expected:
                verdict.bad_results.append(f"{it.dst_endpoint}:{it.dst_path}")
    moved = report.bytes_moved(store, list(ids))
    verdict.input_mbps = moved["in"] * 8 / max(verdict.wall_s, 1e-9) / 1e6
    _judge_memory(verdict, sup)
    for name, count in _transfer_faults_logged(sup.log_dir).items():
        verdict.injected[name] = count


def _judge_memory(verdict: Verdict, sup: _Supervisor) -> None:
    """Leaks: the longest agent life, past its start-up, must keep its memory and open files flat."""
    if not sup.life_times:
        return
    life = max(range(len(sup.lives)), key=lambda i: (sup.life_times[i][-1] - sup.life_times[i][0]) if sup.life_times[i] else 0.0)
    times, samples = sup.life_times[life], sup.lives[life]
    if not times:
        return
    settled = [(t - times[0], rss, fds) for t, (rss, fds) in zip(times, samples) if t - times[0] >= SETTLE_S]
    if len(settled) >= 2:
        verdict.agent_rss_mb = [round(settled[0][1], 1), round(settled[-1][1], 1)]
        verdict.agent_fds = [settled[0][2], settled[-1][2]]
    span = times[-1] - times[0]
    if span < MIN_JUDGED_S or len(settled) < 8:
        verdict.not_exercised.append(f"memory flatness (the longest agent life lasted {span:.0f} s; set agent_steady_s so one lasts {MIN_JUDGED_S:g} s)")
        return
    quarter = max(1, len(settled) // 4)
    first, last = settled[:quarter], settled[-quarter:]
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    verdict.judged_life_s = round(span, 1)
    verdict.rss_growth_mb = round(median([r for _, r, _ in last]) - median([r for _, r, _ in first]), 1)
    verdict.fd_growth = median([f for *_, f in last]) - median([f for *_, f in first])
    ts = [t for t, _, _ in settled]
    rs = [r for _, r, _ in settled]
    mt, mr = sum(ts) / len(ts), sum(rs) / len(rs)
    var = sum((t - mt) ** 2 for t in ts)
    if var > 0:
        verdict.rss_slope_mb_per_h = round(sum((t - mt) * (r - mr) for t, r in zip(ts, rs)) / var * 3600, 1)


def _transfer_faults_logged(log_dir: Path) -> dict[str, int]:
    """Injected link failures and corrupted copies, as the agents logged the attempts they retried."""
    counts = dict.fromkeys(TRANSFER_FAULT_MARKS, 0)
    for log in sorted(log_dir.glob("agent-*.log")):
        data = log.read_bytes()
        for name, mark in TRANSFER_FAULT_MARKS.items():
            counts[name] += data.count(mark)
    return counts
