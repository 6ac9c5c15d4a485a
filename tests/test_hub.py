"""Checkpoints: safetensors + config.json + model card, bundled registry, and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from napari_medgen import hub
from napari_medgen.errors import CheckpointError, InvalidInputError
from napari_medgen.hub import HubModelMixin, from_pretrained, register_model, save_pretrained
from napari_medgen.models.segmenter import Segmenter


@register_model("test-tied")
class TiedModel(HubModelMixin, nn.Module):
    """Encoder/decoder sharing one weight matrix (the shared-tensor case safetensors refuses by default)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.config = {"width": width}
        self.encoder = nn.Linear(width, width, bias=False)
        self.decoder = nn.Linear(width, width, bias=False)
        self.decoder.weight = self.encoder.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def tiny_segmenter(**kwargs: object) -> Segmenter:
    torch.manual_seed(0)
    options = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    options.update(kwargs)
    return Segmenter(**options)  # type: ignore[arg-type]


def test_round_trip_restores_weights_config_extra_and_card(tmp_path: Path) -> None:
    model = tiny_segmenter()
    folder = save_pretrained(model, tmp_path / "seg", extra={"mean": 1.5, "classes": ["bg", "lesion"]},
                             card={"data": "synthetic discs", "metrics": {"dice": 0.91}, "licence": "CC0"})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "segmenter"
    assert config["config"]["channels"] == [4, 8]
    assert config["extra"] == {"mean": 1.5, "classes": ["bg", "lesion"]}
    card = (folder / "README.md").read_text(encoding="utf-8")
    for section in ("## Training data", "## Training", "## Hardware", "## Metrics", "## Licence"):
        assert section in card
    assert "synthetic discs" in card and "0.91" in card and "CC0" in card

    loaded = from_pretrained(folder, expected_type="segmenter")
    assert isinstance(loaded, Segmenter)
    assert not loaded.training
    assert loaded.hub_extra == {"mean": 1.5, "classes": ["bg", "lesion"]}
    assert loaded.hub_path == folder
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(1, 1, 16, 16)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert isinstance(Segmenter.from_pretrained(folder), Segmenter)


def test_card_text_is_written_verbatim(tmp_path: Path) -> None:
    folder = save_pretrained(tiny_segmenter(), tmp_path / "m", card="# My card\nTrained on nothing.")
    assert (folder / "README.md").read_text(encoding="utf-8") == "# My card\nTrained on nothing.\n"
    with pytest.raises(InvalidInputError, match="licnce"):
        save_pretrained(tiny_segmenter(), tmp_path / "m2", card={"licnce": "MIT"})


def test_tied_weights_are_saved_once_and_stay_tied(tmp_path: Path) -> None:
    model = TiedModel(4)
    folder = save_pretrained(model, tmp_path / "tied")
    loaded = from_pretrained(folder, expected_type="test-tied")
    assert torch.equal(loaded.decoder.weight, model.encoder.weight)
    assert torch.equal(loaded.encoder.weight, model.encoder.weight)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert len(list(handle.keys())) == 1


def test_save_replaces_a_checkpoint_atomically_and_refuses_other_folders(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpt"
    save_pretrained(tiny_segmenter(), target, extra={"version": 1})
    save_pretrained(tiny_segmenter(), target, extra={"version": 2})
    assert json.loads((target / "config.json").read_text(encoding="utf-8"))["extra"] == {"version": 2}

    import safetensors.torch

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_segmenter(), target, extra={"version": 3})
    monkeypatch.undo()
    assert json.loads((target / "config.json").read_text(encoding="utf-8"))["extra"] == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folders left behind

    user_folder = tmp_path / "documents"
    user_folder.mkdir()
    (user_folder / "thesis.txt").write_text("precious")
    with pytest.raises(InvalidInputError, match="not a napari-medgen checkpoint"):
        save_pretrained(tiny_segmenter(), user_folder)
    assert (user_folder / "thesis.txt").read_text(encoding="utf-8") == "precious"


def test_unregistered_models_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="register_model"):
        save_pretrained(nn.Linear(2, 2), tmp_path / "x")


def test_missing_checkpoint_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="medgen train"):
        from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(empty)


def test_missing_weights_file(tmp_path: Path) -> None:
    folder = save_pretrained(tiny_segmenter(), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        from_pretrained(folder)


def test_corrupt_files_are_reported(tmp_path: Path) -> None:
    folder = save_pretrained(tiny_segmenter(), tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(folder)


def test_wrong_model_type_names_both_types(tmp_path: Path) -> None:
    folder = save_pretrained(TiedModel(3), tmp_path / "tied")
    with pytest.raises(CheckpointError, match="holds a 'test-tied' model; this operation needs a 'segmenter'"):
        from_pretrained(folder, expected_type="segmenter")


def test_unknown_model_type(tmp_path: Path) -> None:
    folder = save_pretrained(TiedModel(3), tmp_path / "tied")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "from-the-future"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not know"):
        from_pretrained(folder)


def test_state_dict_mismatch_names_the_first_keys(tmp_path: Path) -> None:
    folder = save_pretrained(tiny_segmenter(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["config"]["channels"] = [4, 6]  # same keys, different shapes
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatches \[.*net\..*\(checkpoint"):
        from_pretrained(folder)
    config["config"]["num_res_units"] = 1  # different keys
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing keys"):
        from_pretrained(folder)
    config["config"]["bogus_option"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit Segmenter"):
        from_pretrained(folder)


def test_bundled_names_resolve_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = tmp_path / "weights"
    bundled.mkdir()
    save_pretrained(tiny_segmenter(), bundled / "seg-demo")
    (bundled / "not-a-model").mkdir()
    (bundled / "__pycache__").mkdir()
    monkeypatch.setattr(hub, "bundled_weights_dir", lambda: bundled)
    assert hub.list_bundled() == ["seg-demo"]
    monkeypatch.chdir(tmp_path)
    Path("seg-demo").mkdir()  # a same-named local folder does not shadow the bundled model
    model = from_pretrained("seg-demo", expected_type="segmenter")
    assert model.hub_path == bundled / "seg-demo"
    with pytest.raises(CheckpointError, match="bundled: seg-demo"):
        from_pretrained("seg-other")


def test_real_bundled_folder_lists_only_checkpoints() -> None:
    for name in hub.list_bundled():
        assert (hub.bundled_weights_dir() / name / "config.json").is_file()


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_pretrained(tiny_segmenter(), tmp_path / "m")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be used to read checkpoints")

    monkeypatch.setattr(torch, "load", forbidden)
    from_pretrained(folder)
