"""Binary mask clean-up shared by training (the shape bank) and inference (generated shapes).

Why one place: the shape generator must post-process its masks exactly as the training bank was cleaned, or the
features it is asked for and the features it learned would describe different objects.
"""

from __future__ import annotations

import numpy as np


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Largest 26-connected component with internal holes filled (a single solid tumour)."""
    from scipy import ndimage

    if not mask.any():
        return mask.astype(bool)
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        mask = components == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


__all__ = ["clean_mask"]
