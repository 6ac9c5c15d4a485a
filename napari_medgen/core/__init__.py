"""GUI-free core: volumes, file IO, geometry, progress and device policy."""

from napari_medgen.core.volume import LabelMap, Volume

__all__ = ["LabelMap", "Volume"]
