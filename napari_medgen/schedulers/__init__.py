"""Diffusion schedulers that diffusers and MONAI lack, with the diffusers scheduler interface.

One class per module (e.g. `napari_medgen.schedulers.brownian_bridge.BrownianBridgeScheduler`), imported on
demand so this package stays cheap to import.
"""
