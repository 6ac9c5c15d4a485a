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


def test_torch_devices_and_malformed_names() -> None:
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InvalidInputError, match="Unknown device 'cuda:x'"):
        select_device("cuda:x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
@pytest.mark.cuda
def test_a_cuda_index_beyond_the_machine_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="CUDA device"):
        select_device(f"cuda:{torch.cuda.device_count()}")


def test_autocast_is_a_no_op_off_cuda() -> None:
    from napari_medgen.core.device import autocast

    layer = torch.nn.Linear(3, 2)
    with autocast(torch.device("cpu")):
        out = layer(torch.ones(1, 3))
    assert out.dtype is torch.float32


def test_cpu_generator_gives_the_same_noise_whatever_the_target_device() -> None:
    from napari_medgen.core.device import cpu_generator

    a = torch.randn(4, generator=cpu_generator(7))
    b = torch.randn(4, generator=cpu_generator(7))
    assert cpu_generator(7).device.type == "cpu" and torch.equal(a, b)


def test_model_cache_is_per_device_and_checks_the_device_first(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from napari_medgen.hub import load_cached

    first = load_cached("seg2img-busi", expected_type="mask-diffusion", device="cpu")
    assert load_cached("seg2img-busi", expected_type="mask-diffusion", device=torch.device("cpu")) is first
    assert next(first.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        # the device is checked before the checkpoint is even looked up: the error names the device
        with pytest.raises(InvalidInputError, match="'cuda' was requested"):
            load_cached(tmp_path / "missing", expected_type="mask-diffusion", device="cuda")
        monkeypatch.setenv("MEDGEN_DEVICE", "cuda")
        with pytest.raises(InvalidInputError, match="'cuda' was requested"):
            load_cached("seg2img-busi", expected_type="mask-diffusion")
