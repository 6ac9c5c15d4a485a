"""Every pipeline on CUDA (skipped without a GPU; `benchmarks/gpu_check.py` runs these on a GPU machine).

The contract: models load onto the GPU, inputs go there, results come back as CPU arrays on the input grid, the
same seed on the same device gives the same output, and CUDA agrees with the CPU up to bf16 autocast of the network
passes (noise is drawn on the CPU, so both devices start from the same draws).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.core.volume import LabelMap
from napari_medgen.sample_data import make_phantom

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(1e-12, b.max() - b.min()))


def test_shape_generation_on_cuda() -> None:
    from napari_medgen.pipelines.shape_generation import generate_shape

    request = {"VoxelVolume": 4000.0, "Sphericity": 0.8}
    gpu = generate_shape(request, seed=3, candidates=4, device="cuda")
    again = generate_shape(request, seed=3, candidates=4, device="cuda")
    cpu = generate_shape(request, seed=3, candidates=4, device="cpu")
    assert np.array_equal(gpu.mask.array, again.mask.array)
    n_gpu, n_cpu = np.count_nonzero(gpu.mask.array), np.count_nonzero(cpu.mask.array)
    assert abs(n_gpu - n_cpu) <= 0.05 * n_cpu  # same request, same noise: the same tumour up to float rounding
    if gpu.mask.shape == cpu.mask.shape:
        assert _dice(gpu.mask.array, cpu.mask.array) >= 0.95


def test_slice_generation_on_cuda() -> None:
    from napari_medgen.pipelines.slice_generation import generate_from_labels

    lab = np.zeros((4, 40, 40), np.uint8)
    lab[:, 4:36, 4:36] = 5
    lab[:, 12:28, 12:28] = 2
    labels = LabelMap(lab, spacing=(1.0, 1.0, 2.0))
    gpu = generate_from_labels(labels, steps=5, seed=1, device="cuda").image
    again = generate_from_labels(labels, steps=5, seed=1, device="cuda").image
    cpu = generate_from_labels(labels, steps=5, seed=1, device="cpu").image
    assert isinstance(gpu.array, np.ndarray) and gpu.same_grid(labels)
    assert np.array_equal(gpu.array, again.array)
    assert _relative(gpu.array, cpu.array) <= 0.1


def test_paired_generation_on_cuda() -> None:
    from napari_medgen.pipelines.paired_generation import generate_pairs

    gpu = generate_pairs(2, steps=5, seed=2, device="cuda")
    again = generate_pairs(2, steps=5, seed=2, device="cuda")
    assert all(isinstance(v.array, np.ndarray) for v in gpu.images)
    assert all(np.array_equal(a.array, b.array) for a, b in zip(gpu.images, again.images, strict=True))


@pytest.mark.parametrize("operation", ["synthesize", "remove"])
def test_tumour_editing_on_cuda(operation: str) -> None:
    from napari_medgen.pipelines import tumor_synthesis as ts

    image, labels = make_phantom(shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), tumour_radius_mm=7.0)
    core = labels.as_labels((np.asarray(labels.array) > 0).astype(np.uint8))

    def run(device: str):  # noqa: ANN202
        if operation == "synthesize":
            return ts.synthesize(image, shape=core, steps=3, seed=4, device=device)
        return ts.remove(image, core, steps=3, seed=5, device=device)

    gpu, again, cpu = run("cuda"), run("cuda"), run("cpu")
    assert gpu.image.same_grid(image) and gpu.image.array.dtype == image.array.dtype
    assert np.array_equal(gpu.image.array, again.image.array)
    region = np.asarray(core.array) > 0
    assert _relative(gpu.image.array[region], cpu.image.array[region]) <= 0.1
    untouched = np.asarray(cpu.image.array) == np.asarray(image.array)  # beyond the region and its blend band
    assert np.array_equal(np.asarray(gpu.image.array)[untouched], np.asarray(image.array)[untouched])
