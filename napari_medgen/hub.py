"""Checkpoints on disk: ``save_pretrained`` / ``from_pretrained`` and the bundled-weights registry.

A checkpoint is a folder with three files:

* ``model.safetensors`` -- the state dict (never a pickle, so loading cannot run code);
* ``config.json`` -- ``{"model_type", "medgen_version", "config": {constructor kwargs}, "extra": {...}}``;
  ``extra`` carries JSON statistics a model needs at inference time (e.g. feature normalisers);
* ``README.md`` -- the model card (data, training, hardware, metrics, licence).

A model class opts in with `HubModelMixin` (a ``model_type`` name and a ``config`` dict of its
constructor arguments, so ``cls(**config)`` rebuilds it) and `register_model`. ``from_pretrained``
looks a name up in the bundled ``napari_medgen/weights/<name>/`` folders first, then treats it as a
local folder. Nothing is ever downloaded.

This module imports torch lazily: the CLI and napari import it at start-up to list bundled models.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from napari_medgen.core.atomic import staged_outputs
from napari_medgen.errors import CheckpointError, InvalidInputError, MedGenError

if TYPE_CHECKING:
    import torch
    from torch import nn

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
_ALIASES_KEY = "medgen_aliases"
_TRAIN_HINT = (
    "Train one with `medgen train MODEL --config FILE.yaml` (it exports OUT_DIR/model/) or pass the folder "
    "of an existing checkpoint."
)

_REGISTRY: dict[str, type] = {}
M = TypeVar("M", bound=type)


class HubModelMixin:
    """What a model needs to be saved and rebuilt: a registered type name and its constructor kwargs.

    Subclasses set ``self.config = {...}`` (JSON-serialisable constructor arguments) in ``__init__``.
    ``from_pretrained`` fills ``hub_extra`` (the checkpoint's ``extra`` statistics) and ``hub_path``.
    """

    model_type: ClassVar[str] = ""
    config: dict[str, Any]
    hub_extra: dict[str, Any]
    hub_path: Path | None

    def save_pretrained(
        self, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None,
        card: str | dict[str, Any] | None = None,
    ) -> Path:
        """Write this model as a checkpoint folder (see `save_pretrained`)."""
        return save_pretrained(self, directory, extra=extra, card=card)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], *, device: Any = None) -> Any:
        """Load a checkpoint that must be of this class's ``model_type``."""
        return from_pretrained(name_or_path, expected_type=cls.model_type, device=device)


def register_model(model_type: str) -> Callable[[M], M]:
    """Class decorator: make ``model_type`` loadable by `from_pretrained`."""
    if not model_type or not model_type.replace("_", "").replace("-", "").isalnum():
        raise InvalidInputError(f"model_type must be a short identifier (letters, digits, _ or -); got {model_type!r}.")

    def decorate(cls: M) -> M:
        existing = _REGISTRY.get(model_type)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise InvalidInputError(
                f"model_type {model_type!r} is already registered by {existing.__module__}.{existing.__qualname__}."
            )
        cls.model_type = model_type
        _REGISTRY[model_type] = cls
        return cls

    return decorate


def registered_models() -> dict[str, type]:
    """Every known model type (importing the modules of `napari_medgen.models` registers them)."""
    _import_model_modules()
    return dict(sorted(_REGISTRY.items()))


def _import_model_modules() -> None:
    import napari_medgen.models as models_pkg

    for info in pkgutil.iter_modules(models_pkg.__path__):
        importlib.import_module(f"{models_pkg.__name__}.{info.name}")


def _model_class(model_type: str) -> type:
    if model_type not in _REGISTRY:
        _import_model_modules()
    try:
        return _REGISTRY[model_type]
    except KeyError:
        from napari_medgen import __version__

        raise CheckpointError(
            f"This checkpoint is a {model_type!r} model, which napari-medgen {__version__} does not know "
            f"(known: {', '.join(sorted(_REGISTRY)) or 'none'}). Upgrade napari-medgen or use another checkpoint."
        ) from None


# ---- bundled registry ---------------------------------------------------------------------------
def bundled_weights_dir() -> Path:
    """The folder that holds bundled checkpoints (one sub-folder per name)."""
    from napari_medgen.weights import WEIGHTS_DIR

    return WEIGHTS_DIR


def list_bundled() -> list[str]:
    """Names of the bundled checkpoints (sub-folders of ``weights/`` that hold a ``config.json``)."""
    root = bundled_weights_dir()
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and (p / CONFIG_FILE).is_file()
    )


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder for a bundled name or a local path; `CheckpointError` when there is none."""
    text = os.fspath(name_or_path)
    if not text.strip():
        raise CheckpointError(f"No checkpoint given. {_TRAIN_HINT}")
    if "/" not in text and "\\" not in text and text in list_bundled():
        return bundled_weights_dir() / text
    path = Path(text).expanduser()
    if path.is_file() and path.name in (MODEL_FILE, CONFIG_FILE, CARD_FILE):
        path = path.parent
    if not path.is_dir():
        bundled = ", ".join(list_bundled()) or "none"
        raise CheckpointError(
            f"No checkpoint {text!r}: it is neither a bundled model (bundled: {bundled}) nor an existing folder. "
            f"{_TRAIN_HINT}"
        )
    return path


def read_checkpoint_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``config.json`` of a checkpoint (model type, constructor config, extra statistics)."""
    folder = resolve_checkpoint(name_or_path)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: it has no {CONFIG_FILE}. {_TRAIN_HINT}")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{config_path} is not valid JSON ({error}); the checkpoint is corrupt. Re-export or re-train it."
        ) from error
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str) \
            or not isinstance(data.get("config", {}), dict) or not isinstance(data.get("extra", {}), dict):
        raise CheckpointError(
            f"{config_path} is not a napari-medgen model config (it needs a string 'model_type' and a 'config' "
            "object). Was this folder written by save_pretrained / `medgen train`?"
        )
    data.setdefault("config", {})
    data.setdefault("extra", {})
    return data


# ---- saving -------------------------------------------------------------------------------------
def _state_dict_for_saving(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous, non-aliasing tensors plus ``{alias: kept_name}`` for tied (shared) weights."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple[Any, ...], str] = {}
    used_storages: set[int] = set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        view_key = (
            t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype,
        )
        if t.numel() and view_key in seen_views:
            aliases[name] = seen_views[view_key]
            continue
        seen_views[view_key] = name
        cpu = t.to("cpu").contiguous()
        ptr = cpu.untyped_storage().data_ptr()
        if cpu.numel() and ptr in used_storages:
            cpu = cpu.clone()
            ptr = cpu.untyped_storage().data_ptr()
        used_storages.add(ptr)
        tensors[name] = cpu
    return tensors, aliases


def _json_ready(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"The model's {what} must be JSON-serialisable to be saved: {error}.") from error


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    extra: Mapping[str, Any] | None = None,
    card: str | Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint folder atomically (temp folder + rename); returns the folder.

    An existing checkpoint folder is replaced; any other non-empty folder is refused so that a
    mistyped path can never wipe user data.
    """
    from safetensors.torch import save_file

    from napari_medgen import __version__

    model_type = getattr(model, "model_type", "")
    if not model_type or model_type not in _REGISTRY or not isinstance(getattr(model, "config", None), dict):
        raise InvalidInputError(
            f"{type(model).__name__} cannot be saved: it needs HubModelMixin, a `config` dict of constructor "
            "arguments and @register_model('name')."
        )
    config_json = {
        "model_type": model_type,
        "medgen_version": __version__,
        "config": _json_ready(model.config, "config"),
        "extra": _json_ready(dict(extra or {}), "extra statistics"),
    }
    if card is None or isinstance(card, Mapping):
        card_text = render_model_card(dict(card or {}), config_json)
    elif isinstance(card, str):
        card_text = card if card.endswith("\n") else card + "\n"
    else:
        raise InvalidInputError(f"card must be markdown text or a dict of sections; got {type(card).__name__}.")
    tensors, aliases = _state_dict_for_saving(model)
    metadata = {"format": "pt", "medgen_model_type": model_type, _ALIASES_KEY: json.dumps(aliases)}

    def write(folder: Path) -> None:
        save_file(tensors, folder / MODEL_FILE, metadata=metadata)
        (folder / CONFIG_FILE).write_text(json.dumps(config_json, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        (folder / CARD_FILE).write_text(card_text, encoding="utf-8")

    return write_directory_atomically(Path(directory), write)


def _is_replaceable(directory: Path) -> bool:
    if not any(directory.iterdir()):
        return True
    return (directory / CONFIG_FILE).is_file() or (directory / MODEL_FILE).is_file()


def write_directory_atomically(directory: Path, write: Callable[[Path], None]) -> Path:
    """Fill a fresh temp folder beside ``directory`` with ``write`` and rename it into place.

    Readers see either the old complete folder or the new complete one, never a half-written mix;
    on any error the temp folder is removed and an existing folder is left untouched.
    """
    directory = directory.expanduser()
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"{directory} is a file; give a folder path for the checkpoint.")
    if directory.is_dir() and not _is_replaceable(directory):
        raise InvalidInputError(
            f"{directory} exists and is not a napari-medgen checkpoint; refusing to replace it. "
            "Choose a new or empty folder."
        )
    with staged_outputs([directory]) as (tmp,):
        tmp.mkdir()
        write(tmp)
    return directory


# ---- model card ---------------------------------------------------------------------------------
_CARD_SECTIONS: dict[str, str] = {
    "description": "",
    "data": "Training data",
    "training": "Training",
    "hardware": "Hardware",
    "metrics": "Metrics",
    "licence": "Licence",
    "intended_use": "Intended use",
    "limitations": "Limitations",
}


def _render_value(value: Any) -> str:
    if isinstance(value, Mapping):
        rows = ["| key | value |", "|---|---|"]
        for key, item in value.items():
            text = f"{item:.4g}" if isinstance(item, float) else json.dumps(item) if isinstance(item, list | dict) \
                else str(item)
            rows.append(f"| {key} | {text} |")
        return "\n".join(rows)
    if isinstance(value, list | tuple):
        return "\n".join(f"- {item}" for item in value)
    return str(value).strip()


def render_model_card(card: Mapping[str, Any], config_json: Mapping[str, Any]) -> str:
    """Markdown model card from a dict of sections (``title``, ``description``, ``data``, ``training``,
    ``hardware``, ``metrics``, ``licence``, ``intended_use``, ``limitations``); absent ones say so."""
    unknown = sorted(set(card) - set(_CARD_SECTIONS) - {"title"})
    if unknown:
        raise InvalidInputError(
            f"Unknown model-card section(s) {unknown}; use: title, {', '.join(_CARD_SECTIONS)}."
        )
    model_type = config_json.get("model_type", "?")
    lines = [f"# {card.get('title') or f'napari-medgen {model_type} model'}", ""]
    if card.get("description"):
        lines += [_render_value(card["description"]), ""]
    lines += [
        "## Model", "",
        f"- model type: `{model_type}`",
        f"- written by napari-medgen {config_json.get('medgen_version', '?')}",
        "- files: `model.safetensors` (weights), `config.json` (architecture + statistics), this card",
        "", "Architecture (`config.json` → `config`):", "", _render_value(config_json.get("config", {})), "",
    ]
    for key, heading in _CARD_SECTIONS.items():
        if not heading:
            continue
        value = card.get(key)
        body = _render_value(value) if value not in (None, "", {}, []) else "Not recorded."
        lines += [f"## {heading}", "", body, ""]
    return "\n".join(lines).rstrip() + "\n"


# ---- loading ------------------------------------------------------------------------------------
def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {MODEL_FILE} (weights are missing). {_TRAIN_HINT}")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensors[key] = handle.get_tensor(key)
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {error}); the checkpoint is "
            "corrupt or truncated. Re-export or re-train it."
        ) from error
    if not isinstance(aliases, dict):
        raise CheckpointError(f"{path} has malformed tied-weight metadata; re-export the checkpoint.")
    return tensors, aliases


def _check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], folder: Path, model_type: str
) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [
        f"{k} (checkpoint {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or wrong_shape):
        return
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong_shape:
        problems.append(f"shape mismatches {wrong_shape[:5]}{' ...' if len(wrong_shape) > 5 else ''}")
    raise CheckpointError(
        f"The weights in {folder} do not fit the {model_type!r} architecture in its config.json: "
        f"{'; '.join(problems)}. The folder mixes files from different models; re-export it."
    )


def from_pretrained(
    name_or_path: str | os.PathLike[str], *, expected_type: str | None = None, device: Any = None
) -> nn.Module:
    """Rebuild a model from a bundled name or a checkpoint folder, in eval mode.

    ``expected_type`` guards operations that need one kind of model. The returned module has
    ``hub_extra`` (the checkpoint's statistics) and ``hub_path`` attributes.
    """
    folder = resolve_checkpoint(name_or_path)
    config_json = read_checkpoint_config(folder)
    model_type = config_json["model_type"]
    if expected_type is not None and model_type != expected_type:
        raise CheckpointError(
            f"{folder} holds a {model_type!r} model; this operation needs a {expected_type!r} model. "
            f"Pass a {expected_type!r} checkpoint (bundled: {', '.join(list_bundled()) or 'none'})."
        )
    cls = _model_class(model_type)
    try:
        model = cls(**config_json["config"])
    except (TypeError, ValueError, MedGenError) as error:
        raise CheckpointError(
            f"The config.json in {folder} does not fit {cls.__name__} in this napari-medgen version ({error}). "
            "Re-export the checkpoint with this version or upgrade napari-medgen."
        ) from error
    tensors, aliases = _load_tensors(folder / MODEL_FILE)
    for alias, source in aliases.items():
        if source in tensors:
            tensors[alias] = tensors[source]
    _check_state_dict(model.state_dict(), tensors, folder, model_type)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    model.hub_extra = dict(config_json["extra"])
    model.hub_path = folder
    if device is not None:
        model.to(device)
    return model


_LOADED: dict[tuple[str, str, str], nn.Module] = {}
_LOADED_LOCK = threading.Lock()


def load_cached(name_or_path: str | os.PathLike[str], *, expected_type: str, device: Any = None) -> nn.Module:
    """`from_pretrained` on the resolved device (`core.device.select_device`: explicit > ``$MEDGEN_DEVICE`` >
    cuda > mps > cpu), kept in memory per folder, weight-file time and device (GUIs and batch jobs load the same
    checkpoint many times; a re-trained file is picked up; a GPU and a CPU copy can coexist). The device is checked
    before anything is read, so an unavailable one fails at once. Callers must not modify the model."""
    from napari_medgen.core.device import select_device

    target = select_device(device)
    folder = resolve_checkpoint(name_or_path)
    weights = folder / MODEL_FILE
    key = (f"{folder.resolve()}:{weights.stat().st_mtime_ns if weights.exists() else 0}", expected_type, str(target))
    with _LOADED_LOCK:
        if key not in _LOADED:
            model = from_pretrained(folder, expected_type=expected_type, device=target)
            if len(_LOADED) >= 8:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = model
        return _LOADED[key]
