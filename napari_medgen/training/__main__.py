"""``python -m napari_medgen.training MODEL --config FILE`` (works under ``accelerate launch`` / ``torchrun``)."""

import sys

from napari_medgen.training.launch import main

sys.exit(main())
