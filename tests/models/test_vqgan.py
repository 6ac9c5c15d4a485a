"""The 3D VQ-GAN network: latent geometry, codebook quantisation, intensity contract, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medgen.errors import CheckpointError, DimensionError, InvalidInputError
from napari_medgen.hub import from_pretrained
from napari_medgen.models.segmenter import Segmenter
from napari_medgen.models.vqgan import VQGAN, network_normalizer, normalize_to_network

F4 = {"channels": [4, 8], "num_res_channels": 4, "downsample_parameters": [[2, 4, 1, 1], [2, 4, 1, 1]],
      "upsample_parameters": [[2, 4, 1, 1, 0], [2, 4, 1, 1, 0]]}


def tiny(**kwargs: object) -> VQGAN:
    torch.manual_seed(0)
    settings: dict[str, object] = {"channels": [8], "num_res_channels": 8, "num_embeddings": 16, "embedding_dim": 3}
    settings.update(kwargs)
    return VQGAN(**settings)  # type: ignore[arg-type]


def images(*spatial: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, *spatial, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize(("settings", "factor"), [({}, 2), (F4, 4)])
def test_shapes_for_factor_2_and_4(settings: dict[str, object], factor: int) -> None:
    model = tiny(**settings).eval()
    x = images(16, 8, 24)
    assert model.downsample_factor == factor
    assert model.latent_shape((16, 8, 24)) == (3, 16 // factor, 8 // factor, 24 // factor)
    reconstruction, quantization = model(x)
    assert reconstruction.shape == x.shape and quantization.ndim == 0 and float(quantization.detach()) >= 0
    z = model.encode(x)
    assert tuple(z.shape) == (2, *model.latent_shape((16, 8, 24)))
    assert model.decode(z).shape == x.shape


def test_downsample_by_4_in_one_level() -> None:
    model = tiny(downsample_parameters=[[4, 4, 1, 0]], upsample_parameters=[[4, 4, 1, 0, 0]])
    assert model.downsample_factor == 4 and model.encode(images(8, 8, 8)).shape == (2, 3, 2, 2, 2)


def test_quantised_latents_are_codebook_vectors() -> None:
    model = tiny().eval()
    x = images(8, 8, 8)
    z = model.encode(x)
    vectors = z.permute(0, 2, 3, 4, 1).reshape(-1, 3)
    codebook = model.codebook.detach()
    matches = (vectors[:, None, :] == codebook[None]).all(dim=-1)
    assert bool(matches.any(dim=1).all())  # every latent vector *is* a code, exactly
    q, indices = model.quantize(model.encode_continuous(x))
    assert torch.equal(q, z) and indices.shape == (2, 4, 4, 4)
    assert torch.equal(codebook[indices].permute(0, 4, 1, 2, 3), z)
    # decoding snaps off-codebook latents to the nearest code unless told not to
    nudged = z + 1e-3
    assert torch.equal(model.decode(nudged), model.decode(z))
    assert not torch.equal(model.decode(nudged, quantize=False), model.decode(z))
    # the codebook is not a trained parameter, and inference never moves it
    assert not model.codebook.requires_grad
    before = model.codebook.clone()
    model.train()
    model.encode(x)
    assert torch.equal(model.codebook, before)
    model(x)  # training forward: the EMA update moves it
    assert not torch.equal(model.codebook, before)


def test_input_checks() -> None:
    model = tiny(**F4)
    with pytest.raises(DimensionError, match="multiples of its downsample factor 4"):
        model.latent_shape((16, 16, 10))
    with pytest.raises(DimensionError, match="multiples"):
        model(images(16, 16, 6))
    with pytest.raises(DimensionError, match=r"\(batch, 1, z, y, x\)"):
        model(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(DimensionError, match="latents"):
        model.decode(torch.zeros(1, 5, 2, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": []}, "at least one"),
        ({"num_embeddings": 1}, "num_embeddings"),
        ({"decay": 1.0}, "decay"),
        ({"num_res_channels": [8, 8]}, "one per level"),
        ({"downsample_parameters": [[2, 4, 1]]}, r"\[stride, kernel, dilation, padding\]"),
        ({"upsample_parameters": [[4, 4, 1, 0, 0]]}, "must undo"),
        ({"downsample_parameters": [[2, 3, 1, 0]]}, "exactly"),
        ({"normalization": "zscore"}, "unbounded"),
        ({"normalization": "magic"}, "Unknown normalization"),
        ({"patch_size": [16, 16, 15]}, "multiple of the downsample factor 2"),
    ],
)
def test_config_errors_are_clear(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tiny(**kwargs)


def test_save_load_round_trip_and_latent_statistics(tmp_path: Path) -> None:
    model = tiny(**F4, patch_size=[16, 16, 16], normalization="percentile_nonzero").eval()
    with pytest.raises(CheckpointError, match="no latent statistics"):
        model.normalize_latent(torch.zeros(1, 3, 2, 2, 2))
    stats = {"latent_mean": [0.5, -1.0, 2.0], "latent_std": [2.0, 0.5, 1.0]}
    folder = model.save_pretrained(tmp_path / "vq", extra=stats, card={"licence": "test"})
    loaded = VQGAN.from_pretrained(folder)
    assert isinstance(loaded, VQGAN) and loaded.config == model.config and not loaded.training
    x = images(16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])
        assert torch.equal(loaded.encode(x), model.encode(x))
    z = loaded.encode(x)
    normalised = loaded.normalize_latent(z)
    assert torch.allclose(normalised[:, 1], (z[:, 1] + 1.0) / 0.5)
    assert torch.allclose(loaded.denormalize_latent(normalised), z, atol=1e-6)
    loaded.hub_extra = {"latent_mean": [0.0], "latent_std": [1.0]}
    with pytest.raises(CheckpointError, match="channels"):
        loaded.normalize_latent(z)


def test_wrong_model_type_is_refused(tmp_path: Path) -> None:
    segmenter = Segmenter(spatial_dims=3, channels=[4, 8], strides=[2], num_res_units=0)
    seg_folder = segmenter.save_pretrained(tmp_path / "seg")
    with pytest.raises(CheckpointError, match="'segmenter' model; this operation needs a 'vqgan'"):
        VQGAN.from_pretrained(seg_folder)
    vq_folder = tiny().save_pretrained(tmp_path / "vq")
    with pytest.raises(CheckpointError, match="needs a 'segmenter'"):
        from_pretrained(vq_folder, expected_type="segmenter")


def test_intensity_contract_round_trips_within_the_window() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, size=(6, 7, 8)).astype(np.float32)
    normalizer = network_normalizer(image, "percentile")
    net = normalize_to_network(image, "percentile")
    assert net.min() == -1.0 and net.max() == 1.0 and net.dtype == np.float32
    inside = (image > normalizer.low) & (image < normalizer.high)
    assert np.allclose(normalizer.inverse(net)[inside], image[inside], atol=1e-3)
    assert tiny().normalizer_for(image) == normalizer
    assert np.array_equal(normalize_to_network(np.full((2, 2, 2), 3.0), "percentile"), np.full((2, 2, 2), -1.0))
    ct = normalize_to_network(np.array([[[-1000.0, 40.0, 1000.0]]]), "ct:40,400")
    assert np.allclose(ct, [[[-1.0, 0.0, 1.0]]])
    assert np.array_equal(normalize_to_network(net, "none"), net)
    with pytest.raises(InvalidInputError, match="NaN"):
        normalize_to_network(np.array([[[np.nan, 1.0]]]), "percentile")
    with pytest.raises(InvalidInputError, match="unbounded"):
        normalize_to_network(image, "zscore")


def test_foreground_percentiles_ignore_a_minimum_valued_background() -> None:
    rng = np.random.default_rng(2)
    image = np.full((20, 20, 20), -3.5, dtype=np.float32)  # BRATS-like: background stored as the minimum
    brain = rng.normal(0.0, 1.0, size=(10, 10, 10)).astype(np.float32)
    brain[:2, :2, :2] = 6.0  # a small bright lesion
    image[5:15, 5:15, 5:15] = brain
    plain = normalize_to_network(image, "percentile")
    foreground = normalize_to_network(image, "percentile_foreground")
    lesion = (slice(5, 7),) * 3
    assert (plain[lesion] == 1.0).all() and (plain[5:15, 5:15, 5:15] == 1.0).mean() > 0.03  # clipped
    assert (foreground[lesion] == 1.0).all() and (foreground[5:15, 5:15, 5:15] == 1.0).mean() < 0.015
    assert (foreground[image == -3.5] == -1.0).all()
    normalizer = tiny(normalization="percentile_foreground").normalizer_for(image)
    assert normalizer.high == pytest.approx(np.percentile(brain, 99.9))
    with pytest.raises(InvalidInputError, match="constant"):
        network_normalizer(np.zeros((3, 3, 3)), "percentile_foreground")
