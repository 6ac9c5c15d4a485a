"""Small bundled checkpoints, one folder per model: ``weights/<name>/`` holding ``model.safetensors``,
``config.json`` and a ``README.md`` model card.

`napari_medgen.hub.list_bundled` discovers them by reading this folder, so adding a bundled model
means adding a folder (written by `napari_medgen.hub.save_pretrained`, e.g. the ``model/`` folder
that ``medgen train`` exports) -- no code change. Nothing here is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR: Path = Path(__file__).resolve().parent

__all__ = ["WEIGHTS_DIR"]
