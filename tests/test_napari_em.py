"""napari opens every stage of a connectomics result as layers, docks the plugin's widget and saves a screenshot.

A real ``napari.Viewer(show=False)`` needs an OpenGL context, which Qt's offscreen platform does not
give. So the module starts its own Xvfb (a display number Xvfb picks itself, ``-displayfd``) and Qt
draws through ``xcb`` with Mesa's software OpenGL (llvmpipe); ``.ci/run`` installs the system packages.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from rtlib.napari_plugin import STAGES, get_reader, is_result
from rtlib.synth.em import write_em_dataset
from rtlib.workloads.connectomics import RESULT_NAME, workload


@pytest.fixture(scope="module")
def x_display(tmp_path_factory):
    """An Xvfb server for this module; DISPLAY and QT_QPA_PLATFORM point Qt at it, restored afterwards."""
    xvfb = shutil.which("Xvfb")
    assert xvfb, "Xvfb is not installed (.ci/run installs the xvfb package)"
    log = open(tmp_path_factory.mktemp("xvfb") / "xvfb.log", "wb")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_end), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            pass_fds=(write_end,), stdout=log, stderr=log)
    os.close(write_end)
    try:
        # Xvfb writes the number, then a newline, when it is ready; read up to the newline, or it can fail
        # writing the newline into a closed pipe and exit
        reply, deadline = b"", time.monotonic() + 30
        while not reply.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_end, 64) if ready else b""
            if not chunk:
                break
            reply += chunk
        number = reply.decode().strip()
        assert reply.endswith(b"\n") and number.isdigit(), f"Xvfb did not report its display (exit code {proc.poll()})"
        time.sleep(0.2)
        # Qt aborts the whole process when it cannot reach the display: fail here instead, with Xvfb's log
        assert proc.poll() is None, f"Xvfb exited ({proc.returncode}): {Path(log.name).read_text(errors='replace')}"
    except BaseException:
        proc.terminate()
        proc.wait(10)
        raise
    finally:
        os.close(read_end)
    saved = {key: os.environ.get(key) for key in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ.update(DISPLAY=f":{number}", QT_QPA_PLATFORM="xcb")
    yield os.environ["DISPLAY"]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    base = tmp_path_factory.mktemp("napari")
    write_em_dataset(base / "em", (8, 128, 128), seed=4)
    workload.run(workload.validate({}), [base / "em"], base, lambda f, m: None)
    return base / RESULT_NAME


def test_reader_is_offered_only_for_results(result, tmp_path):
    assert is_result(result) and callable(get_reader(str(result)))
    assert get_reader(str(tmp_path)) is None and get_reader([str(result), str(result)]) is None


def test_viewer_model_gets_every_stage_in_nm_consistent_with_the_result_files(result):
    """Headless (napari.components.ViewerModel, no display): layer kinds, the physical scale, and skeletons and
    graph nodes that are the result's SWC files and GraphML, lying inside their neurons' segmentation."""
    import zarr
    from napari.components import ViewerModel

    from rtlib.napari_plugin import add_result_layers
    from rtlib.workloads.connectomics import io
    from rtlib.workloads.connectomics.graph import read_graphml
    from rtlib.workloads.connectomics.skeleton import read_swc

    group = zarr.open_group(str(result), mode="r")
    scale = np.array(group.attrs["scale_nm"])
    np.testing.assert_allclose(scale, [40.0, 16.0, 16.0])  # section thickness and pixel size of the synthetic data
    viewer = ViewerModel()
    added = add_result_layers(viewer, result)
    assert [layer.name for layer in added] == [layer.name for layer in viewer.layers] == list(STAGES)
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"tiles": "Image", "mosaic": "Image", "image": "Image", "mask": "Labels", "boundary": "Image",
                     "foreground": "Image", "segmentation": "Labels", "skeletons": "Shapes", "graph nodes": "Points",
                     "graph edges": "Shapes"}
    for name in ("image", "mask", "boundary", "foreground", "segmentation", "skeletons", "graph nodes", "graph edges"):
        np.testing.assert_allclose(viewer.layers[name].scale, scale, err_msg=name)
    np.testing.assert_allclose(viewer.layers["tiles"].scale, [1.0, *scale])
    # the mosaic's canvas starts before the frame's origin (tile 00_00's top-left pixel), by the pad, in nm
    pad = np.array(group.attrs["canvas_origin_px"])
    np.testing.assert_allclose(viewer.layers["mosaic"].translate, [0.0, pad[0] * scale[1], pad[1] * scale[2]])
    segmentation = group[io.SEGMENTATION][...]
    np.testing.assert_array_equal(np.asarray(viewer.layers["segmentation"].data), segmentation)
    np.testing.assert_array_equal(np.asarray(viewer.layers["mask"].data), group[io.MASK][...].astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(viewer.layers["image"].data), group[io.IMAGE][...])

    # skeletons: one path per SWC edge, at the SWC's vertices (x y z in nm) once the layer's scale is applied
    layer = viewer.layers["skeletons"]
    shown: dict[int, list] = {}
    for path, label in zip(layer.data, layer.features["label"]):
        world = np.asarray(path) * scale  # z y x, nm
        assert world.shape == (2, 3)
        shown.setdefault(int(label), []).append(world)
    swcs = sorted((result / io.SKELETONS).glob("*.swc"))
    assert len(swcs) > 5 and set(shown) == {int(p.stem) for p in swcs}
    inside = []
    for swc in swcs:
        vertices, edges = read_swc(swc)
        zyx = vertices[:, ::-1]
        np.testing.assert_allclose(_segments(shown[int(swc.stem)]), _segments([zyx[[a, b]] for a, b in edges]),
                                   atol=1e-3, err_msg=swc.name)
        voxel = np.rint(zyx / scale).astype(int).clip(0, np.array(segmentation.shape) - 1)
        inside.append((segmentation[tuple(voxel.T)] == int(swc.stem)).mean())
    assert min(inside) > 0.9, inside  # the skeleton lies in its own neuron: the layer is in the labels' frame

    # graph nodes: a point per GraphML node at its centroid; the centroid is the neuron's in the segmentation
    graph = read_graphml(result / io.GRAPH)
    points = viewer.layers["graph nodes"]
    labels = [int(v) for v in points.features["label"]]
    assert labels == sorted(graph.nodes) == sorted(int(v) for v in np.unique(segmentation[segmentation > 0]))
    assert [int(d) for d in points.features["degree"]] == [graph.degree[n] for n in labels]
    for label, point in zip(labels, np.asarray(points.data)):
        np.testing.assert_allclose(point * scale, [graph.nodes[label][f"{a}_nm"] for a in "zyx"], rtol=1e-6)
        centroid = np.argwhere(segmentation == label).mean(axis=0) * scale
        np.testing.assert_allclose(point * scale, centroid, atol=1e-3, err_msg=str(label))
    edges = viewer.layers["graph edges"]
    assert len(edges.data) == graph.number_of_edges() > 0
    assert sorted(float(a) for a in edges.features["area_nm2"]) == sorted(d["area_nm2"] for *_, d in graph.edges(data=True))


def _segments(segments) -> np.ndarray:
    """Line segments (2, 3) as one array in a canonical order: each segment's ends sorted, then the segments."""
    ends = np.array([seg[np.lexsort(seg.T[::-1])] for seg in segments]).reshape(len(segments), 6)
    return ends[np.lexsort(ends.T[::-1])]


def test_rtlib_view_opens_the_result_in_a_viewer_and_runs_napari(result, monkeypatch, tmp_path):
    """`rtlib view RESULT`: a viewer titled after the result gets every stage and the stages dock widget,
    then napari's event loop runs. napari.Viewer, napari.run and the Qt widget are stand-ins (no display)."""
    import napari
    from napari.components import ViewerModel
    from typer.testing import CliRunner

    import rtlib.napari_plugin as plugin
    from rtlib.cli import app
    from rtlib.errors import RtlibError

    made, docked, runs = [], [], []

    class Window:
        def add_dock_widget(self, widget, name=None, area=None):
            docked.append((widget, name, area))

    class HeadlessViewer(ViewerModel):
        def __init__(self, title="napari", **kwargs):
            super().__init__(title=title)
            object.__setattr__(self, "_test_window", Window())
            made.append(self)

        @property
        def window(self):
            return self._test_window

    monkeypatch.setattr(napari, "Viewer", HeadlessViewer)
    monkeypatch.setattr(napari, "run", lambda *a, **k: runs.append(len(docked)))
    monkeypatch.setattr(plugin, "stages_widget", lambda viewer: ("stages widget for", viewer))
    out = CliRunner().invoke(app, ["view", str(result)])
    assert out.exit_code == 0, out.output
    assert len(made) == 1 and made[0].title == f"rtlib: {result.name}"
    assert [layer.name for layer in made[0].layers] == list(STAGES)
    assert docked == [(("stages widget for", made[0]), "Connectomics stages", "right")]
    assert runs == [1]  # the event loop started once, after the widget was docked

    out = CliRunner().invoke(app, ["view", str(tmp_path)])  # not a result: a clear error (cli.main prints it), no viewer
    assert isinstance(out.exception, RtlibError) and "is not an rtlib connectomics result" in str(out.exception), out
    assert len(made) == 1


def _read_png(path):
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(float)


def test_napari_viewer_opens_every_stage_docks_the_widget_and_saves_a_screenshot(x_display, result, tmp_path):
    import napari  # the viewer extra, installed by `make test` (rtlib[all])
    from npe2 import PluginManager
    from qtpy.QtCore import Qt

    plugins = PluginManager.instance()
    plugins.discover()  # finds rtlib through its napari.manifest entry point
    manifest = plugins.get_manifest("rtlib")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Connectomics stages"}

    viewer = napari.Viewer(show=False)  # a real window with a vispy canvas (software OpenGL under Xvfb)
    try:
        layers = viewer.open(str(result), plugin="rtlib")  # through the npe2 reader
        assert [layer.name for layer in layers] == list(STAGES)
        kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
        assert kinds["segmentation"] == "Labels" and kinds["mask"] == "Labels" and kinds["image"] == "Image"
        assert kinds["skeletons"] == "Shapes" and kinds["graph nodes"] == "Points" and kinds["graph edges"] == "Shapes"
        np.testing.assert_allclose(viewer.layers["image"].scale, [40.0, 16.0, 16.0])  # nm, z stretched by the thickness
        assert viewer.layers["tiles"].data.shape[:2] == (4, 8)  # (tile, section, y, x): sections on the z slider
        assert viewer.layers["segmentation"].data.max() > 0

        # the manifest's dock widget, docked by napari, which hands it the viewer
        _, widget = viewer.window.add_plugin_dock_widget("rtlib", "Connectomics stages")
        listed = widget.stages()
        assert list(listed) == list(STAGES)
        assert listed["image"] and listed["segmentation"] and not listed["tiles"] and not listed["boundary"]
        viewer.window.resize(1400, 900)
        viewer.dims.set_point(1, 4 * 40.0)  # the middle section (z in nm; axis 0 is the tile index)
        viewer.reset_view()
        # zoom from the padded mosaic canvas (the widest layer) to the aligned sections; napari 0.9 moved the camera
        getattr(viewer, "scene", viewer).camera.zoom *= 1.5
        # the whole window (canvas, layer list, dock widget), grabbed from Qt with the canvas drawn by OpenGL;
        # with show=False napari's canvas-only screenshot stays black, the window grab does not
        shot = viewer.screenshot(str(tmp_path / "window.png"), canvas_only=False)
        row = list(STAGES).index("segmentation")
        widget.stage_list.item(row).setCheckState(Qt.Unchecked)  # unticking a stage hides its layer
        assert not viewer.layers["segmentation"].visible
        viewer.screenshot(str(tmp_path / "without_segmentation.png"), canvas_only=False)
        widget.stage_list.item(row).setCheckState(Qt.Checked)
        assert viewer.layers["segmentation"].visible
        viewer.layers.remove("graph edges")
        assert "graph edges" not in widget.stages()  # the list follows the layers
    finally:
        viewer.close()
    window = _read_png(tmp_path / "window.png")  # what was saved is what the viewer returned
    np.testing.assert_array_equal(window, np.asarray(shot)[..., :3])
    assert window.shape[0] > 500 and window.shape[1] > 800
    # not blank: the EM image's grey levels and the segmentation's colours are on the canvas ...
    assert window.std() > 20 and len(np.unique(window.reshape(-1, 3), axis=0)) > 2000, window.std()
    # ... and drawn there: hiding the segmentation changes many pixels (not just the eye icon in the layer list)
    changed = (np.abs(window - _read_png(tmp_path / "without_segmentation.png")).sum(axis=-1) > 30).sum()
    assert changed > 30000, changed
