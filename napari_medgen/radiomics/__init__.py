"""Radiomics features (pyradiomics-compatible names and values), batched: numpy plus compiled numba loops."""

from napari_medgen.radiomics.extractor import extract_features, extract_features_batch
from napari_medgen.radiomics.settings import RadiomicsSettings

__all__ = ["RadiomicsSettings", "extract_features", "extract_features_batch"]
