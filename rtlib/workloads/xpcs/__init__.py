"""XPCS: multi-tau g2 and two-time correlation per q ROI, fits of τ(q), and the static results, APS layout.

One run reads one detector file (``reader.select_inputs``: an HDF5 frame
stack, or Rigaku photon events, ``rigaku``) ``frames_per_chunk`` frames at a
time; the correlators keep only their own state (see ``multitau`` and
``twotime``), never the frame stack. The q partitions come
from a q-map file staged with the job or from the geometry (``qmap``).
Results: ``xpcs.h5`` (layout in ``output``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputDataError, ParameterError
from ..base import ProgressFn, Workload
from ..saxs.geometry import DetectorGeometry, geometry_attrs
from .fit import FLAGS, PARAMETERS, fit_g2
from .geometry_8idi import resolve_any_geometry
from .multitau import MultiTau
from .output import H5_NAME, write_results
from .params import XpcsParams
from .qmap import QMap, compute_qmap, load_qmap
from .rigaku import is_rigaku, open_rigaku
from .reader import checked_chunks, frame_time, frames_dataset, open_detector_file, select_inputs
from .single_pass import frame_pass
from .twotime import TwoTime
from .viewer_layout import entry_sections, qmap_sections, stability_segments, twotime_sections

__all__ = ["XpcsParams", "run", "warm_up", "workload"]

_READ_SHARE = 0.9
STABILITY_SEGMENTS = 10


def _extra_inputs(params: XpcsParams) -> list[str]:
    return [params.qmap_file] if params.qmap_file else []


def run(params: XpcsParams, inputs: list[Path], outdir: Path, progress: ProgressFn) -> dict[str, Any]:
    path, qmap_path = select_inputs(inputs, params.qmap_file)
    label = str(path)
    do_multitau = params.mode in ("multitau", "both")
    do_twotime = params.mode in ("twotime", "both")
    staged = [*inputs, *([qmap_path] if qmap_path is not None else [])]
    rigaku = is_rigaku(path)  # photon events, no metadata: frame time and geometry from the parameters
    with nullcontext({}) if rigaku else open_detector_file(path, staged) as f:
        frames = open_rigaku(path) if rigaku else frames_dataset(f, params.dataset_path, label)
        total, height, width = frames.shape
        if total < 2:
            raise InputDataError(f"{label}: {params.dataset_path} has {total} frame; correlation needs at least 2")
        dt_s, dt_source = frame_time(f, params.frame_time_s, label)
        geometry = _geometry(params, f, label, required=qmap_path is None)
        if qmap_path is not None:
            qmap = load_qmap(qmap_path, height, width, geometry, staged)
        else:
            qmap = compute_qmap(geometry, height, width, params.num_dynamic_q_bins, params.num_static_q_bins, params.num_phi_bins)
        pixel_index, roi_of_pixel = qmap.dynamic_pixels()
        good = qmap.mask.ravel().astype(np.float64)
        good_count = float(good.sum())

        multitau = MultiTau(roi_of_pixel, qmap.num_dynamic, total, params.delays_per_level, params.max_levels) if do_multitau else None
        twotime_labels, twotime = None, None
        if do_twotime:
            twotime_labels = _twotime_labels(params, qmap)
            rois = np.searchsorted(qmap.dynamic_labels, twotime_labels)
            twotime = TwoTime([np.flatnonzero(roi_of_pixel == r) for r in rois], total, params.twotime_frame_binning)

        image_sum = np.zeros(height * width)
        intensity_vs_time = np.zeros(total)
        static_index = qmap.static_index()
        inside = static_index >= 0
        # cumulative static-ROI sums at the first chunk end past each tenth of the record: I(q) per segment
        boundaries = [round(total * (i + 1) / STABILITY_SEGMENTS) for i in range(STABILITY_SEGMENTS)]
        cumulative: list[tuple[int, np.ndarray]] = []
        progress(0.0, f"correlating {total} frames of {height} x {width} from {path.name} ({qmap.num_dynamic} dynamic ROIs)")
        chunks = (frames.chunks(params.frames_per_chunk) if rigaku
                  else checked_chunks(frames, params.frames_per_chunk, label))
        for start, stop, block in chunks:
            flat = block.reshape(stop - start, height * width)
            good_sums, dynamic = frame_pass(flat, good, pixel_index, image_sum)
            with np.errstate(invalid="ignore", divide="ignore"):
                intensity_vs_time[start:stop] = good_sums / good_count
            if multitau is not None:
                multitau.add(dynamic)
            if twotime is not None:
                twotime.add(dynamic)
            if boundaries and stop >= boundaries[0]:
                cumulative.append((stop, np.bincount(static_index[inside], weights=image_sum[inside],
                                                     minlength=len(qmap.static_labels))))
                boundaries = [b for b in boundaries if b > stop]
            progress(_READ_SHARE * stop / total, f"read {stop}/{total} frames")

    zero_frames = int((intensity_vs_time == 0).sum())
    if zero_frames == total:
        raise InputDataError(f"{label}: every one of the {total} frames is zero on the good pixels; the shutter was "
                             "closed or the detector was not counting. Nothing to correlate")
    mean_image = (image_sum / total).reshape(height, width)
    counts = np.bincount(static_index[inside], minlength=len(qmap.static_labels))
    with np.errstate(invalid="ignore", divide="ignore"):
        scattering_1d = np.bincount(static_index[inside], weights=mean_image.ravel()[inside],
                                    minlength=len(qmap.static_labels)) / counts
    dyn_counts = np.bincount(roi_of_pixel, minlength=qmap.num_dynamic)

    sections: dict[str, dict[str, Any]] = {
        "temporal_mean": {"scattering_2d": (mean_image[None].astype(np.float32), "counts/pixel/frame"),
                          "scattering_1d": (scattering_1d[None], "counts/pixel/frame"),
                          "scattering_1d_segments": (stability_segments(cumulative, counts), "counts/pixel/frame")},
        "spatial_mean": {"intensity_vs_time": np.vstack([np.arange(total) * dt_s, intensity_vs_time])},
        **qmap_sections(qmap, geometry, dyn_counts, counts),
        **entry_sections(geometry, dt_s, dt_s),
    }
    summary: dict[str, Any] = {
        "input": path.name, "frames": int(total), "frame_time_s": dt_s, "mode": params.mode,
        "qmap": qmap.source, "dynamic_rois": int(qmap.num_dynamic), "zero_frames": zero_frames,
        "q_inv_angstrom": [_num(q) for q in qmap.dynamic_q],
    }
    if not np.all(np.isfinite(qmap.dynamic_q)):
        summary["q_unknown"] = ("the q-map file lists no q for some ROIs and the detector file has no complete "
                                "geometry (pass the geometry parameters to get q)")
    progress(_READ_SHARE, "normalising and fitting")
    if multitau is not None:
        static_of_pixel = static_index[pixel_index]
        # Pixels in no static ROI are smoothed over their dynamic ROI instead.
        group = np.where(static_of_pixel >= 0, static_of_pixel, len(qmap.static_labels) + roi_of_pixel)
        result = multitau.result(params.g2_normalization, group)
        delay_s = result.delay_frames * dt_s
        fits = fit_g2(delay_s, result.g2, result.g2_err, params.fit_stretched, result.g2_jackknife)
        fit_section = {"fit_ok": fits.ok.astype(np.int8), "q": (qmap.dynamic_q, "1/angstrom"),
                       "flag": np.array([flag.encode() for flag in fits.flags], dtype="S")}
        for name in PARAMETERS:
            short = name.removesuffix("_s")
            fit_section[short] = (fits.values[name], "s" if name == "tau_s" else "")
            fit_section[f"{short}_err"] = (fits.errors[name], "s" if name == "tau_s" else "")
        sections["multitau"] = {
            "normalized_g2": result.g2, "normalized_g2_err": result.g2_err,
            "delay_list": (result.delay_frames.astype(np.float64), "frames"), "delay_s": (delay_s, "s"),
            "pairs": result.pairs,
        }
        sections["multitau/config"] = {"delays_per_level": params.delays_per_level, "levels": len(multitau.levels),
                                       "normalization": params.g2_normalization, "stride_frame": 1, "avg_frame": 1}
        sections["multitau/fit"] = fit_section
        summary.update({
            "delays": int(len(delay_s)),
            "tau_s": [_num(v) for v in fits.values["tau_s"]],
            "tau_err_s": [_num(v) for v in fits.errors["tau_s"]],
            "beta": [_num(v) for v in fits.values["beta"]],
            "baseline": [_num(v) for v in fits.values["baseline"]],
            "fit_flags": fits.flags,
            "fit_failures": fits.messages,
        })
        if not fits.ok.any():
            summary["no_dynamics"] = ("no ROI has a decay the delays resolve: " +
                                      "; ".join(sorted({FLAGS[f] for f in fits.flags if f})))
    if twotime is not None:
        columns = [int(c) + 1 for c in np.searchsorted(qmap.dynamic_labels, twotime_labels)]
        sections.update(twotime_sections(twotime.results(), columns, params.twotime_frame_binning, dt_s))
        summary["twotime_rois"] = [int(v) for v in twotime_labels]
        summary["twotime_steps"] = int(twotime.steps)
    state = (multitau.state_bytes() if multitau else 0) + (twotime.state_bytes() if twotime else 0)
    chunk = params.frames_per_chunk * height * width * (frames.dtype.itemsize + 8)
    summary["working_memory_bytes"] = int(state + chunk + image_sum.nbytes + intensity_vs_time.nbytes)

    attrs: dict[str, Any] = {
        "input_file": path.name, "dataset_path": params.dataset_path, "frames": total,
        "frame_time_s": dt_s, "frame_time_source": dt_source, "qmap_source": qmap.source,
        "parameters": params.model_dump(mode="json"),
    }
    if geometry is not None:
        attrs.update(geometry_attrs(geometry))
    write_results(outdir, sections, attrs)
    progress(1.0, f"wrote {H5_NAME}")
    return summary


def _geometry(params: XpcsParams, f, label: str, required: bool) -> DetectorGeometry | None:
    """The geometry; with a q-map file it only gives q values, so its absence is not an error then."""
    try:
        return resolve_any_geometry(params, f, label)
    except (ParameterError, InputDataError):
        if required:
            raise
        return None


def _twotime_labels(params: XpcsParams, qmap: QMap) -> list[int]:
    if params.twotime_rois is None:
        return [int(v) for v in qmap.dynamic_labels]
    unknown = sorted(set(params.twotime_rois) - set(int(v) for v in qmap.dynamic_labels))
    if unknown:
        shown = ", ".join(str(int(v)) for v in qmap.dynamic_labels[:20])
        raise ParameterError(f"twotime_rois {unknown} are not dynamic ROI labels of this q-map (labels: {shown})")
    return list(params.twotime_rois)


def warm_up() -> float:
    """Analyse a tiny synthetic record once (both modes), so that the compiled kernels are built and cached on
    disk; returns the seconds it took. A new installation compiles them on its first run (several seconds);
    after this, a new worker process only loads them."""
    import tempfile
    import time

    from ...synth.xpcs import write_xpcs_file

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rtlib-xpcs-warm-") as tmp:
        raw = Path(tmp) / "raw.h5"
        # more frames than one chunk: frames are gathered into a batch, as in a real record (uint16, the usual type)
        write_xpcs_file(raw, frames=160, height=24, width=24, num_q_rings=2, seed=0)
        out = Path(tmp) / "out"
        out.mkdir()
        run(XpcsParams(mode="both", num_dynamic_q_bins=2), [raw], out, lambda fraction, message: None)
    return time.perf_counter() - start


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


workload = Workload(
    name="xpcs",
    params_model=XpcsParams,
    run=run,
    description="X-ray photon correlation spectroscopy: multi-tau g2 and two-time correlation per q ROI, τ(q) fits, APS 8-ID-I result layout",
    extra_inputs=_extra_inputs,
)
