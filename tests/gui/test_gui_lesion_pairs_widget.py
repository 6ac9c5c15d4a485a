"""The "Lesion pairs (attention masks)" dock widget in a real viewer: a painted labels layer as layout -> an RGB
image stack and a mask stack; a wrong-size layout is reported and adds nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_medgen.models.token_diffusion import TokenDiffusionModel

    torch.manual_seed(0)
    model = TokenDiffusionModel(image_size=(32, 32), image_channels=3, block_out_channels=(16, 16, 16, 16),
                                cross_attention_dim=16, attention_heads=2)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny_token_gui") / "model")


def test_painted_layout_gives_image_and_mask_stacks(make_napari_viewer, qtbot, tiny_token: Path) -> None:
    from napari_medgen.widgets.lesion_pairs import LesionPairsWidget

    viewer = make_napari_viewer()
    paint = np.zeros((32, 32), np.uint8)
    paint[8:20, 6:18] = 1
    layout = viewer.add_labels(paint.copy(), name="layout")
    widget = LesionPairsWidget(viewer, model=str(tiny_token))
    viewer.window.add_dock_widget(widget, name="Lesion pairs")
    widget._layout.value = layout
    widget._n.value = 2
    widget._steps.value = 3
    n_layers = len(viewer.layers)
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget.last_layers is not None or widget._status.value.startswith("error"),
                    timeout=120000)
    assert widget.last_layers is not None, widget._status.value
    images, masks = widget.last_layers
    assert len(viewer.layers) == n_layers + 2
    assert images.rgb and images.data.shape == (2, 32, 32, 3)
    assert masks.data.shape == (2, 32, 32) and set(np.unique(masks.data)) <= {0, 1}
    assert "mean IoU with the layout" in widget._status.value
    assert np.array_equal(layout.data, paint)  # the painted layer is not modified
    assert images.metadata["guidance"] is True


def test_wrong_size_layout_is_reported(make_napari_viewer, qtbot, tiny_token: Path) -> None:
    from napari_medgen.widgets.lesion_pairs import LesionPairsWidget

    viewer = make_napari_viewer()
    paint = np.zeros((48, 48), np.uint8)
    paint[8:20, 6:18] = 1
    layer = viewer.add_labels(paint, name="layout")
    widget = LesionPairsWidget(viewer, model=str(tiny_token))
    viewer.window.add_dock_widget(widget, name="Lesion pairs")
    widget._layout.value = layer
    widget._steps.value = 2
    n_layers = len(viewer.layers)
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget._status.value.startswith("error"), timeout=60000)
    assert "48x48 but the model makes 32x32" in widget._status.value
    assert len(viewer.layers) == n_layers and widget.last_layers is None
