"""Shared fixtures: real data from ../shared/data when present, small synthetic volumes otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core.volume import LabelMap, Volume

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GUI tests need an X server (pytest-xvfb starts Xvfb); skip them with the fix when there is none."""
    if shutil.which("Xvfb") or os.environ.get("DISPLAY"):
        return
    skip = pytest.mark.skip(reason="no X server: install Xvfb (`make system-deps` as root) to run GUI tests")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("MEDGEN_TEST_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real-data folder; skips the test with a reason when it is absent."""
    root = _shared_data_dir()
    if root is None:
        pytest.skip("real data not found: set MEDGEN_TEST_DATA or place the shared/ folder beside the repo")
    return root


OBLIQUE_FLIPPED_DIRECTION = tuple(
    float(v)
    for v in (
        np.array(
            [
                [0.8660254037844387, -0.5, 0.0],
                [0.5, 0.8660254037844387, 0.0],
                [0.0, 0.0, 1.0],
            ]
        )
        @ np.diag([1.0, -1.0, 1.0])
        @ np.array(
            [
                [1.0, 0.0, 0.0],
                [0.0, 0.9396926207859084, -0.3420201433256687],
                [0.0, 0.3420201433256687, 0.9396926207859084],
            ]
        )
    ).reshape(-1)
)


@pytest.fixture
def oblique_volume() -> Volume:
    """Anisotropic float volume with an oblique, flipped (det = -1) direction matrix."""
    rng = np.random.default_rng(0)
    arr = rng.normal(100.0, 20.0, size=(7, 11, 13)).astype(np.float32)
    return Volume(arr, spacing=(0.7, 1.3, 2.9), origin=(-12.5, 33.25, 7.0), direction=OBLIQUE_FLIPPED_DIRECTION)


@pytest.fixture
def oblique_labels(oblique_volume: Volume) -> LabelMap:
    """Two-label map on the oblique grid."""
    arr = np.zeros(oblique_volume.shape, dtype=np.uint8)
    arr[2:5, 3:8, 4:9] = 1
    arr[3, 5, 6] = 2
    return oblique_volume.as_labels(arr)


# ---- tiny untrained 2D diffusion checkpoints (shapes, geometry, determinism, errors; no quality) --------
def _save_tiny(folder: Path, model_cls_name: str, **kwargs: object) -> Path:
    import torch

    from napari_medgen.models.mask_diffusion import MaskDiffusionUNet
    from napari_medgen.models.paired_guider import PairedGuider

    cls = {"mask": MaskDiffusionUNet, "guider": PairedGuider}[model_cls_name]
    torch.manual_seed(0)
    model = cls(image_size=(16, 16), block_out_channels=(8, 16), norm_num_groups=4, num_train_timesteps=100,
                **kwargs)
    return model.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_seg2img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mask-ablated mask-diffusion checkpoint: classes 1, 2 (tumour) and 5 (tissue), 16x16."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_seg2img") / "model", "mask", class_values=(1, 2, 5),
                      class_names=("core", "edema", "tissue"), trained_with_ablation=True)


@pytest.fixture(scope="session")
def tiny_seg2img_standard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same without mask ablation (dropping classes must be refused)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_seg2img_std") / "model", "mask", class_values=(1, 2, 5))


@pytest.fixture(scope="session")
def tiny_paired(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(guider, image model) for binary lesions (class 1), 16x16."""
    root = tmp_path_factory.mktemp("tiny_paired")
    return (_save_tiny(root / "guider", "guider", class_values=(1,)),
            _save_tiny(root / "image", "mask", class_values=(1,)))


def make_tiny_bridge_checkpoint(folder: Path, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """A small, untrained but self-consistent texture-bridge checkpoint (random weights, real contract).

    Its feature statistics come from texture features of phantom tumour crops, so every pipeline path
    (defaults, requested features, reference tumours) runs exactly as with trained weights.
    """
    import torch

    from napari_medgen.models.bridge_unet import BridgeUNet
    from napari_medgen.models.vqgan import VQGAN
    from napari_medgen.radiomics.conditioning import FeatureNormalizer
    from napari_medgen.radiomics.texture_condition import TEXTURE_SETTINGS, texture_feature_names, texture_features
    from napari_medgen.training.bridge_dataset import FILL_VALUE

    torch.manual_seed(0)
    vqgan = VQGAN(channels=[8], num_res_channels=8, num_embeddings=16, embedding_dim=2,
                  normalization="percentile_foreground", patch_size=[16, 16, 16])
    spec = {"config": vqgan.config, "latent_mean": [0.0, 0.0], "latent_std": [1.0, 1.0]}
    bridge = BridgeUNet(vqgan=spec, feature_names=texture_feature_names(), channels=(8, 16, 16),
                        attention_levels=(False, True, True), num_head_channels=8, norm_num_groups=4,
                        num_train_timesteps=100)
    bridge.vqgan.load_state_dict(vqgan.state_dict())
    with torch.no_grad():  # MONAI zero-initialises the output and residual convs: wake them so inputs reach the output
        for parameter in bridge.unet.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.normal_(0.0, 0.05)
    rng = np.random.default_rng(0)
    crops = rng.uniform(-1.0, 1.0, size=(6, 16, 16, 16))
    masks = np.zeros(crops.shape, dtype=bool)
    for i in range(6):
        r = 3 + i % 3
        masks[i, 8 - r:8 + r, 8 - r:8 + r, 8 - r:8 + r] = True
        crops[i][masks[i]] = np.clip(crops[i][masks[i]] * 0.3 + 0.1 * i, -1, 1)
    values = texture_features(crops, masks)
    names = texture_feature_names()
    normalizer = FeatureNormalizer.fit(names, values)
    extra = {
        "feature_normalizer": normalizer.to_dict(),
        "default_features": dict(zip(names, np.median(values, axis=0).tolist(), strict=True)),
        "feature_ranges": {n: [float(lo), float(hi)] for n, lo, hi in
                           zip(names, values.min(axis=0), values.max(axis=0), strict=True)},
        "texture_settings": dict(TEXTURE_SETTINGS),
        "fill_value": FILL_VALUE,
        "patch_size": [16, 16, 16],
        "spacing_mm": list(spacing_mm),
    }
    return bridge.save_pretrained(folder, extra=extra, card={"title": "tiny test bridge"})


@pytest.fixture(scope="session")
def tiny_bridge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny texture-bridge checkpoint (see `make_tiny_bridge_checkpoint`)."""
    return make_tiny_bridge_checkpoint(tmp_path_factory.mktemp("tiny-bridge") / "model")


@pytest.fixture
def brain_phantom() -> tuple[Volume, LabelMap]:
    """A 1 mm isotropic 48^3 phantom head with a tumour (labels 1 rim, 2 core), axis-aligned."""
    from napari_medgen.sample_data import make_phantom

    return make_phantom(shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), tumour_radius_mm=7.0)


def brats_phantom(shape: tuple[int, int, int] = (48, 48, 48)) -> tuple[Volume, LabelMap]:
    """The phantom head with its tumour relabelled the BraTS way: 1 necrotic core, 4 enhancing rim, 2 edema shell."""
    from scipy import ndimage

    from napari_medgen.sample_data import make_phantom

    image, labels = make_phantom(shape=shape, spacing=(1.0, 1.0, 1.0), tumour_radius_mm=7.0)
    arr = np.asarray(labels.array)
    brats = np.select([arr == 2, arr == 1], [1, 4], 0).astype(np.uint8)
    shell = ndimage.binary_dilation(arr > 0, iterations=3) & (arr == 0)
    brats[shell] = 2
    return image, image.as_labels(brats)


def make_tiny_editor_checkpoint(folder: Path) -> Path:
    """A tiny, untrained brain-editor checkpoint (Inpainter) with glioma appearance fitted on the BraTS phantom."""
    import torch

    from napari_medgen.core.inpainting import default_brain_mask
    from napari_medgen.models.inpainter import Inpainter, brain_range
    from napari_medgen.models.tumour_appearance import fit_appearance

    image, labels = brats_phantom()
    arr = np.asarray(image.array, dtype=np.float32)
    tumour = np.asarray(labels.array) > 0
    low, high = brain_range(arr, tumour, default_brain_mask(arr, tumour))
    appearance = fit_appearance([((arr - low) / (high - low), np.asarray(labels.array), (1.0, 1.0, 1.0))])
    torch.manual_seed(0)
    model = Inpainter(channels=(4, 8), crop_size=16, work_mm=3.0)
    return model.save_pretrained(folder, extra={"appearance": {"T1c": appearance}})


@pytest.fixture(scope="session")
def tiny_editor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny brain-editor checkpoint (see `make_tiny_editor_checkpoint`)."""
    return make_tiny_editor_checkpoint(tmp_path_factory.mktemp("tiny-editor") / "model")
