"""The one rule for file names: which files hold label maps (segmentations) and what case they belong to.

* `split_name`: a file's stem and its (possibly compound) extension, ``X.seg.nrrd`` -> ``("X", ".seg.nrrd")``;
* `label_base`: the case a label file belongs to by its suffix, ``X_label`` / ``X-mask_1`` / ``X_seg`` /
  ``X_segmentation`` / ``X_lesion`` / ``X_gt`` -> ``X`` (used to pair images with labels);
* `looks_like_labels`: whether a file name says it is a label map -- it contains ``label``, ``mask`` or ``seg``
  (which covers ``.seg.nrrd``), or ends in one of the label suffixes above. Folders of images skip such files
  (`medgen batch`), the napari reader opens them as Labels layers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: words that mark a file name as a label map wherever they appear in it
LABEL_WORDS = ("label", "mask", "seg")
#: suffixes (after ``_`` or ``-``, optionally numbered) that name the case a label file belongs to
_LABEL_SUFFIX = re.compile(
    r"^(?P<base>.+?)[_-](?:masks?|labels?|seg|segmentation|lesion|gt)(?:[_-]\d+)?$", re.IGNORECASE
)


def split_name(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(stem, extension) for a file type napari-medgen reads (longest extension first: ``.seg.nrrd`` before
    ``.nrrd``), else None."""
    from napari_medgen.core.formats import SUPPORTED_EXTENSIONS

    name = Path(os.fspath(path).rstrip("/\\")).name
    lower = name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def stem(path: str | os.PathLike[str]) -> str:
    """The file name without its supported extension (``case.nii.gz`` -> ``case``; other names: `Path.stem`)."""
    parsed = split_name(path)
    return parsed[0] if parsed else Path(os.fspath(path).rstrip("/\\")).stem


def label_base(file_stem: str) -> str | None:
    """The case name of a label file's stem by its suffix (``X_mask_1`` -> ``X``), or None."""
    match = _LABEL_SUFFIX.match(file_stem)
    return match.group("base") if match else None


def looks_like_labels(path: str | os.PathLike[str]) -> bool:
    """True when the file name says it is a label map (see the module docstring)."""
    name = Path(os.fspath(path).rstrip("/\\")).name
    return any(word in name.lower() for word in LABEL_WORDS) or label_base(stem(name)) is not None
