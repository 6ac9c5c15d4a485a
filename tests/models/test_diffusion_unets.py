"""The two 2D diffusion networks: shapes, config contract, checkpoint round trips and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_medgen.errors import CheckpointError, InvalidInputError
from napari_medgen.hub import from_pretrained
from napari_medgen.models.diffusion_unet2d import same_contract
from napari_medgen.models.mask_code import encode_mask
from napari_medgen.models.mask_diffusion import MaskDiffusionUNet
from napari_medgen.models.paired_guider import PairedGuider

TINY = {"image_size": (16, 16), "block_out_channels": (8, 16), "norm_num_groups": 4, "num_train_timesteps": 100}


def _inputs(k: int, b: int = 2, size: tuple[int, int] = (16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((b, 1, *size), generator=g)
    labels = torch.randint(0, 2, (b, *size), generator=g)
    return x, encode_mask(labels, list(range(1, k + 1)))


def test_mask_diffusion_forward_shapes_and_timestep_forms() -> None:
    torch.manual_seed(0)
    model = MaskDiffusionUNet(class_values=(1, 2, 5), **TINY).eval()
    assert model.unet.config.in_channels == 4 and model.unet.config.out_channels == 1
    x, code = _inputs(3)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 10]), code)
        assert out.shape == x.shape and torch.isfinite(out).all()
        # a python int, a 0-d tensor and a (1,) tensor all mean "this t for every item"
        assert torch.allclose(model(x, 10, code), out)
        assert torch.allclose(model(x, torch.tensor(10), code), out)
        assert torch.allclose(model(x, torch.tensor([10]), code), out)
        # the mask code matters
        assert not torch.allclose(model(x, 10, -code), out)
    assert model.num_classes == 3 and model.class_values == [1, 2, 5]
    assert model.class_name(5) == "class 5" and model.image_size == (16, 16)
    assert model.config["trained_with_ablation"] is False


def test_guider_forward_shapes() -> None:
    torch.manual_seed(0)
    guider = PairedGuider(class_values=(1, 2), class_names=("a", "b"), **TINY).eval()
    assert guider.unet.config.in_channels == 3 and guider.unet.config.out_channels == 2
    y, code = _inputs(2)
    with torch.no_grad():
        out = guider(code, y, torch.tensor([5, 50]))
    assert out.shape == code.shape
    assert guider.class_name(2) == "b"


def test_training_scheduler_follows_config() -> None:
    model = MaskDiffusionUNet(class_values=(1,), beta_schedule="squaredcos_cap_v2", **TINY)
    sched = model.training_scheduler()
    assert sched.config.num_train_timesteps == 100
    assert sched.config.beta_schedule == "squaredcos_cap_v2"
    assert sched.config.prediction_type == "epsilon"


@pytest.mark.parametrize("cls", [MaskDiffusionUNet, PairedGuider])
def test_save_load_round_trip_identical_outputs(tmp_path: Path, cls: type) -> None:
    torch.manual_seed(1)
    kwargs = {"class_values": (1, 3), "class_names": ("lesion", "organ"), **TINY}
    if cls is MaskDiffusionUNet:
        kwargs["trained_with_ablation"] = True
    model = cls(**kwargs).eval()
    folder = model.save_pretrained(tmp_path / "ckpt")
    loaded = cls.from_pretrained(folder)
    assert type(loaded) is cls and loaded.config == model.config
    x, code = _inputs(2)
    t = torch.tensor([3, 77])
    with torch.no_grad():
        if cls is MaskDiffusionUNet:
            a, b = model(x, t, code), loaded(x, t, code)
        else:
            a, b = model(code, x, t), loaded(code, x, t)
    assert torch.equal(a, b)
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert saved["model_type"] == cls.model_type
    assert saved["config"]["class_names"] == ["lesion", "organ"]


def test_wrong_type_is_refused(tmp_path: Path) -> None:
    guider_dir = PairedGuider(class_values=(1,), **TINY).save_pretrained(tmp_path / "guider")
    image_dir = MaskDiffusionUNet(class_values=(1,), **TINY).save_pretrained(tmp_path / "image")
    with pytest.raises(CheckpointError, match="paired-guider"):
        from_pretrained(guider_dir, expected_type="mask-diffusion")
    with pytest.raises(CheckpointError, match="mask-diffusion"):
        PairedGuider.from_pretrained(image_dir)
    assert isinstance(from_pretrained(guider_dir), PairedGuider)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"image_size": (20, 20), "block_out_channels": (8, 16, 16, 16)}, "divisible by 8"),
        ({"image_size": (16,)}, "image_size"),
        ({"image_size": (4, 4), "block_out_channels": (8,)}, ">= 8"),
        ({"block_out_channels": (8, 18)}, "norm_num_groups"),
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"num_train_timesteps": 5}, "num_train_timesteps"),
        ({"class_names": ("only one",)}, "class_names"),
        ({"class_values": (0, 1)}, "class_values"),
        ({"attention_levels": (True,)}, "attention_levels"),
        ({"normalization": "minmax"}, "normalization"),
    ],
)
@pytest.mark.parametrize("cls", [MaskDiffusionUNet, PairedGuider])
def test_invalid_configs_raise(cls: type, changes: dict, match: str) -> None:
    kwargs = {**TINY, "class_values": (1, 2), **changes}
    with pytest.raises(InvalidInputError, match=match):
        cls(**kwargs)


def test_same_contract() -> None:
    base = MaskDiffusionUNet(class_values=(1,), **TINY)
    same_contract(PairedGuider(class_values=(1,), block_out_channels=(8, 8), image_size=(16, 16),
                               norm_num_groups=4, num_train_timesteps=100), base, "pair")  # widths may differ
    others = [
        PairedGuider(class_values=(2,), **TINY),
        PairedGuider(class_values=(1,), **{**TINY, "image_size": (32, 32)}),
        PairedGuider(class_values=(1,), **{**TINY, "num_train_timesteps": 50}),
        PairedGuider(class_values=(1,), beta_schedule="scaled_linear", **TINY),
        PairedGuider(class_values=(1,), image_channels=2, **TINY),
    ]
    for other, key in zip(others, ("class_values", "image_size", "num_train_timesteps", "beta_schedule",
                                   "image_channels"), strict=True):
        with pytest.raises(InvalidInputError, match=key):
            same_contract(other, base, "pair")
