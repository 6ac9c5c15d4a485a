"""2D lesion image / mask / attribute triples for the token-conditioned diffusion model (issue 18).

Two layouts are read in place (nothing is copied):

* ``ph2``  -- ``images/ID.jpg``, ``lesion_masks/ID_lesion.png`` and ``ph2_labels.csv`` (column
  ``clinical_diagnosis``: common_nevus / atypical_nevus / melanoma), RGB dermoscopy;
* ``busi`` -- ``benign/X.png`` + ``benign/X_mask*.png`` and the same under ``malignant/`` (grey
  ultrasound; several mask files of one image are merged; ``normal/`` has no lesion and is skipped).

The attribute of a case (the PH2 diagnosis, the BUSI folder) becomes the attribute token.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medgen.errors import InvalidInputError

LAYOUTS = ("ph2", "busi")


@dataclass(frozen=True)
class LesionCase:
    """One image, its lesion mask file(s) and its attribute (class name)."""

    case_id: str
    image: Path
    masks: tuple[Path, ...]
    attribute: str


def find_ph2(root: Path) -> list[LesionCase]:
    labels = root / "ph2_labels.csv"
    if not labels.is_file():
        raise InvalidInputError(f"{root} has no ph2_labels.csv; is data.root the PH2 folder?")
    with open(labels, encoding="utf-8") as handle:
        diagnosis = {row["image_id"]: row["clinical_diagnosis"] for row in csv.DictReader(handle)}
    cases = []
    for image in sorted((root / "images").glob("*.jpg")):
        mask = root / "lesion_masks" / f"{image.stem}_lesion.png"
        if mask.is_file() and image.stem in diagnosis:
            cases.append(LesionCase(image.stem, image, (mask,), diagnosis[image.stem]))
    return cases


def find_busi(root: Path) -> list[LesionCase]:
    cases = []
    for folder in ("benign", "malignant"):
        for image in sorted((root / folder).glob("*.png")):
            if "_mask" in image.stem:
                continue
            masks = tuple(sorted(image.parent.glob(f"{image.stem}_mask*.png")))
            if masks:
                cases.append(LesionCase(f"{folder}/{image.stem}", image, masks, folder))
    return cases


def find_cases(root: str | Path, layout: str) -> list[LesionCase]:
    """Every (image, mask, attribute) case of a PH2 or BUSI folder; clear errors when there are none."""
    if layout not in LAYOUTS:
        raise InvalidInputError(f"data.layout must be one of {LAYOUTS}; got {layout!r}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InvalidInputError(f"Data folder {path} does not exist; set data.root.")
    cases = find_ph2(path) if layout == "ph2" else find_busi(path)
    if not cases:
        raise InvalidInputError(f"No {layout} image/mask pairs under {path}.")
    return cases


def load_case(case: LesionCase, size: tuple[int, int], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (C, H, W) float32 in [-1, 1], mask (H, W) float32 {0, 1}) resized to ``size``."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    with Image.open(case.image) as im:
        image = np.asarray(im.convert(mode).resize((size[1], size[0]), Image.BILINEAR, reducing_gap=2.0),
                           dtype=np.float32)
    mask = np.zeros(size, dtype=np.float32)
    for path in case.masks:
        with Image.open(path) as m:
            full = np.asarray(m.convert("L"), dtype=np.float32) / 255.0
        small = np.asarray(Image.fromarray((full > 0.5).astype(np.float32)).resize((size[1], size[0]), Image.BOX))
        mask = np.maximum(mask, (small >= 0.5).astype(np.float32))
    image = image / 127.5 - 1.0
    image = image.transpose(2, 0, 1) if image.ndim == 3 else image[None]
    return np.ascontiguousarray(image, dtype=np.float32), mask


class LesionTokenDataset:
    """Cached, resized triples; ``get_item`` flips at random (seeded by the trainer)."""

    def __init__(self, cases: list[LesionCase], attributes: list[str], size: tuple[int, int], channels: int,
                 samples_per_epoch: int = 512, flip: bool = True) -> None:
        if not cases:
            raise InvalidInputError("The training split has no cases.")
        loaded = [load_case(c, size, channels) for c in cases]
        self.images = np.stack([im for im, _ in loaded])
        self.masks = np.stack([m for _, m in loaded])
        self.attributes = np.array([attributes.index(c.attribute) if c.attribute in attributes else -1
                                    for c in cases], dtype=np.int64)
        self.samples_per_epoch = int(samples_per_epoch)
        self.flip = flip

    def __len__(self) -> int:
        return self.samples_per_epoch

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        i = int(rng.integers(len(self.images)))
        image, mask = self.images[i], self.masks[i]
        if self.flip:
            if rng.random() < 0.5:
                image, mask = image[:, :, ::-1], mask[:, ::-1]
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[::-1]
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)),
                "attribute": torch.tensor(int(self.attributes[i]))}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))
