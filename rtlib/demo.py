"""The end-to-end demo: three beamlines produce data, ALCF analyses it, results go home."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import jobs, report
from .config import DEFAULT_BEAMLINE_ENDPOINTS, Settings
from .runtime import open_runtime
from .states import State
from .transfer.checksum import file_checksum


@dataclass
class DemoResult:
    workspace: Path
    jobs: int
    by_state: dict[str, int]
    bytes_in: int
    bytes_out: int
    elapsed_s: float
    throughput_mbps: float
    median_latency_s: dict[str, float | None]
    failures: dict[int, str] = field(default_factory=dict)
    verified_outputs: int = 0

    @property
    def ok(self) -> bool:
        return self.by_state.get(State.DONE.value, 0) == self.jobs and not self.failures


def _write_dataset(workload: str, path: Path, size_mb: float, seed: int) -> None:
    """One synthetic dataset of about size_mb for the workload: speckle for xpcs, else a SAXS pattern."""
    from .synth.detector import frames_for_size, write_detector_file

    if workload == "xpcs":
        from .synth.xpcs import write_xpcs_file

        frames = max(64, frames_for_size(int(size_mb * 1e6), 128, 128, "uint16"))
        write_xpcs_file(path, frames=frames, height=128, width=128, seed=seed)
    else:
        frames = max(2, frames_for_size(int(size_mb * 1e6), 256, 256, "uint16"))
        write_detector_file(path, frames=frames, height=256, width=256, seed=seed)


def produce_data(
    settings: Settings, n_jobs: int, size_mb: float, seed: int = 0, workload: str = "xpcs", bad_inputs: int = 0
) -> list[tuple[str, str]]:
    """Write one dataset per job at the beamline endpoints, round robin. Returns (endpoint, path).

    Names continue after the datasets already in the workspace, so a rerun leaves earlier jobs' inputs
    as they were. The last `bad_inputs` datasets are cut short (a truncated HDF5 file), to show how a
    failed job is reported.
    """
    roots = [Path(settings.endpoint(ep).root) for ep in DEFAULT_BEAMLINE_ENDPOINTS]
    start = sum(len(list((root / "raw").glob("scan-*.h5"))) for root in roots)
    made = []
    for i in range(start, start + n_jobs):
        ep = DEFAULT_BEAMLINE_ENDPOINTS[i % len(DEFAULT_BEAMLINE_ENDPOINTS)]
        rel = f"raw/scan-{i:04d}.h5"
        path = Path(settings.endpoint(ep).root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_dataset(workload, path, size_mb, seed + i)
        if i >= start + n_jobs - bad_inputs:
            path.write_bytes(path.read_bytes()[: max(64, path.stat().st_size // 4)])
        made.append((ep, rel))
    return made


def verify_outputs(settings: Settings, rt_store, job_ids: list[int] | None = None) -> tuple[int, dict[int, str]]:
    """Every DONE job's results at its destination match the checksums recorded when they were sent.

    Only the jobs in `job_ids` when given (a demo checks its own run, not earlier ones in the workspace).
    """
    ok, bad = 0, {}
    wanted = None if job_ids is None else set(job_ids)
    for it in rt_store.items(direction="out", state="done"):
        if wanted is not None and it.job_id not in wanted:
            continue
        dst = Path(settings.endpoint(it.dst_endpoint).root) / it.dst_path
        if not dst.exists():
            bad[it.job_id] = f"missing result {it.dst_endpoint}:{it.dst_path}"
        elif file_checksum(dst) != it.checksum:
            bad[it.job_id] = f"checksum mismatch for {it.dst_endpoint}:{it.dst_path}"
        else:
            ok += 1
    return ok, bad


def run_demo(
    settings: Settings,
    *,
    n_jobs: int = 12,
    link_mbps: float | None = 276.0,
    workload: str = "xpcs",
    size_mb: float = 4.0,
    params: dict | None = None,
    bad_inputs: int = 0,
    on_tick: Callable | None = None,
) -> DemoResult:
    """Produce, submit and run `n_jobs` datasets; every figure in the result is over this run's jobs only."""
    rt = open_runtime(settings, link_mbps=link_mbps)
    try:
        sources = produce_data(settings, n_jobs, size_mb, workload=workload, bad_inputs=bad_inputs)
        ids = [
            jobs.submit(rt.store, settings, workload, source_endpoint=ep, inputs=[rel], params=params or {}, beamline=f"{ep}-demo")
            for ep, rel in sources
        ]
        agent = rt.agent("local")  # starts the dask cluster: not part of the measured time
        t0 = time.time()
        agent.run(until_idle=True, on_tick=on_tick)
        elapsed = time.time() - t0
        moved = report.bytes_moved(rt.store, ids)
        mine = rt.store.list_jobs(ids=ids)
        counts = dict(Counter(j.state.value for j in mine))
        verified, bad = verify_outputs(settings, rt.store, ids)
        failures = {j.id: j.error or j.state.value for j in mine if j.state != State.DONE}
        failures.update(bad)
        return DemoResult(
            workspace=settings.workspace,
            jobs=len(ids),
            by_state=counts,
            bytes_in=moved["in"],
            bytes_out=moved["out"],
            elapsed_s=elapsed,
            throughput_mbps=(moved["in"] + moved["out"]) * 8 / max(elapsed, 1e-9) / 1e6,
            median_latency_s=report.median_latencies(rt.store, ids),
            failures=failures,
            verified_outputs=verified,
        )
    finally:
        rt.close()
