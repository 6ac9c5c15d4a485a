"""Training configuration: a YAML file becomes a typed `TrainConfig`.

Every key is checked: an unknown or mistyped key raises `ConfigError` naming it (with a
suggestion), because a silently ignored option is the most expensive kind of training bug. The
task-specific ``data:`` and ``model:`` sections are parsed by the task into its own dataclasses
with `parse_section`, so they are checked the same way.

Overrides (from the CLI or a GUI) use dotted keys: ``{"max_steps": 10, "data.root": "x"}`` or the
strings ``["max_steps=10", "data.root=x"]`` (values are read as YAML scalars).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from napari_medgen.errors import ConfigError

T = TypeVar("T")

MIXED_PRECISION = ("no", "fp16", "bf16", "auto")
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """Options shared by every model; ``data`` and ``model`` are parsed by the task."""

    seed: int = 0
    max_steps: int = 1000  # optimizer updates (each uses batch_size * grad_accum * processes samples)
    batch_size: int = 4  # per process
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = 1.0  # max gradient norm; null disables clipping
    mixed_precision: str = "no"  # no | fp16 | bf16 | auto (bf16 on a CUDA GPU that supports it)
    ema_decay: float = 0.0  # 0 disables the exponential moving average of the exported weights
    ema_warmup_steps: int = 0  # decay ramps linearly from 0 to ema_decay over these updates
    lr_scheduler: str = "constant"  # constant | cosine | linear (after warmup_steps of linear warm-up)
    warmup_steps: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1  # loss_log.jsonl line every N steps
    val_every: int = 0  # validation every N steps (0: only at the end)
    num_workers: int = 0
    cpu: bool = False  # force CPU even when a GPU is present
    out_dir: str = "outputs/train"
    resume: bool | str = False  # true / "latest": newest checkpoint in out_dir; or a checkpoint folder
    overwrite: bool = False  # start afresh in an out_dir that already holds a run (deletes it)
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)  # model-card sections: licence, intended_use, ...

    def __post_init__(self) -> None:
        checks = [
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0 or null"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1) (0 disables EMA)"),
            (self.ema_warmup_steps >= 0, "ema_warmup_steps must be >= 0"),
            (self.lr_scheduler in LR_SCHEDULES, f"lr_scheduler must be one of {LR_SCHEDULES}"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.val_every >= 0, "val_every must be >= 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (bool(str(self.out_dir).strip()), "out_dir must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"Invalid training config: {message}.")
        if isinstance(self.resume, str) and self.resume.strip().lower() in ("", "false", "no"):
            self.resume = False
        if isinstance(self.resume, str) and self.resume.strip().lower() in ("true", "yes", "latest"):
            self.resume = True

    def as_dict(self) -> dict[str, Any]:
        """Plain-data copy (for trainer_state.json and model cards)."""
        return dataclasses.asdict(self)


# ---- generic typed parsing ----------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert ``value`` against a (simple) type annotation; `ConfigError` names ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"Config key '{key}' has value {value!r}; expected {_type_name(annotation)}.")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"Config key '{key}' must be one of {list(args)}; got {value!r}.")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"Config key '{key}' must be a list; got {value!r}.")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"Config key '{key}' needs {len(args)} values; got {len(value)}.")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key '{key}' must be a mapping (a YAML section); got {value!r}.")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"Config key '{key}' must be true or false; got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"Config key '{key}' must be an integer; got {value!r}.")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"Config key '{key}' must be a number; got {value!r}.")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"Config key '{key}' must be a string; got {value!r}.")
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ConfigError(f"Config key '{key}' has value {value!r}; expected {_type_name(annotation)}.")


def _unknown_key_error(key: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"Unknown config key '{key}' in {where}.{hint} Valid keys: {', '.join(valid)}.")


def parse_section(cls: type[T], values: Mapping[str, Any] | None, prefix: str, where: str = "the config") -> T:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _unknown_key_error(dotted, names, where)
        kwargs[key] = _coerce(value, hints[key], dotted)
    missing = [
        f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        dotted = ", ".join(f"'{prefix}.{m}'" if prefix else f"'{m}'" for m in missing)
        raise ConfigError(f"Missing required config key(s) {dotted} in {where}.")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Invalid '{prefix or 'top-level'}' section in {where}: {error}") from error


# ---- overrides and loading ----------------------------------------------------------------------
def _parse_override_strings(items: Iterable[str]) -> dict[str, Any]:
    import yaml

    parsed: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key=value (e.g. max_steps=100 or data.root=path).")
        key, raw = item.split("=", 1)
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"Override {item!r}: the value is not valid YAML ({error}).") from error
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """A copy of ``raw`` with dotted-key overrides applied (nested sections are created as needed)."""
    if not overrides:
        return raw
    items = dict(overrides) if isinstance(overrides, Mapping) else _parse_override_strings(overrides)
    result = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    for dotted, value in items.items():
        parts = [p for p in str(dotted).split(".") if p]
        if not parts:
            raise ConfigError(f"Empty override key {dotted!r}.")
        if parts[0] not in top:
            raise _unknown_key_error(parts[0], top, "the overrides")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"Override '{dotted}': '{part}' is not a section.")
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (`ConfigError` for a missing or malformed file)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass the YAML file with --config.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"Config file {path} is not valid YAML: {error}") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must contain a mapping of keys (key: value); got {type(raw).__name__}.")
    return raw


def load_config(
    path: str | Path | None, overrides: Mapping[str, Any] | Iterable[str] | None = None
) -> TrainConfig:
    """Read a YAML file (or only overrides when ``path`` is None) into a validated `TrainConfig`."""
    raw = read_config_file(path) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    return parse_section(TrainConfig, raw, "", where=str(path) if path is not None else "the overrides")
