"""The published campaign's dataset end to end: 878 MB XPCS files through the agent.

Writes one synthetic 878 MB XPCS dataset (512 x 512 uint16 speckle, sparse
counts), puts N hard-linked copies at a beamline endpoint, and runs them
through the agent on this machine's LocalCluster with an unshaped link, so
the figure is what one node analyses. It is compared with what a 276 Mbps
link (the 48-hour run's average) delivers per hour, measured in the same run
by shaping the copy of one dataset to 276 Mbps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from rtlib import config as cfg  # noqa: E402
from rtlib import jobs, report  # noqa: E402
from rtlib.compute.local import LocalDaskBackend  # noqa: E402
from rtlib.runtime import open_runtime  # noqa: E402
from rtlib.synth.detector import frames_for_size  # noqa: E402
from rtlib.synth.xpcs import write_xpcs_file  # noqa: E402

SIZE = 512


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=float, default=878.0)
    ap.add_argument("--datasets", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--link-mbps", type=float, default=276.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtlib-bench-") as tmp:
        tmp = Path(tmp)
        raw = cfg.default_config(tmp / "ws")
        raw["agent"] = {"poll_s": 0.02}
        settings = cfg.validate(raw)
        cfg.ensure_workspace(settings)
        aps = Path(settings.endpoints["aps"].root)
        (aps / "raw").mkdir(parents=True)
        frames = frames_for_size(int(args.size_mb * 1e6), SIZE, SIZE, "uint16")
        t0 = time.perf_counter()
        write_xpcs_file(aps / "raw/ds-000.h5", frames=frames, height=SIZE, width=SIZE, mean_counts=0.1, seed=1)
        synth_s = time.perf_counter() - t0
        size = (aps / "raw/ds-000.h5").stat().st_size
        for i in range(1, args.datasets):
            (aps / f"raw/ds-{i:03d}.h5").hardlink_to(aps / "raw/ds-000.h5")

        # what the link delivers: one dataset copied through a 276 Mbps shaped link
        from rtlib.transfer.base import TransferRequest
        from rtlib.transfer.local import LocalTransferBackend

        shaped = LocalTransferBackend({"aps": aps, "dst": tmp / "linkcheck"}, link_mbps=args.link_mbps)
        (tmp / "linkcheck").mkdir()
        t0 = time.perf_counter()
        (outcome,) = shaped.transfer_batch([TransferRequest(0, "aps", "raw/ds-000.h5", "dst", "ds.h5", size)])
        link_s = time.perf_counter() - t0
        assert outcome.ok, outcome.error
        (tmp / "linkcheck/ds.h5").unlink()

        rt = open_runtime(settings)
        rt.compute = LocalDaskBackend(workers=args.workers)
        rt.compute.start()
        try:
            ids = [jobs.submit(rt.store, settings, "xpcs", source_endpoint="aps", inputs=[f"raw/ds-{i:03d}.h5"]) for i in range(args.datasets)]
            t0 = time.perf_counter()
            rt.agent("local").run(until_idle=True)
            wall = time.perf_counter() - t0
            done = rt.store.list_jobs(ids=ids)
            assert {j.state.value for j in done} == {"DONE"}, [(j.id, j.error) for j in done]
            lat = report.stage_durations(rt.store, ids)
        finally:
            rt.close()

    run_s = statistics.median(lat["run"])
    node_per_hour = args.datasets / wall * 3600
    link_per_hour = 3600 / link_s
    figures = {
        "dataset_bytes": size, "frames": frames, "detector": f"{SIZE}x{SIZE}", "datasets": args.datasets, "workers": args.workers,
        "synth_s": round(synth_s, 1), "agent_wall_s": round(wall, 1), "median_run_s": round(run_s, 1),
        "median_end_to_end_s": round(statistics.median(lat["end_to_end"]), 1),
        "node_datasets_per_hour": round(node_per_hour, 1),
        "link_mbps": args.link_mbps, "link_copy_s": round(link_s, 1), "link_datasets_per_hour": round(link_per_hour, 1),
        "node_over_link": round(node_per_hour / link_per_hour, 2),
    }
    table = "\n".join([
        "| figure | value |",
        "|---|---|",
        f"| dataset | {size / 1e6:.0f} MB, {frames} frames of {SIZE} x {SIZE} uint16, sparse counts |",
        f"| {args.datasets} datasets through the agent (unshaped), {args.workers} workers | {wall:.1f} s wall |",
        f"| median analysis time per dataset (multi-tau + fits + output) | {run_s:.1f} s |",
        f"| datasets per hour this node keeps up with | {node_per_hour:.0f} |",
        f"| one dataset through a {args.link_mbps:g} Mbps shaped link | {link_s:.1f} s |",
        f"| datasets per hour the link delivers | {link_per_hour:.0f} |",
        f"| node capacity / link delivery | **{node_per_hour / link_per_hour:.2f}x** (above 1: the link, not the node, bounds the campaign) |",
    ])
    write_result("xpcs_campaign", "XPCS campaign dataset (878 MB) end to end", figures, table)
    print(table)


if __name__ == "__main__":
    main()
