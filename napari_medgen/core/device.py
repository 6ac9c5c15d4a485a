"""Which torch device and dtype an operation runs on.

Policy: CUDA when present, then Apple MPS, then CPU; ``MEDGEN_DEVICE`` (e.g. ``cpu``, ``cuda:1``,
``mps``) overrides the choice so users can pin a GPU or force CPU on a shared machine. Weights are
always kept in float32; reduced precision is only used for autocast on devices that run it fast
(bfloat16 on CUDA with bf16 support), so the same seed gives the same result on a given device.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari_medgen.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

ENV_DEVICE = "MEDGEN_DEVICE"
_VALID_KINDS = ("cpu", "cuda", "mps")


def _mps_available(torch_mod) -> bool:  # noqa: ANN001 - module object
    backend = getattr(torch_mod.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """Pick the device: explicit ``preferred`` > ``$MEDGEN_DEVICE`` > cuda > mps > cpu.

    An explicitly requested device that is not available raises `InvalidInputError` instead of
    silently falling back, because a user who asked for a GPU should know they are not getting one.
    """
    import torch

    if preferred is not None and not isinstance(preferred, str):
        preferred = str(preferred)
    request = preferred or os.environ.get(ENV_DEVICE) or ""
    request = request.strip().lower()
    if request and request != "auto":
        kind = request.split(":", 1)[0]
        unknown = (f"Unknown device '{request}'. Use one of: auto, cpu, cuda, cuda:N, mps "
                   f"(via --device or ${ENV_DEVICE}).")
        if kind not in _VALID_KINDS:
            raise InvalidInputError(unknown)
        try:
            device = torch.device(request)
        except RuntimeError as error:
            raise InvalidInputError(unknown) from error
        if kind == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError(
                f"Device '{request}' was requested but CUDA is not available on this machine; "
                f"use --device cpu or unset ${ENV_DEVICE}."
            )
        if kind == "mps" and not _mps_available(torch):
            raise InvalidInputError(
                f"Device 'mps' was requested but MPS is not available; use --device cpu or unset ${ENV_DEVICE}."
            )
        if kind == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"Device '{request}' was requested but this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}); pick one of those or unset ${ENV_DEVICE}."
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available(torch):
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class DtypePolicy:
    """Parameter dtype and the autocast dtype (None = run in float32) for a device."""

    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None

    @property
    def mixed_precision(self) -> str:
        """The matching ``accelerate`` mixed-precision flag."""
        import torch

        if self.autocast_dtype is torch.bfloat16:
            return "bf16"
        if self.autocast_dtype is torch.float16:
            return "fp16"
        return "no"


def dtype_policy(device: torch.device, allow_reduced_precision: bool = True) -> DtypePolicy:
    """Float32 weights everywhere; bfloat16 autocast on CUDA GPUs that support it."""
    import torch

    if allow_reduced_precision and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return DtypePolicy(torch.float32, torch.bfloat16)
    return DtypePolicy(torch.float32, None)


def describe_device(device: torch.device) -> str:
    """Human-readable device name for `medgen info` and model cards."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


#: what the widgets offer and the CLI's --device accepts besides ``cuda:N`` ("auto" = the policy above)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Reduced-precision autocast for network forward passes where `dtype_policy` allows it (bf16 on CUDA),
    a no-op elsewhere. Callers keep scheduler arithmetic, codebook distances and thresholds outside it."""
    import torch

    policy = dtype_policy(device)
    if policy.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=policy.autocast_dtype)


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU random generator: noise is drawn on the CPU and moved to the model's device, so a seed gives the same
    noise on every device (CUDA outputs then differ from CPU only by arithmetic, not by different draws)."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))
