"""Batching plan quality: byte-based batches (rtlib) against 100 files per task (Balsam).

A synthetic but realistic day at one facility, in arrival order: XPCS
datasets of 878 MB, a few 40 GB campaign files, and many small files
(metadata, logs, Laue frames) of a few kB to tens of MB. Both planners see
the same list; we report the number of Globus tasks, the bytes per task,
and two consequences:

* set-up overhead: each task costs a fixed start-up delay (queueing,
  endpoint activation, checksum set-up), ~10 s per task here, spread over
  the tasks in flight;
* retry exposure: if one task fails at a random byte, the bytes that must
  be sent again are the whole task (sync_level=checksum skips finished files,
  but the failed file restarts); the size-weighted mean task size measures it.

Run: python benchmarks/batching.py  [--seed N]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_result  # noqa: E402
from rtlib.transfer.batching import plan_batches, plan_by_count, summarize  # noqa: E402

MB, GB = 10**6, 10**9
TASK_OVERHEAD_S = 10.0
TASKS_IN_FLIGHT = 4
LINK_MBPS = 276.0  # the published average over 48 h


def a_day_of_files(seed: int) -> list[tuple[str, int]]:
    """Files in arrival order. Beamlines work in sessions, so sizes come in runs, not shuffled.

    An XPCS session writes tens to hundreds of 878 MB datasets; a Laue or EM
    session writes thousands of small frames; now and then a 40 GB campaign
    file lands. Sessions follow each other at random through the day.
    """
    rng = random.Random(seed)
    xpcs = [(f"xpcs/{i:05d}.h5", 878 * MB) for i in range(4000)]
    campaigns = [(f"campaign/{i:03d}.h5", 40 * GB) for i in range(40)]
    small = [(f"small/{i:06d}.dat", int(min(80 * MB, rng.lognormvariate(13.0, 1.6)))) for i in range(30000)]
    files: list[tuple[str, int]] = []
    while xpcs or campaigns or small:
        pools = [p for p in (xpcs, campaigns, small) if p]
        pool = rng.choice(pools)
        run = {id(xpcs): rng.randint(20, 300), id(campaigns): rng.randint(1, 4), id(small): rng.randint(200, 3000)}[id(pool)]
        files += pool[:run]
        del pool[:run]
    return files


def describe(name: str, batches, total_bytes: int) -> dict:
    s = summarize(batches)
    sizes = [b.total_bytes for b in batches]
    weighted_mean = sum(x * x for x in sizes) / total_bytes
    transfer_h = total_bytes * 8 / (LINK_MBPS * 1e6) / 3600
    overhead_h = len(batches) * TASK_OVERHEAD_S / TASKS_IN_FLIGHT / 3600
    return {
        "planner": name,
        "tasks": s["tasks"],
        "median_task_gb": s["median_bytes"] / GB,
        "min_task_gb": s["min_bytes"] / GB,
        "max_task_gb": s["max_bytes"] / GB,
        "tasks_under_1gb": sum(1 for x in sizes if x < GB),
        "tasks_over_100gb": sum(1 for x in sizes if x > 100 * GB),
        "retry_exposure_gb": weighted_mean / GB,
        "overhead_h": overhead_h,
        "overhead_share": overhead_h / (overhead_h + transfer_h),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=6)
    args = ap.parse_args(argv)
    files = a_day_of_files(args.seed)
    total = sum(size for _, size in files)

    t0 = time.perf_counter()
    by_bytes = plan_batches(files, lambda f: f[1], max_bytes=15 * GB, max_items=1000)
    plan_s = time.perf_counter() - t0
    by_count = plan_by_count(files, lambda f: f[1], per_batch=100)

    rows = [describe("bytes: 15 GB, ≤1000 files (rtlib)", by_bytes, total), describe("count: 100 files (Balsam)", by_count, total)]
    figures = {
        "files": len(files),
        "total_tb": total / 1e12,
        "planning_s_bytes": plan_s,
        "task_overhead_s": TASK_OVERHEAD_S,
        "tasks_in_flight": TASKS_IN_FLIGHT,
        "link_mbps": LINK_MBPS,
        "plans": rows,
    }
    lines = [
        f"A synthetic day: {len(files)} files, {total / 1e12:.2f} TB (4000 × 878 MB XPCS, 40 × 40 GB campaigns, "
        f"30000 small files), in beamline sessions (runs of one kind). Planning {len(files)} files by bytes took {plan_s * 1000:.0f} ms. "
        f"Overhead model: {TASK_OVERHEAD_S:.0f} s per task, {TASKS_IN_FLIGHT} tasks in flight, link {LINK_MBPS:.0f} Mbps.\n",
        "| planner | tasks | median GB/task | min–max GB/task | tasks < 1 GB | tasks > 100 GB | retry exposure (GB) | task overhead (h) | overhead share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['planner']} | {r['tasks']} | {r['median_task_gb']:.1f} | {r['min_task_gb']:.2f}–{r['max_task_gb']:.0f} | "
            f"{r['tasks_under_1gb']} | {r['tasks_over_100gb']} | {r['retry_exposure_gb']:.1f} | {r['overhead_h']:.2f} | {r['overhead_share']:.2%} |"
        )
    lines.append(
        "\nRetry exposure is the size-weighted mean task size: the bytes at stake when a random byte's task fails. "
        "A 40 GB file exceeds the 15 GB budget and goes alone; it cannot be split."
    )
    table = "\n".join(lines)
    write_result("batching", "Transfer batching: bytes per task vs. 100 files per task", figures, table)
    print(table)
    return figures


if __name__ == "__main__":
    main()
