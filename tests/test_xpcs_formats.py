"""8-ID-I's Rigaku photon-event files (.bin, and the six module files of a Rigaku 3M) in: the same g2 as the dense HDF5 of the same frames, streamed in
blocks and chunks of any size; damaged or unsupported files refused with the word that is wrong."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rtlib.cli_xpcs import synth_xpcs, xpcs_app
from rtlib.errors import InputDataError
from rtlib.synth.xpcs import write_rigaku3m_files, write_rigaku_file, write_xpcs_file
from rtlib.workloads.xpcs import rigaku, workload

FRAMES, SIZE = 300, 40


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same synthetic speckle as dense HDF5 (40 x 40) and as Rigaku events (in the corner of 512 x 1024)."""
    d = tmp_path_factory.mktemp("rigaku")
    truth = write_xpcs_file(d / "dense.h5", frames=FRAMES, height=SIZE, width=SIZE, num_q_rings=3, seed=5,
                            tau_min_s=0.005, tau_max_s=0.04, qmap_path=d / "qmap.h5")
    info = write_rigaku_file(d / "dense.h5", d / "events.bin", d / "qmap.h5", d / "qmap_500k.h5")
    return d, truth, info


def _run(inputs, outdir, **params):
    outdir.mkdir(parents=True, exist_ok=True)
    summary = workload.run(workload.validate(params), list(inputs), outdir, lambda f, m: None)
    with h5py.File(outdir / "xpcs.h5", "r") as f:
        return summary, {k: f[f"/xpcs/{k}"][()] for k in ("multitau/normalized_g2", "multitau/normalized_g2_err",
                                                            "temporal_mean/scattering_2d")}


def test_the_event_file_holds_the_frames(pair):
    d, _, info = pair
    with h5py.File(d / "dense.h5", "r") as f:
        dense = f["/entry/data/data"][()]
    assert info["events"] == np.count_nonzero(dense) and (d / "events.bin").stat().st_size == 8 * info["events"]
    frames = rigaku.RigakuFrames(d / "events.bin")
    assert frames.shape == (FRAMES, 512, 1024)
    got = np.concatenate([block[:, :SIZE, :SIZE] for _, _, block in frames.chunks(64)])
    np.testing.assert_array_equal(got, dense)


@pytest.mark.parametrize("block_words, frames_per_chunk", [(rigaku.BLOCK_WORDS, 64), (997, 7)])
def test_rigaku_gives_the_g2_of_the_dense_file(pair, tmp_path, monkeypatch, block_words, frames_per_chunk):
    d, truth, _ = pair
    monkeypatch.setattr(rigaku, "BLOCK_WORDS", block_words)  # events decoded in blocks that split frames
    dense_summary, dense = _run([d / "dense.h5", d / "qmap.h5"], tmp_path / "dense", qmap_file=str(d / "qmap.h5"))
    events_summary, events = _run([d / "events.bin", d / "qmap_500k.h5"], tmp_path / "events",
                                  qmap_file=str(d / "qmap_500k.h5"), frame_time_s=truth["frame_time_s"],
                                  frames_per_chunk=frames_per_chunk)
    np.testing.assert_allclose(events["multitau/normalized_g2"], dense["multitau/normalized_g2"], rtol=1e-12)
    np.testing.assert_allclose(events["multitau/normalized_g2_err"], dense["multitau/normalized_g2_err"], rtol=1e-9)
    image = events["temporal_mean/scattering_2d"][0]
    np.testing.assert_allclose(image[:SIZE, :SIZE], dense["temporal_mean/scattering_2d"][0], rtol=1e-6)
    assert not image[SIZE:].any() and not image[:, SIZE:].any()
    np.testing.assert_allclose(events_summary["tau_s"], dense_summary["tau_s"], rtol=1e-6)
    np.testing.assert_allclose(events_summary["tau_s"], truth["tau_s"], rtol=0.25)  # and both are the truth


def test_rigaku_3m_modules_are_placed_as_the_instrument_arranges_them(pair, tmp_path):
    d, truth, _ = pair
    info = write_rigaku3m_files(d / "dense.h5", tmp_path / "scan.bin", 3, d / "qmap.h5", tmp_path / "qmap_3m.h5")
    frames = rigaku.open_rigaku(tmp_path / "scan.bin.004")  # any one of the six names the record
    assert frames.shape == (FRAMES, 1676, 2100)
    *_, last = frames.chunks(FRAMES)
    block = last[2][-1]
    # Each other module's one photon, (file number + 1) counts at its pixel (0, 0): position p holds file
    # (5, 0, 4, 1, 3, 2)[p], rows 512 + 70 and columns 1024 + 52 apart; odd files' 2^20 index offset undone.
    for position, number in enumerate((5, 0, 4, 1, 3, 2)):
        if position != 3:
            assert block[position // 2 * 582, position % 2 * 1076] == number + 1
    assert block.sum() == sum(n + 1 for n in (5, 0, 4, 3, 2)) + last[2][-1, 582:622, 1076:1116].sum()
    dense_summary, dense = _run([d / "dense.h5", d / "qmap.h5"], tmp_path / "dense", qmap_file=str(d / "qmap.h5"))
    summary, events = _run([tmp_path / "scan.bin.000", tmp_path / "qmap_3m.h5"], tmp_path / "events",
                           qmap_file=str(tmp_path / "qmap_3m.h5"), frame_time_s=truth["frame_time_s"])
    assert info["patch_origin"] == [582, 1076] and summary["frames"] == FRAMES
    np.testing.assert_allclose(events["multitau/normalized_g2"], dense["multitau/normalized_g2"], rtol=1e-12)
    np.testing.assert_allclose(events["temporal_mean/scattering_2d"][0, 582:622, 1076:1116],
                               dense["temporal_mean/scattering_2d"][0], rtol=1e-6)


def test_cli_writes_and_analyzes_a_rigaku_file(tmp_path):
    app = typer.Typer()
    synth = typer.Typer()
    app.add_typer(xpcs_app, name="xpcs")
    app.add_typer(synth, name="synth")
    synth.command("xpcs")(synth_xpcs)
    synth.command("detector")(lambda: None)
    made = CliRunner().invoke(app, ["synth", "xpcs", str(tmp_path / "r.bin"), "--format", "rigaku", "--frames", "200",
                                    "--height-px", "32", "--width-px", "32", "--num-q-rings", "2",
                                    "--qmap", str(tmp_path / "q.h5")])
    assert made.exit_code == 0, made.output
    with h5py.File(tmp_path / "q.h5", "r") as f:
        assert f["/data/dynamicMap"].shape == (512, 1024)
    result = CliRunner().invoke(app, ["xpcs", "analyze", str(tmp_path / "r.bin"), "--qmap", str(tmp_path / "q.h5"),
                                      "-o", str(tmp_path / "out.h5"), "--frame-time-s", "0.001", "-q"])
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()[1:3]
    assert all(len(row.split()) == 3 and float(row.split()[1]) > 0 for row in rows), result.output


def test_cli_writes_bitshuffle_lz4_hdf5(tmp_path):
    app = typer.Typer()
    app.command("xpcs")(synth_xpcs)
    app.command("noop")(lambda: None)
    made = CliRunner().invoke(app, ["xpcs", str(tmp_path / "r.h5"), "--format", "hdf5-bslz4", "--frames", "20", "--num-q-rings", "2",
                                    "--height-px", "24", "--width-px", "24"])
    assert made.exit_code == 0, made.output
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert "32008" in f["/entry/data/data"]._filters  # the bitshuffle filter (LZ4 inside)


def _word(frame: int, pixel: int, count: int) -> int:
    return (frame << 40) | (pixel << 16) | count


@pytest.mark.parametrize("words, message", [
    ([_word(0, 5, 1), _word(2, 5, 1), _word(1, 5, 1)], "word 2 goes back to frame 1"),
    ([_word(0, 5, 1), _word(1, 512 * 1024, 1)], "word 1 names pixel 524288, outside"),
])
def test_damaged_event_files_are_refused(tmp_path, words, message):
    path = tmp_path / "bad.bin"
    np.array(words, dtype="<u8").tofile(path)
    with pytest.raises(InputDataError, match=message):
        for _ in rigaku.RigakuFrames(path).chunks(64):
            pass


def test_truncated_files_and_incomplete_3m_records_are_refused(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(np.array([_word(0, 1, 1)], dtype="<u8").tobytes() + b"\0\0\0")
    with pytest.raises(InputDataError, match="not a whole number of 64-bit"):
        rigaku.RigakuFrames(path)
    for n in (0, 1, 2, 4, 5):
        np.array([_word(0, 1, 1)], dtype="<u8").tofile(tmp_path / f"scan.bin.{n:03d}")
    assert rigaku.is_rigaku(tmp_path / "scan.bin.000")
    with pytest.raises(InputDataError, match=r"Rigaku 3M record, but scan\.bin\.003 is not beside it"):
        rigaku.open_rigaku(tmp_path / "scan.bin.000")
