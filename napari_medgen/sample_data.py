"""Sample data that works offline: a synthetic tumour phantom and the MNI152 T1 template from nilearn.

The phantom is the project's "hello world" volume (CLI demo, tests, screenshots): it is made in code,
deterministically from a seed, with anisotropic spacing and a non-zero origin so that any code that
drops geometry shows it at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError

PHANTOM_SHAPE = (64, 96, 96)
PHANTOM_SPACING = (2.0, 2.0, 2.5)

TUMOUR_LABEL = 1
NECROSIS_LABEL = 2


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    field -= field.mean()
    return field / (field.std() + 1e-12)


def make_phantom(
    shape: tuple[int, int, int] = PHANTOM_SHAPE,
    spacing: tuple[float, float, float] = PHANTOM_SPACING,
    origin: tuple[float, float, float] | None = None,
    seed: int = 0,
    tumour_radius_mm: float = 18.0,
    noise: float = 0.02,
) -> tuple[Volume, LabelMap]:
    """A T1-like synthetic head with a glioma-like tumour: ``(image, labels)``.

    ``shape`` is (z, y, x); ``spacing``/``origin`` are SimpleITK (x, y, z). The head is built in
    millimetres (so anatomy stays round on anisotropic grids): scalp, skull, CSF, grey and white
    matter, two ventricles, a smooth bias field and Rician-like noise. The tumour is a lobulated
    sphere with an enhancing rim (label 1) around a necrotic core (label 2), placed in one
    hemisphere chosen by ``seed``. The same arguments always give the same voxels.
    """
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 8:
        raise InvalidInputError(f"Phantom shape must be 3 sizes >= 8 (z, y, x); got {shape}.")
    if tumour_radius_mm <= 0:
        raise InvalidInputError(f"tumour_radius_mm must be positive; got {tumour_radius_mm}.")
    sx, sy, sz = (float(s) for s in spacing)
    nz, ny, nx = shape
    if origin is None:
        origin = (-(nx - 1) * sx / 2.0 + 3.0, -(ny - 1) * sy / 2.0 - 7.0, -(nz - 1) * sz / 2.0 + 12.0)
    rng = np.random.default_rng(seed)

    # Physical coordinates (mm) relative to the grid centre, in array (z, y, x) order.
    z = (np.arange(nz) - (nz - 1) / 2.0) * sz
    y = (np.arange(ny) - (ny - 1) / 2.0) * sy
    x = (np.arange(nx) - (nx - 1) / 2.0) * sx
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    half = np.array([nx * sx, ny * sy, nz * sz]) / 2.0  # head half-extent per axis (x, y, z)

    def ellipsoid(cx: float, cy: float, cz: float, rx: float, ry: float, rz: float) -> np.ndarray:
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 + ((zz - cz) / rz) ** 2

    head = ellipsoid(0, 0, 0, 0.86 * half[0], 0.90 * half[1], 0.88 * half[2])
    wobble = 0.03 * _smooth_noise(rng, shape, sigma=6)
    image = np.zeros(shape, dtype=np.float64)
    image[head + wobble < 1.0] = 0.85  # scalp / fat
    image[head + wobble < 0.88] = 0.08  # skull
    image[head + wobble < 0.78] = 0.30  # CSF
    brain = head + wobble < 0.72
    image[brain] = 0.55  # grey matter
    folds = 0.10 * _smooth_noise(rng, shape, sigma=2.5)
    white = head + folds < 0.45
    image[white] = 0.78  # white matter
    image[brain & (np.abs(xx) < 0.6 * sx)] = 0.30  # interhemispheric fissure
    for side in (-1.0, 1.0):
        vent = ellipsoid(
            side * 0.09 * half[0],
            -0.05 * half[1],
            0.08 * half[2],
            0.07 * half[0],
            0.28 * half[1],
            0.14 * half[2],
        )
        image[vent < 1.0] = 0.22

    # Tumour: a lobulated sphere in one hemisphere, enhancing rim around a necrotic core.
    hemisphere = 1.0 if rng.random() < 0.5 else -1.0
    centre = np.array(
        [hemisphere * 0.32 * half[0], rng.uniform(-0.2, 0.2) * half[1], rng.uniform(-0.15, 0.25) * half[2]]
    )
    radius = min(float(tumour_radius_mm), 0.3 * float(half.min()))
    dist = np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2)
    lobes = 1.0 + 0.18 * _smooth_noise(rng, shape, sigma=max(2.0, radius / (2.0 * min(sx, sy, sz))))
    rel = dist / (radius * lobes)
    tumour = (rel < 1.0) & brain
    necrosis = (rel < 0.55) & brain
    oedema = (rel < 1.6) & brain & ~tumour
    image[oedema] = image[oedema] * 0.80 + 0.05
    image[tumour] = 0.95
    image[necrosis] = 0.35

    # Partial-volume blur (in mm), smooth bias field, Rician-like noise; then MR-like units.
    blur_mm = 1.2
    image = gaussian_filter(image, sigma=(blur_mm / sz, blur_mm / sy, blur_mm / sx))
    bias = 1.0 + 0.08 * _smooth_noise(rng, shape, sigma=12)
    image = image * bias
    real = image + noise * rng.standard_normal(shape)
    imag = noise * rng.standard_normal(shape)
    image = np.sqrt(real**2 + imag**2) * 1000.0

    labels = np.zeros(shape, dtype=np.uint8)
    labels[tumour] = TUMOUR_LABEL
    labels[necrosis] = NECROSIS_LABEL
    meta = {"description": "napari-medgen synthetic tumour phantom", "seed": int(seed), "modality": "MR"}
    vol = Volume(image.astype(np.float32), (sx, sy, sz), origin, metadata=meta)
    return vol, vol.as_labels(labels)


def mni152_t1_path() -> Path:
    """Path of the MNI152 2009a T1 template shipped inside the installed ``nilearn`` wheel (no network)."""
    from napari_medgen.core.atlas import atlas_file

    return atlas_file("t1")


def load_mni152_t1() -> Volume:
    """The MNI152 T1 template read through napari-medgen's IO, so its LPS geometry is exact."""
    from napari_medgen.core.io import read_volume

    return read_volume(mni152_t1_path())


# ---- npe2 sample-data commands -----------------------------------------------------------------------


def phantom_sample() -> list[tuple]:
    """napari sample: the synthetic phantom image with its tumour labels."""
    from napari_medgen.layers import volume_to_layer_data

    image, labels = make_phantom()
    return [
        volume_to_layer_data(image, name="phantom"),
        volume_to_layer_data(labels, name="phantom tumour labels"),
    ]


def mni152_sample() -> list[tuple]:
    """napari sample: MNI152 T1 brain template (image only; no anatomy labels are invented)."""
    from napari_medgen.layers import volume_to_layer_data

    return [volume_to_layer_data(load_mni152_t1(), name="MNI152 T1")]
