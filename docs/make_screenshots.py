"""Make the napari screenshots of the user guide (real window, real rendering).

Run under an X server, e.g. on a headless machine:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py

It opens the PyRadiomics ``brain1`` MR image and its lesion label (BSD-3, from ``../shared/data``)
through the napari-medgen reader, or the synthetic tumour phantom when that data is absent, shows an
axial slice through the lesion, and saves the screenshots of `SCREENSHOTS` into ``docs/images/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pyradiomics" / "data"


def _process_events(rounds: int = 10) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(rounds):
        QApplication.processEvents()


def _open_lesion_case(title: str, data_dir: Path):  # noqa: ANN202 - (viewer, image layer, labels layer)
    """A shown viewer with brain1 image + lesion (or the phantom when the real data is absent)."""
    import napari

    viewer = napari.Viewer(show=True, title=title)
    image_path, label_path = data_dir / "brain1_image.nrrd", data_dir / "brain1_label.nrrd"
    if image_path.is_file() and label_path.is_file():
        [image] = viewer.open(str(image_path), plugin="napari-medgen")
        [labels] = viewer.open(str(label_path), plugin="napari-medgen")
    else:
        image, labels = viewer.open_sample("napari-medgen", "phantom")
    labels.opacity = 0.55
    return viewer, image, labels


def _grab(viewer, out: Path) -> Path:  # noqa: ANN001
    """The whole window as a PNG at ``out``; closes the viewer."""
    from PIL import Image

    _process_events(20)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(shot)).save(out)
    viewer.close()
    return out


def _save_shot(viewer, labels, out: Path, size: tuple[int, int]) -> Path:  # noqa: ANN001
    """Axial slice through the lesion centre, whole window, written to ``out``."""
    centre = np.argwhere(labels.data > 0).mean(axis=0)
    viewer.window._qt_window.resize(*size)
    viewer.reset_view()
    viewer.dims.set_point(0, labels.data_to_world(centre)[0])
    return _grab(viewer, out)


def reader_screenshot(out: Path, data_dir: Path) -> Path:
    """Image + lesion labels opened through the plugin reader, axial slice through the lesion centre."""
    viewer, _, labels = _open_lesion_case("napari-medgen: MR image + lesion label in physical space", data_dir)
    viewer.layers.selection = {labels}
    return _save_shot(viewer, labels, out, (1400, 900))


def radiomics_widget_screenshot(out: Path, data_dir: Path) -> Path:
    """The "Radiomics features" dock widget after computing the lesion's features."""
    from napari_medgen.widgets.radiomics_table import RadiomicsTableWidget

    viewer, _, labels = _open_lesion_case("napari-medgen: radiomics features of a lesion", data_dir)
    widget = RadiomicsTableWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Radiomics features", area="right")
    widget.compute()
    return _save_shot(viewer, labels, out, (1500, 950))


def tumour_shape_widget_screenshot(out: Path, data_dir: Path) -> Path:
    """The "Tumour shape" widget after generating an 8 cm3 tumour at a point of the MNI152 brain."""
    import napari

    from napari_medgen.demo import DEMO_SHAPE_CENTER_MM
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget

    viewer = napari.Viewer(show=True, title="napari-medgen: tumour shape from radiomics features")
    [brain] = viewer.open_sample("napari-medgen", "mni152")
    points = viewer.add_points([DEMO_SHAPE_CENTER_MM[::-1]], name="tumour location", size=4, face_color="red")
    widget = TumourShapeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumour shape", area="right")
    widget._controls["VoxelVolume"][1].value = 8000.0
    widget._controls["Sphericity"][1].value = 0.75
    widget._add_layer(widget.generate())
    viewer.layers.selection = {points}
    return _save_shot(viewer, widget.last_layer, out, (1500, 950))


def generate_from_labels_screenshot(out: Path, data_dir: Path) -> Path:
    """ "Generate from labels" on the MNI152 brain: BRATS-style labels around a shape-GAN tumour -> FLAIR-like
    slices (bundled seg2img-brain, the brain as similarity reference), shown beside the brain."""
    import napari

    from napari_medgen.demo import DEMO_SEG2IMG, DEMO_SHAPE_CENTER_MM, DEMO_SHAPE_REQUEST, brats_labels_around
    from napari_medgen.layers import layer_to_volume, volume_to_layer_data
    from napari_medgen.pipelines.shape_generation import generate_shape, place_shape
    from napari_medgen.widgets.generate_from_labels import GenerateFromLabelsWidget

    viewer = napari.Viewer(show=True, title="napari-medgen: generate an image from labels, slice by slice")
    [brain] = viewer.open_sample("napari-medgen", "mni152")
    volume = layer_to_volume(brain)
    tumour = place_shape(generate_shape(DEMO_SHAPE_REQUEST, spacing=volume.spacing, seed=0).mask, volume,
                         DEMO_SHAPE_CENTER_MM)
    data, kwargs, _ = volume_to_layer_data(brats_labels_around(volume, tumour), "BRATS-style labels")
    labels = viewer.add_labels(data, **kwargs)
    labels.opacity = 0.35
    widget = GenerateFromLabelsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Generate from labels", area="right")
    widget._labels.value = labels
    widget._reference.value = brain
    widget._similarity.value = DEMO_SEG2IMG["similarity"]
    widget._start()  # the dock's own worker path (progress bar, then the new layer)
    import time

    deadline = time.monotonic() + 900
    while widget.last_layer is None and time.monotonic() < deadline:
        _process_events(5)
        time.sleep(0.2)
    brain.visible = False
    viewer.layers.move(viewer.layers.index(labels), len(viewer.layers))  # label outlines over the result
    labels.contour, labels.opacity = 1, 0.9
    viewer.layers.selection = {widget.last_layer}
    return _save_shot(viewer, tumour_layer_proxy(labels), out, (1500, 950))


def tumour_layer_proxy(labels):  # noqa: ANN001, ANN201 - a layer whose data centre is the tumour (labels 1, 2, 4)
    from types import SimpleNamespace

    tumour = np.isin(labels.data, (1, 2, 4))
    return SimpleNamespace(data=tumour, data_to_world=labels.data_to_world)


def paired_generation_screenshot(out: Path, data_dir: Path) -> Path:
    """ "Paired generation": 8 new breast-ultrasound images with their lesion masks (bundled PIG guider)."""
    import napari

    from napari_medgen.pipelines.paired_generation import generate_pairs
    from napari_medgen.widgets.paired_generation import PairedGenerationWidget

    viewer = napari.Viewer(show=True, title="napari-medgen: paired image + lesion mask generation")
    widget = PairedGenerationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Paired generation", area="right")
    widget._n.value = 8
    widget._add_layers(generate_pairs(**widget.options()))
    image_layer, mask_layer = widget.last_layers
    mask_layer.opacity = 0.4
    viewer.window._qt_window.resize(1300, 900)
    _process_events(20)
    viewer.reset_view()
    viewer.dims.set_point(0, 0)
    return _grab(viewer, out)


def tumour_synthesis_screenshot(out: Path, data_dir: Path) -> Path:
    """ "Tumour synthesis" on the MNI152 brain: a glioma (necrotic core, enhancing rim, edema) synthesized at the demo
    point by the bundled brain editor (the dock's own worker path), shown with its sub-region outlines."""
    import time

    import napari

    from napari_medgen.demo import DEMO_SHAPE_CENTER_MM, DEMO_SHAPE_REQUEST
    from napari_medgen.widgets.tumour_synthesis import TumourSynthesisWidget

    viewer = napari.Viewer(show=True, title="napari-medgen: synthesize a tumour in a scan")
    [brain] = viewer.open_sample("napari-medgen", "mni152")
    points = viewer.add_points([DEMO_SHAPE_CENTER_MM[::-1]], name="tumour location", size=4, face_color="red")
    widget = TumourSynthesisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumour synthesis", area="right")
    widget._image.value, widget._points.value = brain, points
    widget._shape_sliders["VoxelVolume"].value = DEMO_SHAPE_REQUEST["VoxelVolume"] / 1000.0  # cm3
    widget.start("synthesize")
    deadline = time.monotonic() + 900
    while widget.running and time.monotonic() < deadline:
        _process_events(5)
        time.sleep(0.2)
    if widget.last_layers is None:
        raise RuntimeError(f"tumour synthesis did not finish: {widget._status.value}")
    image, labels = widget.last_layers
    brain.visible = points.visible = False
    labels.contour, labels.opacity = 1, 0.9
    viewer.layers.selection = {image}
    return _save_shot(viewer, labels, out, (1500, 1000))


def _wait(widget, what: str) -> None:  # noqa: ANN001
    import time

    deadline = time.monotonic() + 900
    while widget.running and time.monotonic() < deadline:
        _process_events(5)
        time.sleep(0.2)
    _process_events(10)
    if "error" in str(widget._status.value):
        raise RuntimeError(f"{what} failed: {widget._status.value}")


def walkthrough_screenshots(out: Path, data_dir: Path) -> Path:
    """The whole flow on the MNI152 brain with no re-selection: a point, Tumour shape (the two-region model), Tumour
    synthesis (which takes the new shape by itself), then Remove on the synthesized scan; saves the synthesis step
    (``walkthrough_synthesis.png``) and a side-by-side grid (source, synthesized, removed: ``out``)."""
    import napari

    from napari_medgen.demo import DEMO_SHAPE_CENTER_MM
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget
    from napari_medgen.widgets.tumour_synthesis import TumourSynthesisWidget

    viewer = napari.Viewer(show=True, title="napari-medgen: point -> shape -> synthesize -> remove")
    viewer.window._qt_window.resize(1600, 1000)
    [brain] = viewer.open_sample("napari-medgen", "mni152")
    viewer.add_points([DEMO_SHAPE_CENTER_MM[::-1]], name="tumour location", size=4, face_color="red",
                      units=("mm", "mm", "mm"))
    synth = TumourSynthesisWidget(viewer)
    shape = TumourShapeWidget(viewer)
    viewer.window.add_dock_widget(shape, name="Tumour shape", area="right")
    viewer.window.add_dock_widget(synth, name="Tumour synthesis", area="right", tabify=True)
    shape._generate.clicked.emit()
    _wait(shape, "tumour shape")
    synth.start("synthesize")  # image, point and the new shape are already selected
    _wait(synth, "synthesis")
    image, labels = synth.last_layers
    labels.contour = 1
    viewer.dims.set_point(0, labels.data_to_world(np.argwhere(labels.data > 0).mean(axis=0))[0])
    viewer.layers.selection = {image}
    _process_events(20)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    Image.fromarray(np.asarray(shot)).save(out.with_name("walkthrough_synthesis.png"))
    synth._image.value, synth._labels.value, synth._label.value = image, labels, 0
    synth.start("remove")
    _wait(synth, "removal")
    removed, _ = synth.last_layers
    for layer in list(viewer.layers):
        layer.visible = layer in (brain, image, removed)
    for layer in (brain, image, removed):
        layer.contrast_limits = brain.contrast_limits
    viewer.grid.enabled, viewer.grid.shape = True, (1, 3)
    viewer.reset_view()
    return _grab(viewer, out)


def composition_screenshot(out: Path, data_dir: Path) -> Path:
    """ "Tumour composition" on BUSI: a test-split benign tumour composed into a tumour-free (normal/) background
    at a point, seed 000's method on the bundled mask-ablated backbone (the dock's worker path)."""
    import napari

    from napari_medgen.widgets.composition import CompositionWidget

    busi = data_dir.parent.parent / "busi"
    viewer = napari.Viewer(show=True, title="napari-medgen: compose a real tumour into a tumour-free image")
    viewer.window._qt_window.resize(1500, 950)
    [background] = viewer.open(str(busi / "normal" / "normal (1).png"), plugin="napari-medgen")
    [tumour] = viewer.open(str(busi / "benign" / "benign (1).png"), plugin="napari-medgen")
    [mask] = viewer.open(str(busi / "benign" / "benign (1)_mask.png"), plugin="napari-medgen")
    tumour.visible = mask.visible = False
    centre = np.array(background.data.shape[-2:]) * np.array([0.55, 0.45])
    points = viewer.add_points([background.data_to_world([0, *centre])], name="target", size=12, face_color="red",
                               units=tuple(background.units))
    widget = CompositionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumour composition", area="right")
    widget.reset_choices()
    widget._background.value, widget._object.value, widget._object_labels.value = background, tumour, mask
    widget._points.value = points
    widget._run.clicked.emit()
    _wait(widget, "composition")
    image, placed = widget.last_layers
    background.visible = points.visible = False
    placed.contour = 1
    viewer.layers.selection = {image}
    viewer.reset_view()
    return _grab(viewer, out)


def lesion_pairs_screenshot(out: Path, data_dir: Path) -> Path:
    """ "Lesion pairs (attention masks)": a painted layout, 4 dermoscopy images generated with layout guidance by the
    bundled PH2 model, and the masks read from its attention (the dock's worker path)."""
    import napari

    from napari_medgen.widgets.lesion_pairs import LesionPairsWidget

    viewer = napari.Viewer(show=True, title="napari-medgen: lesion images with attention-derived masks")
    viewer.window._qt_window.resize(1500, 950)
    yy, xx = np.mgrid[:64, :64]
    paint = (((yy - 34) / 16.0) ** 2 + ((xx - 28) / 12.0) ** 2 < 1).astype(np.uint8)
    layout = viewer.add_labels(paint, name="painted layout")
    widget = LesionPairsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Lesion pairs", area="right")
    widget._layout.value = layout
    widget._n.value = 4
    widget._generate.clicked.emit()
    _wait(widget, "lesion pairs")
    images, masks = widget.last_layers
    layout.contour, masks.contour = 1, 1
    viewer.grid.enabled, viewer.grid.shape = False, (1, 1)
    viewer.reset_view()
    return _grab(viewer, out)


SCREENSHOTS = {
    "composition_widget.png": composition_screenshot,
    "lesion_pairs_widget.png": lesion_pairs_screenshot,
    "walkthrough_grid.png": walkthrough_screenshots,
    "napari_reader.png": reader_screenshot,
    "radiomics_widget.png": radiomics_widget_screenshot,
    "tumour_shape_widget.png": tumour_shape_widget_screenshot,
    "generate_from_labels_widget.png": generate_from_labels_screenshot,
    "paired_generation_widget.png": paired_generation_screenshot,
    "tumour_synthesis_widget.png": tumour_synthesis_screenshot,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with brain1_image/label.nrrd")
    parser.add_argument("--out-dir", type=Path, default=DOCS / "images")
    parser.add_argument("--only", choices=sorted(SCREENSHOTS), help="make just this screenshot")
    args = parser.parse_args()
    for name, make in SCREENSHOTS.items():
        if args.only and name != args.only:
            continue
        print(f"wrote {make(args.out_dir / name, args.data)}")


if __name__ == "__main__":
    main()
