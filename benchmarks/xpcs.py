"""XPCS throughput: rtlib multi-tau and two-time vs scikit-beam vs boost_corr vs one streaming pass over the frames.

Sparse uint16 counts (Poisson, 0.05 photons per pixel per frame), 10 ring
ROIs covering the detector. Figures are frames/s and pixel-frames/s of the
correlator on frames already in memory (file reading is the same for every
tool and is timed separately, end to end through the workload). The
"single pass" is one read of every frame in float64 chunks, as the
correlator must do at least: the memory-bandwidth limit of this machine.
scikit-beam is timed on fewer frames (it is per frame, so its rate does not
depend on the record length).

boost_corr (APS 8-ID-I's PyTorch correlator) runs on the CPU device, fed the
same frames in the same 64-frame chunks as float32 tensors (its fastest input
here). Its delay grid is fixed at 4 delays per level (8 at level 0), so rtlib
is timed against it with 8 buffers per level (7 delays at level 0, then 4 per
level): the same work. Before the figures count, the g2 of both (per-pixel
normalisation, averaged over each ROI) must agree at every delay that both
compute at the same binning level, and the two-time C(t1, t2) of one ROI must
agree over its upper triangle. If boost_corr cannot be imported, the reason
is recorded in the notes.

    python benchmarks/xpcs.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from rtlib.workloads.xpcs import workload  # noqa: E402
from rtlib.workloads.xpcs.multitau import BATCH_FRAMES, MultiTau  # noqa: E402
from rtlib.workloads.xpcs.twotime import TwoTime  # noqa: E402

CHUNK = 64
BOOST_MEMORY_GB = 2.0  # boost_corr sizes its queues to this (its default, 36 GB, is for GPU servers)
G2_TOLERANCE = 1e-5  # relative; boost_corr sums in float32
C2_TOLERANCE = 1e-4  # relative; boost_corr's matrix product is float32


def rings(height: int, width: int, count: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    r = np.hypot(yy - height / 2, xx - width / 2)
    return np.minimum((r / (r.max() + 1e-9) * count).astype(np.int32), count - 1) + 1


def best_of(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def single_pass(frames: np.ndarray) -> float:
    def once():
        total = np.zeros(frames.shape[1])
        for s in range(0, len(frames), CHUNK):
            total += frames[s:s + CHUNK].sum(axis=0, dtype=np.float64)
    return best_of(once)


def rtlib_multitau(frames: np.ndarray, roi: np.ndarray, delays_per_level: int = 16):
    """Seconds for the whole record and its result (per-pixel normalisation)."""
    t0 = time.perf_counter()
    mt = MultiTau(roi, int(roi.max()) + 1, len(frames), delays_per_level)
    for s in range(0, len(frames), CHUNK):
        mt.add(frames[s:s + CHUNK])
    result = mt.result("pixel")
    levels = {int(d) * 2**lv.index: lv.index for lv in mt.levels for d in lv.delays}
    return time.perf_counter() - t0, result, levels


def rtlib_twotime(frames: np.ndarray, group: np.ndarray):
    t0 = time.perf_counter()
    tt = TwoTime([group], len(frames))
    for s in range(0, len(frames), CHUNK):
        tt.add(frames[s:s + CHUNK])
    c2 = tt.results()[0]
    return time.perf_counter() - t0, c2


def boost_import():
    """boost_corr's module, or None and the error that stopped it."""
    try:
        import boost_corr
        return boost_corr, ""
    except Exception as exc:  # noqa: BLE001 - any failure to import is the figure
        return None, f"{type(exc).__name__}: {exc}"


def boost_multitau(frames: np.ndarray, shape: tuple[int, int]):
    """boost_corr's multi-tau on the CPU device: seconds for process + post_process, and the correlator."""
    import torch
    from boost_corr import MultitauCorrelator
    t0 = time.perf_counter()
    xb = MultitauCorrelator(shape, len(frames), device="cpu", queue_size=CHUNK, auto_queue=True,
                            max_memory=BOOST_MEMORY_GB)
    for s in range(0, len(frames), CHUNK):
        xb.process(torch.from_numpy(frames[s:s + CHUNK].astype(np.float32)))
    xb.post_process()
    return time.perf_counter() - t0, xb


def boost_g2(xb, roi: np.ndarray, num_rois: int):
    """Delays, their levels, and g2 per ROI from boost_corr's per-pixel G2, IP, IF (the pixel normalisation)."""
    g = xb.get_results()[1]["G2"].numpy().astype(np.float64)  # (delays, 3, pixels): averages <I I>, <I>, <I>
    with np.errstate(invalid="ignore", divide="ignore"):
        product = g[:, 1] * g[:, 2]
        valid = product > 0
        per_pixel = np.where(valid, g[:, 0] / np.where(valid, product, 1.0), 0.0)
        g2 = np.array([np.bincount(roi, weights=per_pixel[i], minlength=num_rois)
                       / np.bincount(roi, weights=valid[i], minlength=num_rois) for i in range(len(g))])
    return xb.tau_bin[0], xb.tau_bin[1], g2


def g2_agreement(result, levels: dict, tau, tau_level, g2) -> tuple[float, int]:
    """Largest relative g2 difference over all ROIs at the delays both compute at the same level, and their count."""
    worst, compared = 0.0, 0
    for i, d in enumerate(result.delay_frames):
        match = np.flatnonzero((tau == d) & (tau_level == levels.get(int(d), -1)))
        if len(match) == 0:
            continue
        a, b = result.g2[i], g2[match[0]]
        ok = np.isfinite(a) & np.isfinite(b)
        worst = max(worst, float(np.max(np.abs(a[ok] - b[ok]) / np.abs(a[ok]))))
        compared += 1
    return worst, compared


def boost_twotime(frames: np.ndarray, group: np.ndarray):
    """boost_corr's two-time of one ROI (its pixels selected from every frame, as rtlib does), CPU device."""
    import torch
    from boost_corr import TwotimeCorrelator
    t0 = time.perf_counter()
    n = len(group)
    qinfo = {"dq_idx": [0], "dq_slc": [slice(0, n)], "sq_idx": [0], "sq_slc": [slice(0, n)]}
    tt = TwotimeCorrelator(qinfo, len(frames), det_size=(1, n), device="cpu", method="normal")
    for s in range(0, len(frames), CHUNK):
        tt.process(torch.from_numpy(frames[s:s + CHUNK][:, group].astype(np.float32)))
    c2 = next(tt.calc_normal_twotime())  # upper triangle of C(t1, t2), with its diagonal averages
    return time.perf_counter() - t0, c2


def skbeam_multitau(images: np.ndarray, labels: np.ndarray) -> float:
    from skbeam.core.correlation import multi_tau_auto_corr
    t0 = time.perf_counter()
    multi_tau_auto_corr(6, 16, labels, images)
    return time.perf_counter() - t0


def skbeam_twotime(images: np.ndarray, labels: np.ndarray) -> float:
    from skbeam.core.correlation import two_time_corr
    t0 = time.perf_counter()
    two_time_corr(labels, images, len(images), len(images), 1)
    return time.perf_counter() - t0


def measure_boost(flat: np.ndarray, shape: tuple[int, int], roi: np.ndarray, one_roi: np.ndarray,
                  rt_c2: np.ndarray, rt_tt_seconds: float, repeats: int = 2) -> dict:
    """rtlib (8 buffers per level) and boost_corr on the same frames, alternately, best of `repeats`; checked equal first."""
    frames_n = len(flat)
    num_rois = int(roi.max()) + 1
    out: dict = {}
    rt_times, bc_times, rt_tt_times, bc_tt_times = [], [], [rt_tt_seconds], []
    for attempt in range(repeats):
        t, result, levels = rtlib_multitau(flat, roi, 8)
        rt_times.append(t)
        t, xb = boost_multitau(flat, shape)
        bc_times.append(t)
        if attempt == 0:  # equal work: the same g2 where both compute the same delay at the same level
            tau, tau_level, g2 = boost_g2(xb, roi, num_rois)
            worst, compared = g2_agreement(result, levels, tau, tau_level, g2)
            out["boost_queue_auto_size_level"] = list(xb.queue_info)
            out["boost_delays"] = int(len(tau))
            out["rtlib_multitau8_delays"] = int(len(result.delay_frames))
            out["g2_delays_compared"] = compared
            out["g2_max_relative_difference"] = worst
            out["g2_agree"] = bool(compared > 0 and worst <= G2_TOLERANCE)
        del xb
        t, bc_c2 = boost_twotime(flat, one_roi)
        bc_tt_times.append(t)
        if attempt == 0:
            upper = np.triu_indices(len(rt_c2))
            a, b = rt_c2[upper], bc_c2[upper]
            ok = np.isfinite(a) & (a != 0)
            out["c2_max_relative_difference"] = float(np.max(np.abs(a[ok] - b[ok]) / np.abs(a[ok])))
            out["c2_agree"] = out["c2_max_relative_difference"] <= C2_TOLERANCE
        del bc_c2
        if attempt + 1 < repeats:
            rt_tt_times.append(rtlib_twotime(flat, one_roi)[0])
    out["rtlib_multitau8_fps"] = frames_n / min(rt_times)
    out["boost_multitau_fps"] = frames_n / min(bc_times)
    out["rtlib_twotime_fps"] = frames_n / min(rt_tt_times)
    out["boost_twotime_fps"] = frames_n / min(bc_tt_times)
    out["multitau8_vs_boost"] = out["rtlib_multitau8_fps"] / out["boost_multitau_fps"]
    out["twotime_vs_boost"] = out["rtlib_twotime_fps"] / out["boost_twotime_fps"]
    out["boost_timings_s"] = {"multitau": bc_times, "twotime": bc_tt_times}
    out["rtlib_timings_s"] = {"multitau8": rt_times, "twotime": rt_tt_times}
    return out


def measure(height: int, width: int, frames_n: int, skbeam_frames: int, rng) -> dict:
    pixels = height * width
    stack = rng.poisson(0.05, (frames_n, height, width)).astype(np.uint16)
    labels = rings(height, width)
    flat = stack.reshape(frames_n, pixels)
    roi = labels.ravel() - 1
    one_roi = np.flatnonzero(roi == 4)
    out = {"detector": f"{height}x{width}", "frames": frames_n, "pixels": pixels}
    t = single_pass(flat)
    out["single_pass_fps"] = frames_n / t
    out["single_pass_GBps"] = stack.nbytes / t / 1e9
    rtlib_multitau(flat[:64], roi)  # compiled code loaded from numba's cache before anything is timed
    out["rtlib_multitau_fps"] = frames_n / min(rtlib_multitau(flat, roi)[0] for _ in range(2))  # best of 2
    t_tt, rt_c2 = rtlib_twotime(flat, one_roi)
    out["rtlib_twotime_fps"] = frames_n / t_tt
    out["twotime_roi_pixels"] = int(len(one_roi))
    if boost_import()[0] is not None:
        out.update(measure_boost(flat, (height, width), roi, one_roi, rt_c2, t_tt))
    sk = stack[:skbeam_frames]
    out["skbeam_multitau_fps"] = skbeam_frames / skbeam_multitau(sk, labels)
    sk_labels = np.where(labels == 5, 1, 0)
    out["skbeam_twotime_fps"] = skbeam_frames / skbeam_twotime(sk, sk_labels)
    out["skbeam_frames_timed"] = skbeam_frames
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.h5"
        with h5py.File(raw, "w") as f:
            f.create_dataset("/entry/data/data", data=stack, chunks=(16, height, width))
            f["/entry/instrument/detector/frame_time"] = 1e-3
        qmap = Path(tmp) / "qmap.h5"
        with h5py.File(qmap, "w") as f:
            f["/data/dynamicMap"] = labels
            f["/data/staticMap"] = labels
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        params = workload.validate({"qmap_file": str(qmap), "frames_per_chunk": CHUNK})
        t0 = time.perf_counter()
        summary = workload.run(params, [raw, qmap], outdir, lambda f, m: None)
        out["workload_end_to_end_fps"] = frames_n / (time.perf_counter() - t0)
        out["workload_working_memory_MB"] = summary["working_memory_bytes"] / 1e6
    # Pixel-frames are the pixels each correlator correlates: the whole detector for multi-tau (every pixel is in a
    # ring), only the one ROI for two-time.
    for key in ("single_pass_fps", "rtlib_multitau_fps", "skbeam_multitau_fps", "workload_end_to_end_fps",
                "rtlib_multitau8_fps", "boost_multitau_fps"):
        if key in out:
            out[key.replace("_fps", "_Mpixel_frames_per_s")] = out[key] * pixels / 1e6
    for key in ("rtlib_twotime_fps", "skbeam_twotime_fps", "boost_twotime_fps"):
        if key in out:
            out[key.replace("_fps", "_Mpixel_frames_per_s")] = out[key] * out["twotime_roi_pixels"] / 1e6
    out["multitau_vs_skbeam"] = out["rtlib_multitau_fps"] / out["skbeam_multitau_fps"]
    out["twotime_vs_skbeam"] = out["rtlib_twotime_fps"] / out["skbeam_twotime_fps"]
    # Fractions of the single pass are frame rates: both must touch every frame (two-time picks its ROI's
    # pixels out of each whole frame, so a pass over the frames is its floor as well).
    out["multitau_fraction_of_single_pass"] = out["rtlib_multitau_fps"] / out["single_pass_fps"]
    out["twotime_fraction_of_single_pass"] = out["rtlib_twotime_fps"] / out["single_pass_fps"]
    return out


AIM_SKBEAM, AIM_BOOST, AIM_SINGLE_PASS = 5.0, 1.5, 0.40  # issue 7: >= 5x scikit-beam, >= 1.5x boost_corr, >= 40 %


def aims(results: list[dict]) -> list[dict]:
    """Each aim of the issue, per detector and correlator: the figure, the aim, and whether it is met."""
    checks = []
    for r in results:
        for what, key, aim, unit in (
            ("multi-tau vs scikit-beam", "multitau_vs_skbeam", AIM_SKBEAM, "x"),
            ("two-time vs scikit-beam", "twotime_vs_skbeam", AIM_SKBEAM, "x"),
            ("multi-tau (8 buffers) vs boost_corr", "multitau8_vs_boost", AIM_BOOST, "x"),
            ("two-time vs boost_corr", "twotime_vs_boost", AIM_BOOST, "x"),
            ("multi-tau fraction of single pass", "multitau_fraction_of_single_pass", AIM_SINGLE_PASS, "%"),
            ("two-time fraction of single pass", "twotime_fraction_of_single_pass", AIM_SINGLE_PASS, "%"),
        ):
            value = r.get(key)
            checks.append({"detector": r["detector"], "aim": what, "value": value, "target": aim, "unit": unit,
                           "met": None if value is None else bool(value >= aim)})
    return checks


def aims_table(checks: list[dict]) -> str:
    def fmt(v: float | None, unit: str) -> str:
        if v is None:
            return "not measured"
        return f"{100 * v:.1f} %" if unit == "%" else f"{v:.2f}x"
    verdicts = {True: "met", False: "**NOT met**", None: "not measured (boost_corr missing)"}
    rows = ["| detector | aim | measured | target | met? |", "|---|---|---|---|---|"]
    rows += [f"| {c['detector']} | {c['aim']} | {fmt(c['value'], c['unit'])} | >= {fmt(c['target'], c['unit'])} | "
             f"{verdicts[c['met']]} |" for c in checks]
    missed = sorted({c["aim"] for c in checks if c["met"] is False})
    met = sorted({c["aim"] for c in checks if c["met"]} - set(missed))
    unknown = sorted({c["aim"] for c in checks if c["met"] is None})
    lines = ["Not met in this run (on at least one detector): " + ("; ".join(missed) if missed else "none") + ".",
             "Met on every detector: " + ("; ".join(met) if met else "none") + "."]
    if unknown:
        lines.append("Not measured: " + "; ".join(unknown) + ".")
    return "\n".join(rows) + "\n\n" + " ".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="256 x 256, 512 frames: a smoke run")
    parser.add_argument("--tiny", action="store_true",
                        help="64 x 64, 128 frames: checks that the script runs; prints, writes no result and no docs")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    boost, boost_error = boost_import()
    load_before = os.getloadavg()
    if args.tiny:
        cases = [(64, 64, 128, 16)]
    elif args.quick:
        cases = [(256, 256, 512, 64)]
    else:
        cases = [(512, 512, 1024, 64), (1024, 1024, 1024, 32)]
    results = [measure(h, w, n, s, rng) for h, w, n, s in cases]
    rows = ["| detector | frames | single pass fps (GB/s) | rtlib multi-tau fps | scikit-beam multi-tau fps | ratio | "
            "% of single pass | rtlib two-time fps (1 ROI) | scikit-beam two-time fps | ratio | two-time % of single pass | "
            "workload end-to-end fps |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r['detector']} | {r['frames']} | {r['single_pass_fps']:.0f} ({r['single_pass_GBps']:.2f}) | "
            f"{r['rtlib_multitau_fps']:.1f} | {r['skbeam_multitau_fps']:.1f} | {r['multitau_vs_skbeam']:.1f}x | "
            f"{100 * r['multitau_fraction_of_single_pass']:.1f} % | {r['rtlib_twotime_fps']:.0f} | "
            f"{r['skbeam_twotime_fps']:.1f} | {r['twotime_vs_skbeam']:.1f}x | "
            f"{100 * r['twotime_fraction_of_single_pass']:.1f} % | {r['workload_end_to_end_fps']:.1f} |")
    table = "\n".join(rows) + (
        "\n\nSparse uint16 Poisson counts (0.05 photons/pixel/frame), 10 ring ROIs, chunks of 64 frames (rtlib "
        f"gathers them into batches of {BATCH_FRAMES}), "
        "16 multi-tau buffers per level, per-pixel normalisation, best of 2. scikit-beam timed on its first "
        f"{', '.join(str(r['skbeam_frames_timed']) for r in results)} frames. Two-time correlates one ring "
        f"({', '.join(str(r['twotime_roi_pixels']) for r in results)} pixels): its pixel-frames/s below count those "
        "pixels only. '% of single pass' compares frame rates with one pass over the same whole frames.")
    if boost is not None:
        rows = ["| detector | frames | rtlib multi-tau fps (Mpixel-frames/s) | boost_corr multi-tau fps (Mpixel-frames/s) | "
                "rtlib / boost_corr | g2 max rel. diff (delays compared) | rtlib two-time fps (Mpixel-frames/s) | "
                "boost_corr two-time fps (Mpixel-frames/s) | rtlib / boost_corr | C max rel. diff |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            rows.append(
                f"| {r['detector']} | {r['frames']} | {r['rtlib_multitau8_fps']:.1f} "
                f"({r['rtlib_multitau8_Mpixel_frames_per_s']:.0f}) | {r['boost_multitau_fps']:.1f} "
                f"({r['boost_multitau_Mpixel_frames_per_s']:.0f}) | {r['multitau8_vs_boost']:.2f}x | "
                f"{r['g2_max_relative_difference']:.1e} ({r['g2_delays_compared']}) | {r['rtlib_twotime_fps']:.0f} "
                f"({r['rtlib_twotime_Mpixel_frames_per_s']:.0f}) | {r['boost_twotime_fps']:.0f} "
                f"({r['boost_twotime_Mpixel_frames_per_s']:.0f}) | {r['twotime_vs_boost']:.2f}x | "
                f"{r['c2_max_relative_difference']:.1e} |")
        agree = all(r["g2_agree"] and r["c2_agree"] for r in results)
        table += (
            f"\n\nAgainst boost_corr {boost.__version__} on the CPU device (torch {_torch_version()}, "
            f"{_torch_threads()} threads; rtlib's numba kernel on the same cores):\n\n" + "\n".join(rows) + (
                "\n\nSame frames and chunks; boost_corr fed float32 tensors, queues sized automatically within "
                f"{BOOST_MEMORY_GB:g} GB; its fixed delay grid (8 delays at level 0, then 4 per level) against rtlib "
                "with 8 buffers per level (7, then 4 per level). Multi-tau: the whole detector, 10 ROIs; rtlib time "
                "includes the ROI-averaged g2, boost_corr's is `process` + `post_process` (per-pixel G2, IP, IF). "
                "Two-time: the 5th ring, `process` + C(t1, t2) with its diagonal averages (no `post_processing` "
                "smoothing, which rtlib's C does not do). g2 compared at the delays both compute at the same level "
                f"(tolerance {G2_TOLERANCE:g}), C over its upper triangle (tolerance {C2_TOLERANCE:g}): "
                + ("all within tolerance." if agree else "**NOT all within tolerance** (see the JSON).")
                + " Best of 2, the two tools alternating."))
    checks = aims(results)
    table += "\n\nThe aims of issue 7, measured in this run:\n\n" + aims_table(checks)
    load_after = os.getloadavg()
    notes = (f"Load average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after the run, on "
             f"{os.cpu_count()} cores shared with other work: figures are noisy.")
    if boost is None:
        notes += f" boost_corr not compared: importing it failed with `{boost_error}`."
    else:
        notes += (" boost_corr's releases on PyPI declare Python >= 3.12; on this Python 3.11 it is installed with "
                  "`pip install --no-deps --ignore-requires-python boost_corr` (it runs unchanged).")
    print(table)
    print(notes)
    if args.tiny:  # a check that the script runs: tiny figures say nothing, so nothing is recorded
        print(f"{len(checks)} aims evaluated; --tiny writes no result")
        return
    figures = {"cases": results, "aims": checks, "boost_corr": boost.__version__ if boost is not None else None,
               "boost_corr_error": boost_error or None, "loadavg_before": load_before, "loadavg_after": load_after}
    write_result("xpcs" if not args.quick else "xpcs_quick", "XPCS correlation throughput", figures, table, notes=notes)


def _torch_version() -> str:
    import torch
    return torch.__version__


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


if __name__ == "__main__":
    main()
