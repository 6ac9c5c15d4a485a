"""Dock widget "Radiomics features": image layer + labels layer + label value -> table grouped by class.

A thin adapter: layers become `Volume`/`LabelMap` through `napari_medgen.layers`, features come from
`napari_medgen.pipelines.radiomics_extraction` (the same values as ``medgen radiomics``), computed in a napari
thread worker one feature class at a time: the progress bar moves per class and Cancel stops between classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, FileEdit, PushButton, SpinBox, Table, create_widget

from napari_medgen.errors import InvalidInputError, MedGenError
from napari_medgen.widgets.job_widget import JobSpec, JobWidget

if TYPE_CHECKING:
    import napari

    from napari_medgen.pipelines.radiomics_extraction import RadiomicsResult

_COLUMNS = ("class", "feature", "value", "unit")


class RadiomicsTableWidget(JobWidget):
    """Compute pyradiomics-named features of one label and show/export them."""

    uses_device = False  # radiomics runs on the CPU (numpy + numba)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._image: ComboBox = create_widget(annotation="napari.layers.Image", label="image")
        self._labels: ComboBox = create_widget(annotation="napari.layers.Labels", label="labels")
        self._label_value = SpinBox(value=1, min=0, max=65535, label="label value (0 = all)")
        self._label_value.tooltip = ("Which label of the labels layer is the region of interest; 0 measures every "
                                     "non-zero label together (e.g. a whole BraTS tumour).")
        self._image.tooltip = "The scan whose intensities are measured (shape features use only the labels)."
        self._labels.tooltip = "The region(s) of interest, on the image's grid."
        self._params = FileEdit(mode="r", filter="*.yaml *.yml", label="params (optional)", value="")
        self._params.tooltip = ("A pyradiomics params file (setting: binWidth, binCount, label...; featureClass). "
                                "Empty: pyradiomics defaults (binWidth 25: suits CT in HU and raw MR; a warning "
                                "says when a normalised scan needs another).")
        self._compute = PushButton(text="Compute features")
        self._export_path = FileEdit(mode="w", filter="*.csv", label="export to", value="")
        self._export = PushButton(text="Export CSV", enabled=False)
        self.table = Table(value={"data": [], "index": [], "columns": list(_COLUMNS)})
        self.features: dict[str, float] = {}
        self._compute.changed.connect(self._start)
        self._export.changed.connect(self._export_clicked)
        self.extend([self._image, self._labels, self._label_value, self._params, *self.job_controls(self._compute),
                     self.table, self._export_path, self._export])
        self.table.native.verticalHeader().setVisible(False)
        self.table.native.horizontalHeader().setStretchLastSection(True)
        self.native.setMinimumWidth(620)

    # ---- computation ---------------------------------------------------------------------------------
    def _inputs(self):  # noqa: ANN202 - returns (Volume, LabelMap, int, RadiomicsParams)
        from napari_medgen.layers import labels_layer_to_labelmap, layer_to_volume, snapshot
        from napari_medgen.radiomics.params import RadiomicsParams, load_params
        from napari_medgen.radiomics.settings import RadiomicsSettings

        image_layer, labels_layer = self._image.value, self._labels.value
        if image_layer is None or labels_layer is None:
            raise InvalidInputError("Choose an image layer and a labels layer (open a scan and its segmentation).")
        image = snapshot(layer_to_volume(image_layer))  # the user may keep painting while the worker reads them
        labels = snapshot(labels_layer_to_labelmap(labels_layer, image))
        params_path = str(self._params.value or "")
        params = load_params(params_path) if params_path not in ("", ".") else RadiomicsParams(RadiomicsSettings())
        return image, labels, int(self._label_value.value), params

    def compute(self) -> dict[str, float]:
        """Synchronous computation (used by tests and scripts); fills the table."""
        from napari_medgen.pipelines.radiomics_extraction import extract_features

        image, labels, label, params = self._inputs()
        self._show(extract_features(image, labels, label, params))
        return self.features

    def _job(self) -> JobSpec:
        from napari_medgen.pipelines.radiomics_extraction import extract_features_job

        return extract_features_job, self._inputs(), {}, self._show

    def _start(self) -> None:
        self._clear()  # an error must not leave the previous region's numbers looking current
        self.start_job(self._job, status="computing...")

    def _clear(self) -> None:
        self.features = {}
        self.table.value = {"data": [], "index": [], "columns": list(_COLUMNS)}
        self._export.enabled = False

    def _show(self, result: RadiomicsResult) -> None:
        from napari_medgen.radiomics.table import group_by_class

        self.features = dict(result.features)
        rows = [
            [cls, feature, f"{value:.6g}", unit]
            for cls, items in group_by_class(self.features).items()
            for feature, value, unit in items
        ]
        self.table.value = {"data": rows, "index": list(range(len(rows))), "columns": list(_COLUMNS)}
        self.table.native.resizeColumnsToContents()
        self._export.enabled = True
        which = result.report.get("label")
        status = f"{len(rows)} features of {'all labels' if which == 'all' else f'label {which}'}"
        warnings = result.report.get("warnings") or []
        if warnings:
            status += " -- warning: " + " ".join(warnings)
        self._status.value = status
        self._status.tooltip = status

    # ---- export --------------------------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> Path:
        """Write the current features as a one-row pyradiomics-style CSV."""
        from napari_medgen.radiomics.table import case_row, write_table

        if not self.features:
            raise InvalidInputError("Compute features before exporting them.")
        image_name = self._image.value.name if self._image.value is not None else ""
        labels_name = self._labels.value.name if self._labels.value is not None else ""
        row = case_row(image_name, image_name, labels_name, int(self._label_value.value), self.features)
        return write_table([row], path)

    def _export_clicked(self) -> None:
        path = str(self._export_path.value or "")
        if path in ("", "."):
            self._status.value = "choose a .csv file to export to"
            return
        try:
            self.export_csv(path)
            self._status.value = f"exported to {path}"
        except MedGenError as error:
            self.report(error)
