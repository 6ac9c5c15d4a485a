"""RankIndex (flat lattice position -> rank among the ROI voxels) against a plain binary search."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.radiomics.neighbours import RankIndex


@pytest.mark.parametrize("density", [0.02, 0.5, 1.0])
def test_rank_matches_searchsorted(density: float) -> None:
    rng = np.random.default_rng(3)
    size = 5000  # not a multiple of 64: the last word is partial
    index = np.flatnonzero(rng.random(size) < density)
    ranks = RankIndex(index, size)
    query = rng.choice(index, 700)
    np.testing.assert_array_equal(ranks(query), np.searchsorted(index, query))
    np.testing.assert_array_equal(ranks(index), np.arange(index.size))


def test_rank_at_word_edges() -> None:
    index = np.array([0, 62, 63, 64, 127, 128, 4095], dtype=np.intp)
    np.testing.assert_array_equal(RankIndex(index, 4096)(index[::-1]), np.arange(index.size)[::-1])
