"""napari-medgen: controllable synthesis of tumours and anatomy in medical images."""

from napari_medgen.errors import MedGenError

__version__ = "0.1.0"

__all__ = ["MedGenError", "__version__"]
