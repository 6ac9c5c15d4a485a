"""Networks (``nn.Module`` only), one concept per module, each registered with `napari_medgen.hub`.

Modules here are imported on demand (`napari_medgen.hub.registered_models` imports all of them when
a checkpoint names a type it has not seen yet), so this package stays cheap to import.
"""
