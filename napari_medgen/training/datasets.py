"""Image/label pairs from a folder, case-wise splits, and a lazy random-patch dataset.

Pairing follows the naming conventions of public datasets, searched recursively (hidden files and
folders are skipped; any format `napari_medgen.core.io` reads):

* two folders: ``images/X.nii.gz`` + ``labels/X.nii.gz`` (also ``masks/``, ``segmentations/``,
  nnU-Net's ``imagesTr/X_0000.nii.gz`` + ``labelsTr/X.nii.gz``, and ``train/`` + ``train_masks/``
  or ``images/`` + ``lesion_masks/X_lesion.png``);
* one folder: ``X_image.nrrd`` / ``X.nrrd`` with ``X_label.*``, ``X_mask.*``, ``X_seg.*``,
  ``X_segmentation.*``, ``X-label.*``, ``X_lesion.*`` or ``X.seg.nrrd``; BUSI's extra masks
  ``X_mask_1.png`` are merged into the first;
* case folders (``case_image`` / ``case_label`` glob patterns): ``<case>/Flair.nii.gz`` +
  ``<case>/seg.nii.gz`` as in BraTS.

Splits are made per case (a 3D volume, or a group of slice files named by ``group_by``), so slices
of one patient never end up in both the training and the test set, and they depend only on the
case names and a seed -- not on the order the file system lists them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.naming import label_base, split_name
from napari_medgen.errors import InvalidInputError

_LOG = logging.getLogger(__name__)

_LABEL_WORDS = ("labels", "label", "masks", "mask", "segmentations", "segmentation", "segs", "seg", "gt")
_IMAGE_WORDS = ("images", "image", "imgs", "img")
_IMAGE_SUFFIX = re.compile(r"^(?P<base>.+?)[_-](?:image|img|0000)$", re.IGNORECASE)
_LAYOUT_HELP = (
    "Expected layouts: images/X.nii.gz + labels/X.nii.gz; X_image.nrrd + X_label.nrrd (or X_mask / X_seg) "
    "in one folder; BUSI-style X.png + X_mask.png; or case folders with data.case_image and data.case_label "
    "patterns (e.g. 'Flair*.nii.gz' and 'OTMultiClass.nii.gz')."
)


@dataclass(frozen=True)
class CasePair:
    """One training case: an image file and the label file(s) drawn on it (merged when several)."""

    case_id: str
    image: Path
    labels: tuple[Path, ...]


def _split_name(path: Path) -> tuple[str, str] | None:
    """(stem, extension) for a file type napari-medgen reads, else None (`core.naming.split_name`)."""
    parsed = split_name(path)
    if parsed is None or parsed[1] == ".dcm":
        return None  # DICOM slices belong to series folders, not to file pairs
    return parsed


def _is_label_dir(name: str) -> bool:
    low = name.lower()
    return any(low in (w, f"{w}tr", f"{w}ts") or low.endswith(f"_{w}") for w in _LABEL_WORDS)


def _is_image_dir(name: str) -> bool:
    low = name.lower()
    return any(low in (w, f"{w}tr", f"{w}ts") for w in _IMAGE_WORDS)


def _image_dir_for(label_dir: Path) -> Path | None:
    """The sibling folder holding the images of a label folder (``train_masks`` -> ``train`` ...)."""
    siblings = {p.name.lower(): p for p in label_dir.parent.iterdir() if p.is_dir() and p != label_dir}
    low = label_dir.name.lower()
    for word in _LABEL_WORDS:
        if low.endswith(f"_{word}") and low[: -len(word) - 1] in siblings:
            return siblings[low[: -len(word) - 1]]
    for word in _LABEL_WORDS:
        if low.startswith(word):
            rest = low[len(word):]
            for image_word in _IMAGE_WORDS:
                if f"{image_word}{rest}" in siblings:
                    return siblings[f"{image_word}{rest}"]
    candidates = [p for name, p in siblings.items() if _is_image_dir(name)]
    return candidates[0] if len(candidates) == 1 else None


def _visible_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        files.append(path)
    return files


def _case_folder_pairs(root: Path, image_pattern: str, label_pattern: str) -> tuple[list[CasePair], list[str]]:
    pairs: list[CasePair] = []
    problems: list[str] = []
    folders = sorted({p.parent for p in root.rglob(image_pattern)} | {p.parent for p in root.rglob(label_pattern)})
    for folder in folders:
        images = sorted(p for p in folder.glob(image_pattern) if p.is_file())
        labels = tuple(sorted(p for p in folder.glob(label_pattern) if p.is_file() and p not in images))
        case_id = folder.relative_to(root).as_posix() or folder.name
        if len(images) != 1 or not labels:
            problems.append(f"{case_id}: {len(images)} image(s) matching {image_pattern!r}, "
                            f"{len(labels)} label(s) matching {label_pattern!r}")
            continue
        pairs.append(CasePair(case_id, images[0], labels))
    return pairs, problems


def find_pairs(
    root: str | Path,
    *,
    case_image: str | None = None,
    case_label: str | None = None,
    allow_unpaired: bool = False,
) -> list[CasePair]:
    """Every image/label pair under ``root`` (sorted by case id); see the module docstring for layouts.

    Unpaired files raise `InvalidInputError` naming them unless ``allow_unpaired`` (then they are
    skipped with a warning); so do an empty folder and a folder without any pair.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InvalidInputError(f"Data folder {root} does not exist; set data.root to the folder of your images.")
    if (case_image is None) != (case_label is None):
        raise InvalidInputError("Give both data.case_image and data.case_label (glob patterns), or neither.")
    if case_image is not None and case_label is not None:
        pairs, problems = _case_folder_pairs(root, case_image, case_label)
        unpaired = problems
    else:
        pairs, unpaired = _convention_pairs(root)
    if unpaired and not allow_unpaired:
        shown = "; ".join(unpaired[:5]) + (f"; ... ({len(unpaired)} in all)" if len(unpaired) > 5 else "")
        raise InvalidInputError(
            f"{root} has files without a partner: {shown}. Give every image a label file, remove the extra "
            f"files, or set data.allow_unpaired: true to skip them. {_LAYOUT_HELP}"
        )
    if unpaired:
        _LOG.warning("skipping %d unpaired file(s) under %s", len(unpaired), root)
    if not pairs:
        raise InvalidInputError(f"No image/label pairs found under {root}. {_LAYOUT_HELP}")
    return sorted(pairs, key=lambda p: p.case_id)


def _convention_pairs(root: Path) -> tuple[list[CasePair], list[str]]:
    images: dict[tuple[Path, str], list[Path]] = {}
    labels: dict[tuple[Path, str], list[Path]] = {}
    any_supported = False
    image_dir_cache: dict[Path, Path | None] = {}
    for path in _visible_files(root):
        parsed = _split_name(path)
        if parsed is None:
            continue
        any_supported = True
        stem, ext = parsed
        folder = path.parent
        label_match = label_base(stem)
        in_label_dir = folder != root and _is_label_dir(folder.name)
        if in_label_dir or label_match or ext == ".seg.nrrd":
            if in_label_dir:
                if folder not in image_dir_cache:
                    image_dir_cache[folder] = _image_dir_for(folder)
                group = image_dir_cache[folder] or folder
            else:
                group = folder
            base = label_match or stem
            labels.setdefault((group, base), []).append(path)
        else:
            image_match = _IMAGE_SUFFIX.match(stem)
            base = image_match.group("base") if image_match else stem
            images.setdefault((folder, base), []).append(path)
    if not any_supported:
        from napari_medgen.core.io import SUPPORTED_EXTENSIONS

        raise InvalidInputError(
            f"{root} contains no image files (supported: {', '.join(e for e in SUPPORTED_EXTENSIONS if e != '.dcm')})."
        )
    pairs: list[CasePair] = []
    unpaired: list[str] = []
    for key, image_paths in images.items():
        folder, base = key
        rel = folder.relative_to(root).as_posix()
        case_id = base if rel in ("", ".") else f"{rel}/{base}"
        if len(image_paths) > 1:
            unpaired.append(f"{case_id}: several images {[p.name for p in image_paths]}")
            continue
        if key not in labels:
            unpaired.append(f"image {image_paths[0].relative_to(root).as_posix()} has no label")
            continue
        pairs.append(CasePair(case_id, image_paths[0], tuple(sorted(labels[key]))))
    for key, label_paths in labels.items():
        if key not in images:
            unpaired.extend(f"label {p.relative_to(root).as_posix()} has no image" for p in label_paths)
    return pairs, unpaired


# ---- splits ---------------------------------------------------------------------------------------
def _group_of(case_id: str, group_by: re.Pattern[str] | None) -> str:
    if group_by is None:
        return case_id
    match = group_by.search(case_id)
    if match is None:
        return case_id
    return match.group(1) if match.groups() else match.group(0)


def split_cases(
    case_ids: Sequence[str],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    group_by: str | None = None,
) -> dict[str, list[str]]:
    """Deterministic train/val/test split of case ids, made per group (patient).

    Groups are ordered by a SHA-256 of ``"seed:group"`` (a seeded permutation that does not depend
    on listing order) and cut by counts; a non-zero fraction gets at least one group once there are
    three or more groups, and training always keeps at least one. ``group_by`` is a regular
    expression whose first group (or whole match) names the patient of a case id, e.g. ``^(.*)_\\d+$``
    for ``patient7_12.png`` slices.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InvalidInputError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) with sum < 1."
        )
    if not case_ids:
        raise InvalidInputError("No cases to split.")
    pattern = None
    if group_by:
        try:
            pattern = re.compile(group_by)
        except re.error as error:
            raise InvalidInputError(f"data.group_by {group_by!r} is not a valid regular expression: {error}") from error
    groups: dict[str, list[str]] = {}
    for case_id in case_ids:
        groups.setdefault(_group_of(case_id, pattern), []).append(case_id)
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n = len(order)

    def count(fraction: float) -> int:
        k = int(round(fraction * n))
        return max(k, 1) if fraction > 0 and n >= 3 else k

    n_val, n_test = count(val_fraction), count(test_fraction)
    while n_val + n_test > n - 1 and (n_val or n_test):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    chosen = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {name: sorted(c for g in groups_ for c in groups[g]) for name, groups_ in
            (("train", chosen["train"]), ("val", chosen["val"]), ("test", chosen["test"]))}


# ---- loading ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedCase:
    """A case's arrays after normalisation/relabelling, plus its foreground voxel coordinates."""

    image: np.ndarray  # float32 (z, y, x)
    labels: np.ndarray  # int64 (z, y, x)
    foreground: np.ndarray  # (k, 3) int32 indices of label > 0


def load_case(
    pair: CasePair,
    *,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    relabel: Callable[[np.ndarray], np.ndarray] | None = None,
    resize_yx: Sequence[int] | None = None,
) -> LoadedCase:
    """Read one pair (labels must lie on the image grid), merge multiple label files, normalise."""
    from napari_medgen.core.io import read_labels, read_volume
    from napari_medgen.errors import GeometryMismatchError

    image = read_volume(pair.image)
    merged: np.ndarray | None = None
    for path in pair.labels:
        try:
            labels = read_labels(path, reference=image)
        except GeometryMismatchError as error:
            raise GeometryMismatchError(f"Case {pair.case_id!r}: {error}") from error
        merged = labels.array.astype(np.int64) if merged is None else np.maximum(merged, labels.array)
    if merged is None:
        raise InvalidInputError(f"Case {pair.case_id!r} has no label file.")
    img = np.asarray(image.array, dtype=np.float32)
    if resize_yx is not None:
        img, merged = _resize_yx(img, merged, resize_yx)
    if normalize is not None:
        img = np.asarray(normalize(img), dtype=np.float32)
    if relabel is not None:
        try:
            merged = relabel(merged)
        except InvalidInputError as error:
            raise InvalidInputError(f"Case {pair.case_id!r}: {error}") from error
    foreground = np.argwhere(merged > 0).astype(np.int32)
    return LoadedCase(img, merged.astype(np.int64), foreground)


def _resize_yx(image: np.ndarray, labels: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    factors = (1.0, size[0] / image.shape[1], size[1] / image.shape[2])
    resized = ndimage.zoom(image, factors, order=1, grid_mode=True, mode="nearest")
    relabelled = ndimage.zoom(labels, factors, order=0, grid_mode=True, mode="nearest")
    return resized.astype(np.float32), relabelled


def _crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """``array[start:start+size]`` per axis, padded with ``fill`` where the window leaves the array."""
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchDataset:
    """Random fixed-size patches (3D) or slice patches (2D) of image/label pairs, loaded lazily.

    Item ``i`` comes from case ``i % n_cases``; with probability ``foreground_fraction`` the patch is
    centred on a random labelled voxel (so small lesions are seen often), otherwise anywhere. Loaded
    cases are kept in an LRU cache of ``cache_cases``. Randomness comes only from the ``rng`` given to
    `get_item` (the trainer seeds it per epoch and index, which makes resumption exact).
    """

    def __init__(
        self,
        pairs: Sequence[CasePair],
        *,
        spatial_dims: int,
        patch_size: Sequence[int],
        samples_per_epoch: int,
        normalize: Callable[[np.ndarray], np.ndarray] | None = None,
        relabel: Callable[[np.ndarray], np.ndarray] | None = None,
        resize_yx: Sequence[int] | None = None,
        foreground_fraction: float = 0.5,
        cache_cases: int = 64,
    ) -> None:
        if not pairs:
            raise InvalidInputError("The training split has no cases; add data or lower val/test fractions.")
        if spatial_dims not in (2, 3):
            raise InvalidInputError(f"spatial_dims must be 2 or 3; got {spatial_dims}.")
        if len(patch_size) != spatial_dims or min(patch_size) < 1:
            raise InvalidInputError(
                f"patch_size needs {spatial_dims} positive sizes for {spatial_dims}D training; got {list(patch_size)}."
            )
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InvalidInputError(f"foreground_fraction must be in [0, 1]; got {foreground_fraction}.")
        if samples_per_epoch < 1:
            raise InvalidInputError(f"samples_per_epoch must be >= 1; got {samples_per_epoch}.")
        self.pairs = list(pairs)
        self.spatial_dims = spatial_dims
        self.patch_size = tuple(int(s) for s in patch_size)
        self.samples_per_epoch = int(samples_per_epoch)
        self.normalize = normalize
        self.relabel = relabel
        self.resize_yx = tuple(resize_yx) if resize_yx is not None else None
        self.foreground_fraction = float(foreground_fraction)
        self.cache_cases = max(1, int(cache_cases))
        self._cache: OrderedDict[int, LoadedCase] = OrderedDict()

    def __len__(self) -> int:
        return self.samples_per_epoch

    def case(self, index: int) -> LoadedCase:
        """The loaded case ``index`` (cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        loaded = load_case(self.pairs[index], normalize=self.normalize, relabel=self.relabel,
                           resize_yx=self.resize_yx)
        self._cache[index] = loaded
        while len(self._cache) > self.cache_cases:
            self._cache.popitem(last=False)
        return loaded

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Patch ``{"image": float32 (1, *patch), "label": int64 (1, *patch), "case": id}`` for item ``index``."""
        import torch

        case_index = index % len(self.pairs)
        data = self.case(case_index)
        shape = data.image.shape
        use_fg = len(data.foreground) > 0 and rng.random() < self.foreground_fraction
        if use_fg:
            centre = data.foreground[rng.integers(len(data.foreground))]
        else:
            centre = np.array([rng.integers(dim) for dim in shape])
        size = (1, *self.patch_size) if self.spatial_dims == 2 else self.patch_size
        start = [int(c) - s // 2 for c, s in zip(centre, size, strict=True)]
        for axis, (s, n, dim) in enumerate(zip(start, size, shape, strict=True)):
            # keep the window inside the image where it fits, centred where it does not
            start[axis] = (dim - n) // 2 if n >= dim else min(max(s, 0), dim - n)
        if self.spatial_dims == 2:
            start[0] = int(centre[0])
        image = _crop(data.image, start, size, fill=float(data.image.min()) if data.image.size else 0.0)
        labels = _crop(data.labels, start, size, fill=0)
        if self.spatial_dims == 2:
            image, labels = image[0], labels[0]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image[None])),
            "label": torch.from_numpy(np.ascontiguousarray(labels[None])),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Deterministic item (seeded by its index) for use outside the trainer."""
        return self.get_item(index, np.random.default_rng(index))


def binary_relabel(labels: np.ndarray) -> np.ndarray:
    """Every non-zero label becomes 1 (lesion vs background)."""
    return (labels > 0).astype(np.int64)


@dataclass(frozen=True)
class MulticlassRelabel:
    """Keeps label values, checking they are below ``num_classes`` (picklable for DataLoader workers)."""

    num_classes: int

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        top = int(labels.max()) if labels.size else 0
        if top >= self.num_classes:
            raise InvalidInputError(
                f"label value {top} does not fit num_classes={self.num_classes} (values 0..{self.num_classes - 1}); "
                "raise data.num_classes or use label_mode: binary."
            )
        return labels.astype(np.int64)


def describe_pairs(pairs: Sequence[CasePair], splits: Mapping[str, Sequence[str]]) -> str:
    """Short human summary for logs and model cards."""
    exts = sorted({p.image.name[len(p.image.name.split('.')[0]):] or p.image.suffix for p in pairs})
    return (f"{len(pairs)} cases ({', '.join(exts)}): train {len(splits['train'])}, val {len(splits['val'])}, "
            f"test {len(splits['test'])}")


class CaseSplit:
    """The image/label pairs a task's ``data:`` section names, and their case split, found once: the one case
    split every training task uses (``self._cases = CaseSplit(self.data_config)``).

    ``data`` needs ``root, case_image, case_label, allow_unpaired, val_fraction, test_fraction, split_seed,
    group_by``; problems become `ConfigError` naming the ``data:`` section.
    """

    def __init__(self, data: Any) -> None:
        self._data = data
        self._pairs: list[CasePair] | None = None
        self._splits: dict[str, list[str]] | None = None

    def all(self) -> tuple[list[CasePair], dict[str, list[str]]]:
        """Every pair and the case ids per split (train / val / test)."""
        from napari_medgen.errors import ConfigError

        if self._pairs is None or self._splits is None:
            d = self._data
            try:
                self._pairs = find_pairs(d.root, case_image=d.case_image, case_label=d.case_label,
                                         allow_unpaired=d.allow_unpaired)
                self._splits = split_cases([p.case_id for p in self._pairs], val_fraction=d.val_fraction,
                                           test_fraction=d.test_fraction, seed=d.split_seed, group_by=d.group_by)
            except InvalidInputError as error:
                raise ConfigError(f"data: {error}") from error
        return self._pairs, self._splits

    def pairs(self, split: str) -> list[CasePair]:
        """The pairs of one split."""
        pairs, splits = self.all()
        wanted = set(splits[split])
        return [p for p in pairs if p.case_id in wanted]

    def record(self) -> dict[str, Any]:
        """What a checkpoint records about its data (``export_extra``): root, split seed and case ids per split."""
        _, splits = self.all()
        return {"data_root": str(self._data.root), "split_seed": self._data.split_seed, "splits": splits}
