"""Device policy: explicit choice and MEDGEN_DEVICE override, with clear errors."""

from __future__ import annotations

import pytest
import torch

from napari_medgen.core.device import describe_device, dtype_policy, select_device
from napari_medgen.errors import InvalidInputError


def test_env_override_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGEN_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    monkeypatch.delenv("MEDGEN_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type in (expected, "mps")


def test_unknown_or_unavailable_device_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match="Unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            select_device("cuda:0")


def test_cpu_policy_is_full_precision() -> None:
    policy = dtype_policy(torch.device("cpu"))
    assert policy.param_dtype is torch.float32
    assert policy.autocast_dtype is None
    assert policy.mixed_precision == "no"
    assert describe_device(torch.device("cpu")).startswith("cpu")
