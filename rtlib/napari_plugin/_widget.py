"""The *Connectomics stages* dock widget (imported only by napari: it needs Qt)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from . import STAGES, add_result_layers, is_result


class StagesWidget(QWidget):
    """Lists the pipeline's stages present in the viewer; ticking one shows its layer, "Open result" loads one.

    A class with a ``napari_viewer`` argument, so that napari passes its viewer when it docks the widget.
    """

    def __init__(self, napari_viewer=None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("rtlib stages")
        box = QVBoxLayout(self)
        self.open_button = QPushButton("Open result ...")
        self.stage_list = QListWidget()
        box.addWidget(self.open_button)
        box.addWidget(self.stage_list)
        self.stage_list.itemChanged.connect(self._toggled)
        self.open_button.clicked.connect(self._open_result)
        if napari_viewer is not None:
            napari_viewer.layers.events.inserted.connect(self.refresh)
            napari_viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    def stages(self) -> dict[str, bool]:
        """The listed stages and whether each is ticked, in pipeline order."""
        items = (self.stage_list.item(i) for i in range(self.stage_list.count()))
        return {item.text(): item.checkState() == Qt.Checked for item in items}

    def refresh(self, *_):
        self.stage_list.blockSignals(True)
        self.stage_list.clear()
        if self.viewer is not None:
            for name in STAGES:
                if name in self.viewer.layers:
                    item = QListWidgetItem(name)
                    item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                    item.setCheckState(Qt.Checked if self.viewer.layers[name].visible else Qt.Unchecked)
                    self.stage_list.addItem(item)
        self.stage_list.blockSignals(False)

    def _toggled(self, item):
        if self.viewer is not None and item.text() in self.viewer.layers:
            self.viewer.layers[item.text()].visible = item.checkState() == Qt.Checked

    def _open_result(self):
        folder = QFileDialog.getExistingDirectory(self, "rtlib connectomics result (.zarr)")
        if folder and is_result(folder) and self.viewer is not None:
            add_result_layers(self.viewer, folder)
