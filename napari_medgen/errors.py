"""Errors that users see: each says what is wrong and what to do about it."""

from __future__ import annotations


class MedGenError(Exception):
    """Base class for every user-facing napari-medgen error."""


class UnsupportedFormatError(MedGenError):
    """The file type or folder layout cannot be read or written."""


class CorruptFileError(MedGenError):
    """A file exists but cannot be decoded."""


class DimensionError(MedGenError):
    """An array has the wrong number of dimensions or channels for the operation."""


class GeometryMismatchError(MedGenError):
    """Two volumes that must share a grid (image and labels) do not."""


class InvalidInputError(MedGenError):
    """An argument is out of range, empty, NaN or otherwise unusable."""


class CheckpointError(MedGenError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class ConfigError(MedGenError):
    """A configuration file or option is invalid."""


class CancelledError(MedGenError):
    """The user cancelled a running job; nothing was written."""


class OutputPathError(MedGenError):
    """An output cannot be created where the user asked (read-only folder, a parent that is a file...)."""
