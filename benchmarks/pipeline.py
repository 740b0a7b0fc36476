"""Pipeline efficiency: does stage-in of the next jobs overlap analysis of the current ones?

For each link rate, N synthetic datasets go through the agent with the link
shaped to that rate. Efficiency = achieved input throughput divided by
min(link's share for inputs, compute capacity).

The compute capacity is measured for each link rate in the same process, on
the same cluster (same workers, one task per worker thread, as the agent runs
them), on exactly the datasets that rate's agent run analyses, with the
workers warm: once just before the agent run and once just after it. The
larger of the two is the reference, so a machine that got busier during the
run lowers the efficiency rather than raising it above 1. The share of the
wall time the workers spent analysing during the agent run is reported
beside it. The no-overlap reference (transfer everything, then analyse
everything) is predicted from the two measured rates; the ratio says what the
overlap buys.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import common
from common import write_result

from rtlib import config as cfg
from rtlib import jobs, report
from rtlib.compute.local import LocalDaskBackend
from rtlib.compute.task import run_attempt
from rtlib.runtime import open_runtime
from rtlib.synth.detector import frames_for_size, write_detector_file
from rtlib.synth.xpcs import write_xpcs_file

WORKLOAD = "saxs"


def make_files(root: Path, n: int, size_mb: float) -> list[str]:
    """saxs: 256 x 256 frames with an isotropic pattern; xpcs: 128 x 128 speckle (many frames per MB)."""
    side = 128 if WORKLOAD == "xpcs" else 256
    frames = frames_for_size(int(size_mb * 1e6), side, side, "uint16")
    first = root / "raw/scan-0000.h5"
    first.parent.mkdir(parents=True, exist_ok=True)
    if WORKLOAD == "xpcs":
        write_xpcs_file(first, frames=frames, height=side, width=side, seed=0)
    else:
        write_detector_file(first, frames=frames, height=side, width=side, seed=0)
    rels = ["raw/scan-0000.h5"]
    for i in range(1, n):  # identical content is fine: nothing dedups by content
        rel = f"raw/scan-{i:04d}.h5"
        (root / rel).write_bytes(first.read_bytes())
        rels.append(rel)
    return rels


def compute_capacity_mbps(compute: LocalDaskBackend, files: list[Path], scratch: Path, *, warm_up: bool = True) -> float:
    """Input Mbps the cluster analyses `files` with no transfers, all submitted at once (one task per worker thread).

    `warm_up` first runs one task per worker (imports, JIT, page cache) outside the timing. The backend's
    submit returns its own task handles, so each is waited on with .result() (client.gather would pass them through).
    """
    if warm_up:
        warm = [compute.submit(run_attempt, WORKLOAD, {}, [str(files[0])], str(scratch / f"warm-{i}"), key=f"warm-{scratch.name}-{i}")
                for i in range(compute.slots)]
        for t in warm:
            t.result()
    t0 = time.perf_counter()
    futs = [compute.submit(run_attempt, WORKLOAD, {}, [str(f)], str(scratch / f"cap-{i}"), key=f"cap-{scratch.name}-{i}") for i, f in enumerate(files)]
    summaries = [t.result() for t in futs]
    elapsed = time.perf_counter() - t0
    assert len(summaries) == len(files)
    shutil.rmtree(scratch, ignore_errors=True)
    return sum(f.stat().st_size for f in files) * 8 / elapsed / 1e6


def transfer_only_mbps(src: Path, rels: list[str], link_mbps: float, dst: Path, streams: int = 4) -> float:
    """Input Mbps the shaped copy path itself reaches (copy, checksum both sides, fsync), with no analysis."""
    from concurrent.futures import ThreadPoolExecutor

    from rtlib.transfer.base import TransferRequest
    from rtlib.transfer.local import LocalTransferBackend

    dst.mkdir(parents=True, exist_ok=True)
    backend = LocalTransferBackend({"src": src, "dst": dst}, link_mbps=link_mbps)
    reqs = [TransferRequest(i, "src", rel, "dst", rel, (src / rel).stat().st_size) for i, rel in enumerate(rels)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        outcomes = [o for batch in pool.map(lambda k: backend.transfer_batch(reqs[k::streams]), range(streams)) for o in batch]
    elapsed = time.perf_counter() - t0
    assert all(o.ok for o in outcomes)
    return sum(r.size_bytes for r in reqs) * 8 / elapsed / 1e6


def run_pipeline(ws: Path, compute: LocalDaskBackend, rels_src: Path, rels: list[str], link_mbps: float) -> dict:
    raw = cfg.default_config(ws)
    raw["agent"] = {"poll_s": 0.01, "transfers_in_flight": 4}
    settings = cfg.validate(raw)
    cfg.ensure_workspace(settings)
    aps = Path(settings.endpoints["aps"].root)
    (aps / "raw").mkdir(parents=True, exist_ok=True)
    for rel in rels:
        (aps / rel).hardlink_to(rels_src / rel)
    rt = open_runtime(settings, link_mbps=link_mbps)
    rt.compute = compute
    try:
        ids = [jobs.submit(rt.store, settings, WORKLOAD, source_endpoint="aps", inputs=[rel]) for rel in rels]
        t0 = time.perf_counter()
        rt.agent("local").run(until_idle=True)
        elapsed = time.perf_counter() - t0
        assert {j.state.value for j in rt.store.list_jobs(ids=ids)} == {"DONE"}
        moved = report.bytes_moved(rt.store, ids)
        busy_s = sum(j.summary["run_s"] for j in rt.store.list_jobs(ids=ids))  # time inside the analysis, on a worker
        return {"elapsed_s": elapsed, "bytes_in": moved["in"], "bytes_out": moved["out"], "latency": report.median_latencies(rt.store, ids),
                "compute_busy_share": busy_s / (elapsed * compute.slots)}
    finally:
        rt.compute = None
        rt.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=32.0)
    ap.add_argument("--seconds", type=float, default=20.0, help="aim for about this much link time per rate")
    ap.add_argument("--max-jobs", type=int, default=None, help="at most this many datasets per rate (a compute-bound case on a small machine)")
    ap.add_argument("--links", default="276,1000", help="comma-separated link rates in Mbps")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workload", choices=["saxs", "xpcs"], default="saxs",
                    help="saxs: compute far above the link (link-bound); xpcs: compute near the link (tests the overlap)")
    ap.add_argument("--no-doc", action="store_true", help="write only the JSON result; leave docs/benchmarks.md as it is")
    args = ap.parse_args()
    global WORKLOAD
    WORKLOAD = args.workload
    if args.no_doc:
        common.render_doc = lambda: None
    rows, figures = [], {"size_mb": args.size_mb, "workers": args.workers, "runs": []}
    links = [float(x) for x in args.links.split(",")]

    def jobs_for(link: float) -> int:
        n = max(4, int(link * 1e6 / 8 * args.seconds / (args.size_mb * 1e6)))
        return min(n, args.max_jobs) if args.max_jobs else n

    with tempfile.TemporaryDirectory(prefix="rtlib-bench-") as tmp:
        tmp = Path(tmp)
        compute = LocalDaskBackend(workers=args.workers)
        compute.start()
        try:
            src = tmp / "src"
            rels = make_files(src, max(jobs_for(link) for link in links), args.size_mb)
            for link in links:
                n = jobs_for(link)
                files = [src / r for r in rels[:n]]
                copy_path = transfer_only_mbps(src, rels[:n], link, tmp / f"copy-{link:g}")
                shutil.rmtree(tmp / f"copy-{link:g}")
                cap_before = compute_capacity_mbps(compute, files, tmp / f"cap-before-{link:g}")
                res = run_pipeline(tmp / f"ws-{link:g}", compute, src, rels[:n], link)
                cap_after = compute_capacity_mbps(compute, files, tmp / f"cap-after-{link:g}", warm_up=False)
                cap = max(cap_before, cap_after)
                in_share = res["bytes_in"] / (res["bytes_in"] + res["bytes_out"])
                achieved = res["bytes_in"] * 8 / res["elapsed_s"] / 1e6
                bound = min(link * in_share, cap)
                sequential_s = res["bytes_in"] * 8 / 1e6 / (link * in_share) + res["bytes_in"] * 8 / 1e6 / cap
                run = {
                    "link_mbps": link, "jobs": n, "elapsed_s": round(res["elapsed_s"], 2),
                    "achieved_input_mbps": round(achieved, 1), "compute_capacity_mbps": round(cap, 1),
                    "compute_capacity_before_mbps": round(cap_before, 1), "compute_capacity_after_mbps": round(cap_after, 1),
                    "compute_busy_share": round(res["compute_busy_share"], 3),
                    "bound_mbps": round(bound, 1), "efficiency": round(achieved / bound, 3),
                    "copy_path_alone_mbps": round(copy_path, 1),
                    "efficiency_vs_measured_copy_path": round(achieved / min(copy_path * in_share, cap), 3),
                    "sequential_reference_s": round(sequential_s, 2), "speedup_vs_sequential": round(sequential_s / res["elapsed_s"], 2),
                    "median_latency_s": {k: (round(v, 3) if v is not None else None) for k, v in res["latency"].items()},
                }
                figures["runs"].append(run)
                rows.append(f"| {link:g} Mbps | {n} x {args.size_mb:g} MB | {res['elapsed_s']:.1f} s | {achieved:.0f} Mbps | "
                            f"{cap:.0f} Mbps ({cap_before:.0f} / {cap_after:.0f}) | {bound:.0f} Mbps | **{achieved / bound:.2f}** | "
                            f"{res['compute_busy_share']:.0%} | {copy_path:.0f} Mbps | {achieved / min(copy_path * in_share, cap):.2f} | "
                            f"{sequential_s:.1f} s ({sequential_s / res['elapsed_s']:.2f}x) | {res['latency']['end_to_end']:.2f} s |")
                print(rows[-1], flush=True)
        finally:
            compute.close()
    table = "\n".join([
        "| link | datasets | wall | achieved (inputs) | compute capacity (before / after the run) | min(link, compute) | efficiency "
        "| workers busy | shaped copy path alone | efficiency vs min(copy path, compute) | no-overlap reference (rtlib speed-up) "
        "| median end-to-end latency |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    name = "pipeline" if WORKLOAD == "saxs" else f"pipeline_{WORKLOAD}"
    notes = ("Compute capacity: the same datasets analysed on the same warm 2-worker cluster with no transfers, just before "
             "and just after each agent run; the larger is the reference. 'workers busy': the share of the wall time the "
             "workers spent inside analyses during the agent run (the sum of each job's run time over wall x workers).")
    if WORKLOAD == "xpcs":
        notes += (" With xpcs, analysis capacity on this 2-core machine lies between the two links: the 276 Mbps run is "
                  "link-bound, the 1 Gbps run compute-bound. What is lost to the reference is the pipeline filling (the "
                  "first datasets must arrive before any analysis), draining (the last results go home after the last "
                  "analysis), which weighs most in the short 276 Mbps run (about 20 s of link time), and the copies "
                  "(read, checksum both sides, fsync) taking CPU from the analysis, which a facility's data-transfer "
                  "nodes would not. Both fall short of the 0.9 aim here; the saxs runs (compute far above the link) meet it.")
    if args.max_jobs:
        notes += f" At most {args.max_jobs} datasets per rate (--max-jobs), to fit the run on a shared machine."
    command = f"python benchmarks/pipeline.py --workload {WORKLOAD}" + (f" --max-jobs {args.max_jobs}" if args.max_jobs else "")
    if args.size_mb != 32.0:
        command += f" --size-mb {args.size_mb:g}"
    write_result(name, f"Pipeline efficiency with a shaped link ({WORKLOAD} workload)", figures, table, command=command, notes=notes)
    print(table)


if __name__ == "__main__":
    main()
